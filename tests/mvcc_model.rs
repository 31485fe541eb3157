//! Randomized model test of the MVCC layer over the real backend: thousands of random
//! put/delete/txn/compact/range requests (batched into backend write transactions, with
//! physical compaction steps, syncs and reopens in between) must get exactly the answers
//! of the reference model in `support/etcd_model.rs`.
//!
//! `COREKV_MVCC_MODEL_OPS` raises the number of requests per seed (default 1500),
//! `COREKV_MVCC_MODEL_SEEDS` the number of seeds (default 3), `COREKV_MVCC_MODEL_SEED`
//! replays one seed.

mod support {
    pub mod etcd_model;
    pub mod gen;
}

use corekv::backend::{Backend, Options};
use corekv::mvcc::{self, Limits, RangeRequest, SnapshotView, WriteBatch, WriteRequest};
use support::etcd_model::EtcdModel;
use support::gen::{env_u64, gen_range, gen_write, Rng, MAX_TXN_OPS};

/// Closes a backend (releasing its file lock) before it is opened again.
fn close(backend: Backend) {
    let _closed = backend;
}

fn run_seed(seed: u64, ops: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.db");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap();
    ex.run(async move {
        let mut rng = Rng(seed);
        let mut model = EtcdModel::new(MAX_TXN_OPS);
        let limits = Limits {
            max_txn_ops: MAX_TXN_OPS,
        };
        let mut backend = Backend::open(&path, Options::default()).await.unwrap();
        let mut done = 0;
        while done < ops {
            // One backend write transaction applies a batch of requests.
            let batch_len = 1 + rng.below(6);
            let reqs: Vec<WriteRequest> = (0..batch_len)
                .map(|_| gen_write(&mut rng, &model))
                .collect();
            let mut wtxn = backend.begin_write().unwrap();
            {
                let mut batch = WriteBatch::begin(&mut wtxn, limits.clone()).unwrap();
                for (i, req) in reqs.iter().enumerate() {
                    let (got, got_rev) = batch.apply(req);
                    let (want, want_rev) = model.apply(req);
                    let got = got.map_err(|e| e.code);
                    assert_eq!(
                        (&got, got_rev),
                        (&want, want_rev),
                        "seed {seed} op {} ({i} in batch): {req:?}",
                        done + i as u64
                    );
                }
                let events = batch.take_events();
                assert!(events
                    .windows(2)
                    .all(|w| w[0].kv.mod_revision <= w[1].kv.mod_revision));
                if rng.chance(30) {
                    batch.compact_step(1 + rng.below(8) as usize).unwrap();
                }
            }
            wtxn.publish().await.unwrap();
            done += batch_len;

            // Reads on the published snapshot agree with the model at every revision.
            {
                let rtxn = backend.begin_read().unwrap();
                let mut view = SnapshotView::new(&rtxn).unwrap();
                for _ in 0..3 {
                    let r = gen_range(&mut rng, &model);
                    let got = mvcc::range(&mut view, &r).map_err(|e| e.code);
                    assert_eq!(got, model.range(&r), "seed {seed} after op {done}: {r:?}");
                }
            }

            if rng.chance(3) {
                backend.sync().await.unwrap();
                let report = backend.check().unwrap();
                assert!(
                    report.problems.is_empty(),
                    "seed {seed}: {:?}",
                    report.problems
                );
                if rng.chance(50) {
                    close(backend);
                    backend = Backend::open(&path, Options::default()).await.unwrap();
                }
            }
        }
        // Finish physical compaction and prove every read at or above it still agrees.
        loop {
            let mut wtxn = backend.begin_write().unwrap();
            let finished = WriteBatch::begin(&mut wtxn, limits.clone())
                .unwrap()
                .compact_step(64)
                .unwrap();
            wtxn.publish().await.unwrap();
            if finished {
                break;
            }
        }
        let rtxn = backend.begin_read().unwrap();
        let mut view = SnapshotView::new(&rtxn).unwrap();
        for rev in model.compacted.max(1)..=model.revision {
            let r = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: rev,
                ..RangeRequest::default()
            };
            let got = mvcc::range(&mut view, &r).map_err(|e| e.code);
            assert_eq!(
                got,
                model.range(&r),
                "seed {seed}: full read at revision {rev} after compaction"
            );
        }
    });
}

#[test]
fn mvcc_matches_the_etcd_model() {
    let ops = env_u64("COREKV_MVCC_MODEL_OPS", 1500);
    if let Ok(seed) = std::env::var("COREKV_MVCC_MODEL_SEED") {
        run_seed(
            seed.parse().expect("COREKV_MVCC_MODEL_SEED is a number"),
            ops,
        );
        return;
    }
    for seed in 0..env_u64("COREKV_MVCC_MODEL_SEEDS", 3) {
        run_seed(0xC0DE_0000 + seed, ops);
    }
}
