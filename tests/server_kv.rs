//! The KV API end to end: the real `corekv` binary on loopback, driven through
//! `corekv::client`, covering every request field of range/put/delete/txn/compact/status.

#[path = "support/server.rs"]
mod server;

use corekv::client::txn::prefix_end;
use corekv::client::{ClientError, Txn};
use corekv::mvcc::{
    Compare, CompareResult, DeleteRangeRequest, ErrorCode, PutRequest, RangeRequest, RequestOp,
    ResponseOp, SortOrder, SortTarget,
};
use server::{with_client, ServerProcess};

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Server(e) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn range(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..RangeRequest::default()
    }
}

#[test]
fn kv_requests_follow_etcd_semantics() {
    let mut srv = ServerProcess::start(&[]);
    with_client(&srv.endpoint(), async |c| {
        // Revisions: each write request gets the next revision; versions count per key.
        let r1 = c.put_kv("foo", "bar").await.unwrap();
        let r2 = c.put_kv("foo", "baz").await.unwrap();
        assert_eq!(r2, r1 + 1);
        let kv = c.get("foo").await.unwrap().unwrap();
        assert_eq!(
            (
                kv.value.as_slice(),
                kv.create_revision,
                kv.mod_revision,
                kv.version
            ),
            (&b"baz"[..], r1, r2, 2)
        );
        assert_eq!(c.get("missing").await.unwrap(), None);

        // Put options.
        let (p, h) = c
            .put(PutRequest {
                key: b"foo".to_vec(),
                value: b"qux".to_vec(),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p.prev_kv.unwrap().value, b"baz");
        assert_eq!(h.revision, r2 + 1);
        let (_, h) = c
            .put(PutRequest {
                key: b"foo".to_vec(),
                ignore_value: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            c.get("foo").await.unwrap().unwrap().value,
            b"qux",
            "ignore_value keeps the value"
        );
        assert_eq!(
            c.get("foo").await.unwrap().unwrap().mod_revision,
            h.revision
        );
        let e = c
            .put(PutRequest {
                key: b"nope".to_vec(),
                ignore_value: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::KeyNotFound);
        let e = c
            .put(PutRequest {
                key: b"nope".to_vec(),
                ignore_lease: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::KeyNotFound);
        let e = c
            .put(PutRequest {
                key: b"x".to_vec(),
                lease: 42,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::LeaseNotFound);
        let e = c
            .put(PutRequest {
                key: Vec::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::InvalidRange);

        // Ranges: prefix, from-key, all keys, limit/more/count, sort, keys/count only.
        for k in ["a/1", "a/2", "a/3", "b/1", "c"] {
            c.put_kv(k, format!("v-{k}")).await.unwrap();
        }
        let (r, _) = c.range(range(b"a/", &prefix_end(b"a/"))).await.unwrap();
        assert_eq!(
            r.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(),
            vec![&b"a/1"[..], b"a/2", b"a/3"]
        );
        let (r, _) = c.range(range(b"b", b"\0")).await.unwrap();
        assert_eq!(r.count, 3, "from-key: b/1, c, foo");
        let (r, _) = c.range(range(b"\0", b"\0")).await.unwrap();
        assert_eq!(r.count, 6, "all keys");
        let (r, _) = c
            .range(RangeRequest {
                limit: 2,
                ..range(b"a/", &prefix_end(b"a/"))
            })
            .await
            .unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
        let (r, _) = c
            .range(RangeRequest {
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Key,
                ..range(b"a/", &prefix_end(b"a/"))
            })
            .await
            .unwrap();
        assert_eq!(r.kvs[0].key, b"a/3");
        let (r, _) = c
            .range(RangeRequest {
                keys_only: true,
                ..range(b"a/1", b"")
            })
            .await
            .unwrap();
        assert!(r.kvs[0].value.is_empty());
        let (r, _) = c
            .range(RangeRequest {
                count_only: true,
                ..range(b"a/", &prefix_end(b"a/"))
            })
            .await
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 3));
        let (r, _) = c
            .range(RangeRequest {
                serializable: true,
                ..range(b"c", b"")
            })
            .await
            .unwrap();
        assert_eq!(r.kvs[0].value, b"v-c");
        let a2 = c.get("a/2").await.unwrap().unwrap();
        let (r, _) = c
            .range(RangeRequest {
                min_mod_revision: a2.mod_revision,
                max_mod_revision: a2.mod_revision,
                ..range(b"a/", &prefix_end(b"a/"))
            })
            .await
            .unwrap();
        assert_eq!(r.kvs.len(), 1);
        let (r, _) = c
            .range(RangeRequest {
                min_create_revision: a2.create_revision + 1,
                ..range(b"a/", &prefix_end(b"a/"))
            })
            .await
            .unwrap();
        assert_eq!(r.kvs.len(), 1, "only a/3 was created after a/2");

        // Historical reads.
        let (r, _) = c
            .range(RangeRequest {
                revision: r1,
                ..range(b"foo", b"")
            })
            .await
            .unwrap();
        assert_eq!(r.kvs[0].value, b"bar");
        let (_, h) = c.range(range(b"foo", b"")).await.unwrap();
        let e = c
            .range(RangeRequest {
                revision: h.revision + 10,
                ..range(b"foo", b"")
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::FutureRevision);

        // Delete.
        let (d, h) = c
            .delete_range(DeleteRangeRequest {
                key: b"a/".to_vec(),
                range_end: prefix_end(b"a/"),
                prev_kv: true,
            })
            .await
            .unwrap();
        assert_eq!((d.deleted, d.prev_kvs.len()), (3, 3));
        let (d, h2) = c
            .delete_range(DeleteRangeRequest {
                key: b"a/1".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(d.deleted, 0);
        assert_eq!(
            h2.revision, h.revision,
            "a delete of nothing takes no revision"
        );
        c.put_kv("a/1", "again").await.unwrap();
        let kv = c.get("a/1").await.unwrap().unwrap();
        assert_eq!(
            (kv.version, kv.create_revision),
            (1, kv.mod_revision),
            "a new generation after delete"
        );

        // Txn: compares, both branches, nesting, errors.
        let (t, _) = c
            .txn(
                Txn::new()
                    .when([Compare::value("foo", CompareResult::Equal, "qux")])
                    .and_then([RequestOp::put("foo", "won"), RequestOp::get("c")])
                    .or_else([RequestOp::get("foo")]),
            )
            .await
            .unwrap();
        assert!(t.succeeded);
        match &t.responses[1] {
            ResponseOp::Range(r) => assert_eq!(r.kvs[0].value, b"v-c"),
            other => panic!("{other:?}"),
        }
        let (t, _) = c
            .txn(
                Txn::new()
                    .when([Compare::version("foo", CompareResult::Less, 1)])
                    .and_then([RequestOp::put("foo", "lost")])
                    .or_else([RequestOp::Txn(
                        Txn::new()
                            .and_then([RequestOp::put("nested", "yes")])
                            .into(),
                    )]),
            )
            .await
            .unwrap();
        assert!(!t.succeeded);
        assert_eq!(c.get("nested").await.unwrap().unwrap().value, b"yes");
        assert_eq!(c.get("foo").await.unwrap().unwrap().value, b"won");
        let e = c
            .txn(Txn::new().and_then([RequestOp::put("d", "1"), RequestOp::put("d", "2")]))
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::DuplicateKey);
        let many: Vec<RequestOp> = (0..129)
            .map(|i| RequestOp::put(format!("k{i}"), "v"))
            .collect();
        let e = c.txn(Txn::new().and_then(many)).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::TooManyTxnOps);

        // Compaction.
        let (_, h) = c.range(range(b"foo", b"")).await.unwrap();
        c.compact(h.revision - 1, true).await.unwrap();
        let e = c
            .range(RangeRequest {
                revision: r1,
                ..range(b"foo", b"")
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::Compacted);
        let e = c.compact(h.revision - 2, false).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::Compacted);
        let e = c.compact(h.revision + 100, false).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::FutureRevision);
        let (r, _) = c
            .range(RangeRequest {
                revision: h.revision - 1,
                ..range(b"foo", b"")
            })
            .await
            .unwrap();
        assert_eq!(
            r.kvs[0].value, b"won",
            "reads at the compacted revision still work"
        );

        // Status.
        let s = c.status().await.unwrap();
        assert_eq!(s.header.revision, h.revision);
        assert!(s.raft_applied_index > 0 && s.raft_index >= s.raft_applied_index);
        assert_eq!(s.leader, s.header.member_id);
        assert!(s.db_size > 0 && s.db_size_in_use > 0 && s.raft_term >= 1);
        assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    });

    // Restart on the same data dir continues where it stopped.
    let last = with_client(&srv.endpoint(), async |c| {
        c.get("foo").await.unwrap().unwrap()
    });
    srv.restart(&[]);
    with_client(&srv.endpoint(), async move |c| {
        assert_eq!(c.get("foo").await.unwrap().unwrap(), last);
        let rev = c.put_kv("after", "restart").await.unwrap();
        assert_eq!(
            rev,
            last.mod_revision + 2,
            "revisions continue (nested put came after foo)"
        );
    });
}

#[test]
fn client_works_from_a_tokio_local_set() {
    let srv = ServerProcess::start(&[]);
    let endpoint = srv.endpoint();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let c =
            corekv::client::Client::connect(&[endpoint], Default::default(), corekv::client::Tokio)
                .await
                .unwrap();
        let rev = c.put_kv("tokio", "works").await.unwrap();
        let kv = c.get("tokio").await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"works"[..], rev));
    });
}

#[test]
fn linearizable_reads_see_acknowledged_writes_from_every_shard() {
    // More shards than cores: connections spread over every shard by SO_REUSEPORT.
    let srv = ServerProcess::start(&["--shards", "4"]);
    let endpoint = srv.endpoint();
    with_client(&srv.endpoint(), async move |writer| {
        let mut readers = Vec::new();
        for _ in 0..16 {
            readers.push(
                corekv::client::Client::connect(
                    std::slice::from_ref(&endpoint),
                    Default::default(),
                    corekv::client::Glommio,
                )
                .await
                .unwrap(),
            );
        }
        for i in 0..50 {
            let rev = writer.put_kv("lin", format!("{i}")).await.unwrap();
            for r in &readers {
                // Linearizable (the default): an acknowledged write is visible on any shard.
                let kv = r.get("lin").await.unwrap().unwrap();
                assert!(
                    kv.mod_revision >= rev,
                    "read on another connection saw revision {} < acked {rev}",
                    kv.mod_revision
                );
            }
        }
    });
}

#[test]
fn quota_refuses_growth_but_allows_deletes_and_compaction() {
    let srv = ServerProcess::start(&["--quota-backend-bytes", "262144"]);
    with_client(&srv.endpoint(), async |c| {
        let value = vec![b'x'; 16 * 1024];
        let mut stored = 0;
        let err = loop {
            match c.put_kv(format!("big/{stored:04}"), value.clone()).await {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 1000, "the quota never triggered");
        };
        match err {
            ClientError::Server(e) => {
                assert_eq!(e.code, ErrorCode::NoSpace);
                assert!(e.message.contains("--quota-backend-bytes"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        // Deletes and compaction still work, so space can be reclaimed.
        let (d, h) = c
            .delete_range(DeleteRangeRequest {
                key: b"big/".to_vec(),
                range_end: prefix_end(b"big/"),
                prev_kv: false,
            })
            .await
            .unwrap();
        assert_eq!(d.deleted, stored);
        c.compact(h.revision, true).await.unwrap();
    });
}

#[test]
fn a_relative_data_dir_works() {
    // The default `--data-dir` is relative (`./default.corekv`): run the real binary from a
    // scratch working directory with a relative data dir, write, restart, read back.
    let cwd = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corekv"))
            .current_dir(cwd.path())
            .args([
                "--data-dir",
                "rel.corekv",
                "--listen-client-urls",
                "127.0.0.1:0",
                "--log-level",
                "warn",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .split("listening for clients on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("corekv did not start: {line:?}"))
            .to_string();
        (child, addr)
    };
    let (mut child, addr) = start();
    let rev = with_client(&addr, async |c| c.put_kv("rel", "ok").await.unwrap());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(cwd.path().join("rel.corekv/wal").is_dir());
    let (mut child, addr) = start();
    let kv = with_client(&addr, async |c| c.get("rel").await.unwrap().unwrap());
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"ok"[..], rev));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
