//! WAL basics: round trip, reopen on the same executor (glommio probe quirk), group commit,
//! release, limits.

mod wal_support;

use std::rc::Rc;

use corekv::wal::{Options, Record, Wal, WalError, MAX_RECORD_PAYLOAD};
use wal_support::{entry, open_collect, run_fresh, small_opts, tempdir};

#[test]
fn append_then_reopen_on_same_executor_reads_back() {
    // Fresh executor whose first DMA open is the WAL's, new empty dir; then reopen on the SAME
    // executor and read everything back through O_DIRECT.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let (wal, got, info) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(info.segments, 0);
        let mut expect = Vec::new();
        for i in 1..=40u64 {
            let batch = vec![entry(i, (i as usize * 97) % 5000)];
            expect.extend(batch.clone());
            wal.append(batch).await.unwrap();
        }
        let hs = Record::HardState {
            term: 3,
            vote: 1,
            commit: 40,
        };
        wal.append(vec![hs.clone()]).await.unwrap();
        expect.push(hs);
        assert!(wal.stats().rollovers >= 1, "{:?}", wal.stats());
        wal.close().await;
        drop(wal);

        let (wal, got, info) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        // State records may be repeated at segment starts; entries must match exactly.
        let entries: Vec<_> = got
            .iter()
            .filter(|r| matches!(r, Record::Entry { .. }))
            .cloned()
            .collect();
        let expect_entries: Vec<_> = expect[..40].to_vec();
        assert_eq!(entries, expect_entries);
        assert_eq!(got.last(), expect.last());
        assert_eq!(info.tail_bytes_zeroed, 0);
        assert!(info.segments >= 2);
        // Appending after reopen continues the log.
        wal.append(vec![entry(41, 10)]).await.unwrap();
        wal.close().await;
        drop(wal);
        let (_wal, got, _) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        assert_eq!(got.last(), Some(&entry(41, 10)));
    });
}

#[test]
fn group_commit_with_64_appenders_shares_fdatasyncs() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let (wal, _, _) = open_collect(&path, small_opts(1 << 20)).await.unwrap();
        let wal = Rc::new(wal);
        let per_task = 40u64;
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let wal = wal.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0..per_task {
                    wal.append(vec![entry(t * 1000 + n, 100)]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let s = wal.stats();
        let records = 64 * per_task;
        assert_eq!(s.records, records);
        assert_eq!(s.records_per_sync.count(), s.syncs);
        assert!(
            s.syncs * 8 <= records,
            "expected group commit: {} syncs for {records} records",
            s.syncs
        );
        wal.close().await;
    });
}

#[test]
fn limits_are_clear_errors() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let bad = Options {
            segment_size: 1000,
            ..Options::default()
        };
        assert!(matches!(
            Wal::open(&path, bad, |_| {}).await,
            Err(WalError::InvalidOptions(_))
        ));
        let (wal, _, _) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        assert!(matches!(
            wal.append(vec![]).await,
            Err(WalError::InvalidBatch(_))
        ));
        match wal.append(vec![entry(1, 40 << 10)]).await {
            Err(WalError::TooLarge { size, limit, .. }) => assert!(size > limit),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        match wal.append(vec![entry(1, MAX_RECORD_PAYLOAD)]).await {
            Err(e @ WalError::TooLarge { .. }) => assert!(e.to_string().contains("MAX_RECORD")),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        wal.append(vec![entry(1, 10)]).await.unwrap();
        wal.close().await;
        assert!(matches!(
            wal.append(vec![entry(2, 10)]).await,
            Err(WalError::Closed)
        ));
    });
}

#[test]
fn backpressure_bounds_the_queue_and_keeps_order() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = Options {
            segment_size: 256 << 10,
            max_batch_bytes: 8 << 10,
            max_queued_bytes: 16 << 10,
            ..Options::default()
        };
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        // Queue far more than max_queued_bytes without awaiting: later appends wait for room,
        // and everything is still written in call order.
        let futs: Vec<_> = (1..=200u64)
            .map(|i| wal.append(vec![entry(i, 1000)]))
            .collect();
        for f in futs {
            f.await.unwrap();
        }
        let s = wal.stats();
        assert!(s.syncs > 1);
        wal.close().await;
        drop(wal);
        let (_w, got, _) = open_collect(&path, opts).await.unwrap();
        let want: Vec<_> = (1..=200u64).map(|i| entry(i, 1000)).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn release_concurrent_with_appends_and_rollovers() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        let wal = Rc::new(wal);
        let mut releases = Vec::new();
        let last = 400u64;
        let mut released_to = 0;
        for i in 1..=last {
            wal.append(vec![entry(i, 1000)]).await.unwrap();
            if i % 50 == 0 {
                // Runs concurrently with the next appends (and their rollovers).
                let (w, to) = (wal.clone(), i - 30);
                released_to = to;
                releases.push(glommio::spawn_local(async move { w.release(to).await }));
            }
        }
        let mut deleted = 0;
        for r in releases {
            deleted += r.await.unwrap();
        }
        assert!(deleted > 0);
        let segs = wal.segments();
        assert!(segs.first().unwrap().max_index.unwrap() >= released_to);
        wal.close().await;
        drop(wal);
        let (_wal, got, _) = open_collect(&path, opts).await.unwrap();
        let idx: Vec<u64> = got.iter().filter_map(Record::index).collect();
        let first = idx[0];
        assert!(
            first <= released_to,
            "entries at or above {released_to} were released"
        );
        assert_eq!(idx, (first..=last).collect::<Vec<_>>());
        for r in &got {
            if let Record::Entry { index, .. } = r {
                assert_eq!(r, &entry(*index, 1000));
            }
        }
    });
}

#[test]
fn a_second_open_of_the_same_wal_is_refused() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let (wal, _, _) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        match open_collect(&path, small_opts(64 << 10)).await {
            Err(e @ WalError::Locked { .. }) => assert!(e.to_string().contains("LOCK"), "{e}"),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("second open of a live WAL succeeded"),
        }
        wal.close().await;
        drop(wal);
        let (wal, _, _) = open_collect(&path, small_opts(64 << 10)).await.unwrap();
        wal.close().await;
    });
}
