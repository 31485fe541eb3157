//! Shared helpers for the backend integration tests (`tests/backend_*.rs`).
//!
//! - [`on_executor`]: runs async test code on a fresh glommio executor thread and re-raises
//!   its panic, so a failing test never leaves a half-dead executor on the harness thread.
//! - [`Model`]: an in-memory model of the backend's named trees, a `BTreeMap` per tree keyed
//!   by [`SortKey`], which orders `KeyOrder::PrefixThenU64` keys by (prefix, u64) exactly as
//!   the contract says, independently of the backend's own comparator.
//! - `verify_*`: compare a snapshot with the model through every read path (range forward and
//!   backward, count, get), returning a description of the first difference.
//! - deterministic data ([`Rng`], [`det_bytes`]), child processes ([`child_command`]) and
//!   file surgery ([`xor_bytes`]).
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use corekv::backend::{KeyOrder, ReadTxn, Tree};

/// Reads a count from the environment variable `var` (a test's iteration knob), or `default`.
pub fn iters(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

/// Runs `fut_gen()` to completion on a new glommio executor (its own thread) and returns its
/// output; a panic inside is re-raised on the caller's thread with its original payload.
pub fn on_executor<G, F, T>(fut_gen: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("corekv-test")
        .spawn(fut_gen)
        .expect("start a glommio executor");
    match handle.join() {
        Ok(v) => v,
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
            std::panic::resume_unwind(p)
        }
        Err(e) => panic!("glommio executor failed: {e}"),
    }
}

/// A fresh temporary directory for one test's files (removed on drop).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corekv-backend-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// SplitMix64: a tiny deterministic generator, so that data is a pure function of a seed
/// (the crash test rebuilds a child's writes from txn numbers alone).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// `len` deterministic pseudo-random bytes derived from `seed`.
pub fn det_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ len as u64);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A key as the model orders it: bytewise, or (prefix, u64) for `PrefixThenU64`. The derived
/// `Ord` of `(Vec<u8>, u64)` is exactly "prefix bytewise, then the number".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SortKey {
    /// A key of a `Bytewise` tree.
    Bytes(Vec<u8>),
    /// A key of a `PrefixThenU64` tree, split into its prefix and big-endian suffix.
    PrefixU64(Vec<u8>, u64),
}

impl SortKey {
    /// The key under `order`. Panics (a test bug) if a `PrefixThenU64` key is shorter than 8
    /// bytes: the model only ever builds well-formed keys.
    pub fn new(order: KeyOrder, key: &[u8]) -> SortKey {
        match order {
            KeyOrder::Bytewise => SortKey::Bytes(key.to_vec()),
            KeyOrder::PrefixThenU64 => {
                assert!(
                    key.len() >= 8,
                    "model: PrefixThenU64 key {key:?} shorter than 8"
                );
                let (p, n) = key.split_at(key.len() - 8);
                SortKey::PrefixU64(p.to_vec(), u64::from_be_bytes(n.try_into().unwrap()))
            }
        }
    }

    /// The key's bytes as stored in the backend.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            SortKey::Bytes(b) => b.clone(),
            SortKey::PrefixU64(p, n) => {
                let mut k = p.clone();
                k.extend_from_slice(&n.to_be_bytes());
                k
            }
        }
    }
}

/// A `PrefixThenU64` key: `prefix ++ n` (big-endian).
pub fn pkey(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The model's comparison of two keys under `order`.
pub fn model_compare(order: KeyOrder, a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    SortKey::new(order, a).cmp(&SortKey::new(order, b))
}

/// One modelled tree: its order and its entries (values shared so snapshots clone cheaply).
#[derive(Clone, Debug)]
pub struct ModelTree {
    /// The order the tree was created with.
    pub order: KeyOrder,
    /// Entries by model order.
    pub entries: BTreeMap<SortKey, Arc<[u8]>>,
}

impl ModelTree {
    /// An empty tree.
    pub fn new(order: KeyOrder) -> ModelTree {
        ModelTree {
            order,
            entries: BTreeMap::new(),
        }
    }

    /// Inserts or replaces.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.entries
            .insert(SortKey::new(self.order, key), Arc::from(value));
    }

    /// Removes; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.entries
            .remove(&SortKey::new(self.order, key))
            .is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .get(&SortKey::new(self.order, key))
            .map(|v| &**v)
    }

    /// The `i % len`-th key (for picking existing keys), or `None` if empty.
    pub fn nth_key(&self, i: usize) -> Option<Vec<u8>> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries
            .keys()
            .nth(i % self.entries.len())
            .map(SortKey::bytes)
    }

    /// Entries with keys in `(lo, hi)`, in order. An empty or inverted range yields nothing
    /// (where `BTreeMap::range` would panic).
    pub fn range(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Vec<(Vec<u8>, Arc<[u8]>)> {
        let conv = |b: Bound<&[u8]>| match b {
            Bound::Included(k) => Bound::Included(SortKey::new(self.order, k)),
            Bound::Excluded(k) => Bound::Excluded(SortKey::new(self.order, k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lo, hi) = (conv(lo), conv(hi));
        let empty = match (&lo, &hi) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        };
        if empty {
            return Vec::new();
        }
        self.entries
            .range((lo, hi))
            .map(|(k, v)| (k.bytes(), v.clone()))
            .collect()
    }
}

/// A model of every named tree in one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Trees by name.
    pub trees: BTreeMap<Vec<u8>, ModelTree>,
}

impl Model {
    /// The tree `name`, created empty with `order` if absent (like `WriteTxn::open_tree`).
    pub fn tree_mut(&mut self, name: &[u8], order: KeyOrder) -> &mut ModelTree {
        let t = self
            .trees
            .entry(name.to_vec())
            .or_insert_with(|| ModelTree::new(order));
        assert_eq!(
            t.order, order,
            "model: tree {name:?} reopened with another order"
        );
        t
    }
}

/// Short printable form of a key or value for messages.
pub fn show(b: &[u8]) -> String {
    if b.len() <= 24 {
        format!("{b:?}")
    } else {
        format!("{:?}..({} bytes)", &b[..24], b.len())
    }
}

fn same_value(got: &[u8], want: &[u8]) -> bool {
    got.len() == want.len() && got == want
}

/// Compares a list of entries read from the backend with the model's list.
pub fn compare_entries(
    what: &str,
    got: &[(&[u8], &[u8])],
    want: &[(Vec<u8>, Arc<[u8]>)],
) -> Result<(), String> {
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        if g.0 != &w.0[..] {
            return Err(format!(
                "{what}: entry {i}: key {} but the model has {}",
                show(g.0),
                show(&w.0)
            ));
        }
        if !same_value(g.1, &w.1) {
            return Err(format!(
                "{what}: entry {i} (key {}): value {} but the model has {}",
                show(g.0),
                show(g.1),
                show(&w.1)
            ));
        }
    }
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} entries but the model has {} (first extra/missing key: {})",
            got.len(),
            want.len(),
            if got.len() > want.len() {
                show(got[want.len()].0)
            } else {
                show(&want[got.len()].0)
            }
        ));
    }
    Ok(())
}

/// Entries borrowed from a snapshot.
pub type Entries<'t> = Vec<(&'t [u8], &'t [u8])>;

/// Collects a whole range iteration, failing on the first error item.
pub fn collect_range<'t>(
    what: &str,
    it: impl Iterator<Item = corekv::backend::Result<(&'t [u8], &'t [u8])>>,
) -> Result<Entries<'t>, String> {
    let mut out = Vec::new();
    for item in it {
        out.push(item.map_err(|e| format!("{what}: error after {} entries: {e}", out.len()))?);
    }
    Ok(out)
}

/// Checks one tree of a snapshot against the model through every read path: full forward and
/// backward range, count, and a get of every key.
pub fn verify_tree(tree: &Tree<'_>, m: &ModelTree, what: &str) -> Result<(), String> {
    let want = m.range(Bound::Unbounded, Bound::Unbounded);
    let fwd = collect_range(
        &format!("{what}: range(..)"),
        tree.range(..)
            .map_err(|e| format!("{what}: range(..): {e}"))?,
    )?;
    compare_entries(&format!("{what}: range(..)"), &fwd, &want)?;
    let mut back = collect_range(
        &format!("{what}: range(..).rev()"),
        tree.range(..)
            .map_err(|e| format!("{what}: range(..).rev(): {e}"))?
            .rev(),
    )?;
    back.reverse();
    compare_entries(&format!("{what}: range(..).rev() (reversed)"), &back, &want)?;
    let n = tree
        .count(..)
        .map_err(|e| format!("{what}: count(..): {e}"))?;
    if n != want.len() as u64 {
        return Err(format!("{what}: count(..) = {n}, model has {}", want.len()));
    }
    for (k, v) in &want {
        match tree.get(k) {
            Ok(Some(got)) if same_value(got, v) => {}
            Ok(Some(got)) => {
                return Err(format!(
                    "{what}: get({}) = {} but the model has {}",
                    show(k),
                    show(got),
                    show(v)
                ))
            }
            Ok(None) => return Err(format!("{what}: get({}) = None", show(k))),
            Err(e) => return Err(format!("{what}: get({}): {e}", show(k))),
        }
    }
    Ok(())
}

/// Checks a whole snapshot against the model: every modelled tree, and that each name in
/// `absent` (known names not in the model) has no tree.
pub fn verify_snapshot(txn: &ReadTxn, model: &Model, absent: &[&[u8]]) -> Result<(), String> {
    for (name, m) in &model.trees {
        let what = format!("snapshot txid {} tree {}", txn.txid(), show(name));
        let tree = txn
            .tree(name)
            .map_err(|e| format!("{what}: tree(): {e}"))?
            .ok_or_else(|| format!("{what}: tree() = None but the model has it"))?;
        verify_tree(&tree, m, &what)?;
    }
    for name in absent {
        if model.trees.contains_key(*name) {
            continue;
        }
        match txn.tree(name) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(format!(
                    "snapshot txid {}: tree {} exists but the model has none",
                    txn.txid(),
                    show(name)
                ))
            }
            Err(e) => return Err(format!("tree({}): {e}", show(name))),
        }
    }
    Ok(())
}

/// A command that re-runs this test binary, running only the test `test_name` (a child test
/// that returns at once unless the environment variable its caller sets is present).
pub fn child_command(test_name: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut c = std::process::Command::new(exe);
    c.args([
        "--exact",
        test_name,
        "--nocapture",
        "--include-ignored",
        "--test-threads=1",
    ]);
    c
}

/// XORs `mask` into `len` bytes of `path` starting at `offset`.
pub fn xor_bytes(path: &Path, offset: u64, len: usize, mask: u8) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {} bytes at {offset} of {}: {e}", len, path.display()));
    for b in &mut buf {
        *b ^= mask;
    }
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

/// A deadline helper: the time after which a waiting test gives up and fails.
pub fn deadline(secs: u64) -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(secs)
}

/// Compares two models tree by tree (names, then entries in order).
pub fn compare_models(got: &Model, want: &Model) -> Result<(), String> {
    let gn: Vec<_> = got.trees.keys().map(|k| show(k)).collect();
    let wn: Vec<_> = want.trees.keys().map(|k| show(k)).collect();
    if gn != wn {
        return Err(format!("trees {gn:?}, expected {wn:?}"));
    }
    for (name, gt) in &got.trees {
        let wt = &want.trees[name];
        let g = gt.range(Bound::Unbounded, Bound::Unbounded);
        let w = wt.range(Bound::Unbounded, Bound::Unbounded);
        let g_ref: Vec<(&[u8], &[u8])> = g.iter().map(|(k, v)| (k.as_slice(), &**v)).collect();
        compare_entries(&format!("tree {}", show(name)), &g_ref, &w)?;
    }
    Ok(())
}

/// Copies the trees `names` (with their orders) of a snapshot into a model; trees absent from
/// the snapshot are absent from the model. Any read error is returned.
pub fn snapshot_to_model(txn: &ReadTxn, names: &[(&[u8], KeyOrder)]) -> Result<Model, String> {
    let mut m = Model::default();
    for (name, order) in names {
        let Some(t) = txn
            .tree(name)
            .map_err(|e| format!("tree({}): {e}", show(name)))?
        else {
            continue;
        };
        let mt = m.tree_mut(name, *order);
        for item in t.range(..).map_err(|e| format!("range: {e}"))? {
            let (k, v) = item.map_err(|e| format!("tree {} range item: {e}", show(name)))?;
            mt.put(k, v);
        }
    }
    Ok(m)
}
