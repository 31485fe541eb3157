//! Property test: the backend behaves exactly like a `BTreeMap` model per named tree.
//!
//! Each proptest case is a random sequence of operations run on a fresh file: write
//! transactions (puts/deletes/drop_tree plus in-transaction get/scan, published or aborted),
//! syncs, reopens (after which the state must equal the last *synced* state), held snapshots
//! (which must keep showing their own state while later transactions run), range scans in both
//! directions with every kind of bound, counts and cursor walks. After every operation the
//! latest snapshot and every held snapshot are compared with the model through all read paths,
//! `check()` must report no problem and `stats()` must agree with what the test saw.
//!
//! Four trees, two of each order; one has a 255-byte name. `PrefixThenU64` keys are built from
//! prefixes that are prefixes of each other and numbers whose top byte is large, so bytewise
//! order and (prefix, number) order disagree on them.
//!
//! Knobs: `COREKV_MODEL_ITERS` (cases, default 48), `COREKV_MODEL_OPS` (max operations per
//! case, default 64).

// Explicit drops release a lock, pin or write transaction; against the API skeleton these
// types have no drop glue yet, which is all this lint sees.
#![allow(clippy::drop_non_drop)]

mod backend_support;

use std::ops::Bound;

use backend_support::Rng;
use backend_support::*;
use corekv::backend::{Backend, KeyOrder, Options, ReadTxn, MAX_KEY_SIZE, PAGE_SIZE};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const TREE_COUNT: usize = 4;

fn tree_def(i: u8) -> (Vec<u8>, KeyOrder) {
    match i as usize % TREE_COUNT {
        0 => (b"kv".to_vec(), KeyOrder::PrefixThenU64),
        1 => (b"k".to_vec(), KeyOrder::Bytewise),
        2 => (vec![0xFE; 255], KeyOrder::Bytewise),
        _ => (b"history".to_vec(), KeyOrder::PrefixThenU64),
    }
}

fn all_tree_names() -> Vec<Vec<u8>> {
    (0..TREE_COUNT as u8).map(|i| tree_def(i).0).collect()
}

/// Key building blocks: several are prefixes of others, some start with 0x00 or 0xFF.
const BASES: &[&[u8]] = &[
    b"",
    b"a",
    b"aa",
    b"ab",
    b"a\xff",
    b"b",
    b"\x00",
    b"\x00\x00",
    b"\xff",
    b"\xff\xff",
    b"key/",
    b"key/a",
];

/// Numbers for `PrefixThenU64` suffixes: byte-boundary values and large top bytes.
const NUMS: &[u64] = &[
    0,
    1,
    2,
    255,
    256,
    65535,
    1 << 32,
    (1 << 56) - 1,
    1 << 56,
    0x6100_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Value sizes at page and overflow thresholds.
const VALUE_THRESHOLDS: &[usize] = &[
    0,
    1,
    PAGE_SIZE / 4,
    // Inline values beyond a quarter page while the cell stays within 1,543 bytes (7-byte
    // header + key + value): the edge for empty, 7-byte and 8-byte keys.
    PAGE_SIZE / 4 + 1,
    1_400,
    1_528,
    1_529,
    1_536,
    1_537,
    PAGE_SIZE / 2 - 1,
    PAGE_SIZE / 2,
    PAGE_SIZE - 64,
    PAGE_SIZE - 1,
    PAGE_SIZE,
    PAGE_SIZE + 1,
    2 * PAGE_SIZE - 1,
    2 * PAGE_SIZE,
    2 * PAGE_SIZE + 1,
    64 * 1024,
    1 << 20,
];

/// Where a key comes from: an existing key of the tree (if any), else a generated one.
#[derive(Clone, Debug)]
struct KeySel {
    existing: Option<Index>,
    base: u8,
    /// Padding length; `usize::MAX` pads to exactly `MAX_KEY_SIZE`.
    pad: usize,
    num: u64,
}

impl KeySel {
    fn key(&self, order: KeyOrder, tree: Option<&ModelTree>) -> Vec<u8> {
        if let (Some(i), Some(t)) = (&self.existing, tree) {
            if let Some(k) = t.nth_key(i.index(usize::MAX)) {
                return k;
            }
        }
        let base = BASES[self.base as usize % BASES.len()];
        let pad_byte = [0x00u8, 0x7F, 0xFF][self.base as usize % 3];
        match order {
            KeyOrder::Bytewise => {
                let suffix_len = (self.num % 3) as usize;
                let suffix = &self.num.to_be_bytes()[8 - suffix_len..];
                let room = MAX_KEY_SIZE - base.len() - suffix_len;
                let mut k = base.to_vec();
                k.resize(base.len() + self.pad.min(room), pad_byte);
                k.extend_from_slice(suffix);
                if k.is_empty() {
                    k.push(b'e'); // empty keys are tested separately (backend_api)
                }
                k
            }
            KeyOrder::PrefixThenU64 => {
                let room = MAX_KEY_SIZE - 8 - base.len();
                let mut p = base.to_vec();
                p.resize(base.len() + self.pad.min(room), pad_byte);
                pkey(&p, self.num)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct ValSpec {
    seed: u64,
    len: usize,
}

impl ValSpec {
    fn bytes(&self) -> Vec<u8> {
        det_bytes(self.seed, self.len)
    }
}

#[derive(Clone, Debug)]
enum BoundSpec {
    Unbounded,
    Included(KeySel),
    Excluded(KeySel),
}

#[derive(Clone, Debug)]
enum Step {
    Put(u8, KeySel, ValSpec),
    Delete(u8, KeySel),
    DropTree(u8),
    Get(u8, KeySel),
    Scan(u8, BoundSpec, BoundSpec, usize),
    /// Inserts `count` generated keys (seeded), with values up to `max_len` bytes: grows
    /// trees deep enough for splits.
    Bulk {
        tree: u8,
        seed: u64,
        count: usize,
        max_len: usize,
    },
    /// Deletes about `percent`% of the tree's keys (chosen by a seeded hash): merges.
    BulkDelete {
        tree: u8,
        seed: u64,
        percent: u64,
    },
}

#[derive(Clone, Debug)]
enum IterMode {
    Forward,
    Reverse,
    /// Alternates `next`/`next_back` by the bits of the seed.
    Mixed(u64),
}

#[derive(Clone, Debug)]
enum Move {
    Seek(KeySel),
    SeekForPrev(KeySel),
    Next,
    Prev,
}

#[derive(Clone, Debug)]
enum Op {
    /// A write transaction; published if the flag is set, else dropped (aborted). `peek`:
    /// before finishing, check that a reader does not see the uncommitted writes.
    Txn {
        steps: Vec<Step>,
        publish: bool,
        peek: bool,
    },
    Sync,
    Reopen,
    Range(u8, BoundSpec, BoundSpec, IterMode),
    Count(u8, BoundSpec, BoundSpec),
    Cursor(u8, Vec<Move>),
    Hold,
    Release(Index),
}

fn key_sel() -> impl Strategy<Value = KeySel> {
    let pad = prop_oneof![
        12 => 0usize..4,
        2 => 4usize..300,
        1 => 300usize..=MAX_KEY_SIZE,
        1 => Just(usize::MAX),
    ];
    let num = prop_oneof![
        3 => prop::sample::select(NUMS),
        1 => any::<u64>(),
    ];
    (
        proptest::option::weighted(0.5, any::<Index>()),
        any::<u8>(),
        pad,
        num,
    )
        .prop_map(|(existing, base, pad, num)| KeySel {
            existing,
            base,
            pad,
            num,
        })
}

fn val_spec() -> impl Strategy<Value = ValSpec> {
    let len = prop_oneof![
        40 => 0usize..100,
        15 => 100usize..3000,
        6 => 3000usize..20_000,
        6 => prop::sample::select(VALUE_THRESHOLDS),
        1 => 1_500_000usize..1_700_000,
    ];
    (any::<u64>(), len).prop_map(|(seed, len)| ValSpec { seed, len })
}

fn bound_spec() -> impl Strategy<Value = BoundSpec> {
    prop_oneof![
        1 => Just(BoundSpec::Unbounded),
        2 => key_sel().prop_map(BoundSpec::Included),
        2 => key_sel().prop_map(BoundSpec::Excluded),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (any::<u8>(), key_sel(), val_spec()).prop_map(|(t, k, v)| Step::Put(t, k, v)),
        5 => (any::<u8>(), key_sel()).prop_map(|(t, k)| Step::Delete(t, k)),
        1 => any::<u8>().prop_map(Step::DropTree),
        2 => (any::<u8>(), key_sel()).prop_map(|(t, k)| Step::Get(t, k)),
        1 => (any::<u8>(), bound_spec(), bound_spec(), 0usize..20)
            .prop_map(|(t, a, b, n)| Step::Scan(t, a, b, n)),
        3 => (any::<u8>(), any::<u64>(), 1usize..400, prop::sample::select(&[16usize, 200, 2000][..]))
            .prop_map(|(tree, seed, count, max_len)| Step::Bulk { tree, seed, count, max_len }),
        1 => (any::<u8>(), any::<u64>(), 1u64..=100)
            .prop_map(|(tree, seed, percent)| Step::BulkDelete { tree, seed, percent }),
    ]
}

fn cursor_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        2 => key_sel().prop_map(Move::Seek),
        2 => key_sel().prop_map(Move::SeekForPrev),
        3 => Just(Move::Next),
        3 => Just(Move::Prev),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop::collection::vec(step(), 1..12), prop::bool::weighted(0.85), any::<bool>())
            .prop_map(|(steps, publish, peek)| Op::Txn { steps, publish, peek }),
        3 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        3 => (any::<u8>(), bound_spec(), bound_spec(), prop_oneof![
            Just(IterMode::Forward), Just(IterMode::Reverse), any::<u64>().prop_map(IterMode::Mixed)
        ]).prop_map(|(t, a, b, m)| Op::Range(t, a, b, m)),
        2 => (any::<u8>(), bound_spec(), bound_spec()).prop_map(|(t, a, b)| Op::Count(t, a, b)),
        2 => (any::<u8>(), prop::collection::vec(cursor_move(), 1..16))
            .prop_map(|(t, m)| Op::Cursor(t, m)),
        1 => Just(Op::Hold),
        1 => any::<Index>().prop_map(Op::Release),
    ]
}

fn bound_key(b: &BoundSpec, order: KeyOrder, tree: Option<&ModelTree>) -> Bound<Vec<u8>> {
    match b {
        BoundSpec::Unbounded => Bound::Unbounded,
        BoundSpec::Included(k) => Bound::Included(k.key(order, tree)),
        BoundSpec::Excluded(k) => Bound::Excluded(k.key(order, tree)),
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn show_bound(b: &Bound<Vec<u8>>) -> String {
    match b {
        Bound::Included(k) => format!("Included({})", show(k)),
        Bound::Excluded(k) => format!("Excluded({})", show(k)),
        Bound::Unbounded => "Unbounded".into(),
    }
}

/// A deterministic hash of a key (to pick bulk-delete victims).
fn det_hash(k: &[u8]) -> u64 {
    k.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Everything one case's run knows.
struct Harness {
    path: std::path::PathBuf,
    options: Options,
    backend: Option<Backend>,
    /// The latest published state.
    published: Model,
    published_txid: u64,
    /// The latest synced state (what a reopen must show).
    synced: Model,
    synced_txid: u64,
    /// Held snapshots with the state they must keep showing.
    held: Vec<(ReadTxn, Model)>,
}

impl Harness {
    fn b(&self) -> &Backend {
        self.backend.as_ref().expect("backend open")
    }

    /// The end-of-step checks: latest and held snapshots equal their models, check() clean,
    /// stats consistent.
    fn verify_all(&self) -> Result<(), String> {
        let b = self.b();
        let names = all_tree_names();
        let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let r = b.begin_read().map_err(err("begin_read"))?;
        if r.txid() != self.published_txid {
            return Err(format!(
                "latest snapshot txid {} but the last publish returned {}",
                r.txid(),
                self.published_txid
            ));
        }
        verify_snapshot(&r, &self.published, &names).map_err(|e| format!("latest: {e}"))?;
        let r2 = b
            .reader()
            .begin_read()
            .map_err(err("reader().begin_read"))?;
        if r2.txid() != self.published_txid {
            return Err(format!(
                "Reader snapshot txid {} but the last publish returned {}",
                r2.txid(),
                self.published_txid
            ));
        }
        for (i, (txn, m)) in self.held.iter().enumerate() {
            verify_snapshot(txn, m, &names).map_err(|e| format!("held snapshot #{i}: {e}"))?;
        }
        let report = b.check().map_err(err("check()"))?;
        if !report.problems.is_empty() {
            return Err(format!("check() found problems: {:?}", report.problems));
        }
        let st = b.stats();
        if st.published_txid != self.published_txid || st.synced_txid != self.synced_txid {
            return Err(format!(
                "stats {st:?} but the test saw published {} synced {}",
                self.published_txid, self.synced_txid
            ));
        }
        let disk = std::fs::metadata(&self.path).map_err(err("stat"))?.len();
        if st.file_size != disk {
            return Err(format!(
                "stats.file_size {} but the file has {disk} bytes",
                st.file_size
            ));
        }
        if !st.in_use_bytes.is_multiple_of(PAGE_SIZE as u64) || st.in_use_bytes > st.file_size {
            return Err(format!(
                "stats.in_use_bytes {} inconsistent ({st:?})",
                st.in_use_bytes
            ));
        }
        if st.in_use_bytes != report.reachable_pages * PAGE_SIZE as u64 {
            return Err(format!(
                "stats.in_use_bytes {} but check() reached {} pages",
                st.in_use_bytes, report.reachable_pages
            ));
        }
        let pages = st.file_size / PAGE_SIZE as u64;
        if report.reachable_pages + report.free_pages > pages {
            return Err(format!(
                "check(): {} reachable + {} free pages > {pages} pages in the file",
                report.reachable_pages, report.free_pages
            ));
        }
        Ok(())
    }

    async fn run_txn(&mut self, steps: &[Step], publish: bool, peek: bool) -> Result<(), String> {
        let mut local = self.published.clone();
        let b = self.backend.as_ref().expect("backend open");
        let mut w = b.begin_write().map_err(err("begin_write"))?;
        for (si, st) in steps.iter().enumerate() {
            let ctx = format!("txn step {si} {st:?}");
            match st {
                Step::Put(t, ks, vs) => {
                    let (name, order) = tree_def(*t);
                    let key = ks.key(order, local.trees.get(&name));
                    let val = vs.bytes();
                    let mut tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    tm.put(&key, &val).map_err(err(&ctx))?;
                    local.tree_mut(&name, order).put(&key, &val);
                }
                Step::Delete(t, ks) => {
                    let (name, order) = tree_def(*t);
                    let key = ks.key(order, local.trees.get(&name));
                    let mut tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    let got = tm.delete(&key).map_err(err(&ctx))?;
                    let want = local.tree_mut(&name, order).delete(&key);
                    if got != want {
                        return Err(format!("{ctx}: delete returned {got}, model says {want}"));
                    }
                }
                Step::DropTree(t) => {
                    let (name, _) = tree_def(*t);
                    let got = w.drop_tree(&name).map_err(err(&ctx))?;
                    let want = local.trees.remove(&name).is_some();
                    if got != want {
                        return Err(format!(
                            "{ctx}: drop_tree returned {got}, model says {want}"
                        ));
                    }
                }
                Step::Get(t, ks) => {
                    let (name, order) = tree_def(*t);
                    let key = ks.key(order, local.trees.get(&name));
                    let tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    let got = tm.get(&key).map_err(err(&ctx))?;
                    let want = local.tree_mut(&name, order).get(&key).map(|v| v.to_vec());
                    if got != want {
                        return Err(format!(
                            "{ctx}: in-txn get({}) = {:?}, model has {:?}",
                            show(&key),
                            got.as_deref().map(show),
                            want.as_deref().map(show)
                        ));
                    }
                }
                Step::Bulk {
                    tree,
                    seed,
                    count,
                    max_len,
                } => {
                    let (name, order) = tree_def(*tree);
                    let mut rng = Rng::new(*seed);
                    let mut tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    let mt = local.tree_mut(&name, order);
                    for i in 0..*count {
                        let base = BASES[rng.below(BASES.len() as u64) as usize];
                        let mut key = base.to_vec();
                        key.extend(det_bytes(rng.next_u64(), rng.below(12) as usize));
                        if order == KeyOrder::PrefixThenU64 {
                            let n = if rng.one_in(2) {
                                NUMS[rng.below(NUMS.len() as u64) as usize]
                            } else {
                                rng.next_u64()
                            };
                            key.extend_from_slice(&n.to_be_bytes());
                        } else if key.is_empty() {
                            key.push(b'e');
                        }
                        let val = det_bytes(*seed ^ i as u64, rng.below(*max_len as u64) as usize);
                        tm.put(&key, &val)
                            .map_err(|e| format!("{ctx}: put #{i} {}: {e}", show(&key)))?;
                        mt.put(&key, &val);
                    }
                }
                Step::BulkDelete {
                    tree,
                    seed,
                    percent,
                } => {
                    let (name, order) = tree_def(*tree);
                    let mut tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    let mt = local.tree_mut(&name, order);
                    let victims: Vec<Vec<u8>> = mt
                        .entries
                        .keys()
                        .map(SortKey::bytes)
                        .filter(|k| Rng::new(*seed ^ det_hash(k)).below(100) < *percent)
                        .collect();
                    for k in victims {
                        let got = tm.delete(&k).map_err(err(&ctx))?;
                        if !got {
                            return Err(format!(
                                "{ctx}: delete({}) of a present key returned false",
                                show(&k)
                            ));
                        }
                        mt.delete(&k);
                    }
                }
                Step::Scan(t, lo, hi, limit) => {
                    let (name, order) = tree_def(*t);
                    let mt = local.tree_mut(&name, order).clone();
                    let lo = bound_key(lo, order, Some(&mt));
                    let hi = bound_key(hi, order, Some(&mt));
                    let tm = w.open_tree(&name, order).map_err(err(&ctx))?;
                    let got = tm
                        .scan((as_ref(&lo), as_ref(&hi)), *limit)
                        .map_err(err(&ctx))?;
                    let mut want = mt.range(as_ref(&lo), as_ref(&hi));
                    want.truncate(*limit);
                    let got_ref: Vec<(&[u8], &[u8])> = got
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect();
                    compare_entries(
                        &format!(
                            "{ctx}: in-txn scan({}, {}, limit {limit})",
                            show_bound(&lo),
                            show_bound(&hi)
                        ),
                        &got_ref,
                        &want,
                    )?;
                }
            }
        }
        if peek {
            // Uncommitted writes are invisible to readers.
            let r = b
                .begin_read()
                .map_err(err("begin_read during a write txn"))?;
            let names = all_tree_names();
            let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
            verify_snapshot(&r, &self.published, &names)
                .map_err(|e| format!("reader during an open write txn: {e}"))?;
        }
        if publish {
            // Every publish, even of a transaction that changed nothing, gets a new txid.
            let txid = w.publish().await.map_err(err("publish"))?;
            if txid <= self.published_txid {
                return Err(format!(
                    "publish returned txid {txid}, not above the previous {}",
                    self.published_txid
                ));
            }
            self.published_txid = txid;
            self.published = local;
        } else {
            drop(w);
        }
        Ok(())
    }

    fn range_op(
        &self,
        t: u8,
        lo: &BoundSpec,
        hi: &BoundSpec,
        mode: &IterMode,
    ) -> Result<(), String> {
        let (name, order) = tree_def(t);
        let r = self.b().begin_read().map_err(err("begin_read"))?;
        let Some(mt) = self.published.trees.get(&name) else {
            return match r.tree(&name) {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "tree({}) = {:?}, model has none",
                    show(&name),
                    other.map(|t| t.is_some())
                )),
            };
        };
        let tree = r
            .tree(&name)
            .map_err(err("tree()"))?
            .ok_or_else(|| format!("tree {} missing", show(&name)))?;
        let lo = bound_key(lo, order, Some(mt));
        let hi = bound_key(hi, order, Some(mt));
        let what = format!(
            "tree {} range({}, {}) {mode:?}",
            show(&name),
            show_bound(&lo),
            show_bound(&hi)
        );
        let want = mt.range(as_ref(&lo), as_ref(&hi));
        let mut it = tree.range((as_ref(&lo), as_ref(&hi))).map_err(err(&what))?;
        match mode {
            IterMode::Forward => {
                let got = collect_range(&what, it)?;
                compare_entries(&what, &got, &want)
            }
            IterMode::Reverse => {
                let mut got = collect_range(&what, it.rev())?;
                got.reverse();
                compare_entries(&what, &got, &want)
            }
            IterMode::Mixed(bits) => {
                let (mut front, mut back) = (Vec::new(), Vec::new());
                let mut i = 0u32;
                loop {
                    let from_back = (bits.rotate_right(i) & 1) == 1;
                    i += 1;
                    let item = if from_back { it.next_back() } else { it.next() };
                    match item {
                        None => break,
                        Some(Ok(e)) if from_back => back.push(e),
                        Some(Ok(e)) => front.push(e),
                        Some(Err(e)) => return Err(format!("{what}: {e}")),
                    }
                    if front.len() + back.len() > want.len() {
                        break; // compare_entries reports the surplus
                    }
                }
                back.reverse();
                front.extend(back);
                compare_entries(&what, &front, &want)
            }
        }
    }

    fn count_op(&self, t: u8, lo: &BoundSpec, hi: &BoundSpec) -> Result<(), String> {
        let (name, order) = tree_def(t);
        let r = self.b().begin_read().map_err(err("begin_read"))?;
        let Some(mt) = self.published.trees.get(&name) else {
            return Ok(());
        };
        let tree = r
            .tree(&name)
            .map_err(err("tree()"))?
            .ok_or_else(|| format!("tree {} missing", show(&name)))?;
        let lo = bound_key(lo, order, Some(mt));
        let hi = bound_key(hi, order, Some(mt));
        let got = tree
            .count((as_ref(&lo), as_ref(&hi)))
            .map_err(err("count"))?;
        let want = mt.range(as_ref(&lo), as_ref(&hi)).len() as u64;
        if got != want {
            return Err(format!(
                "tree {} count({}, {}) = {got}, model {want}",
                show(&name),
                show_bound(&lo),
                show_bound(&hi)
            ));
        }
        Ok(())
    }

    fn cursor_op(&self, t: u8, moves: &[Move]) -> Result<(), String> {
        let (name, order) = tree_def(t);
        let r = self.b().begin_read().map_err(err("begin_read"))?;
        let Some(mt) = self.published.trees.get(&name) else {
            return Ok(());
        };
        let tree = r
            .tree(&name)
            .map_err(err("tree()"))?
            .ok_or_else(|| format!("tree {} missing", show(&name)))?;
        let entries = mt.range(Bound::Unbounded, Bound::Unbounded);
        let mut cur = tree.cursor();
        /// The model cursor.
        enum Pos {
            /// Fresh: `next` gives the first entry, `prev` the last.
            Fresh,
            At(usize),
            /// Ran off an end: the contract does not say where the cursor is, so only a seek
            /// is checked until it is positioned again.
            Off,
        }
        let mut pos = Pos::Fresh;
        for (mi, mv) in moves.iter().enumerate() {
            let (got, want, what) = match (mv, &pos) {
                (Move::Seek(ks), _) => {
                    let key = ks.key(order, Some(mt));
                    let want = entries
                        .iter()
                        .position(|(k, _)| model_compare(order, k, &key).is_ge());
                    (cur.seek(&key), want, format!("seek({})", show(&key)))
                }
                (Move::SeekForPrev(ks), _) => {
                    let key = ks.key(order, Some(mt));
                    let want = entries
                        .iter()
                        .rposition(|(k, _)| model_compare(order, k, &key).is_le());
                    (
                        cur.seek_for_prev(&key),
                        want,
                        format!("seek_for_prev({})", show(&key)),
                    )
                }
                (Move::Next | Move::Prev, Pos::Off) => continue,
                (Move::Next, Pos::Fresh) => (
                    cur.next(),
                    (!entries.is_empty()).then_some(0),
                    "next()".into(),
                ),
                (Move::Next, Pos::At(i)) => (
                    cur.next(),
                    (i + 1 < entries.len()).then_some(i + 1),
                    "next()".into(),
                ),
                (Move::Prev, Pos::Fresh) => {
                    (cur.prev(), entries.len().checked_sub(1), "prev()".into())
                }
                (Move::Prev, Pos::At(i)) => (cur.prev(), i.checked_sub(1), "prev()".into()),
            };
            let what = format!("tree {} cursor move {mi} {what}", show(&name));
            let got = got.map_err(err(&what))?;
            match (got, want) {
                (None, None) => {}
                (Some((k, v)), Some(i)) => {
                    compare_entries(&what, &[(k, v)], &entries[i..=i])?;
                }
                (got, want) => {
                    return Err(format!(
                        "{what}: got {:?}, model {:?}",
                        got.map(|(k, _)| show(k)),
                        want.map(|i| show(&entries[i].0))
                    ))
                }
            }
            pos = match want {
                Some(i) => Pos::At(i),
                None => Pos::Off,
            };
        }
        Ok(())
    }

    async fn run_op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Txn {
                steps,
                publish,
                peek,
            } => self.run_txn(steps, *publish, *peek).await?,
            Op::Sync => {
                let txid = self.b().sync().await.map_err(err("sync"))?;
                if txid != self.published_txid {
                    return Err(format!(
                        "sync returned txid {txid}, the last published is {}",
                        self.published_txid
                    ));
                }
                self.synced = self.published.clone();
                self.synced_txid = txid;
            }
            Op::Reopen => {
                // Held snapshots are released first: whether a snapshot may outlive its
                // Backend across a reopen of the same path is not part of the contract.
                self.held.clear();
                drop(self.backend.take());
                let b = Backend::open(&self.path, self.options.clone())
                    .await
                    .map_err(err("reopen"))?;
                let r = b.begin_read().map_err(err("begin_read after reopen"))?;
                if r.txid() != self.synced_txid {
                    return Err(format!(
                        "after reopen the snapshot txid is {}, the last sync returned {}",
                        r.txid(),
                        self.synced_txid
                    ));
                }
                drop(r);
                self.backend = Some(b);
                self.published = self.synced.clone();
                self.published_txid = self.synced_txid;
            }
            Op::Range(t, lo, hi, mode) => self.range_op(*t, lo, hi, mode)?,
            Op::Count(t, lo, hi) => self.count_op(*t, lo, hi)?,
            Op::Cursor(t, moves) => self.cursor_op(*t, moves)?,
            Op::Hold => {
                if self.held.len() < 3 {
                    let r = self.b().begin_read().map_err(err("begin_read"))?;
                    self.held.push((r, self.published.clone()));
                }
            }
            Op::Release(i) => {
                if !self.held.is_empty() {
                    let i = i.index(self.held.len());
                    self.held.remove(i);
                }
            }
        }
        self.verify_all()
    }
}

/// Options of a case: the default but with blocking syncs, or a one-page growth step so that
/// the file grows (and the growth path runs) on almost every publish, with io_uring syncs.
fn case_options(tiny_growth: bool) -> Options {
    if tiny_growth {
        Options {
            max_map_size: 1 << 30,
            grow_step: PAGE_SIZE as u64,
            ..Options::default()
        }
    } else {
        Options {
            blocking_sync: true,
            ..Options::default()
        }
    }
}

async fn run_case(ops: Vec<Op>, tiny_growth: bool) -> Result<(), String> {
    let dir = temp_dir();
    let path = dir.path().join("model.corekv");
    let options = case_options(tiny_growth);
    let backend = Backend::open(&path, options.clone())
        .await
        .map_err(err("open a new file"))?;
    let first = backend.begin_read().map_err(err("begin_read"))?.txid();
    let synced_txid = backend.stats().synced_txid;
    let mut h = Harness {
        path,
        options,
        backend: Some(backend),
        published: Model::default(),
        published_txid: first,
        synced: Model::default(),
        synced_txid,
        held: Vec::new(),
    };
    h.verify_all().map_err(|e| format!("fresh file: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        h.run_op(op)
            .await
            .map_err(|e| format!("op {i} ({}): {e}", short_op(op)))?;
    }
    // Finally a reopen must show the last synced state.
    h.run_op(&Op::Reopen)
        .await
        .map_err(|e| format!("final reopen: {e}"))?;
    Ok(())
}

fn short_op(op: &Op) -> String {
    let s = format!("{op:?}");
    if s.len() > 300 {
        format!("{}...", &s[..300])
    } else {
        s
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: iters("COREKV_MODEL_ITERS", 48) as u32,
        max_shrink_iters: 4096,
        max_shrink_time: 180_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/backend_model.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The backend equals the model after every operation of a random history.
    #[test]
    fn backend_matches_btreemap_model(
        ops in prop::collection::vec(op(), 1..=iters("COREKV_MODEL_OPS", 64)),
        tiny_growth in any::<bool>(),
    ) {
        let res = on_executor(move || run_case(ops, tiny_growth));
        prop_assert!(res.is_ok(), "{}", res.unwrap_err());
    }
}
