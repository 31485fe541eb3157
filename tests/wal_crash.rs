//! Crash test: a child process appends from many concurrent tasks and prints each batch id once
//! its future resolves; it is SIGKILLed at random moments. After recovery every printed id is
//! present, every batch is whole, every record intact.
//! Iterations: COREKV_WAL_CRASH_ITERS (default 8). Seed: COREKV_WAL_CRASH_SEED.

mod wal_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;

use corekv::wal::Record;
use wal_support::{iters, open_collect, run_fresh, small_opts, tempdir};

const CHILD_DIR_ENV: &str = "COREKV_WAL_CRASH_CHILD_DIR";
const CHILD_ITER_ENV: &str = "COREKV_WAL_CRASH_CHILD_ITER";
const SEGMENT: u64 = 256 << 10;
const TASKS: u64 = 32;

fn batch_len(id: u64) -> u64 {
    1 + id % 3
}

fn data(id: u64, j: u64) -> Vec<u8> {
    let len = ((id.wrapping_mul(2654435761) >> 7) % 3000) as usize;
    (0..len)
        .map(|i| (id as usize ^ (i * 7) ^ j as usize) as u8)
        .collect()
}

fn batch(id: u64) -> Vec<Record> {
    (0..batch_len(id))
        .map(|j| Record::Entry {
            index: id,
            term: j,
            data: data(id, j),
        })
        .collect()
}

/// The child: appends forever from TASKS tasks; prints `ACK <id>` after each durable batch.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let iter: u64 = std::env::var(CHILD_ITER_ENV).unwrap().parse().unwrap();
    run_fresh(move || async move {
        let (wal, _, _) = open_collect(std::path::Path::new(&dir), small_opts(SEGMENT))
            .await
            .unwrap();
        let wal = Rc::new(wal);
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let wal = wal.clone();
            tasks.push(glommio::spawn_local(async move {
                // Bounded; the parent kills us long before.
                for n in 0..1_000_000u64 {
                    let id = (iter << 40) | (t << 24) | n;
                    wal.append(batch(id)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn crash_recovery_keeps_every_acknowledged_batch() {
    let dir = tempdir();
    let seed = std::env::var("COREKV_WAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (COREKV_WAL_CRASH_SEED)");
    let mut rng = Rng(seed);
    let mut acked: HashSet<u64> = HashSet::new();
    let exe = std::env::current_exe().unwrap();
    for iter in 1..=iters("COREKV_WAL_CRASH_ITERS", 8) {
        let kill_after = rng.next() % 400;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ITER_ENV, iter.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        if kill_after == 0 {
            child.kill().unwrap();
        }
        for line in lines.by_ref() {
            let line = line.unwrap();
            // libtest may print "test crash_child ... " in front of the first line.
            if let Some(at) = line.rfind("ACK ") {
                let id = &line[at + 4..];
                acked.insert(
                    id.parse()
                        .unwrap_or_else(|e| panic!("bad line {line:?}: {e}")),
                );
                seen += 1;
                if seen == kill_after {
                    child.kill().unwrap(); // SIGKILL
                }
            }
        }
        // EOF: every line the child printed before dying has been read.
        let status = child.wait().unwrap();
        eprintln!(
            "iteration {iter}: kill after {kill_after} acks, {seen} acks read, {} total",
            acked.len()
        );
        assert!(!status.success(), "child exited by itself: {status:?}");

        let path = dir.path().to_path_buf();
        let want = acked.clone();
        run_fresh(move || async move {
            let (wal, got, _) = open_collect(&path, small_opts(SEGMENT)).await.unwrap();
            let mut found = HashSet::new();
            let mut i = 0;
            while i < got.len() {
                let Record::Entry { index: id, .. } = got[i] else {
                    panic!("unexpected record {:?}", got[i]);
                };
                let b = batch(id);
                assert!(i + b.len() <= got.len(), "partial batch {id} at the end");
                assert_eq!(got[i..i + b.len()], b[..], "batch {id} damaged or partial");
                assert!(found.insert(id), "batch {id} replayed twice");
                i += b.len();
            }
            let missing: Vec<_> = want.difference(&found).collect();
            assert!(missing.is_empty(), "acknowledged batches lost: {missing:?}");
            wal.close().await;
        });
    }
    assert!(!acked.is_empty());
}
