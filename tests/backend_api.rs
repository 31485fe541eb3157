//! API edges of the backend: the file lock, size limits, WriterBusy, key orders, compaction,
//! values at size thresholds, empty keys/values, aborts, page reuse, snapshots that outlive
//! their `Backend`, stats.

// Explicit drops release a lock, pin or write transaction; against the API skeleton these
// types have no drop glue yet, which is all this lint sees.
#![allow(clippy::drop_non_drop)]

mod backend_support;

use std::ops::Bound;

use backend_support::*;
use corekv::backend::{
    Backend, Error, KeyOrder, Options, ReadTxn, Reader, MAX_KEY_SIZE, MAX_TREE_NAME_SIZE,
    MAX_VALUE_SIZE, PAGE_SIZE,
};

const LOCK_CHILD_ENV: &str = "COREKV_LOCK_CHILD_DB";

/// Compile-time: the thread-safety the contract promises.
#[test]
fn reader_and_read_txn_are_thread_safe() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync_clone::<Reader>();
    send::<ReadTxn>();
}

#[test]
fn key_order_compare_matches_the_model() {
    let prefixes: [&[u8]; 6] = [b"", b"a", b"aa", b"ab", b"a\xff", b"b"];
    let nums = [0u64, 1, 255, 256, 1 << 56, 0x6100_0000_0000_0000, u64::MAX];
    let mut keys = Vec::new();
    for p in prefixes {
        for n in nums {
            keys.push(pkey(p, n));
        }
    }
    for a in &keys {
        for b in &keys {
            for order in [KeyOrder::Bytewise, KeyOrder::PrefixThenU64] {
                assert_eq!(
                    order.compare(a, b),
                    model_compare(order, a, b),
                    "{order:?}.compare({a:?}, {b:?})"
                );
            }
        }
    }
    // Keys too short for a u64 suffix: any answer, but no panic, and a total order.
    for a in [&b""[..], b"a", b"abcdefg"] {
        for b in [&b""[..], b"a", b"abcdefgh", b"abcdefghi"] {
            let ab = KeyOrder::PrefixThenU64.compare(a, b);
            assert_eq!(
                ab.reverse(),
                KeyOrder::PrefixThenU64.compare(b, a),
                "{a:?} vs {b:?}"
            );
        }
    }
    // The case where the two orders disagree.
    let (x, y) = (pkey(b"a", u64::MAX), pkey(b"aa", 0));
    assert!(KeyOrder::PrefixThenU64.compare(&x, &y).is_lt());
    assert!(KeyOrder::Bytewise.compare(&x, &y).is_gt());
}

#[test]
fn second_open_of_a_locked_file_is_refused() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("lock.corekv");
        let b = Backend::open(&path, Options::default()).await.unwrap();
        // In this process (a POSIX fcntl lock would wrongly allow this).
        match Backend::open(&path, Options::default()).await {
            Err(Error::Locked(p)) => assert_eq!(p, path),
            Err(e) => panic!("second open: expected Locked, got {e:?}"),
            Ok(_) => panic!("second open of a locked file succeeded"),
        }
        // From another process.
        let out = child_command("lock_child")
            .env(LOCK_CHILD_ENV, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("lock child: Locked"),
            "child open: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Released when the Backend is dropped.
        drop(b);
        let b = Backend::open(&path, Options::default()).await.unwrap();
        drop(b);
    });
}

/// Child of `second_open_of_a_locked_file_is_refused`: prints how its open ended.
#[test]
fn lock_child() {
    let Ok(path) = std::env::var(LOCK_CHILD_ENV) else {
        return;
    };
    on_executor(move || async move {
        match Backend::open(&path, Options::default()).await {
            Err(Error::Locked(_)) => println!("lock child: Locked"),
            Err(e) => println!("lock child: other error {e:?}"),
            Ok(_) => println!("lock child: opened"),
        }
    });
}

#[test]
fn open_of_a_bad_path_is_an_io_error() {
    on_executor(|| async {
        let dir = temp_dir();
        for path in [
            dir.path().join("no/such/dir/x.corekv"),
            dir.path().to_path_buf(),
        ] {
            match Backend::open(&path, Options::default()).await {
                Err(Error::Io { context, .. }) => assert!(!context.is_empty()),
                Err(e) => panic!("{}: expected Io, got {e:?}", path.display()),
                Ok(_) => panic!("{}: opened", path.display()),
            }
        }
    });
}

fn assert_too_large<T: std::fmt::Debug>(
    r: corekv::backend::Result<T>,
    what: &str,
    size: usize,
    limit: usize,
) {
    match r {
        Err(Error::TooLarge {
            what: w,
            size: s,
            limit: l,
        }) => {
            assert_eq!((w, s, l), (what, size, limit), "TooLarge fields");
        }
        other => panic!("{what} of {size} bytes: expected TooLarge, got {other:?}"),
    }
}

#[test]
fn size_limits_are_enforced_and_named() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("limits.corekv"), Options::default())
            .await
            .unwrap();
        let max_key = vec![b'k'; MAX_KEY_SIZE];
        let big_key = vec![b'k'; MAX_KEY_SIZE + 1];
        let max_name = vec![b'n'; MAX_TREE_NAME_SIZE];
        let big_name = vec![b'n'; MAX_TREE_NAME_SIZE + 1];
        let max_value = det_bytes(7, MAX_VALUE_SIZE);
        let big_value = vec![0u8; MAX_VALUE_SIZE + 1];
        {
            let mut w = b.begin_write().unwrap();
            assert_too_large(
                w.open_tree(&big_name, KeyOrder::Bytewise).map(|_| ()),
                "tree name",
                MAX_TREE_NAME_SIZE + 1,
                MAX_TREE_NAME_SIZE,
            );
            {
                let mut t = w.open_tree(&max_name, KeyOrder::Bytewise).unwrap();
                assert_too_large(t.put(&big_key, b"v"), "key", MAX_KEY_SIZE + 1, MAX_KEY_SIZE);
                assert_too_large(
                    t.put(b"k", &big_value),
                    "value",
                    MAX_VALUE_SIZE + 1,
                    MAX_VALUE_SIZE,
                );
                // Lookups with an oversized key: an error or "absent", never a panic.
                match t.get(&big_key) {
                    Ok(None) | Err(Error::TooLarge { .. }) => {}
                    other => panic!("get of an oversized key: {other:?}"),
                }
                match t.delete(&big_key) {
                    Ok(false) | Err(Error::TooLarge { .. }) => {}
                    other => panic!("delete of an oversized key: {other:?}"),
                }
                t.put(&max_key, b"max key").unwrap();
                t.put(b"max value", &max_value).unwrap();
            }
            // A failed put leaves the transaction usable and unchanged.
            let t = w.open_tree(&max_name, KeyOrder::Bytewise).unwrap();
            assert_eq!(t.get(b"k").unwrap(), None);
            assert_eq!(t.get(&max_key).unwrap().as_deref(), Some(&b"max key"[..]));
            w.publish().await.unwrap();
        }
        b.sync().await.unwrap();
        let r = b.begin_read().unwrap();
        match r.tree(&big_name) {
            Ok(None) | Err(Error::TooLarge { .. }) => {}
            other => panic!(
                "tree() with an oversized name: {:?}",
                other.map(|t| t.is_some())
            ),
        }
        let t = r.tree(&max_name).unwrap().unwrap();
        assert_eq!(t.get(&max_key).unwrap(), Some(&b"max key"[..]));
        assert!(t.get(b"max value").unwrap().unwrap() == &max_value[..]);
        match t.get(&big_key) {
            Ok(None) | Err(Error::TooLarge { .. }) => {}
            other => panic!("snapshot get of an oversized key: {other:?}"),
        }
        assert_eq!(t.count(..).unwrap(), 2);
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

#[test]
fn writer_busy_while_a_write_txn_is_open() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("busy.corekv"), Options::default())
            .await
            .unwrap();
        let mut w = b.begin_write().unwrap();
        assert!(matches!(b.begin_write(), Err(Error::WriterBusy)));
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"a", b"1")
            .unwrap();
        drop(w); // abort
        let w = b.begin_write().expect("begin_write after an abort");
        assert!(matches!(b.begin_write(), Err(Error::WriterBusy)));
        w.publish().await.unwrap();
        let mut w = b.begin_write().expect("begin_write after a publish");
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"b", b"2")
            .unwrap();
        w.publish().await.unwrap();
        let r = b.begin_read().unwrap();
        let t = r.tree(b"t").unwrap().unwrap();
        assert_eq!(t.get(b"a").unwrap(), None, "the aborted put is invisible");
        assert_eq!(t.get(b"b").unwrap(), Some(&b"2"[..]));
    });
}

#[test]
fn key_order_mismatch_in_txn_and_after_reopen() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("order.corekv");
        {
            let b = Backend::open(&path, Options::default()).await.unwrap();
            let mut w = b.begin_write().unwrap();
            w.open_tree(b"mvcc", KeyOrder::PrefixThenU64)
                .unwrap()
                .put(&pkey(b"a", 1), b"x")
                .unwrap();
            // In the transaction that created it.
            match w.open_tree(b"mvcc", KeyOrder::Bytewise) {
                Err(Error::KeyOrderMismatch { tree }) => assert_eq!(tree, "mvcc"),
                other => panic!("expected KeyOrderMismatch, got {:?}", other.map(|_| ())),
            }
            w.publish().await.unwrap();
            let mut w = b.begin_write().unwrap();
            assert!(matches!(
                w.open_tree(b"mvcc", KeyOrder::Bytewise),
                Err(Error::KeyOrderMismatch { .. })
            ));
            drop(w);
            b.sync().await.unwrap();
        }
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let mut w = b.begin_write().unwrap();
        match w.open_tree(b"mvcc", KeyOrder::Bytewise) {
            Err(Error::KeyOrderMismatch { tree }) => assert_eq!(tree, "mvcc"),
            other => panic!(
                "after reopen: expected KeyOrderMismatch, got {:?}",
                other.map(|_| ())
            ),
        }
        // The right order still works, and the data is there.
        let t = w.open_tree(b"mvcc", KeyOrder::PrefixThenU64).unwrap();
        assert_eq!(t.get(&pkey(b"a", 1)).unwrap().as_deref(), Some(&b"x"[..]));
        drop(w);
        // A dropped tree can be recreated with the other order.
        let mut w = b.begin_write().unwrap();
        assert!(w.drop_tree(b"mvcc").unwrap());
        assert!(!w.drop_tree(b"mvcc").unwrap());
        w.open_tree(b"mvcc", KeyOrder::Bytewise)
            .unwrap()
            .put(b"z", b"1")
            .unwrap();
        w.publish().await.unwrap();
        let r = b.begin_read().unwrap();
        let t = r.tree(b"mvcc").unwrap().unwrap();
        assert_eq!(t.count(..).unwrap(), 1);
        assert_eq!(t.get(b"z").unwrap(), Some(&b"1"[..]));
    });
}

/// Value sizes around page and overflow thresholds, with short and maximal keys, survive
/// publish, sync and reopen byte for byte.
#[test]
fn values_at_size_thresholds_round_trip() {
    const SIZES: &[usize] = &[
        0,
        1,
        2,
        PAGE_SIZE / 4,
        PAGE_SIZE / 4 + 1,
        1_531, // inline next to a 4-byte key: a cell of exactly 1,543 bytes
        1_532, // overflow next to a 4-byte key
        PAGE_SIZE / 2 - 1,
        PAGE_SIZE / 2,
        PAGE_SIZE / 2 + 1,
        PAGE_SIZE - 100,
        PAGE_SIZE - 1,
        PAGE_SIZE,
        PAGE_SIZE + 1,
        2 * PAGE_SIZE - 1,
        2 * PAGE_SIZE,
        2 * PAGE_SIZE + 1,
        10 * PAGE_SIZE,
        1 << 20,
        3 << 19, // 1.5 MiB
        (3 << 19) + 1,
    ];
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("sizes.corekv");
        let mut model = Model::default();
        {
            let b = Backend::open(&path, Options::default()).await.unwrap();
            let mut w = b.begin_write().unwrap();
            for (i, &len) in SIZES.iter().enumerate() {
                for key in [format!("s/{i:02}").into_bytes(), {
                    let mut k = vec![b'K'; MAX_KEY_SIZE - 2];
                    k.extend_from_slice(format!("{i:02}").as_bytes());
                    k
                }] {
                    let v = det_bytes(i as u64, len);
                    w.open_tree(b"sizes", KeyOrder::Bytewise)
                        .unwrap()
                        .put(&key, &v)
                        .unwrap();
                    model.tree_mut(b"sizes", KeyOrder::Bytewise).put(&key, &v);
                }
            }
            w.publish().await.unwrap();
            let r = b.begin_read().unwrap();
            verify_snapshot(&r, &model, &[]).unwrap();
            b.sync().await.unwrap();
            let report = b.check().unwrap();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let r = b.begin_read().unwrap();
        verify_snapshot(&r, &model, &[]).unwrap();
        // Overwrite each value with one of another size class, and back.
        let mut w = b.begin_write().unwrap();
        for i in 0..SIZES.len() {
            let key = format!("s/{i:02}").into_bytes();
            let other = SIZES[(i + 7) % SIZES.len()];
            let v = det_bytes(1000 + i as u64, other);
            w.open_tree(b"sizes", KeyOrder::Bytewise)
                .unwrap()
                .put(&key, &v)
                .unwrap();
            model.tree_mut(b"sizes", KeyOrder::Bytewise).put(&key, &v);
        }
        w.publish().await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

/// A value over a quarter page stays in its leaf when the key is short: etcd's `check perf`
/// writes 1 KiB values under 256-byte keys, which the MVCC layer stores as 264-byte keys and
/// 1,053-byte records. Three such entries fit a leaf, where an overflow page per value would
/// take more than a page each. Checked by pages in use.
#[test]
fn values_beyond_a_quarter_page_stay_inline_next_to_short_keys() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("inline.corekv"), Options::default())
            .await
            .unwrap();
        let before = b.stats().in_use_bytes;
        let mut w = b.begin_write().unwrap();
        const N: u64 = 1_000;
        for i in 0..N {
            let mut key = vec![b'k'; 256];
            key.extend_from_slice(&i.to_be_bytes());
            w.open_tree(b"t", KeyOrder::Bytewise)
                .unwrap()
                .put(&key, &det_bytes(i, 1_053))
                .unwrap();
        }
        w.publish().await.unwrap();
        let pages = (b.stats().in_use_bytes - before) / PAGE_SIZE as u64;
        // Sequential keys fill leaves with three cells each (3 x 1,326 bytes with slots).
        assert!(pages < N / 2, "{pages} pages for {N} entries");
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

/// Many keys of the maximum size force splits where a page holds few keys.
#[test]
fn many_maximal_keys() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("bigkeys.corekv"), Options::default())
            .await
            .unwrap();
        let mut model = Model::default();
        for round in 0..3u64 {
            let mut w = b.begin_write().unwrap();
            for i in 0..40u64 {
                let n = i * 3 + round;
                for (name, order) in [
                    (&b"bw"[..], KeyOrder::Bytewise),
                    (&b"pu"[..], KeyOrder::PrefixThenU64),
                ] {
                    // Keys differ only in their last bytes: long common prefixes.
                    let key = match order {
                        KeyOrder::Bytewise => {
                            let mut k = vec![b'x'; MAX_KEY_SIZE - 8];
                            k.extend_from_slice(&n.to_be_bytes());
                            k
                        }
                        KeyOrder::PrefixThenU64 => {
                            pkey(&vec![(n % 3) as u8; MAX_KEY_SIZE - 8], u64::MAX - n)
                        }
                    };
                    let v = det_bytes(n, (n as usize * 97) % 3000);
                    w.open_tree(name, order).unwrap().put(&key, &v).unwrap();
                    model.tree_mut(name, order).put(&key, &v);
                }
            }
            w.publish().await.unwrap();
            verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        }
        // Delete every other key.
        let mut w = b.begin_write().unwrap();
        for (name, t) in model.trees.iter_mut() {
            let keys: Vec<_> = t.entries.keys().step_by(2).map(SortKey::bytes).collect();
            let mut tm = w.open_tree(name, t.order).unwrap();
            for k in keys {
                assert!(tm.delete(&k).unwrap());
                t.delete(&k);
            }
        }
        w.publish().await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

#[test]
fn empty_key_and_empty_value() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("empty.corekv"), Options::default())
            .await
            .unwrap();
        let mut w = b.begin_write().unwrap();
        {
            let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
            t.put(b"", b"empty key").unwrap();
            t.put(b"a", b"").unwrap();
            assert_eq!(t.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
        }
        w.publish().await.unwrap();
        let r = b.begin_read().unwrap();
        let t = r.tree(b"t").unwrap().unwrap();
        assert_eq!(t.get(b"").unwrap(), Some(&b"empty key"[..]));
        assert_eq!(t.get(b"a").unwrap(), Some(&b""[..]));
        let all: Vec<_> = t.range(..).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(
            all,
            vec![(&b""[..], &b"empty key"[..]), (&b"a"[..], &b""[..])]
        );
        let from_empty: Vec<_> = t
            .range((Bound::Excluded(&b""[..]), Bound::Unbounded))
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(from_empty, vec![&b"a"[..]]);
        assert_eq!(
            t.cursor().seek(b"").unwrap(),
            Some((&b""[..], &b"empty key"[..]))
        );
        assert_eq!(
            t.cursor().seek_for_prev(b"").unwrap(),
            Some((&b""[..], &b"empty key"[..]))
        );
    });
}

/// Keys too short for `PrefixThenU64` (< 8 bytes): an error or a working entry, never a panic.
#[test]
fn prefix_then_u64_short_keys_do_not_panic() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("short.corekv"), Options::default())
            .await
            .unwrap();
        let mut w = b.begin_write().unwrap();
        let mut accepted = Vec::new();
        {
            let mut t = w.open_tree(b"p", KeyOrder::PrefixThenU64).unwrap();
            t.put(&pkey(b"x", 5), b"ok").unwrap();
            for len in 0..8usize {
                let k = vec![b'x'; len];
                if t.put(&k, b"short").is_ok() {
                    accepted.push(k.clone());
                }
                let _ = t.get(&k);
                let _ = t.scan((Bound::Included(&k[..]), Bound::Unbounded), 10);
            }
        }
        w.publish().await.unwrap();
        let r = b.begin_read().unwrap();
        let t = r.tree(b"p").unwrap().unwrap();
        for k in &accepted {
            assert_eq!(
                t.get(k).unwrap(),
                Some(&b"short"[..]),
                "accepted short key {k:?}"
            );
        }
        assert_eq!(t.count(..).unwrap(), 1 + accepted.len() as u64);
        for len in 0..8usize {
            let k = vec![b'x'; len];
            let _ = t.cursor().seek(&k);
            let _ = t.cursor().seek_for_prev(&k);
            let _ = t.count((Bound::Excluded(&k[..]), Bound::Unbounded));
        }
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

#[test]
fn aborted_txns_leave_no_trace() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("abort.corekv");
        let opts = Options {
            max_map_size: 1 << 30,
            grow_step: 1 << 20,
            ..Options::default()
        };
        let b = Backend::open(&path, opts).await.unwrap();
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"keep", KeyOrder::Bytewise)
            .unwrap()
            .put(b"k", b"v")
            .unwrap();
        let t1 = w.publish().await.unwrap();
        let in_use = b.stats().in_use_bytes;
        for i in 0..50u64 {
            let mut w = b.begin_write().unwrap();
            {
                let mut t = w.open_tree(b"tmp", KeyOrder::Bytewise).unwrap();
                for j in 0..20u64 {
                    t.put(&j.to_be_bytes(), &det_bytes(i * 100 + j, 3000))
                        .unwrap();
                }
            }
            w.open_tree(b"keep", KeyOrder::Bytewise)
                .unwrap()
                .delete(b"k")
                .unwrap();
            assert!(w.drop_tree(b"keep").unwrap());
            drop(w);
        }
        let r = b.begin_read().unwrap();
        assert_eq!(r.txid(), t1, "aborts do not publish");
        assert!(r.tree(b"tmp").unwrap().is_none());
        assert_eq!(
            r.tree(b"keep").unwrap().unwrap().get(b"k").unwrap(),
            Some(&b"v"[..])
        );
        assert_eq!(b.stats().published_txid, t1);
        assert_eq!(
            b.stats().in_use_bytes,
            in_use,
            "aborted txns changed in_use_bytes"
        );
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Pages the aborted txns allocated are not leaked: ~3 MiB of aborted writes leave a
        // file that still fits the tiny live data in its first 1 MiB growth step or two.
        b.sync().await.unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size <= 2 << 20,
            "after 50 aborted txns the file has {size} bytes"
        );
    });
}

/// Without readers, rewriting the same data again and again reuses freed pages: the file
/// stays bounded instead of growing with every transaction.
#[test]
fn freed_pages_are_reused() {
    let rounds = iters("COREKV_REUSE_ITERS", 60) as u64;
    on_executor(move || async move {
        let dir = temp_dir();
        let path = dir.path().join("reuse.corekv");
        let opts = Options {
            max_map_size: 1 << 30,
            grow_step: 1 << 20,
            ..Options::default()
        };
        let b = Backend::open(&path, opts).await.unwrap();
        for round in 0..rounds {
            let mut w = b.begin_write().unwrap();
            {
                let mut t = w.open_tree(b"churn", KeyOrder::Bytewise).unwrap();
                for i in 0..64u64 {
                    // ~1 MiB per round, mixed inline and overflow values.
                    let len = if i % 4 == 0 { 40_000 } else { 3_000 };
                    t.put(&i.to_be_bytes(), &det_bytes(round << 8 | i, len))
                        .unwrap();
                }
            }
            if round % 2 == 1 {
                assert!(w.drop_tree(b"churn").unwrap());
            }
            w.publish().await.unwrap();
            b.sync().await.unwrap();
        }
        let st = b.stats();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Live data is at most ~1 MiB; allow the previous version, pending frees and a few
        // growth steps, but not `rounds` MiB.
        assert!(
            st.file_size <= 12 << 20,
            "after {rounds} rewrites of ~1 MiB the file is {} bytes: freed pages are not reused \
             ({st:?}, check: {} reachable, {} free)",
            st.file_size,
            report.reachable_pages,
            report.free_pages
        );
    });
}

/// A snapshot stays readable and unchanged after its `Backend` is dropped.
#[test]
fn read_txn_outlives_backend() {
    let (snap, model) = on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("outlive.corekv");
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let mut model = Model::default();
        let mut w = b.begin_write().unwrap();
        for i in 0..300u64 {
            let v = det_bytes(i, (i as usize * 37) % 9000);
            w.open_tree(b"t", KeyOrder::Bytewise)
                .unwrap()
                .put(&i.to_be_bytes(), &v)
                .unwrap();
            model
                .tree_mut(b"t", KeyOrder::Bytewise)
                .put(&i.to_be_bytes(), &v);
        }
        w.publish().await.unwrap();
        let snap = b.begin_read().unwrap();
        // More writes after the snapshot, then the writer goes away.
        let mut w = b.begin_write().unwrap();
        assert!(w.drop_tree(b"t").unwrap());
        w.publish().await.unwrap();
        drop(b);
        drop(dir); // even the directory entry is gone; the mapping must stay valid
        (snap, model)
    });
    // On another thread than the one that opened the file.
    verify_snapshot(&snap, &model, &[]).unwrap();
}

#[test]
fn stats_follow_publish_and_sync() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("stats.corekv");
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let s0 = b.stats();
        assert_eq!(s0.file_size, std::fs::metadata(&path).unwrap().len());
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"k", &[7u8; 10_000])
            .unwrap();
        let t1 = w.publish().await.unwrap();
        let s1 = b.stats();
        assert_eq!(s1.published_txid, t1);
        assert_eq!(s1.synced_txid, s0.synced_txid, "publish does not sync");
        assert!(s1.in_use_bytes > s0.in_use_bytes);
        assert_eq!(b.sync().await.unwrap(), t1);
        let s2 = b.stats();
        assert_eq!(s2.synced_txid, t1);
        assert_eq!(b.sync().await.unwrap(), t1, "a sync with nothing new");
        let report = b.check().unwrap();
        assert_eq!(
            report.reachable_pages * PAGE_SIZE as u64,
            s2.in_use_bytes,
            "check()'s reachable pages vs stats().in_use_bytes"
        );
    });
}

/// compact_into writes a file that opens, passes check(), has the same contents (and tree
/// orders) and is not larger than the original.
#[test]
fn compact_into_preserves_contents_and_does_not_grow() {
    on_executor(|| async {
        let dir = temp_dir();
        let src = dir.path().join("src.corekv");
        let dst = dir.path().join("dst.corekv");
        let b = Backend::open(&src, Options::default()).await.unwrap();
        let mut model = Model::default();
        // Churn: fill, then delete most of it, so the source has many free pages.
        for round in 0..6u64 {
            let mut w = b.begin_write().unwrap();
            for i in 0..400u64 {
                let (name, order, key) = if i % 2 == 0 {
                    (
                        &b"bw"[..],
                        KeyOrder::Bytewise,
                        format!("k{i:04}").into_bytes(),
                    )
                } else {
                    (
                        &b"pu"[..],
                        KeyOrder::PrefixThenU64,
                        pkey(format!("p{}", i % 9).as_bytes(), i),
                    )
                };
                let mut t = w.open_tree(name, order).unwrap();
                if round == 5 && i % 5 != 0 {
                    t.delete(&key).unwrap();
                    model.tree_mut(name, order).delete(&key);
                } else {
                    let v = det_bytes(round * 1000 + i, if i % 50 == 0 { 30_000 } else { 500 });
                    t.put(&key, &v).unwrap();
                    model.tree_mut(name, order).put(&key, &v);
                }
            }
            w.open_tree(b"empty", KeyOrder::PrefixThenU64).unwrap();
            model.tree_mut(b"empty", KeyOrder::PrefixThenU64);
            w.publish().await.unwrap();
            b.sync().await.unwrap();
        }
        // An unsynced publish is included: compact_into copies the latest published snapshot.
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"bw", KeyOrder::Bytewise)
            .unwrap()
            .put(b"late", b"yes")
            .unwrap();
        model
            .tree_mut(b"bw", KeyOrder::Bytewise)
            .put(b"late", b"yes");
        w.publish().await.unwrap();
        b.compact_into(&dst).await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        let src_len = std::fs::metadata(&src).unwrap().len();
        drop(b);
        let dst_len = std::fs::metadata(&dst).unwrap().len();
        assert!(
            dst_len <= src_len,
            "compacted file {dst_len} bytes > source {src_len}"
        );
        let c = Backend::open(&dst, Options::default()).await.unwrap();
        let report = c.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        verify_snapshot(&c.begin_read().unwrap(), &model, &[b"nothing"]).unwrap();
        let mut w = c.begin_write().unwrap();
        for (name, t) in &model.trees {
            let other = match t.order {
                KeyOrder::Bytewise => KeyOrder::PrefixThenU64,
                KeyOrder::PrefixThenU64 => KeyOrder::Bytewise,
            };
            assert!(
                matches!(
                    w.open_tree(name, other),
                    Err(Error::KeyOrderMismatch { .. })
                ),
                "tree {} lost its key order in the compacted file",
                show(name)
            );
        }
        drop(w);
        // The compacted file is a normal file: writable, and it survives a reopen.
        let mut w = c.begin_write().unwrap();
        w.open_tree(b"bw", KeyOrder::Bytewise)
            .unwrap()
            .put(b"after", b"1")
            .unwrap();
        w.publish().await.unwrap();
        c.sync().await.unwrap();
        drop(c);
        model
            .tree_mut(b"bw", KeyOrder::Bytewise)
            .put(b"after", b"1");
        let c = Backend::open(&dst, Options::default()).await.unwrap();
        verify_snapshot(&c.begin_read().unwrap(), &model, &[]).unwrap();
    });
}

/// Syncs running as separate tasks while later transactions publish (the applier publishes
/// while a checkpoint runs): each sync returns a txid at least the one published before it
/// started, and a reopen shows exactly the state of the last txid a sync returned.
#[test]
fn syncs_overlapping_publishes() {
    // At least two syncs (one per 3 transactions) so that syncs overlap publishes.
    let txns = iters("COREKV_OVERLAP_ITERS", 300).max(6) as u64;
    on_executor(move || async move {
        let dir = temp_dir();
        let path = dir.path().join("overlap.corekv");
        let b = std::rc::Rc::new(Backend::open(&path, Options::default()).await.unwrap());
        let mut model = Model::default();
        let mut states = std::collections::HashMap::new();
        let mut syncs = std::collections::VecDeque::new();
        let mut best = 0u64;
        for n in 1..=txns {
            let mut w = b.begin_write().unwrap();
            {
                let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
                for j in 0..4u64 {
                    let k = format!("k{}", (n * 7 + j * 13) % 200).into_bytes();
                    let v = det_bytes(n << 4 | j, ((n * 131 + j) % 6000) as usize);
                    t.put(&k, &v).unwrap();
                    model.tree_mut(b"t", KeyOrder::Bytewise).put(&k, &v);
                }
                let gone = format!("k{}", (n * 11) % 200).into_bytes();
                t.delete(&gone).unwrap();
                model.tree_mut(b"t", KeyOrder::Bytewise).delete(&gone);
            }
            let txid = w.publish().await.unwrap();
            states.insert(txid, model.clone());
            if n % 3 == 0 {
                let b2 = b.clone();
                syncs.push_back((txid, glommio::spawn_local(async move { b2.sync().await })));
                while syncs.len() > 3 {
                    let (floor, s) = syncs.pop_front().unwrap();
                    let got = s.await.unwrap();
                    assert!(
                        got >= floor,
                        "sync started after txid {floor} returned {got}"
                    );
                    best = best.max(got);
                }
            }
        }
        for (floor, s) in syncs {
            let got = s.await.unwrap();
            assert!(
                got >= floor,
                "sync started after txid {floor} returned {got}"
            );
            best = best.max(got);
        }
        assert_eq!(b.stats().synced_txid, best);
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        drop(b);
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let r = b.begin_read().unwrap();
        assert_eq!(r.txid(), best, "reopen shows the last synced txid");
        verify_snapshot(&r, &states[&best], &[]).unwrap();
    });
}

/// Filling the reserved map gives `Error::MapFull` (not a panic); the failed transaction
/// publishes nothing, the backend stays usable and consistent, and the file reopens. A map
/// size smaller than the file is a clear error at open.
#[test]
fn map_full_is_an_error_and_recoverable() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("full.corekv");
        let opts = Options {
            max_map_size: 4 << 20,
            grow_step: 1 << 20,
            ..Options::default()
        };
        let b = Backend::open(&path, opts.clone()).await.unwrap();
        let mut model = Model::default();
        let mut full = None;
        for i in 0..64u64 {
            let mut w = b.begin_write().unwrap();
            let v = det_bytes(i, 300_000);
            let key = format!("big{i:02}").into_bytes();
            let res = w
                .open_tree(b"t", KeyOrder::Bytewise)
                .and_then(|mut t| t.put(&key, &v));
            let res = match res {
                Ok(()) => w.publish().await.map(|_| ()),
                Err(e) => {
                    // A transaction that failed half-way is unusable; it publishes nothing.
                    if matches!(e, Error::MapFull) {
                        let mut t = w.open_tree(b"t", KeyOrder::Bytewise);
                        if let Ok(t) = t.as_mut() {
                            assert!(t.put(b"small", b"1").is_err(), "put after MapFull");
                        }
                        assert!(w.publish().await.is_err(), "publish after MapFull");
                    }
                    Err(e)
                }
            };
            match res {
                Ok(()) => model.tree_mut(b"t", KeyOrder::Bytewise).put(&key, &v),
                Err(Error::MapFull) => {
                    full = Some(i);
                    break;
                }
                Err(e) => panic!("put #{i}: expected MapFull at worst, got {e:?}"),
            }
            if i % 4 == 3 {
                b.sync().await.unwrap();
            }
        }
        let full = full.expect("4 MiB of map never filled with 64 x 300 KB");
        assert!(
            full >= 5,
            "MapFull already after {full} values of 300 KB in a 4 MiB map"
        );
        // Nothing of the failed transaction is visible; the file is consistent.
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Freeing space makes room again.
        let mut w = b.begin_write().unwrap();
        {
            let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
            for i in 0..full / 2 {
                let key = format!("big{i:02}").into_bytes();
                assert!(t.delete(&key).unwrap());
                model.tree_mut(b"t", KeyOrder::Bytewise).delete(&key);
            }
        }
        w.publish().await.unwrap();
        b.sync().await.unwrap();
        // Pages freed by the delete become reusable once no snapshot needs them.
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"again", &[1u8; 100_000])
            .unwrap();
        w.publish().await.unwrap();
        model
            .tree_mut(b"t", KeyOrder::Bytewise)
            .put(b"again", &[1u8; 100_000]);
        b.sync().await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        drop(b);
        let b = Backend::open(&path, opts).await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        drop(b);
        // Reopening with a map smaller than the data: a clear error, not a SIGBUS.
        let tiny = Options {
            max_map_size: 64 << 10,
            grow_step: 1 << 20,
            ..Options::default()
        };
        match Backend::open(&path, tiny).await {
            Err(Error::MapFull | Error::TooLarge { .. } | Error::Io { .. } | Error::Corrupt(_)) => {
            }
            Err(e) => panic!("open with a too small map: unexpected {e:?}"),
            Ok(b) => {
                // Acceptable only if everything still reads correctly.
                verify_snapshot(&b.begin_read().unwrap(), &model, &[]).unwrap();
            }
        }
    });
}

/// Read transactions are bounded by the backend's named limit: past it `begin_read` fails
/// cleanly (no panic, no deadlock) and works again once one is dropped.
#[test]
fn open_read_txns_are_bounded() {
    use corekv::backend::MAX_READERS;
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("readers.corekv"), Options::default())
            .await
            .unwrap();
        let reader = b.reader();
        let mut held = Vec::new();
        let mut refused = None;
        for i in 0..MAX_READERS + 1 {
            match reader.begin_read() {
                Ok(r) => held.push(r),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = refused.expect("no limit on open read transactions");
        assert_eq!(i, MAX_READERS, "refused at {i}: {e}");
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        // The writer is not blocked by a full reader table.
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"k", b"v")
            .unwrap();
        w.publish().await.unwrap();
        held.pop();
        let r = b.begin_read().expect("begin_read after one was dropped");
        assert_eq!(
            r.tree(b"t").unwrap().unwrap().get(b"k").unwrap(),
            Some(&b"v"[..])
        );
    });
}

/// Hundreds of trees (the catalog spans many pages), names up to the limit; dropping half
/// and reopening keeps exactly the rest.
#[test]
fn many_trees() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("trees.corekv");
        let name = |i: u64| {
            let mut n = format!("tree/{i:04}/").into_bytes();
            n.resize(10 + (i as usize * 37) % (MAX_TREE_NAME_SIZE - 10), b'.');
            n
        };
        let order = |i: u64| {
            if i.is_multiple_of(2) {
                KeyOrder::Bytewise
            } else {
                KeyOrder::PrefixThenU64
            }
        };
        let mut model = Model::default();
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let mut w = b.begin_write().unwrap();
        for i in 0..600u64 {
            let mut t = w.open_tree(&name(i), order(i)).unwrap();
            let k = pkey(b"k", i);
            t.put(&k, &i.to_be_bytes()).unwrap();
            model.tree_mut(&name(i), order(i)).put(&k, &i.to_be_bytes());
        }
        w.publish().await.unwrap();
        let mut w = b.begin_write().unwrap();
        for i in (0..600u64).filter(|i| i % 3 != 0) {
            assert!(w.drop_tree(&name(i)).unwrap());
            model.trees.remove(&name(i));
        }
        w.publish().await.unwrap();
        b.sync().await.unwrap();
        drop(b);
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let all: Vec<Vec<u8>> = (0..600).map(name).collect();
        let all: Vec<&[u8]> = all.iter().map(|n| n.as_slice()).collect();
        verify_snapshot(&b.begin_read().unwrap(), &model, &all).unwrap();
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

/// compact_into does not touch an existing file at the target path.
#[test]
fn compact_into_refuses_an_existing_file() {
    on_executor(|| async {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("src.corekv"), Options::default())
            .await
            .unwrap();
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"k", b"v")
            .unwrap();
        w.publish().await.unwrap();
        let dst = dir.path().join("precious.txt");
        std::fs::write(&dst, b"do not overwrite").unwrap();
        assert!(b.compact_into(&dst).await.is_err());
        assert_eq!(std::fs::read(&dst).unwrap(), b"do not overwrite");
    });
}

/// A `Reader` handle used after its `Backend` is gone: an error or the last snapshot, never
/// a crash.
#[test]
fn reader_after_backend_dropped() {
    let (reader, path) = on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("gone.corekv");
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let mut w = b.begin_write().unwrap();
        w.open_tree(b"t", KeyOrder::Bytewise)
            .unwrap()
            .put(b"k", b"v")
            .unwrap();
        w.publish().await.unwrap();
        let reader = b.reader();
        drop(b);
        (reader, dir)
    });
    match reader.begin_read() {
        Err(_) => {}
        Ok(r) => assert_eq!(
            r.tree(b"t").unwrap().unwrap().get(b"k").unwrap(),
            Some(&b"v"[..])
        ),
    }
    drop(path);
}

/// compact_into running while the writer keeps publishing: the copy is exactly one published
/// state (the one current when the compaction took its snapshot), never a mix.
#[test]
fn compact_into_while_publishing() {
    on_executor(|| async {
        let dir = temp_dir();
        let src = dir.path().join("src.corekv");
        let dst = dir.path().join("dst.corekv");
        let b = std::rc::Rc::new(Backend::open(&src, Options::default()).await.unwrap());
        let mut model = Model::default();
        let mut states = std::collections::HashMap::new();
        let mut publish = |n: u64, model: &mut Model| {
            let mut changes = Vec::new();
            for j in 0..50u64 {
                let k = format!("k{:04}", (n * 53 + j * 7) % 3000).into_bytes();
                changes.push((k, det_bytes(n << 8 | j, ((n + j) % 700) as usize)));
            }
            for (k, v) in &changes {
                model.tree_mut(b"t", KeyOrder::Bytewise).put(k, v);
            }
            model
                .tree_mut(b"t", KeyOrder::Bytewise)
                .put(b"~marker", &n.to_be_bytes());
            states.insert(n, model.clone());
            changes
        };
        for n in 0..40u64 {
            let changes = publish(n, &mut model);
            let mut w = b.begin_write().unwrap();
            let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
            for (k, v) in &changes {
                t.put(k, v).unwrap();
            }
            t.put(b"~marker", &n.to_be_bytes()).unwrap();
            w.publish().await.unwrap();
        }
        let b2 = b.clone();
        let d2 = dst.clone();
        let compaction = glommio::spawn_local(async move { b2.compact_into(&d2).await });
        for n in 40..120u64 {
            let changes = publish(n, &mut model);
            let mut w = b.begin_write().unwrap();
            let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
            for (k, v) in &changes {
                t.put(k, v).unwrap();
            }
            t.put(b"~marker", &n.to_be_bytes()).unwrap();
            w.publish().await.unwrap();
            if n % 10 == 0 {
                b.sync().await.unwrap();
            }
        }
        compaction.await.unwrap();
        verify_snapshot(&b.begin_read().unwrap(), &states[&119], &[]).unwrap();
        let c = Backend::open(&dst, Options::default()).await.unwrap();
        let r = c.begin_read().unwrap();
        let t = r.tree(b"t").unwrap().unwrap();
        let n = u64::from_be_bytes(t.get(b"~marker").unwrap().unwrap().try_into().unwrap());
        verify_snapshot(&r, &states[&n], &[]).unwrap();
        let report = c.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    });
}

/// While one old snapshot is held, each commit must cost about the same: the file may grow
/// (freed pages cannot be reused under the reader) but by a bounded amount per transaction,
/// not by an amount that grows with the number of transactions since the snapshot (which
/// would make a long watch catch-up or backup reader quadratic for the writer).
#[test]
fn held_snapshot_growth_per_commit_stays_flat() {
    // At least 8 transactions: growth is compared between quarters of the run.
    let txns = iters("COREKV_HELD_ITERS", 1200).max(8) as u64;
    on_executor(move || async move {
        let dir = temp_dir();
        let b = Backend::open(dir.path().join("held.corekv"), Options::default())
            .await
            .unwrap();
        let mut w = b.begin_write().unwrap();
        {
            let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
            for i in 0..2000u64 {
                t.put(format!("k{i:05}").as_bytes(), &det_bytes(i, 100))
                    .unwrap();
            }
        }
        w.publish().await.unwrap();
        b.sync().await.unwrap();
        let held = b.begin_read().unwrap();
        // Pages below the high-water mark: in use + free + pending.
        let pages = |b: &Backend| {
            let s = b.stats();
            s.in_use_bytes / PAGE_SIZE as u64 + s.free_pages
        };
        let mut marks = vec![pages(&b)];
        for n in 1..=txns {
            let mut w = b.begin_write().unwrap();
            {
                let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
                for j in 0..3u64 {
                    let i = (n * 617 + j * 211) % 2000;
                    t.put(format!("k{i:05}").as_bytes(), &det_bytes(n << 2 | j, 100))
                        .unwrap();
                }
            }
            w.publish().await.unwrap();
            if n % 50 == 0 {
                b.sync().await.unwrap();
            }
            if n % (txns / 4) == 0 {
                marks.push(pages(&b));
            }
        }
        let growth: Vec<u64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("pages below high water at each quarter: {marks:?}; growth {growth:?}");
        assert!(
            growth[3] <= growth[0] * 2 + 64,
            "with one snapshot held, the last quarter of {txns} commits added {} pages, the \
             first quarter {}: the cost per commit grows with the number of commits since the \
             snapshot ({marks:?})",
            growth[3],
            growth[0]
        );
        // The held snapshot is intact.
        let t = held.tree(b"t").unwrap().unwrap();
        assert_eq!(t.count(..).unwrap(), 2000);
        assert_eq!(t.get(b"k00007").unwrap(), Some(&det_bytes(7, 100)[..]));
        drop(held);
    });
}

/// A sync while a write transaction is open makes only what was published durable; the open
/// transaction goes on and publishes normally afterwards.
#[test]
fn sync_with_an_open_write_txn() {
    on_executor(|| async {
        let dir = temp_dir();
        let path = dir.path().join("open-txn.corekv");
        {
            let b = Backend::open(&path, Options::default()).await.unwrap();
            let mut w = b.begin_write().unwrap();
            w.open_tree(b"t", KeyOrder::Bytewise)
                .unwrap()
                .put(b"a", b"1")
                .unwrap();
            let t1 = w.publish().await.unwrap();
            let mut w = b.begin_write().unwrap();
            w.open_tree(b"t", KeyOrder::Bytewise)
                .unwrap()
                .put(b"b", b"2")
                .unwrap();
            assert_eq!(b.sync().await.unwrap(), t1);
            assert_eq!(b.check().unwrap().problems, Vec::<String>::new());
            let t2 = w.publish().await.unwrap();
            assert!(t2 > t1);
            let r = b.begin_read().unwrap();
            assert_eq!(r.tree(b"t").unwrap().unwrap().count(..).unwrap(), 2);
        }
        let b = Backend::open(&path, Options::default()).await.unwrap();
        let r = b.begin_read().unwrap();
        let t = r.tree(b"t").unwrap().unwrap();
        assert_eq!(t.get(b"a").unwrap(), Some(&b"1"[..]));
        assert_eq!(
            t.get(b"b").unwrap(),
            None,
            "published after the last sync: not durable"
        );
    });
}
