//! Random etcd requests for model tests (deterministic per seed).
#![allow(dead_code)]

use corekv::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    SortOrder, SortTarget, TxnRequest, WriteRequest,
};

use super::etcd_model::EtcdModel;

/// A small deterministic generator (splitmix64), so a failing seed replays exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"c", b"d", b"e\xff", b"f"];
pub const VALUES: &[&[u8]] = &[b"", b"x", b"yy", b"value-3", b"zzzz"];
pub const MAX_TXN_OPS: usize = 4;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn gen_key(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(2) {
        return Vec::new(); // invalid: empty key
    }
    rng.pick(KEYS).to_vec()
}

pub fn gen_range_end(rng: &mut Rng, key: &[u8]) -> Vec<u8> {
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

pub fn gen_revision(rng: &mut Rng, model: &EtcdModel) -> i64 {
    match rng.below(4) {
        0 | 1 => 0,
        _ => {
            let lo = (model.compacted - 1).max(0);
            let hi = model.revision + 1;
            lo + rng.below((hi - lo + 1) as u64) as i64
        }
    }
}

pub fn gen_range(rng: &mut Rng, model: &EtcdModel) -> RangeRequest {
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

pub fn gen_put(rng: &mut Rng) -> PutRequest {
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

pub fn gen_delete(rng: &mut Rng) -> DeleteRangeRequest {
    let key = gen_key(rng);
    DeleteRangeRequest {
        range_end: gen_range_end(rng, &key),
        key,
        prev_kv: rng.chance(50),
    }
}

pub fn gen_compare(rng: &mut Rng, model: &EtcdModel) -> Compare {
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

pub fn gen_txn(rng: &mut Rng, model: &EtcdModel, depth: usize) -> TxnRequest {
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

pub fn gen_write(rng: &mut Rng, model: &EtcdModel) -> WriteRequest {
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
