//! Leases end to end against the real server with two shards: grant / attach / detach /
//! time-to-live / list / revoke, expiry deleting every attached key in one revision,
//! keep-alives keeping leases alive on both shards (forwarded and local), and bad input.

mod support {
    pub mod server;
}

use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv::api::lease::MAX_KEEPALIVE_IDS;
use corekv::client::{Client, ClientError, ClientOptions, Glommio};
use corekv::mvcc::lease::MAX_LEASE_TTL;
use corekv::mvcc::{
    Compare, CompareResult, CompareTarget, ErrorCode, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use support::server::{with_client, ServerProcess};

/// Server flags: two shards, short TTLs allowed, frequent checkpoints.
const FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--min-lease-ttl",
    "1",
    "--lease-checkpoint-interval",
    "500ms",
];
/// Longest a test waits for an expiry it expects.
const DEADLINE: Duration = Duration::from_secs(30);

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn put_lease(c: &Client, key: &str, lease: i64) -> Result<i64, ClientError> {
    let (_, h) = c
        .put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..PutRequest::default()
        })
        .await?;
    Ok(h.revision)
}

async fn keys_with_prefix(c: &Client, prefix: &str, revision: i64) -> Vec<(String, i64)> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let (resp, _) = c
        .range(RangeRequest {
            key: prefix.into(),
            range_end: end,
            revision,
            ..RangeRequest::default()
        })
        .await
        .unwrap();
    resp.kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), kv.lease))
        .collect()
}

async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await
}

#[test]
fn grant_attach_detach_time_to_live_list_revoke() {
    let srv = ServerProcess::start(FLAGS);
    with_client(&srv.endpoint(), async |c| {
        let (id, ttl, _) = c.lease_grant(60, 0).await.unwrap();
        assert!(id > 0);
        assert_eq!(ttl, 60);
        // A TTL below the minimum is raised to it (--min-lease-ttl 1).
        let (small, ttl, _) = c.lease_grant(0, 0).await.unwrap();
        assert_eq!(ttl, 1);
        assert_ne!(small, id, "server-chosen ids are unique");
        c.lease_revoke(small).await.unwrap();
        // A client-chosen id.
        let (chosen, _, _) = c.lease_grant(60, 0x1234_5678).await.unwrap();
        assert_eq!(chosen, 0x1234_5678);

        put_lease(&c, "k/a", id).await.unwrap();
        put_lease(&c, "k/b", id).await.unwrap();
        put_lease(&c, "k/c", chosen).await.unwrap();
        let (t, _) = c.lease_time_to_live(id, true).await.unwrap();
        assert_eq!(t.granted_ttl, 60);
        assert!(t.ttl > 55 && t.ttl <= 60, "{t:?}");
        assert_eq!(t.keys, vec![b"k/a".to_vec(), b"k/b".to_vec()]);
        // Re-put without the lease detaches; a put with another lease moves the key.
        put_lease(&c, "k/b", 0).await.unwrap();
        put_lease(&c, "k/c", id).await.unwrap();
        let (t, _) = c.lease_time_to_live(id, true).await.unwrap();
        assert_eq!(t.keys, vec![b"k/a".to_vec(), b"k/c".to_vec()]);
        let (t, _) = c.lease_time_to_live(chosen, true).await.unwrap();
        assert!(t.keys.is_empty());
        // A delete detaches too.
        c.delete_range(corekv::mvcc::DeleteRangeRequest {
            key: b"k/a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        put_lease(&c, "k/a", id).await.unwrap();
        let (mut ids, _) = c.lease_leases().await.unwrap();
        ids.sort();
        let mut expect = vec![id, chosen];
        expect.sort();
        assert_eq!(ids, expect);

        // Revoke deletes the attached keys (k/a, k/c) in one revision, keeps k/b.
        let before = keys_with_prefix(&c, "k/", 0).await;
        assert_eq!(before.len(), 3);
        let h = c.lease_revoke(id).await.unwrap();
        let after = keys_with_prefix(&c, "k/", 0).await;
        assert_eq!(after, vec![("k/b".to_string(), 0)]);
        let at_prev = keys_with_prefix(&c, "k/", h.revision - 1).await;
        assert_eq!(
            at_prev.len(),
            3,
            "both deletes are at revision {}",
            h.revision
        );
        let (t, _) = c.lease_time_to_live(id, true).await.unwrap();
        assert_eq!((t.ttl, t.granted_ttl), (-1, 0));
        assert_eq!(code(c.lease_revoke(id).await), ErrorCode::LeaseNotFound);
        assert_eq!(
            code(c.lease_keep_alive_once(id).await),
            ErrorCode::LeaseNotFound
        );
        let (ids, _) = c.lease_leases().await.unwrap();
        assert_eq!(ids, vec![chosen]);
        // Server-chosen ids are never reused, even after a revoke.
        let (next, _, _) = c.lease_grant(60, 0).await.unwrap();
        assert!(next != id && next != small, "{next} reused");
        // A revoke of a lease without keys changes no revision.
        let h1 = c.lease_revoke(next).await.unwrap();
        assert_eq!(h1.revision, h.revision);
    });
}

#[test]
fn expiry_deletes_attached_keys_in_one_revision_and_keep_alive_keeps_them() {
    let srv = ServerProcess::start(FLAGS);
    with_client(&srv.endpoint(), async |c| {
        let c = Rc::new(c);
        let (doomed, _, _) = c.lease_grant(1, 0).await.unwrap();
        let (kept, _, _) = c.lease_grant(1, 0).await.unwrap();
        for i in 0..5 {
            put_lease(&c, &format!("doomed/{i}"), doomed).await.unwrap();
            put_lease(&c, &format!("kept/{i}"), kept).await.unwrap();
        }
        let keeper = c.keep_alive(&[kept]);
        let start = Instant::now();
        let gone_at = loop {
            assert!(start.elapsed() < DEADLINE, "lease {doomed:x} never expired");
            let (resp, h) = c
                .range(RangeRequest {
                    key: b"doomed/".to_vec(),
                    range_end: b"doomed0".to_vec(),
                    ..RangeRequest::default()
                })
                .await
                .unwrap();
            if resp.kvs.is_empty() {
                break h.revision;
            }
            sleep(Duration::from_millis(50)).await;
        };
        // Nothing else wrote meanwhile: the five deletes are one revision.
        let at_prev = keys_with_prefix(&c, "doomed/", gone_at - 1).await;
        assert_eq!(
            at_prev.len(),
            5,
            "all five keys existed one revision before"
        );
        assert_eq!(
            code(c.lease_keep_alive_once(doomed).await),
            ErrorCode::LeaseNotFound
        );
        // The kept lease outlives several TTLs.
        while start.elapsed() < Duration::from_secs(3) {
            sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(keys_with_prefix(&c, "kept/", 0).await.len(), 5);
        assert!(
            keeper.rounds() >= 3,
            "{} keep-alive rounds",
            keeper.rounds()
        );
        assert_eq!(keeper.ttl(kept), Some(1));
        assert!(keeper.lost().is_empty());
        // Once the keep-alives stop, it expires too.
        keeper.stop();
        let stop = Instant::now();
        while !keys_with_prefix(&c, "kept/", 0).await.is_empty() {
            assert!(stop.elapsed() < DEADLINE, "lease {kept:x} never expired");
            sleep(Duration::from_millis(50)).await;
        }
        let (ids, _) = c.lease_leases().await.unwrap();
        assert!(ids.is_empty(), "{ids:?}");
    });
}

#[test]
fn keep_alives_reach_the_owner_from_both_shards() {
    let srv = ServerProcess::start(FLAGS);
    let endpoint = srv.endpoint();
    with_client(&srv.endpoint(), async move |c| {
        let mut ids = Vec::new();
        for _ in 0..64 {
            ids.push(c.lease_grant(60, 0).await.unwrap().0);
        }
        // Connections land on either shard (SO_REUSEPORT): open until some keep-alive was
        // forwarded and some was served locally, i.e. both paths ran.
        let (mut forwarded, mut local) = (0usize, 0usize);
        for attempt in 0..64 {
            let conn = Client::connect(
                std::slice::from_ref(&endpoint),
                ClientOptions::default(),
                Glommio,
            )
            .await
            .unwrap();
            let report = conn.lease_keep_alive_report(&ids, 16).await.unwrap();
            assert!(
                report.ttls.iter().all(|&t| t == 60),
                "attempt {attempt}: {report:?}"
            );
            forwarded += report.forwarded;
            local += ids.len() - report.forwarded;
            if forwarded > 0 && local > 0 {
                break;
            }
        }
        assert!(
            forwarded > 0 && local > 0,
            "forwarded {forwarded}, local {local}"
        );
    });
}

#[test]
fn bad_input_is_refused_with_typed_errors() {
    let srv = ServerProcess::start(FLAGS);
    with_client(&srv.endpoint(), async |c| {
        // Put with an unknown lease, alone and inside a txn (nothing is written).
        assert_eq!(
            code(put_lease(&c, "x", 0x77).await),
            ErrorCode::LeaseNotFound
        );
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                key: b"x".to_vec(),
                range_end: Vec::new(),
                target: CompareTarget::Version(0),
            }],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"y".to_vec(),
                    ..PutRequest::default()
                }),
                RequestOp::Put(PutRequest {
                    key: b"x".to_vec(),
                    lease: 0x77,
                    ..PutRequest::default()
                }),
            ],
            failure: Vec::new(),
        };
        assert_eq!(code(c.txn(txn).await), ErrorCode::LeaseNotFound);
        assert!(
            c.get("y").await.unwrap().is_none(),
            "a failed txn leaves no trace"
        );
        // Duplicate id, TTL too large, negative id.
        let (id, _, _) = c.lease_grant(60, 5).await.unwrap();
        assert_eq!(code(c.lease_grant(60, id).await), ErrorCode::LeaseExists);
        assert_eq!(
            code(c.lease_grant(MAX_LEASE_TTL + 1, 0).await),
            ErrorCode::LeaseTtlTooLarge
        );
        assert_eq!(
            code(c.lease_grant(60, -3).await),
            ErrorCode::InvalidArgument
        );
        // Unknown leases: revoke fails, time-to-live says -1, keep-alive says 0.
        assert_eq!(code(c.lease_revoke(0x99).await), ErrorCode::LeaseNotFound);
        assert_eq!(code(c.lease_revoke(0).await), ErrorCode::InvalidArgument);
        assert_eq!(c.lease_time_to_live(0x99, true).await.unwrap().0.ttl, -1);
        // A keep-alive message over the limit is refused; the client library splits a huge
        // batch into messages within it.
        let huge: Vec<i64> = (1..=(MAX_KEEPALIVE_IDS as i64 * 2 + 7)).collect();
        assert_eq!(
            code(c.lease_keep_alive_report(&huge, huge.len()).await),
            ErrorCode::RequestTooLarge
        );
        let ttls = c.lease_keep_alive_ids(&huge).await.unwrap();
        assert_eq!(ttls.len(), huge.len());
        for (i, ttl) in ttls.iter().enumerate() {
            let expect = if huge[i] == id { 60 } else { 0 };
            assert_eq!(*ttl, expect, "id {}", huge[i]);
        }
        // The connection still works.
        assert_eq!(c.lease_keep_alive_once(id).await.unwrap(), 60);
    });
}
