//! The Watch API end to end against the real binary: created-before-events, put/delete
//! events, prev_kv, filters, ranges, start in the past, compaction cancel, cancel, progress
//! (on request and on the interval), fragments, and bad input (duplicate id, invalid range).

#[path = "support/server.rs"]
mod server;
#[path = "support/watch.rs"]
mod watch;

use std::time::Duration;

use corekv::client::txn::prefix_end;
use corekv::client::watch::WatchRequest;
use corekv::client::ClientError;
use corekv::mvcc::{DeleteRangeRequest, ErrorCode, EventKind};
use server::{with_client, ServerProcess};
use watch::{event_count, next, next_within, until};

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Server(e) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn watch_semantics_follow_etcd() {
    let srv = ServerProcess::start(&["--watch-progress-notify-interval", "200ms"]);
    with_client(&srv.endpoint(), async |c| {
        let mut s = c.watch_stream().await.unwrap();

        // A watcher from now: created first, then the put, then the delete.
        let id = s.watch("a", "", 0).await.unwrap();
        let created = next(&mut s).await;
        assert!(created.created && created.watch_id == id, "{created:?}");
        let r1 = c.put_kv("a", "1").await.unwrap();
        c.put_kv("b", "not watched").await.unwrap();
        c.delete_range(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let got = until(&mut s, |g| event_count(g) >= 2).await;
        let events: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
        assert_eq!(events[0].kind, EventKind::Put);
        assert_eq!(events[0].kv.value, b"1");
        assert_eq!(events[0].kv.mod_revision, r1);
        assert_eq!(events[0].kv.create_revision, r1);
        assert_eq!(events[0].kv.version, 1);
        assert_eq!(events[1].kind, EventKind::Delete);
        assert_eq!(events[1].kv.key, b"a");
        assert_eq!(events[1].kv.mod_revision, r1 + 2);
        assert_eq!(events[1].kv.value, b"");

        // Client-chosen ids; a duplicate is a typed error; an empty range is invalid.
        let mine = s
            .create(WatchRequest {
                key: b"p/".to_vec(),
                range_end: prefix_end(b"p/"),
                watch_id: 100,
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(mine, 100);
        assert!(next(&mut s).await.created);
        let dup = s
            .create(WatchRequest {
                key: b"x".to_vec(),
                watch_id: 100,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(dup), ErrorCode::WatchIdExists);
        let bad = s.watch("z", "a", 0).await.unwrap_err();
        assert_eq!(code(bad), ErrorCode::InvalidRange);
        let empty = s.watch("", "", 0).await.unwrap_err();
        assert_eq!(code(empty), ErrorCode::InvalidRange);

        // Prefix with prev_kv.
        c.put_kv("p/1", "old").await.unwrap();
        c.put_kv("p/1", "new").await.unwrap();
        c.put_kv("q", "outside").await.unwrap();
        let got = until(&mut s, |g| event_count(g) >= 2).await;
        let evs: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
        assert!(got.iter().all(|r| r.watch_id == 100));
        assert_eq!(evs[0].prev_kv, None);
        assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"old");
        assert_eq!(evs[1].kv.version, 2);

        // Cancel: a canceled response, then nothing more for that watcher.
        s.cancel(100).await.unwrap();
        let canceled = next(&mut s).await;
        assert!(canceled.canceled && canceled.watch_id == 100);
        assert_eq!(
            code(s.cancel(100).await.unwrap_err()),
            ErrorCode::InvalidArgument
        );

        // On-demand progress: every event up to its revision was delivered before it.
        let last = c.put_kv("a", "2").await.unwrap();
        s.request_progress().await.unwrap();
        let got = until(&mut s, |g| g.iter().any(|r| r.watch_id == -1)).await;
        let progress = got.last().unwrap();
        assert!(progress.is_progress_notify());
        assert!(progress.header.revision >= last);
        assert_eq!(
            event_count(&got),
            1,
            "the put precedes the progress: {got:?}"
        );
        s.cancel(id).await.unwrap();
        assert!(next(&mut s).await.canceled);

        // Filters: no puts, only the delete.
        let f = s
            .create(WatchRequest {
                key: b"f".to_vec(),
                no_put: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(next(&mut s).await.created);
        c.put_kv("f", "x").await.unwrap();
        c.delete_range(DeleteRangeRequest {
            key: b"f".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = next(&mut s).await;
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].kind, EventKind::Delete);
        s.cancel(f).await.unwrap();
        assert!(next(&mut s).await.canceled);

        // Interval progress notifications while idle.
        let pn = s
            .create(WatchRequest {
                key: b"idle".to_vec(),
                progress_notify: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(next(&mut s).await.created);
        let r = next(&mut s).await;
        assert!(r.is_progress_notify() && r.watch_id == pn, "{r:?}");
        s.cancel(pn).await.unwrap();
        let rest = until(&mut s, |g| g.iter().any(|r| r.canceled)).await;
        assert!(rest.iter().all(|r| r.events.is_empty()));
    });
}

#[test]
fn watch_from_the_past_and_compaction() {
    let srv = ServerProcess::start(&[]);
    with_client(&srv.endpoint(), async |c| {
        let first = c.put_kv("k", "v1").await.unwrap();
        for i in 2..=5 {
            c.put_kv("k", format!("v{i}")).await.unwrap();
        }
        let mut s = c.watch_stream().await.unwrap();
        // From the first revision: all five puts, in order, from history, then live ones.
        let id = s
            .create(WatchRequest {
                key: b"k".to_vec(),
                start_revision: first,
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(next(&mut s).await.created);
        let live = c.put_kv("k", "v6").await.unwrap();
        let got = until(&mut s, |g| event_count(g) >= 6).await;
        let evs: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
        let revs: Vec<i64> = evs.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, (first..first + 5).chain([live]).collect::<Vec<_>>());
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.kv.value, format!("v{}", i + 1).into_bytes());
            let prev = e.prev_kv.as_ref().map(|p| p.value.clone());
            assert_eq!(prev, (i > 0).then(|| format!("v{i}").into_bytes()));
        }
        s.cancel(id).await.unwrap();
        assert!(next(&mut s).await.canceled);

        // Compacted start: created, then canceled with the compacted revision.
        c.compact(first + 3, true).await.unwrap();
        let old = s.watch("k", "", first + 1).await.unwrap();
        assert!(next(&mut s).await.created);
        let r = next(&mut s).await;
        assert!(r.canceled && r.watch_id == old, "{r:?}");
        assert_eq!(r.compact_revision, first + 3);
        // At the compacted revision itself: still served.
        let at = s.watch("k", "", first + 3).await.unwrap();
        assert!(next(&mut s).await.created);
        let r = next(&mut s).await;
        assert_eq!(r.watch_id, at);
        assert_eq!(r.events[0].kv.mod_revision, first + 3);
    });
}

#[test]
fn large_revisions_are_whole_or_fragmented_on_request() {
    let srv = ServerProcess::start(&[]);
    with_client(&srv.endpoint(), async |c| {
        let mut s = c.watch_stream().await.unwrap();
        let whole = s.watch("big/", prefix_end(b"big/"), 0).await.unwrap();
        assert!(next(&mut s).await.created);
        let mut t = c.watch_stream().await.unwrap();
        let frag = t
            .create(WatchRequest {
                key: b"big/".to_vec(),
                range_end: prefix_end(b"big/"),
                fragment: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(next(&mut t).await.created);
        // One txn of 5 x 250 KB values: over the 1 MiB response limit, under the request limit.
        let txn =
            corekv::client::Txn::new()
                .and_then((0..5).map(|i| {
                    corekv::mvcc::RequestOp::put(format!("big/{i}"), vec![b'x'; 250_000])
                }));
        let (_, h) = c.txn(txn).await.unwrap();
        let r = next(&mut s).await;
        assert_eq!((r.watch_id, r.events.len(), r.fragment), (whole, 5, false));
        let got = until(&mut t, |g| g.last().is_some_and(|r| !r.fragment)).await;
        assert!(got.len() > 1, "split into fragments");
        assert!(got.iter().all(|r| r.watch_id == frag));
        assert!(got[..got.len() - 1].iter().all(|r| r.fragment));
        assert_eq!(event_count(&got), 5);
        assert!(got
            .iter()
            .flat_map(|r| &r.events)
            .all(|e| e.kv.mod_revision == h.revision));
        assert!(next_within(&mut t, Duration::from_millis(100))
            .await
            .is_none());
    });
}

#[test]
fn watch_works_from_a_tokio_local_set() {
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
        let mut s = c.watch_stream().await.unwrap();
        let id = s.watch("t", "", 0).await.unwrap();
        let created = tokio::time::timeout(watch::RECV_DEADLINE, s.next())
            .await
            .expect("created in time")
            .unwrap()
            .unwrap();
        assert!(created.created && created.watch_id == id);
        let rev = c.put_kv("t", "tokio").await.unwrap();
        let r = tokio::time::timeout(watch::RECV_DEADLINE, s.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        assert_eq!(r.events[0].kv.mod_revision, rev);
        assert_eq!(r.events[0].kv.value, b"tokio");
    });
}

#[test]
fn watch_from_a_future_revision_starts_there() {
    let srv = ServerProcess::start(&[]);
    with_client(&srv.endpoint(), async |c| {
        let now = c.put_kv("fut", "0").await.unwrap();
        let mut s = c.watch_stream().await.unwrap();
        let id = s.watch("fut", "", now + 3).await.unwrap();
        assert!(next(&mut s).await.created);
        // A far-future watcher canceled before it starts leaves nothing behind.
        let far = s.watch("fut", "", i64::MAX / 2).await.unwrap();
        assert!(next(&mut s).await.created);
        s.cancel(far).await.unwrap();
        assert!(next(&mut s).await.canceled);
        for i in 1..=4 {
            c.put_kv("fut", format!("{i}")).await.unwrap();
        }
        let got = until(&mut s, |g| event_count(g) >= 2).await;
        let revs: Vec<i64> = got
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision))
            .collect();
        assert_eq!(revs, vec![now + 3, now + 4]);
        assert!(got.iter().all(|r| r.watch_id == id));
    });
}
