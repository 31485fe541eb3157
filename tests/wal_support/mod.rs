//! Shared helpers for the WAL integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use corekv::wal::{Options, Record, RecoveryInfo, Wal, WalError};
use glommio::{LocalExecutorBuilder, Placement};

/// Runs `f` on a glommio executor on a brand-new thread, so glommio's per-thread state
/// (including its polled-I/O probe cache) starts fresh for every test.
pub fn run_fresh<G, F, T>(f: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .expect("start executor")
        .join()
        .expect("executor thread")
}

/// Options with a small segment so tests roll over often.
pub fn small_opts(segment_size: u64) -> Options {
    Options {
        segment_size,
        max_batch_bytes: (segment_size / 2) as usize,
        max_queued_bytes: segment_size as usize,
        // Every group through the I/O thread; tests with default options cover io_uring.
        io_thread_min_records: 0,
        ..Options::default()
    }
}

/// Opens the WAL and collects everything replayed.
pub async fn open_collect(
    dir: &Path,
    opts: Options,
) -> Result<(Wal, Vec<Record>, RecoveryInfo), WalError> {
    let mut got = Vec::new();
    let (wal, info) = Wal::open(dir, opts, |r| got.push(r)).await?;
    Ok((wal, got, info))
}

/// An entry record whose data is derived from `index`, so damage is detectable.
pub fn entry(index: u64, len: usize) -> Record {
    Record::Entry {
        index,
        term: 1 + index / 100,
        data: (0..len).map(|i| (index as usize * 31 + i) as u8).collect(),
    }
}

/// Reads an env var as a count, with a default.
pub fn iters(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A temporary data directory on the real disk (not tmpfs: O_DIRECT must be exercised).
pub fn tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("COREKV_TEST_TMP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("corekv-wal-")
        .tempdir_in(base)
        .expect("tempdir")
}
