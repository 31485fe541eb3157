//! Concurrency: reader threads hold snapshots while the writer commits thousands of
//! transactions.
//!
//! The writer (on a glommio executor) applies deterministic transactions to three trees and,
//! *before* publishing transaction `n`, records the digest (entry count and an
//! order-independent sum of entry hashes, per tree) of the state after `n`; every snapshot
//! carries `n` in a marker key. Reader threads (`std::thread`) repeatedly take a snapshot,
//! check that its full contents hash to exactly the digest recorded for its marker, keep it
//! (and some values borrowed from it) while the writer runs on for a random number of
//! transactions, and check the snapshot and the borrowed bytes again: a snapshot that changed,
//! or a freed page reused under a reader, shows up as a digest or byte mismatch. A long reader
//! holds the first snapshot for the writer's whole run: the writer must finish regardless
//! (checked by progress, not by time).
//!
//! Knob: `COREKV_CONCURRENCY_ITERS` (writer transactions, default 2000).

// Explicit drops release a lock, pin or write transaction; against the API skeleton these
// types have no drop glue yet, which is all this lint sees.
#![allow(clippy::drop_non_drop)]

mod backend_support;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use backend_support::*;
use corekv::backend::{Backend, KeyOrder, Options, ReadTxn};

const TREES: [(&[u8], KeyOrder); 3] = [
    (b"data", KeyOrder::Bytewise),
    (b"mvcc", KeyOrder::PrefixThenU64),
    (b"meta", KeyOrder::Bytewise),
];
const DATA_KEYS: u64 = 400;
const MVCC_MAX_ENTRIES: usize = 500;
const SYNC_EVERY: u64 = 64;
/// How long a waiting thread tolerates no progress before it fails the test.
const STALL_SECS: u64 = 120;

/// Count and wrapping sum of entry hashes, per tree (in `TREES` order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest([(u64, u64); 3]);

fn entry_hash(tree: usize, key: &[u8], value: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    tree.hash(&mut h);
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Progress {
    /// Highest transaction number published.
    published: u64,
    /// The writer has stopped (finished or failed).
    done: bool,
    /// Why the writer failed, if it did.
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// `expected[n]`: digest of the state after transaction `n` (pushed before publish).
    expected: Mutex<Vec<Digest>>,
    /// `txids[n]`: txid returned by the publish of transaction `n`.
    txids: Mutex<Vec<u64>>,
    progress: Mutex<Progress>,
    cond: Condvar,
}

impl Shared {
    /// Waits until `pred(progress)` holds; fails if nothing changes for `STALL_SECS`.
    fn wait_for(&self, what: &str, pred: impl Fn(&Progress) -> bool) -> Result<(), String> {
        let mut p = self.progress.lock().unwrap();
        let mut last = p.published;
        let mut stall_deadline = deadline(STALL_SECS);
        while !pred(&p) {
            if p.published != last {
                last = p.published;
                stall_deadline = deadline(STALL_SECS);
            }
            let now = Instant::now();
            if now >= stall_deadline {
                return Err(format!(
                    "waiting for {what}: the writer made no progress for {STALL_SECS}s (at txn {})",
                    p.published
                ));
            }
            p = self.cond.wait_timeout(p, stall_deadline - now).unwrap().0;
        }
        Ok(())
    }

    fn finish(&self, failed: Option<String>) {
        let mut p = self.progress.lock().unwrap();
        p.done = true;
        if p.failed.is_none() {
            p.failed = failed;
        }
        self.cond.notify_all();
    }
}

/// Marks the writer done even if it panics, so readers stop waiting.
struct DoneGuard(Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let failed = std::thread::panicking().then(|| "writer panicked".to_string());
        self.0.finish(failed);
    }
}

/// The writer's model: the three trees and the running digest.
struct WriterModel {
    model: Model,
    digest: Digest,
}

impl WriterModel {
    fn put(&mut self, ti: usize, key: &[u8], value: &[u8]) {
        let (name, order) = TREES[ti];
        let t = self.model.tree_mut(name, order);
        let d = &mut self.digest.0[ti];
        if let Some(old) = t.get(key) {
            d.0 -= 1;
            d.1 = d.1.wrapping_sub(entry_hash(ti, key, old));
        }
        t.put(key, value);
        d.0 += 1;
        d.1 = d.1.wrapping_add(entry_hash(ti, key, value));
    }

    fn delete(&mut self, ti: usize, key: &[u8]) -> bool {
        let (name, order) = TREES[ti];
        let t = self.model.tree_mut(name, order);
        let d = &mut self.digest.0[ti];
        if let Some(old) = t.get(key) {
            d.0 -= 1;
            d.1 = d.1.wrapping_sub(entry_hash(ti, key, old));
        }
        t.delete(key)
    }
}

fn data_key(i: u64) -> Vec<u8> {
    format!("data/{i:05}").into_bytes()
}

fn data_value(n: u64, j: u64, rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(100) {
        0..=69 => rng.below(200),
        70..=96 => 200 + rng.below(1800),
        _ => 5000 + rng.below(20_000), // overflow pages
    };
    det_bytes(n << 8 | j, len as usize)
}

/// The changes of transaction `n` (`n == 0`: the initial fill), applied to the model and
/// recorded as (tree, key, Some(value) | None for delete).
type Change = (usize, Vec<u8>, Option<Vec<u8>>);

fn txn_changes(n: u64, m: &mut WriterModel) -> Vec<Change> {
    let mut rng = Rng::new(n);
    let mut out = Vec::new();
    if n == 0 {
        for i in 0..DATA_KEYS {
            out.push((0, data_key(i), Some(data_value(0, i, &mut rng))));
        }
        out.push((1, pkey(b"user/0", 0), Some(b"first".to_vec())));
    } else {
        for j in 0..1 + rng.below(6) {
            match rng.below(10) {
                0..=4 => {
                    let k = data_key(rng.below(DATA_KEYS));
                    out.push((0, k, Some(data_value(n, j, &mut rng))));
                }
                5..=6 => out.push((0, data_key(rng.below(DATA_KEYS)), None)),
                _ => {
                    let prefix = format!("user/{}", rng.below(50));
                    let len = rng.below(64) as usize;
                    out.push((1, pkey(prefix.as_bytes(), n), Some(det_bytes(n, len))));
                }
            }
        }
    }
    out.push((2, b"txn".to_vec(), Some(n.to_be_bytes().to_vec())));
    for (ti, k, v) in &out {
        match v {
            Some(v) => m.put(*ti, k, v),
            None => {
                m.delete(*ti, k);
            }
        }
    }
    // Keep the mvcc tree bounded: drop its oldest-ordered entries.
    let mvcc = m.model.tree_mut(TREES[1].0, TREES[1].1);
    let mut extra = Vec::new();
    if mvcc.entries.len() > MVCC_MAX_ENTRIES {
        extra.push(mvcc.nth_key(0).unwrap());
    }
    for k in extra {
        m.delete(1, &k);
        out.push((1, k, None));
    }
    out
}

async fn publish_txn(b: &Backend, changes: &[Change]) -> Result<u64, String> {
    let mut w = b.begin_write().map_err(|e| format!("begin_write: {e}"))?;
    for (ti, k, v) in changes {
        let (name, order) = TREES[*ti];
        let mut t = w
            .open_tree(name, order)
            .map_err(|e| format!("open_tree: {e}"))?;
        match v {
            Some(v) => t.put(k, v).map_err(|e| format!("put: {e}"))?,
            None => {
                t.delete(k).map_err(|e| format!("delete: {e}"))?;
            }
        }
    }
    w.publish().await.map_err(|e| format!("publish: {e}"))
}

/// Reads a snapshot's marker and full contents; returns its txn number after checking the
/// contents against the digest the writer recorded for it.
fn verify_snapshot_digest(r: &ReadTxn, sh: &Shared) -> Result<u64, String> {
    let meta = r
        .tree(b"meta")
        .map_err(|e| format!("tree(meta): {e}"))?
        .ok_or("no meta tree")?;
    let marker = meta
        .get(b"txn")
        .map_err(|e| format!("get(txn): {e}"))?
        .ok_or("no txn marker")?;
    let n = u64::from_be_bytes(
        marker
            .try_into()
            .map_err(|_| format!("marker has {} bytes", marker.len()))?,
    );
    let want = *sh
        .expected
        .lock()
        .unwrap()
        .get(n as usize)
        .ok_or_else(|| format!("snapshot shows txn {n}, which the writer has not recorded"))?;
    let mut got = Digest::default();
    for (ti, (name, order)) in TREES.iter().enumerate() {
        let tree = r
            .tree(name)
            .map_err(|e| format!("tree({}): {e}", show(name)))?
            .ok_or_else(|| format!("txn {n}: tree {} missing", show(name)))?;
        let mut prev: Option<&[u8]> = None;
        for item in tree.range(..).map_err(|e| format!("range: {e}"))? {
            let (k, v) = item.map_err(|e| format!("txn {n}: range item: {e}"))?;
            if let Some(p) = prev {
                if !model_compare(*order, p, k).is_lt() {
                    return Err(format!(
                        "txn {n} tree {}: keys out of order: {} then {}",
                        show(name),
                        show(p),
                        show(k)
                    ));
                }
            }
            prev = Some(k);
            got.0[ti].0 += 1;
            got.0[ti].1 = got.0[ti].1.wrapping_add(entry_hash(ti, k, v));
        }
        let c = tree.count(..).map_err(|e| format!("count: {e}"))?;
        if c != got.0[ti].0 {
            return Err(format!(
                "txn {n} tree {}: count(..) {c} but iteration saw {}",
                show(name),
                got.0[ti].0
            ));
        }
    }
    if got != want {
        return Err(format!(
            "snapshot txid {} (marker txn {n}) contents differ from the writer's record: got \
             {got:?}, want {want:?}",
            r.txid()
        ));
    }
    Ok(n)
}

fn check_txid(r: &ReadTxn, n: u64, sh: &Shared) -> Result<(), String> {
    if let Some(&t) = sh.txids.lock().unwrap().get(n as usize) {
        if t != r.txid() {
            return Err(format!(
                "snapshot with marker {n} has txid {}, publish returned {t}",
                r.txid()
            ));
        }
    }
    Ok(())
}

/// A reader that keeps taking snapshots, holding each for a random stretch of writer
/// progress together with some borrowed values. Returns how many snapshots it verified.
fn hopping_reader(
    id: u64,
    reader: corekv::backend::Reader,
    sh: Arc<Shared>,
) -> Result<u64, String> {
    let mut rng = Rng::new(0xBEEF + id);
    let mut verified = 0;
    // At least one snapshot is verified even if the writer is already done.
    loop {
        let r = reader
            .begin_read()
            .map_err(|e| format!("begin_read: {e}"))?;
        let n = verify_snapshot_digest(&r, &sh)?;
        // Borrow some values zero-copy and keep copies to compare later.
        let data = r
            .tree(b"data")
            .map_err(|e| format!("{e}"))?
            .ok_or("no data tree")?;
        let mut borrowed = Vec::new();
        for _ in 0..8 {
            let k = data_key(rng.below(DATA_KEYS));
            if let Some(v) = data.get(&k).map_err(|e| format!("get: {e}"))? {
                borrowed.push((k, v, v.to_vec()));
            }
        }
        let hold = 1 + rng.below(300);
        sh.wait_for("the writer to move on", |p| {
            p.published >= n + hold || p.done
        })?;
        check_txid(&r, n, &sh)?;
        let again = verify_snapshot_digest(&r, &sh)
            .map_err(|e| format!("reader {id}, snapshot of txn {n} re-read later: {e}"))?;
        if again != n {
            return Err(format!(
                "reader {id}: snapshot marker changed from {n} to {again}"
            ));
        }
        for (k, v, copy) in &borrowed {
            if v != copy {
                return Err(format!(
                    "reader {id}: value of {} borrowed from the snapshot of txn {n} changed \
                     while the snapshot was held",
                    show(k)
                ));
            }
        }
        verified += 1;
        if sh.progress.lock().unwrap().done {
            return Ok(verified);
        }
    }
}

/// Holds `snap` (the first snapshot) for the writer's whole run, checking it at each quarter
/// of the run and after the writer finished.
fn long_reader(snap: ReadTxn, sh: Arc<Shared>, total: u64) -> Result<(), String> {
    let n = verify_snapshot_digest(&snap, &sh)?;
    for q in 1..=4 {
        let target = total * q / 4;
        sh.wait_for("the writer to pass a quarter", |p| {
            p.published >= target || p.done
        })?;
        let again = verify_snapshot_digest(&snap, &sh)
            .map_err(|e| format!("long reader at quarter {q}: {e}"))?;
        if again != n {
            return Err(format!("long reader: marker changed from {n} to {again}"));
        }
    }
    sh.wait_for("the writer to finish", |p| p.done)?;
    let p = sh.progress.lock().unwrap();
    if let Some(f) = &p.failed {
        return Err(format!("writer failed: {f}"));
    }
    if p.published != total {
        return Err(format!(
            "writer stopped at txn {} of {total} while the long reader held txn {n}",
            p.published
        ));
    }
    drop(p);
    verify_snapshot_digest(&snap, &sh).map_err(|e| format!("long reader at the end: {e}"))?;
    Ok(())
}

#[test]
fn readers_see_exact_snapshots_while_writer_commits() {
    let total = iters("COREKV_CONCURRENCY_ITERS", 2000) as u64;
    on_executor(move || async move {
        let dir = temp_dir();
        let path = dir.path().join("conc.corekv");
        // A one-page growth step: the file grows under the readers on most publishes.
        let options = Options {
            max_map_size: 16 << 30,
            grow_step: corekv::backend::PAGE_SIZE as u64,
            ..Options::default()
        };
        let b = Backend::open(&path, options).await.unwrap();
        let sh = Arc::new(Shared::default());
        let mut m = WriterModel {
            model: Model::default(),
            digest: Digest::default(),
        };
        let changes = txn_changes(0, &mut m);
        sh.expected.lock().unwrap().push(m.digest);
        let t0 = publish_txn(&b, &changes).await.unwrap();
        sh.txids.lock().unwrap().push(t0);
        b.sync().await.unwrap();

        let reader = b.reader();
        // The long reader's snapshot is taken here and moved to its thread (ReadTxn: Send).
        let snap = reader.begin_read().unwrap();
        let long = {
            let sh = sh.clone();
            std::thread::spawn(move || long_reader(snap, sh, total))
        };
        let hoppers: Vec<_> = (0..2)
            .map(|id| {
                let (sh, reader) = (sh.clone(), reader.clone());
                std::thread::spawn(move || hopping_reader(id, reader, sh))
            })
            .collect();

        let guard = DoneGuard(sh.clone());
        let mut failure = None;
        for n in 1..=total {
            let changes = txn_changes(n, &mut m);
            sh.expected.lock().unwrap().push(m.digest);
            let txid = match publish_txn(&b, &changes).await {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(format!("txn {n}: {e}"));
                    break;
                }
            };
            sh.txids.lock().unwrap().push(txid);
            {
                let mut p = sh.progress.lock().unwrap();
                p.published = n;
                sh.cond.notify_all();
            }
            if n % SYNC_EVERY == 0 {
                if let Err(e) = b.sync().await {
                    failure = Some(format!("sync after txn {n}: {e}"));
                    break;
                }
            }
        }
        sh.finish(failure.clone());
        drop(guard);

        let long_res = long.join().expect("long reader panicked");
        let mut verified = Vec::new();
        for h in hoppers {
            verified.push(h.join().expect("reader panicked"));
        }
        assert!(failure.is_none(), "writer: {}", failure.unwrap());
        long_res.unwrap();
        for (i, v) in verified.into_iter().enumerate() {
            let v = v.unwrap_or_else(|e| panic!("reader {i}: {e}"));
            assert!(v > 0, "reader {i} verified no snapshot");
        }
        // After the readers are gone the file is still consistent and current.
        let report = b.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let r = b.begin_read().unwrap();
        assert_eq!(verify_snapshot_digest(&r, &sh).unwrap(), total);
    });
}
