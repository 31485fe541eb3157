//! The write-ahead log: segmented, O_DIRECT, group-committed, crash-recoverable.
//!
//! * Segments live in `<data-dir>/wal/` as `<seq:016x>-<first_index:016x>.wal`, each
//!   preallocated to [`Options::segment_size`] (zero-filled by default so the hot path's
//!   `fdatasync` never has to commit extent metadata). The next segment is prepared (created,
//!   zero-filled, named, made durable) in the background on the executor as soon as the
//!   previous one becomes active, so a rollover only switches files.
//! * Every record is framed with its length, kind, flags, a payload crc32 and a header crc32,
//!   both salted with the segment sequence number (see `src/wal/FORMAT.md`).
//! * [`Wal::append`] queues a batch; one writer task writes every batch queued meanwhile with a
//!   single O_DIRECT write (rewriting the partial last block) and one `fdatasync`, then
//!   resolves all their futures. A batch is contiguous on disk and recovery only yields whole
//!   batches.
//! * [`Wal::open`] replays every complete batch in order through a callback, cuts a torn tail,
//!   and refuses to start (naming file and offset) when damage is followed by later writes.
//! * [`Wal::release`] deletes the oldest segments whose indexed records are all below an index.
//!
//! The WAL's state lives on one glommio executor (the raft shard's); only the write and
//! fdatasync of large groups run elsewhere, on its I/O thread (`io_thread.rs`).

mod format;
mod io_thread;
mod recovery;
mod segment;
mod stats;
mod writer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

pub use format::{
    encoded_len, BLOCK_SIZE, MAX_CARRY_OVER_BYTES, MAX_RECORD_PAYLOAD, MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE, RECORD_HEADER_SIZE,
};
pub use stats::{Pow2Histogram, WalStats, HISTOGRAM_BUCKETS};

use writer::{Completion, Inner, Pending};

/// Default for [`Options::io_thread_min_records`].
pub const DEFAULT_IO_THREAD_MIN_RECORDS: usize = 32;
/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default limit on the encoded size of one batch: 8 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 8 << 20;
/// Default limit on bytes queued but not yet handed to a write: 32 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 32 << 20;
/// Upper bound for [`Options::max_queued_bytes`] (it sizes the DMA buffer of one group write).
pub const MAX_QUEUED_BYTES_LIMIT: usize = 1 << 30;
/// Name of the WAL directory inside the data directory.
pub const WAL_DIR_NAME: &str = "wal";
/// Lock file in the WAL directory, `flock`ed exclusively while a [`Wal`] handle is alive.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// One WAL record. Entries carry their raft index and term; the other kinds are small fixed
/// records. `HardState`, `Snapshot` and `Metadata` are "state" records: the latest of each is
/// repeated at the start of every new segment, so replay may yield a state record twice, and
/// releasing old segments never loses the current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A raft log entry.
    Entry {
        /// Raft index.
        index: u64,
        /// Raft term.
        term: u64,
        /// Opaque entry bytes (at most [`MAX_RECORD_PAYLOAD`] - 16).
        data: Vec<u8>,
    },
    /// Raft hard state.
    HardState {
        /// Current term.
        term: u64,
        /// Vote in that term (0: none).
        vote: u64,
        /// Commit index.
        commit: u64,
    },
    /// A snapshot was taken at (index, term); entries up to index are covered by it.
    Snapshot {
        /// Last index included in the snapshot.
        index: u64,
        /// Term of that index.
        term: u64,
    },
    /// Identity of the cluster and of this member.
    Metadata {
        /// Cluster id.
        cluster_id: u64,
        /// Member id.
        member_id: u64,
    },
}

impl Record {
    /// The raft index this record pins (entries and snapshot markers), used by release.
    pub fn index(&self) -> Option<u64> {
        match self {
            Record::Entry { index, .. } | Record::Snapshot { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// How new segments are preallocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocate {
    /// Write zeros over the whole segment and fdatasync, in the background. Appends then
    /// overwrite already-written blocks, so their `fdatasync` flushes data only (no journal
    /// commit). The default; see `perf/wal.md` for the measured difference.
    ZeroFill,
    /// `fallocate` the segment (unwritten extents). Cheap to prepare, but each append's
    /// `fdatasync` must commit the unwritten->written extent conversion.
    Fallocate,
}

/// WAL configuration. [`Options::validate`] checks every limit with a clear message.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of each new segment file in bytes: a multiple of [`BLOCK_SIZE`] within
    /// [`MIN_SEGMENT_SIZE`]..=[`MAX_SEGMENT_SIZE`].
    pub segment_size: u64,
    /// Largest encoded batch accepted by [`Wal::append`]; must leave room for the segment
    /// header and the carried-over state records in a fresh segment.
    pub max_batch_bytes: usize,
    /// Bytes queued but not yet taken by the writer; appenders beyond it wait (FIFO). Memory in
    /// the WAL is bounded by twice this (the queue plus one group in flight).
    pub max_queued_bytes: usize,
    /// Segment preallocation strategy.
    pub preallocate: Preallocate,
    /// On mid-log corruption, keep the valid prefix and drop everything after it (zeroing the
    /// rest of that segment and deleting later segments) instead of refusing to open.
    pub repair_truncate_corrupt_tail: bool,
    /// Groups of at least this many records are written and fdatasynced by the WAL's I/O
    /// thread, smaller ones through io_uring on the executor. Many records per group means
    /// many concurrent appenders, hence a busy executor on which an io_uring write waits for
    /// the next scheduling round to be submitted (~1 ms under 256 clients); the thread starts
    /// it at once. A lone appender's executor is idle and submits at once, while the hand-off
    /// to and from the thread costs it two thread wake-ups (measured in `perf/server.md`).
    /// 0: always the thread; `usize::MAX`: never.
    pub io_thread_min_records: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            preallocate: Preallocate::ZeroFill,
            repair_truncate_corrupt_tail: false,
            io_thread_min_records: DEFAULT_IO_THREAD_MIN_RECORDS,
        }
    }
}

impl Options {
    /// Checks that the limits are consistent; the error names the offending option.
    pub fn validate(&self) -> Result<(), WalError> {
        let bad = |m: String| Err(WalError::InvalidOptions(m));
        if !self.segment_size.is_multiple_of(BLOCK_SIZE as u64)
            || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size)
        {
            return bad(format!(
                "segment_size {} must be a multiple of {BLOCK_SIZE} in {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            ));
        }
        let room = self.segment_size - format::SEGMENT_HEADER_SIZE - MAX_CARRY_OVER_BYTES as u64;
        if self.max_batch_bytes == 0 || self.max_batch_bytes as u64 > room {
            return bad(format!(
                "max_batch_bytes {} must be in 1..={room} (segment_size {} minus header and carried-over state)",
                self.max_batch_bytes, self.segment_size
            ));
        }
        if self.max_queued_bytes < self.max_batch_bytes
            || self.max_queued_bytes > MAX_QUEUED_BYTES_LIMIT
        {
            return bad(format!(
                "max_queued_bytes {} must be in max_batch_bytes ({})..={MAX_QUEUED_BYTES_LIMIT}",
                self.max_queued_bytes, self.max_batch_bytes
            ));
        }
        Ok(())
    }
}

/// Every way a WAL operation can fail. Messages name the file, offset and limit involved.
#[derive(Debug)]
pub enum WalError {
    /// An I/O call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// Byte offset, when the operation had one.
        offset: Option<u64>,
        /// The OS error.
        source: std::io::Error,
    },
    /// A segment failed verification in a way that is not a torn tail.
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file where verification failed.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record or batch exceeds a limit.
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The offending size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// Options are inconsistent.
    InvalidOptions(String),
    /// A batch cannot be appended (e.g. it is empty).
    InvalidBatch(String),
    /// An earlier write or fdatasync failed; the WAL accepts nothing more (the durability of
    /// data after a failed fdatasync is unknown, so retrying would be unsafe).
    Failed(String),
    /// The WAL is already open (by this or another process): its lock file is held.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The WAL was closed.
    Closed,
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io {
                op,
                path,
                offset: Some(o),
                source,
            } => write!(f, "WAL {op} {} at offset {o}: {source}", path.display()),
            WalError::Io {
                op, path, source, ..
            } => write!(f, "WAL {op} {}: {source}", path.display()),
            WalError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "WAL segment {} is corrupt at offset {offset}: {reason}",
                path.display()
            ),
            WalError::TooLarge { what, size, limit } => {
                write!(f, "WAL {what}: {size} bytes exceeds the limit of {limit}")
            }
            WalError::InvalidOptions(m) => write!(f, "invalid WAL options: {m}"),
            WalError::InvalidBatch(m) => write!(f, "invalid WAL batch: {m}"),
            WalError::Failed(m) => write!(f, "WAL failed earlier and accepts no writes: {m}"),
            WalError::Locked { path } => write!(
                f,
                "WAL is already open (lock {} is held by this or another process)",
                path.display()
            ),
            WalError::Closed => write!(f, "WAL is closed"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl WalError {
    pub(crate) fn io(
        op: &'static str,
        path: &Path,
        offset: Option<u64>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        let source: std::io::Error = source.into();
        let source = if source.kind() == std::io::ErrorKind::Unsupported {
            std::io::Error::new(
                source.kind(),
                format!(
                    "{source} (EOPNOTSUPP on O_DIRECT I/O: glommio enabled polled I/O for this \
                     device because an empty file was the first DMA file opened on this thread; \
                     open the WAL before any other DmaFile on the executor)"
                ),
            )
        } else {
            source
        };
        WalError::Io {
            op,
            path: path.to_path_buf(),
            offset,
            source,
        }
    }
}

/// What [`Wal::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// Segments read.
    pub segments: usize,
    /// Batches replayed.
    pub batches: u64,
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn tail (or, with repair, a corrupt tail) zeroed in the last segment.
    pub tail_bytes_zeroed: u64,
    /// With [`Options::repair_truncate_corrupt_tail`]: where the corruption was cut
    /// (file, offset), and how many later segments were deleted.
    pub repaired: Option<(PathBuf, u64, usize)>,
}

/// One live segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Sequence number (strictly increasing, contiguous).
    pub seq: u64,
    /// Index in the file name: 1 + the highest entry/snapshot index durable when the segment
    /// was prepared (0 for the first segment of a new log). A lower bound of the indexes in it,
    /// except for raft overwrites below it after a leader change; informational only.
    pub first_index: u64,
    /// Highest entry/snapshot index in this segment, if any.
    pub max_index: Option<u64>,
    /// Full path.
    pub path: PathBuf,
}

/// The future returned by [`Wal::append`]: resolves once the whole batch is durable (written
/// and fdatasync'ed), or with the error that prevented it. The batch is queued when `append`
/// is called, so dropping the future does not withdraw it.
#[must_use = "the batch is only known durable once this future resolves"]
pub struct AppendFuture {
    state: AppendState,
}

enum AppendState {
    Done(Option<Result<(), WalError>>),
    Waiting(Rc<Completion>),
}

impl Future for AppendFuture {
    type Output = Result<(), WalError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AppendState::Done(r) => Poll::Ready(r.take().unwrap_or(Err(WalError::Closed))),
            AppendState::Waiting(c) => c.poll(cx),
        }
    }
}

/// An open WAL on the current glommio executor. Not `Send`; share it between tasks of the
/// executor with `Rc<Wal>`.
pub struct Wal {
    inner: Rc<Inner>,
    writer: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// Exclusive `flock` on `LOCK`: a second open (this or another process) fails with
    /// [`WalError::Locked`]. Released when the handle is dropped; call [`Wal::close`] first so
    /// the writer has stopped.
    _lock: std::fs::File,
}

impl Wal {
    /// Opens (or creates) the WAL in `<data_dir>/wal/`, replays every complete batch in order
    /// through `replay`, repairs a torn tail, and starts the writer and the background
    /// segment preparation. Memory during replay is bounded by one read window
    /// (1 MiB + the largest record) plus one batch.
    ///
    /// Errors: [`WalError::Corrupt`] when damage is followed by later writes (unless
    /// [`Options::repair_truncate_corrupt_tail`]); records already passed to `replay` must then
    /// be discarded.
    ///
    /// Must be called on a glommio executor. It opens a small non-empty probe file first so
    /// glommio's per-thread polled-I/O probe reads real data (see `FORMAT.md`).
    pub async fn open(
        data_dir: impl AsRef<Path>,
        opts: Options,
        mut replay: impl FnMut(Record),
    ) -> Result<(Wal, RecoveryInfo), WalError> {
        opts.validate()?;
        // glommio's directory handle fails on relative paths (EBADF): resolve against the
        // current directory first, so a relative data dir (the server's default) works.
        let dir = std::path::absolute(data_dir.as_ref().join(WAL_DIR_NAME))
            .map_err(|e| WalError::io("resolve dir", data_dir.as_ref(), None, e))?;
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io("create dir", &dir, None, e))?;
        let lock = lock_dir(&dir)?;
        segment::probe_dma(&dir).await?;
        let dir_handle = glommio::io::Directory::open(&dir)
            .await
            .map_err(|e| WalError::io("open dir", &dir, None, e))?;
        let rec = recovery::recover(&dir, &dir_handle, &opts, &mut replay).await?;
        let info = rec.info.clone();
        let io = io_thread::IoThread::start()
            .map_err(|e| WalError::io("start the WAL I/O thread for", &dir, None, e))?;
        let inner = Rc::new(Inner::new(dir, dir_handle, opts, rec.segments, io));
        let task = glommio::spawn_local(writer::run(inner.clone(), rec.writer)).detach();
        Ok((
            Wal {
                inner,
                writer: RefCell::new(Some(task)),
                _lock: lock,
            },
            info,
        ))
    }

    /// Queues `batch` and returns a future that resolves when all of it is durable. Batches
    /// are written in call order, contiguously; recovery yields a batch whole or not at all.
    /// Fails at once for an empty batch, a record over [`MAX_RECORD_PAYLOAD`], a batch over
    /// [`Options::max_batch_bytes`], or a closed/failed WAL. When more than
    /// [`Options::max_queued_bytes`] are queued the future waits for room first.
    pub fn append(&self, batch: Vec<Record>) -> AppendFuture {
        let done = |r| AppendFuture {
            state: AppendState::Done(Some(r)),
        };
        if batch.is_empty() {
            return done(Err(WalError::InvalidBatch("batch has no records".into())));
        }
        let mut bytes = 0usize;
        for r in &batch {
            if let Err(e) = format::check_record(r) {
                return done(Err(e));
            }
            bytes += format::encoded_len(r);
        }
        if bytes > self.inner.opts.max_batch_bytes {
            return done(Err(WalError::TooLarge {
                what: "batch (Options::max_batch_bytes)",
                size: bytes as u64,
                limit: self.inner.opts.max_batch_bytes as u64,
            }));
        }
        match self.inner.enqueue(Pending::new(batch, bytes)) {
            Ok(c) => AppendFuture {
                state: AppendState::Waiting(c),
            },
            Err(e) => done(Err(e)),
        }
    }

    /// Deletes, oldest first, every segment whose entry/snapshot indexes are all below
    /// `index` (call it once the backend is durable at `index - 1` or later). Stops at the
    /// first segment that still holds an index >= `index`; never deletes the active segment.
    /// Each deletion is made durable (directory fsync) before the next, so a crash leaves no
    /// gap. Returns the number of segments deleted.
    pub async fn release(&self, index: u64) -> Result<usize, WalError> {
        self.inner.release(index).await
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> WalStats {
        self.inner.stats.borrow().clone()
    }

    /// The live segments, oldest first (the last one is active).
    pub fn segments(&self) -> Vec<SegmentSummary> {
        self.inner.segments.borrow().iter().cloned().collect()
    }

    /// The WAL directory (`<data-dir>/wal`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops accepting appends, waits until every queued batch is durable (or failed) and the
    /// writer has stopped.
    pub async fn close(&self) {
        self.inner.begin_close();
        let task = self.writer.borrow_mut().take();
        if let Some(t) = task {
            t.await;
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The writer drains what is queued and exits; it does not need the handle.
        self.inner.begin_close();
    }
}

/// Takes the exclusive lock on `<dir>/LOCK` without blocking.
fn lock_dir(dir: &Path) -> Result<std::fs::File, WalError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE_NAME);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open lock file", &path, None, e))?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::Locked { path });
        }
        return Err(WalError::io("lock", &path, None, e));
    }
    Ok(f)
}

/// Segment bookkeeping shared by the writer (pushes, updates the active one) and release
/// (pops from the front). Kept in a `RefCell`; never borrowed across an await.
pub(crate) type SegmentList = RefCell<VecDeque<SegmentSummary>>;
