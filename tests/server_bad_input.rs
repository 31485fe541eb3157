//! Bad input gets a clear error and never takes the server down: oversized requests, too
//! many txn ops, malformed ranges, oversized keys, future/compacted revisions, raw garbage
//! on the socket, and a client that disconnects mid-message.

mod support {
    pub mod etcd_model;
    pub mod gen;
    pub mod server;
}

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use corekv::client::{ClientError, Txn};
use corekv::mvcc::{DeleteRangeRequest, ErrorCode, PutRequest, RangeRequest, RequestOp};
use support::server::{with_client, ServerProcess};

fn server_error(e: ClientError) -> corekv::mvcc::Error {
    match e {
        ClientError::Server(e) => e,
        other => panic!("expected a typed server error, got {other:?}"),
    }
}

/// The server still answers correctly.
fn assert_serving(srv: &ServerProcess) {
    with_client(&srv.endpoint(), async |c| {
        let rev = c.put_kv("alive", "yes").await.unwrap();
        assert_eq!(c.get("alive").await.unwrap().unwrap().mod_revision, rev);
    });
}

#[test]
fn oversized_and_malformed_requests_get_clear_errors() {
    let mut srv = ServerProcess::start(&["--max-request-bytes", "4096", "--max-txn-ops", "8"]);
    with_client(&srv.endpoint(), async |c| {
        // Over --max-request-bytes but within what the transport reads: a typed error.
        let e = server_error(
            c.put(PutRequest {
                key: b"k".to_vec(),
                value: vec![7; 8192],
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::RequestTooLarge);
        assert!(e.message.contains("--max-request-bytes"), "{}", e.message);
        // The connection is still usable.
        c.put_kv("k", vec![7; 1024]).await.unwrap();

        let many: Vec<RequestOp> = (0..9)
            .map(|i| RequestOp::put(format!("t{i}"), "v"))
            .collect();
        let e = server_error(c.txn(Txn::new().and_then(many)).await.unwrap_err());
        assert_eq!(e.code, ErrorCode::TooManyTxnOps);
        assert!(e.message.contains("--max-txn-ops"), "{}", e.message);

        let e = server_error(c.range(RangeRequest::default()).await.unwrap_err());
        assert_eq!(e.code, ErrorCode::InvalidRange);
        let e = server_error(
            c.delete_range(DeleteRangeRequest::default())
                .await
                .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::InvalidRange);
        let e = server_error(
            c.range(RangeRequest {
                key: b"a".to_vec(),
                limit: -1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        // An end below the start is an empty range, as in etcd.
        let (r, _) = c
            .range(RangeRequest {
                key: b"z".to_vec(),
                range_end: b"a".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 0));

        let (_, h) = c
            .range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let e = server_error(
            c.range(RangeRequest {
                key: b"k".to_vec(),
                revision: h.revision + 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::FutureRevision);
        c.put_kv("k", "newer").await.unwrap();
        c.compact(h.revision + 1, false).await.unwrap();
        let e = server_error(
            c.range(RangeRequest {
                key: b"k".to_vec(),
                revision: 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::Compacted);
    });
    assert_serving(&srv);

    // Far beyond the transport's limit: the connection is dropped, the server lives on.
    let outcome = with_client(&srv.endpoint(), async |c| {
        c.put(PutRequest {
            key: b"huge".to_vec(),
            value: vec![1; 4 << 20],
            ..Default::default()
        })
        .await
    });
    assert!(
        matches!(outcome, Err(ClientError::Transport(_))),
        "{outcome:?}"
    );
    assert_serving(&srv);
    assert!(srv.stop(), "clean shutdown");
}

fn raw_session(srv: &ServerProcess, bytes: &[u8], close_early: bool) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if close_early {
        return; // drop: the client vanishes mid-message
    }
    // The server must close a connection that sent garbage (reading returns EOF or a reset).
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

#[test]
fn garbage_and_abandoned_connections_do_not_hurt_the_server() {
    let srv = ServerProcess::start(&[]);
    // Random bytes.
    let mut state = 0x1234_5678u64;
    let noise: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    raw_session(&srv, &noise, false);
    // A frame header claiming 2^32-1 segments, and one claiming a 4 GiB segment.
    raw_session(&srv, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], false);
    raw_session(&srv, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f], false);
    // A valid frame header announcing 1000 words, then only a few, then the client leaves.
    let mut partial = vec![0, 0, 0, 0];
    partial.extend_from_slice(&1000u32.to_le_bytes());
    partial.extend_from_slice(&[0u8; 80]);
    raw_session(&srv, &partial, true);
    // A key over the key size limit (the request itself is within --max-request-bytes).
    with_client(&srv.endpoint(), async |c| {
        let key = vec![b'k'; corekv::mvcc::read::MAX_USER_KEY_SIZE + 1];
        let e = server_error(
            c.put(PutRequest {
                key,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::RequestTooLarge);
        assert!(e.message.contains("key size limit"), "{}", e.message);
    });
    // Many clients that connect and leave at once.
    for _ in 0..200 {
        drop(TcpStream::connect(srv.addr).unwrap());
    }
    assert_serving(&srv);
}

/// A second server on a port another corekv already listens on refuses to start (SO_REUSEPORT
/// would otherwise let it share the port silently) and the first keeps serving.
#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let mut first = ServerProcess::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corekv"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &first.endpoint(),
            "--log-level",
            "warn",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second server started: {stderr}");
    assert!(
        stderr.contains("address already in use"),
        "unclear error: {stderr}"
    );
    let revision = with_client(&first.endpoint(), async |c| {
        c.put_kv("k", "v").await.unwrap()
    });
    assert_eq!(revision, 1, "the first server still serves");
    assert!(first.stop());
}
