//! Randomized model test of the MVCC layer over the real backend: thousands of random
//! put/delete/txn/compact/range requests (batched into backend write transactions, with
//! physical compaction steps, syncs and reopens in between) must get exactly the answers
//! of the reference model in `support/etcd_model.rs`.
//!
//! `COREKV_MVCC_MODEL_OPS` raises the number of requests per seed (default 1500),
//! `COREKV_MVCC_MODEL_SEEDS` the number of seeds (default 3), `COREKV_MVCC_MODEL_SEED`
//! replays one seed.

#[path = "support/etcd_model.rs"]
mod etcd_model;

use corekv::backend::{Backend, Options};
use corekv::mvcc::{
    self, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Limits, PutRequest,
    RangeRequest, RequestOp, SnapshotView, SortOrder, SortTarget, TxnRequest, WriteBatch,
    WriteRequest,
};
use etcd_model::EtcdModel;

/// A small deterministic generator (splitmix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"c", b"d", b"e\xff", b"f"];
const VALUES: &[&[u8]] = &[b"", b"x", b"yy", b"value-3", b"zzzz"];
const MAX_TXN_OPS: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gen_key(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(2) {
        return Vec::new(); // invalid: empty key
    }
    rng.pick(KEYS).to_vec()
}

fn gen_range_end(rng: &mut Rng, key: &[u8]) -> Vec<u8> {
    match rng.below(6) {
        0 | 1 => Vec::new(),
        2 => vec![0],
        3 => {
            // prefix end: key + 1 on the last byte
            let mut end = key.to_vec();
            if let Some(last) = end.last_mut() {
                *last = last.wrapping_add(1);
            }
            end
        }
        _ => rng.pick(KEYS).to_vec(), // may be below the key: an empty range
    }
}

fn gen_revision(rng: &mut Rng, model: &EtcdModel) -> i64 {
    match rng.below(4) {
        0 | 1 => 0,
        _ => {
            let lo = (model.compacted - 1).max(0);
            let hi = model.revision + 1;
            lo + rng.below((hi - lo + 1) as u64) as i64
        }
    }
}

fn gen_range(rng: &mut Rng, model: &EtcdModel) -> RangeRequest {
    let key = gen_key(rng);
    let range_end = gen_range_end(rng, &key);
    RangeRequest {
        range_end,
        limit: match rng.below(5) {
            0 => 1,
            1 => 2,
            2 if rng.chance(5) => -1,
            _ => 0,
        },
        revision: gen_revision(rng, model),
        sort_order: *rng.pick(&[
            SortOrder::None,
            SortOrder::None,
            SortOrder::Ascend,
            SortOrder::Descend,
        ]),
        sort_target: *rng.pick(&[
            SortTarget::Key,
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ]),
        serializable: rng.chance(50),
        keys_only: rng.chance(20),
        count_only: rng.chance(10),
        min_mod_revision: if rng.chance(10) {
            rng.below(model.revision as u64 + 2) as i64
        } else {
            0
        },
        max_mod_revision: if rng.chance(10) {
            rng.below(model.revision as u64 + 2) as i64
        } else {
            0
        },
        min_create_revision: if rng.chance(10) {
            rng.below(model.revision as u64 + 2) as i64
        } else {
            0
        },
        max_create_revision: if rng.chance(10) {
            rng.below(model.revision as u64 + 2) as i64
        } else {
            0
        },
        key,
    }
}

fn gen_put(rng: &mut Rng) -> PutRequest {
    let ignore_value = rng.chance(8);
    let ignore_lease = rng.chance(8);
    PutRequest {
        key: gen_key(rng),
        value: if ignore_value && !rng.chance(10) {
            Vec::new()
        } else {
            rng.pick(VALUES).to_vec()
        },
        lease: if rng.chance(3) { 7 } else { 0 },
        prev_kv: rng.chance(50),
        ignore_value,
        ignore_lease,
    }
}

fn gen_delete(rng: &mut Rng) -> DeleteRangeRequest {
    let key = gen_key(rng);
    DeleteRangeRequest {
        range_end: gen_range_end(rng, &key),
        key,
        prev_kv: rng.chance(50),
    }
}

fn gen_compare(rng: &mut Rng, model: &EtcdModel) -> Compare {
    let key = gen_key(rng);
    let range_end = if rng.chance(20) {
        gen_range_end(rng, &key)
    } else {
        Vec::new()
    };
    let rev = rng.below(model.revision as u64 + 2) as i64;
    Compare {
        result: *rng.pick(&[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ]),
        target: match rng.below(5) {
            0 => CompareTarget::Version(rng.below(4) as i64),
            1 => CompareTarget::CreateRevision(rev),
            2 => CompareTarget::ModRevision(rev),
            3 => CompareTarget::Value(rng.pick(VALUES).to_vec()),
            _ => CompareTarget::Lease(0),
        },
        key,
        range_end,
    }
}

fn gen_txn(rng: &mut Rng, model: &EtcdModel, depth: usize) -> TxnRequest {
    let branch = |rng: &mut Rng| {
        // Occasionally one op over the limit, to exercise TooManyTxnOps.
        let extra = if rng.chance(5) { 2 } else { 1 };
        let n = rng.below(MAX_TXN_OPS as u64 + extra);
        (0..n)
            .map(|_| match rng.below(if depth < 2 { 5 } else { 4 }) {
                0 => RequestOp::Range(gen_range(rng, model)),
                1 | 2 => RequestOp::Put(gen_put(rng)),
                3 => RequestOp::DeleteRange(gen_delete(rng)),
                _ => RequestOp::Txn(gen_txn(rng, model, depth + 1)),
            })
            .collect::<Vec<_>>()
    };
    TxnRequest {
        compare: (0..rng.below(3)).map(|_| gen_compare(rng, model)).collect(),
        success: branch(rng),
        failure: branch(rng),
    }
}

fn gen_write(rng: &mut Rng, model: &EtcdModel) -> WriteRequest {
    match rng.below(20) {
        0..=7 => WriteRequest::Put(gen_put(rng)),
        8..=10 => WriteRequest::DeleteRange(gen_delete(rng)),
        11..=18 => WriteRequest::Txn(gen_txn(rng, model, 0)),
        _ => {
            let lo = (model.compacted - 1).max(0);
            let hi = model.revision + 1;
            WriteRequest::Compact {
                revision: lo + rng.below((hi - lo + 1) as u64) as i64,
            }
        }
    }
}

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
