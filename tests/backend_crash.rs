//! Crash consistency: a child process commits in a loop and is killed with SIGKILL at random
//! moments; after every kill the file must pass `check()` and hold exactly the state after
//! some transaction `k` the child performed, with `k` at least the last sync the child saw
//! return.
//!
//! The child (the test `crash_child`, re-executed from this binary with
//! `COREKV_CRASH_CHILD_DB` set) opens the file, reads the marker of the last transaction it
//! holds, and continues from the next number: transaction `n`'s changes are a pure function of
//! `n` (and the state before it), so the parent rebuilds the expected state for any `k` by
//! replaying `1..=k`. The child prints `crashlog: start <k>` after opening, `crashlog:
//! published <n>` after each publish returns and `crashlog: synced <n>` after each sync
//! returns (one line, flushed, each).
//!
//! Knob: `COREKV_CRASH_ITERS` (kills, default 16).

// Explicit drops release a lock, pin or write transaction; against the API skeleton these
// types have no drop glue yet, which is all this lint sees.
#![allow(clippy::drop_non_drop)]

mod backend_support;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backend_support::*;
use corekv::backend::{Backend, KeyOrder, Options, WriteTxn, PAGE_SIZE};

const CHILD_ENV: &str = "COREKV_CRASH_CHILD_DB";
/// Set for a child that overlaps syncs with publishes.
const OVERLAP_ENV: &str = "COREKV_CRASH_OVERLAP";
/// Syncs a child with overlapping syncs has in flight at most.
const MAX_OUTSTANDING_SYNCS: usize = 2;
/// Marks the child's progress lines in its stdout (which also carries the harness's output).
const LOG_TAG: &str = "crashlog:";
/// A child that is never killed stops after this many transactions (a runaway guard).
const CHILD_MAX_TXNS: u64 = 20_000;
/// Transactions between two entries of the `b` tree being inserted and deleted again.
const B_WINDOW: u64 = 100;
const A_KEYS: u64 = 300;
/// How long the parent waits for the child's next line before failing.
const CHILD_STALL_SECS: u64 = 60;

const A: (&[u8], KeyOrder) = (b"a", KeyOrder::Bytewise);
const B: (&[u8], KeyOrder) = (b"b", KeyOrder::PrefixThenU64);
const C: (&[u8], KeyOrder) = (b"c", KeyOrder::Bytewise);
const META: (&[u8], KeyOrder) = (b"meta", KeyOrder::Bytewise);

/// Whether the child syncs after transaction `n` (every 1 to 4 transactions).
fn syncs_after(n: u64) -> bool {
    Rng::new(n ^ 0xC0FFEE).below(3) == 0 || n.is_multiple_of(4)
}

/// One change of a transaction.
enum Change {
    Put(&'static [u8], KeyOrder, Vec<u8>, Vec<u8>),
    Delete(&'static [u8], KeyOrder, Vec<u8>),
    DropTree(&'static [u8]),
}

/// The changes of transaction `n`: a pure function of `n`.
fn txn_changes(n: u64) -> Vec<Change> {
    let mut rng = Rng::new(n);
    let mut out = Vec::new();
    for j in 0..1 + rng.below(5) {
        let key = format!("a/{:04}", rng.below(A_KEYS)).into_bytes();
        if rng.one_in(4) {
            out.push(Change::Delete(A.0, A.1, key));
        } else {
            let len = match rng.below(100) {
                0..=74 => rng.below(300) as usize,
                75..=89 => [0, 1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1][rng.below(5) as usize],
                90..=98 => 5000 + rng.below(45_000) as usize,
                _ => 300 * 1024,
            };
            out.push(Change::Put(A.0, A.1, key, det_bytes(n << 4 | j, len)));
        }
    }
    // A sliding window of revision keys: insert (n), delete the one from B_WINDOW txns ago.
    out.push(Change::Put(
        B.0,
        B.1,
        pkey(format!("k{}", n % 20).as_bytes(), n),
        det_bytes(n, 40),
    ));
    if n > B_WINDOW {
        let old = n - B_WINDOW;
        out.push(Change::Delete(
            B.0,
            B.1,
            pkey(format!("k{}", old % 20).as_bytes(), old),
        ));
    }
    // Tree c is dropped every 25 txns (freeing its pages) and refilled.
    if n.is_multiple_of(25) {
        out.push(Change::DropTree(C.0));
    }
    out.push(Change::Put(
        C.0,
        C.1,
        format!("c/{}", n % 60).into_bytes(),
        det_bytes(n ^ 0xC, 100 + (n % 7) as usize * 700),
    ));
    out.push(Change::Put(
        META.0,
        META.1,
        b"txn".to_vec(),
        n.to_be_bytes().to_vec(),
    ));
    out
}

fn apply_to_model(m: &mut Model, changes: &[Change]) {
    for c in changes {
        match c {
            Change::Put(t, o, k, v) => m.tree_mut(t, *o).put(k, v),
            Change::Delete(t, o, k) => {
                m.tree_mut(t, *o).delete(k);
            }
            Change::DropTree(t) => {
                m.trees.remove(*t);
            }
        }
    }
}

fn apply_to_txn(w: &mut WriteTxn<'_>, changes: &[Change]) -> corekv::backend::Result<()> {
    for c in changes {
        match c {
            Change::Put(t, o, k, v) => w.open_tree(t, *o)?.put(k, v)?,
            Change::Delete(t, o, k) => {
                w.open_tree(t, *o)?.delete(k)?;
            }
            Change::DropTree(t) => {
                w.drop_tree(t)?;
            }
        }
    }
    Ok(())
}

/// The marker (last txn number) of the latest snapshot, 0 for a new file.
fn marker(b: &Backend) -> Result<u64, String> {
    let r = b.begin_read().map_err(|e| format!("begin_read: {e}"))?;
    let Some(meta) = r.tree(META.0).map_err(|e| format!("tree(meta): {e}"))? else {
        return Ok(0);
    };
    match meta.get(b"txn").map_err(|e| format!("get(txn): {e}"))? {
        None => Err("meta tree without a txn marker".into()),
        Some(v) => Ok(u64::from_be_bytes(
            v.try_into()
                .map_err(|_| format!("marker of {} bytes", v.len()))?,
        )),
    }
}

/// The overlapping variant also grows its file one page at a time, so kills land around
/// file growth too. The other one syncs with blocking syscalls (`Options::blocking_sync`):
/// its syncs never overlap anything anyway, and so both sync paths are killed mid-way.
fn child_options(overlap: bool) -> Options {
    if overlap {
        Options {
            max_map_size: 16 << 30,
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

/// The child: continue committing from the file's marker until killed. With
/// `COREKV_CRASH_OVERLAP` set, syncs run as separate tasks while the next transactions are
/// built and published (as the applier publishes while a checkpoint runs); up to
/// `MAX_OUTSTANDING_SYNCS` are in flight, and each prints the txn its returned txid belongs
/// to when it completes.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // not started by a crash test
    };
    let overlap = std::env::var(OVERLAP_ENV).is_ok();
    on_executor(move || async move {
        let b = Rc::new(
            Backend::open(&path, child_options(overlap))
                .await
                .unwrap_or_else(|e| panic!("child: open {path}: {e}")),
        );
        let start = marker(&b).unwrap();
        // txid -> txn number, to report what a sync made durable.
        let txn_of: Rc<RefCell<HashMap<u64, u64>>> = Rc::default();
        txn_of
            .borrow_mut()
            .insert(b.begin_read().unwrap().txid(), start);
        // The test harness prints "test crash_child ... " without a newline first.
        println!("\n{LOG_TAG} start {start}");
        let mut syncs = VecDeque::new();
        for n in start + 1..=start + CHILD_MAX_TXNS {
            let mut w = b.begin_write().unwrap();
            apply_to_txn(&mut w, &txn_changes(n)).unwrap_or_else(|e| panic!("txn {n}: {e}"));
            let txid = w.publish().await.unwrap();
            txn_of.borrow_mut().insert(txid, n);
            println!("{LOG_TAG} published {n} txid {txid}");
            if syncs_after(n) {
                let (b, txn_of) = (b.clone(), txn_of.clone());
                let sync = async move {
                    let t = b.sync().await.unwrap();
                    let done = *txn_of
                        .borrow()
                        .get(&t)
                        .unwrap_or_else(|| panic!("sync returned txid {t}, never published"));
                    println!("{LOG_TAG} synced {done}");
                };
                if overlap {
                    syncs.push_back(glommio::spawn_local(sync));
                    while syncs.len() > MAX_OUTSTANDING_SYNCS {
                        syncs.pop_front().unwrap().await;
                    }
                } else {
                    sync.await;
                }
            }
        }
    });
}

/// What the parent learned from one child run.
#[derive(Debug, Default)]
struct ChildLog {
    start: Option<u64>,
    last_published: Option<u64>,
    last_synced: Option<u64>,
    synced_lines: u64,
}

impl ChildLog {
    fn absorb(&mut self, line: &str) {
        let Some(at) = line.find(LOG_TAG) else {
            return;
        };
        let mut it = line[at + LOG_TAG.len()..].split_whitespace();
        let (Some(word), Some(num)) = (it.next(), it.next()) else {
            return;
        };
        let Ok(n) = num.parse::<u64>() else { return };
        match word {
            "start" => self.start = Some(n),
            "published" => self.last_published = Some(n),
            "synced" => {
                // Overlapping syncs may report out of order.
                self.last_synced = self.last_synced.max(Some(n));
                self.synced_lines += 1;
            }
            _ => {}
        }
    }
}

/// The parent: kill the child at random moments and check what survives.
#[test]
fn crash_sigkill_keeps_a_synced_prefix() {
    crash_loop(false);
}

/// The same with syncs overlapping later publishes: a publish while a sync is writing its
/// meta must not reuse a page the durable (or the fallback) meta still needs.
#[test]
fn crash_sigkill_with_overlapping_syncs() {
    crash_loop(true);
}

fn crash_loop(overlap: bool) {
    let kills = iters("COREKV_CRASH_ITERS", 16);
    let dir = temp_dir();
    let path = dir.path().join("crash.corekv");
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    // The model at `model_k`, advanced incrementally (k only grows if the backend is right).
    let mut model = Model::default();
    let mut model_k = 0u64;
    // The durable floor: the last state known to be synced.
    let mut floor = 0u64;
    for iter in 0..kills {
        let mut cmd = child_command("crash_child");
        if overlap {
            cmd.env(OVERLAP_ENV, "1");
        }
        let mut child = cmd
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        // Kill after a random number of acknowledged syncs (0 = right after start), plus a
        // random sub-millisecond jitter so the kill lands anywhere in a txn or a sync.
        let target_syncs = rng.below(12);
        let mut log = ChildLog::default();
        let mut stall = Instant::now() + Duration::from_secs(CHILD_STALL_SECS);
        let mut exited_early = false;
        while log.start.is_none() || log.synced_lines < target_syncs {
            match rx.recv_timeout(stall.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    log.absorb(&line);
                    stall = Instant::now() + Duration::from_secs(CHILD_STALL_SECS);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    exited_early = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("iteration {iter}: the child printed nothing for {CHILD_STALL_SECS}s");
                }
            }
        }
        if !exited_early {
            let jitter = rng.below(5000);
            if jitter > 0 {
                // Not a wait for anything: a random kill moment.
                std::thread::sleep(Duration::from_micros(jitter));
            }
            child.kill().expect("SIGKILL the child");
        }
        let status = child.wait().unwrap();
        out_thread.join().unwrap();
        for line in rx.try_iter() {
            log.absorb(&line);
        }
        let stderr_text = err_thread.join().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "iteration {iter}: the child was not killed by SIGKILL but ended with \
                 {status:?}; log {log:?}; stderr:\n{stderr_text}"
            );
        }
        let start = log
            .start
            .unwrap_or_else(|| panic!("iteration {iter}: the child never started: {stderr_text}"));
        assert!(
            start >= floor,
            "iteration {iter}: the child reopened at txn {start}, below the synced floor {floor}"
        );
        let low = log.last_synced.unwrap_or(start).max(start);
        let high = log.last_published.unwrap_or(start).max(start);

        // Reopen in this process and check what survived.
        let p = path.clone();
        let (k, report_problems, state) = on_executor(move || async move {
            let b = Backend::open(&p, Options::default())
                .await
                .unwrap_or_else(|e| panic!("reopen after SIGKILL: {e}"));
            let report = b.check().expect("check()");
            let k = marker(&b).unwrap();
            let r = b.begin_read().unwrap();
            // Copied out so it can be compared after the executor ends.
            let state = snapshot_to_model(&r, &[A, B, C, META])
                .unwrap_or_else(|e| panic!("reading the recovered state: {e}"));
            (k, report.problems, state)
        });
        assert!(
            report_problems.is_empty(),
            "iteration {iter}: check() after SIGKILL: {report_problems:?}"
        );
        assert!(
            k >= low && k <= high,
            "iteration {iter}: recovered txn {k}, but the child acknowledged sync of {low} and \
             published at most {high} (log {log:?})"
        );
        if k < model_k {
            model = Model::default();
            model_k = 0;
        }
        while model_k < k {
            model_k += 1;
            apply_to_model(&mut model, &txn_changes(model_k));
        }
        compare_models(&state, &model).unwrap_or_else(|e| {
            panic!("iteration {iter}: recovered state (marker {k}) is not the state after txn {k}: {e}")
        });
        floor = k;
        eprintln!(
            "crash iteration {iter} (overlap {overlap}): started at {start}, killed after {} syncs (synced {low}, \
             published {high}), recovered {k}",
            log.synced_lines
        );
    }
}

/// A crash while a new file is being created must not brick the path. `Backend::open` writes
/// the two meta pages of a new file (two writes), syncs, and only then sizes the file, so a
/// SIGKILL or power cut during creation leaves at most two pages: zeros, or the first meta
/// page alone. Such a file holds no data; opening it again must give an empty database.
#[test]
fn crash_during_file_creation_leaves_an_openable_file() {
    let dir = temp_dir();
    // The first meta page exactly as a new file has it.
    let fresh = dir.path().join("fresh.corekv");
    let f2 = fresh.clone();
    on_executor(move || async move {
        drop(Backend::open(&f2, Options::default()).await.unwrap());
    });
    let first_meta = std::fs::read(&fresh).unwrap()[..PAGE_SIZE].to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("1 zero byte", vec![0u8; 1]),
        ("a partial zero page", vec![0u8; 100]),
        ("one zero page", vec![0u8; PAGE_SIZE]),
        ("two zero pages", vec![0u8; 2 * PAGE_SIZE]),
        ("only the first meta page written", first_meta),
    ];
    let mut failures = Vec::new();
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("new{i}.corekv"));
        std::fs::write(&path, &bytes).unwrap();
        let p = path.clone();
        let res = on_executor(move || async move {
            let b = Backend::open(&p, Options::default())
                .await
                .map_err(|e| e.to_string())?;
            let r = b.begin_read().unwrap();
            let empty = r.tree(META.0).unwrap().is_none();
            let problems = b.check().unwrap().problems;
            Ok::<_, String>((empty, problems))
        });
        match res {
            Ok((empty, problems)) => {
                assert!(empty && problems.is_empty(), "{what}: {problems:?}");
            }
            Err(e) => failures.push(format!("{what} ({} bytes): {e}", bytes.len())),
        }
    }
    assert!(
        failures.is_empty(),
        "files a crash during creation can leave cannot be opened:\n{}",
        failures.join("\n")
    );
}
