//! Property test: random batches (0 B to several blocks per record, rollovers with a small
//! segment), concurrent groups and reopens; replay equals what was appended.
//! Cases: COREKV_WAL_PROPTEST_ITERS (default 16).

mod wal_support;

use std::collections::HashSet;

use corekv::wal::Record;
use proptest::prelude::*;
use wal_support::{iters, open_collect, run_fresh, small_opts, tempdir};

#[derive(Clone, Debug)]
enum Op {
    /// Append batches concurrently (one group), awaiting them together.
    Group(Vec<Vec<Record>>),
    /// Close and reopen the WAL, checking the replay.
    Reopen,
}

fn record() -> impl Strategy<Value = Record> {
    let size = prop_oneof![4 => 0usize..64, 3 => 64usize..5000, 1 => 5000usize..12000];
    prop_oneof![
        8 => (prop_oneof![any::<u64>(), Just(u64::MAX), Just(0u64)], size, any::<u8>()).prop_map(|(index, len, seed)| Record::Entry {
            index,
            term: seed as u64,
            data: (0..len).map(|i| seed.wrapping_add(i as u8)).collect(),
        }),
        1 => (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(term, vote, commit)| Record::HardState { term, vote, commit }),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(index, term)| Record::Snapshot { index, term }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let batch = prop::collection::vec(record(), 1..4);
    let op = prop_oneof![
        6 => prop::collection::vec(batch, 1..6).prop_map(Op::Group),
        1 => Just(Op::Reopen),
    ];
    prop::collection::vec(op, 1..25)
}

fn check(appended: &[Record], got: &[Record]) {
    let entries = |v: &[Record]| -> Vec<Record> {
        v.iter()
            .filter(|r| matches!(r, Record::Entry { .. }))
            .cloned()
            .collect()
    };
    assert_eq!(entries(got), entries(appended));
    let known: HashSet<_> = appended.iter().map(|r| format!("{r:?}")).collect();
    for r in got {
        assert!(known.contains(&format!("{r:?}")), "replayed unknown {r:?}");
    }
    let last = |v: &[Record], hs: bool| {
        v.iter()
            .rev()
            .find(|r| {
                if hs {
                    matches!(r, Record::HardState { .. })
                } else {
                    matches!(r, Record::Snapshot { .. })
                }
            })
            .cloned()
    };
    assert_eq!(last(got, true), last(appended, true));
    assert_eq!(last(got, false), last(appended, false));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: iters("COREKV_WAL_PROPTEST_ITERS", 16) as u32,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replay_equals_appended(ops in ops()) {
        let dir = tempdir();
        let path = dir.path().to_path_buf();
        run_fresh(move || async move {
            let opts = small_opts(128 << 10);
            let (mut wal, got, _) = open_collect(&path, opts.clone()).await.unwrap();
            assert!(got.is_empty());
            let mut appended: Vec<Record> = Vec::new();
            for op in ops {
                match op {
                    Op::Group(batches) => {
                        let futs: Vec<_> = batches
                            .iter()
                            .map(|b| wal.append(b.clone()))
                            .collect();
                        for f in futs {
                            f.await.unwrap();
                        }
                        for b in batches {
                            appended.extend(b);
                        }
                    }
                    Op::Reopen => {
                        wal.close().await;
                        drop(wal);
                        let (w, got, info) = open_collect(&path, opts.clone()).await.unwrap();
                        assert_eq!(info.tail_bytes_zeroed, 0);
                        check(&appended, &got);
                        wal = w;
                    }
                }
            }
            wal.close().await;
            drop(wal);
            let (w, got, _) = open_collect(&path, opts).await.unwrap();
            check(&appended, &got);
            w.close().await;
        });
    }
}
