//! The backend's writeback thread: starts the kernel's writeback of published pages before a
//! sync asks for it.
//!
//! Every page a publish writes is a buffered write that only [`super::Backend::sync`]'s
//! `fdatasync` makes durable. Left alone, the kernel keeps those pages dirty until then, so a
//! sync has to write everything published since the previous one in one burst. Two callers
//! start that work earlier through one thread per backend:
//! - publish itself, every [`WRITEBACK_KICK_BYTES`] it writes, so the disk is already writing
//!   the first pages of a large transaction while the writer copies the rest (RocksDB's
//!   `bytes_per_sync` does the same for its files);
//! - the server's applier, after it has answered the proposers of each published batch
//!   ([`super::Backend::start_writeback`]), so that the WAL's small write + fdatasync that every
//!   put waits on does not queue behind a 100 ms sync's burst.
//!
//! Durability is unchanged: nothing here makes a page durable or writes a page. The pages a
//! publish wrote are ones the durable meta cannot reach (copy-on-write), and a meta page is
//! written only by a sync, after its data `fdatasync`; so a crash at any point recovers exactly
//! as it would without this thread.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Error;

/// Bytes a publish writes between two kicks of the writeback thread. Measured with
/// `corekv-bench backend --engines corekv --keys 200k --batches 100,10000 --puts 20000`
/// (`perf/backend.md`, "Writeback during publish"): 256 KiB and 1 MiB gave the same
/// 10,000-put commits. A 100-put commit writes ~200 pages, so a 1 MiB threshold never kicks
/// during it; 256 KiB did shorten its publish + sync in the first runs, but a later check of
/// 64-512 KiB could not tell the thresholds apart. 256 KiB is kept: it helped in the first
/// runs and measured no worse than the others since.
pub const WRITEBACK_KICK_BYTES: u64 = 256 * 1024;

/// A thread that starts the kernel's writeback of a file's dirty pages when kicked
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file: it queues the writes and
/// returns without waiting for them, and makes nothing durable).
///
/// Why: see the module comment. In the server, kicked after each publish, the writes reach
/// the disk in small pieces between the WAL's own writes and the periodic sync finds little
/// left to flush (measured: backend sync 6-8 ms -> ~0.4 ms, WAL append p99 ~2.5 ms -> ~0.2 ms
/// at one client, `perf/server.md`).
/// Runs on its own thread because `sync_file_range` may block in the filesystem (block
/// allocation, journal) and must never stall the raft shard's executor.
///
/// Kicks coalesce: while a round is pending, further kicks cost one atomic swap, so the thread
/// runs at most one round per kick and never queues work (no queue to bound).
pub struct Writeback {
    shared: Arc<WritebackShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WritebackShared {
    /// A round was asked for and has not started yet.
    pending: AtomicBool,
    /// The owner is gone: the thread exits.
    stop: AtomicBool,
    /// Rounds that started writeback successfully.
    rounds: AtomicU64,
    /// The first `sync_file_range` failure (later ones are only counted in `failures`).
    first_error: Mutex<Option<String>>,
    /// Rounds that failed.
    failures: AtomicU64,
}

/// Counters of a [`Writeback`] thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WritebackStats {
    /// Rounds that started writeback successfully.
    pub rounds: u64,
    /// Rounds whose `sync_file_range` failed.
    pub failures: u64,
    /// The first failure, with the file's path.
    pub first_error: Option<String>,
}

impl Writeback {
    /// Opens `path` (read-only: starting writeback needs no write access) and starts the
    /// thread. The file must exist; the thread works on the inode, so it keeps working on the
    /// file the backend holds open even while the file grows.
    pub fn start(path: &Path) -> Result<Writeback, Error> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {} for writeback", path.display()), e))?;
        let shared = Arc::new(WritebackShared {
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            first_error: Mutex::new(None),
            failures: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("corekv-writeback".into())
            .spawn(move || writeback_loop(&thread_shared, &file, &path))
            .map_err(|e| Error::io("starting the writeback thread".into(), e))?;
        Ok(Writeback {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for a writeback round; returns at once (one atomic swap when a round is already
    /// pending, else also one wake-up of the thread).
    pub fn kick(&self) {
        if !self.shared.pending.swap(true, Ordering::AcqRel) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> WritebackStats {
        WritebackStats {
            rounds: self.shared.rounds.load(Ordering::Acquire),
            failures: self.shared.failures.load(Ordering::Acquire),
            first_error: self
                .shared
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn writeback_loop(shared: &WritebackShared, file: &std::fs::File, path: &Path) {
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if !shared.pending.swap(false, Ordering::AcqRel) {
            // `unpark` before `park` makes `park` return at once, so a kick between the swap
            // and here is never lost; a spurious return just loops.
            std::thread::park();
            continue;
        }
        // SAFETY: plain syscall on a file descriptor this thread owns for its whole life;
        // offset 0 and length 0 mean "to the end of the file".
        let r =
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if r == 0 {
            shared.rounds.fetch_add(1, Ordering::AcqRel);
        } else {
            // Not a durability problem (the periodic fdatasync makes pages durable and reports
            // I/O errors itself), so the server keeps running; the first error is kept and logged.
            let e = std::io::Error::last_os_error();
            shared.failures.fetch_add(1, Ordering::AcqRel);
            let mut first = shared.first_error.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                let msg = format!(
                    "sync_file_range(SYNC_FILE_RANGE_WRITE) of {}: {e}",
                    path.display()
                );
                crate::log!(
                    Warn,
                    "backend writeback: {msg} (pages are still made durable by the periodic sync)"
                );
                *first = Some(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// Dirty and under-writeback pages of a file (Linux `cachestat`, 6.5+); None if the
    /// kernel lacks it.
    fn dirty_pages(file: &std::fs::File) -> Option<(u64, u64)> {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct CacheStat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { off: 0, len: 0 };
        let mut cs = CacheStat::default();
        // SAFETY: both pointers are valid for the call; the kernel writes only `cs`.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut cs as *mut CacheStat,
                0u32,
            )
        };
        (r == 0).then_some((cs.nr_dirty, cs.nr_writeback))
    }

    #[test]
    fn kicked_writeback_cleans_dirty_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut f = std::fs::File::create(&path).unwrap();
        let w = Writeback::start(&path).unwrap();
        for round in 0..3u8 {
            // Buffered writes stay dirty for the kernel's dirty_expire (30 s by default)
            // unless writeback is started: the deadline below is far shorter.
            f.write_all(&vec![round + 1; 64 * 4096]).unwrap();
            if let Some((dirty, writeback)) = dirty_pages(&f) {
                assert!(dirty + writeback > 0, "fresh writes are dirty");
            }
            let before = w.stats().rounds;
            w.kick();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let clean = match dirty_pages(&f) {
                    Some((dirty, writeback)) => dirty == 0 && writeback == 0,
                    None => true, // no cachestat: the round counter below still checks the call
                };
                if clean && w.stats().rounds > before {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: pages still dirty 20 s after the kick: {:?} {:?}",
                    dirty_pages(&f),
                    w.stats()
                );
                std::thread::yield_now();
            }
        }
        let stats = w.stats();
        assert_eq!((stats.failures, stats.first_error), (0, None));
        drop(w); // joins the thread
    }

    #[test]
    fn kicks_coalesce_and_drop_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        let w = Writeback::start(&path).unwrap();
        for _ in 0..1000 {
            w.kick();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.shared.pending.load(Ordering::Acquire) || w.stats().rounds == 0 {
            assert!(Instant::now() < deadline, "no round ran: {:?}", w.stats());
            std::thread::yield_now();
        }
        let rounds = w.stats().rounds;
        assert!((1..=1000).contains(&rounds), "rounds {rounds}");
        drop(w);
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-db");
        let e = Writeback::start(&path)
            .err()
            .expect("no such file")
            .to_string();
        assert!(e.contains("missing-db") && e.contains("writeback"), "{e}");
    }
}
