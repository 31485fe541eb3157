//! The storage backend: one file, a copy-on-write B+tree of named trees, read through mmap.
//!
//! API CONTRACT (skeleton): the signatures below are what the bench crate and the MVCC layer
//! build against. The bodies are filled in on the `backend` branch; signatures may only change
//! there in agreement with their users.
//!
//! Guarantees:
//! - One writer ([`Backend`], bound to the glommio executor that opened it); any number of
//!   readers on any thread ([`Reader`] is `Send + Sync + Clone`).
//! - [`WriteTxn::publish`] makes a transaction visible to new readers at once (no fsync);
//!   [`Backend::sync`] makes everything published so far durable (group commit).
//! - A [`ReadTxn`] sees exactly one published snapshot for its whole life; values borrowed from
//!   it stay valid and unchanged until it is dropped.

#![warn(missing_docs)]

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

mod check;
mod freelist;
mod node;
mod page;
mod readers;
mod recent;
mod view;
mod write;
mod writeback;

use writeback::Writeback;
pub use writeback::{WritebackStats, WRITEBACK_KICK_BYTES};

pub use check::MAX_CHECK_PROBLEMS;
pub use freelist::MAX_FREELIST_SEGMENTS;
pub use readers::MAX_READERS;
pub use write::MAX_TXN_DIRTY_PAGES;

use freelist::Freelist;
use page::{Meta, FIRST_DATA_PAGE};
use readers::{Registry, Snap};
use view::{Bitmap, RawCursor, RawRange, View};
use write::{decode_desc, DirtyPage, TxnCore};

/// Fixed page size of the file format.
pub const PAGE_SIZE: usize = 4096;
/// Largest key accepted by any tree, in bytes.
pub const MAX_KEY_SIZE: usize = 8 * 1024;
/// Largest value accepted by any tree, in bytes.
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;
/// Largest tree name, in bytes.
pub const MAX_TREE_NAME_SIZE: usize = 255;

/// How a tree orders its keys. Persisted with the tree: reopening a tree with a different
/// order is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyOrder {
    /// Lexicographic byte order.
    Bytewise,
    /// Keys are `prefix ++ u64 big-endian`; ordered by prefix (bytewise), then by the u64.
    /// This is MVCC's (user key, revision) order.
    PrefixThenU64,
}

impl KeyOrder {
    /// Compares two keys under this order.
    ///
    /// `PrefixThenU64` splits a key of at least 8 bytes into (prefix, last 8 bytes) and orders
    /// by prefix bytewise, then by the big-endian u64. A key shorter than 8 bytes is a prefix
    /// with no number and sorts before every key with the same prefix and a number. This is a
    /// total order on all byte strings.
    #[inline]
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            KeyOrder::Bytewise => bytewise(a, b),
            KeyOrder::PrefixThenU64 => {
                fn split(k: &[u8]) -> (&[u8], Option<&[u8]>) {
                    if k.len() >= 8 {
                        let (p, n) = k.split_at(k.len() - 8);
                        (p, Some(n))
                    } else {
                        (k, None)
                    }
                }
                let (pa, na) = split(a);
                let (pb, nb) = split(b);
                // Big-endian u64s compare like their bytes.
                bytewise(pa, pb).then_with(|| na.cmp(&nb))
            }
        }
    }

    /// A key `s` with `left < s <= right` under this order, as short as the order allows:
    /// the separator a leaf split puts in the parent branch. Separators only route searches
    /// (child `i` holds the keys in `[separator i, separator i+1)`), so any key between the
    /// two neighbours serves, and short ones give branches a higher fan-out: a branch page
    /// holds 13 separators of 284 bytes (a 256-byte user key under a prefix, plus its
    /// revision) but ~90 of ~30 bytes, which makes the tree two levels shallower at a
    /// million keys and every random insert dirties that many fewer pages.
    ///
    /// Bytewise: the shortest prefix of `right` above `left`. `PrefixThenU64`: the shortest
    /// prefix of `right`'s prefix above `left`'s, with number 0; `right` itself when the two
    /// share their prefix or either has no number. Requires `left < right`.
    pub(crate) fn separator(self, left: &[u8], right: &[u8]) -> Vec<u8> {
        debug_assert_eq!(self.compare(left, right), Ordering::Less);
        fn common(a: &[u8], b: &[u8]) -> usize {
            a.iter().zip(b).take_while(|(x, y)| x == y).count()
        }
        let s = match self {
            // `left < right` means `right` is not a prefix of `left`: it has a byte at
            // `common`, and that byte is above `left`'s (or `left` ended).
            KeyOrder::Bytewise => right[..(common(left, right) + 1).min(right.len())].to_vec(),
            KeyOrder::PrefixThenU64 => {
                let (Some(lp), Some(rp)) = (
                    left.len().checked_sub(8).map(|n| &left[..n]),
                    right.len().checked_sub(8).map(|n| &right[..n]),
                ) else {
                    return right.to_vec();
                };
                let n = common(lp, rp) + 1;
                if lp == rp || n >= rp.len() {
                    return right.to_vec();
                }
                let mut s = Vec::with_capacity(n + 8);
                s.extend_from_slice(&rp[..n]);
                s.extend_from_slice(&[0u8; 8]);
                s
            }
        };
        debug_assert_eq!(self.compare(left, &s), Ordering::Less);
        debug_assert_ne!(self.compare(&s, right), Ordering::Greater);
        s
    }
}

/// `a.cmp(b)` for byte strings, deciding most comparisons on their first 8 bytes without a
/// call to `memcmp` (B+tree searches compare short keys that mostly differ early).
#[inline(always)]
fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
    if let (Some(ha), Some(hb)) = (a.first_chunk::<8>(), b.first_chunk::<8>()) {
        let (ha, hb) = (u64::from_be_bytes(*ha), u64::from_be_bytes(*hb));
        if ha != hb {
            return ha.cmp(&hb);
        }
    }
    a.cmp(b)
}

/// Size of a new database file (two metas and room for the first transactions).
pub const MIN_FILE_BYTES: u64 = 64 * 1024;

/// The file length that holds `need` bytes (a whole number of pages): the next power of two
/// (at least [`MIN_FILE_BYTES`]) up to `step`, whole multiples of `step` beyond it, never more
/// than `max` (the mapping's size, which `need` never exceeds).
///
/// Why geometric: growing a small file straight to a 64 MiB step made an empty store's file
/// 64 MiB (sparse, but that is what `ls` and the status "db size" show, where etcd's empty
/// file is tens of KiB), and a defragmented small database no smaller. Doubling keeps the
/// number of grows (`set_len` calls) logarithmic until the step takes over.
pub(crate) fn file_len_for(need: u64, step: u64, max: u64) -> u64 {
    let len = if need <= step {
        need.max(MIN_FILE_BYTES)
            .checked_next_power_of_two()
            .map_or(step, |p| p.min(step))
    } else {
        need.div_ceil(step).saturating_mul(step)
    };
    len.min(max)
}

/// Tunables for [`Backend::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual address space reserved for the mapping; the file can grow up to this size
    /// without remapping.
    pub max_map_size: u64,
    /// Most bytes by which the file grows at once. A smaller file doubles instead (from
    /// [`MIN_FILE_BYTES`]), so a small database has a small file.
    pub grow_step: u64,
    /// Run a writeback thread that starts the kernel's writeback of published pages before a
    /// sync needs them: publish kicks it every [`WRITEBACK_KICK_BYTES`] it writes, and
    /// [`Backend::start_writeback`] kicks it on demand. Changes no durability rule.
    pub writeback: bool,
    /// Make [`Backend::sync`] issue its two `fdatasync`s and its meta page write as blocking
    /// syscalls on the calling thread instead of through io_uring. io_uring hands every fsync
    /// to a kernel worker thread and its completion back to the executor, which cost 50-90 µs
    /// per sync here (`perf/backend.md`, "Blocking sync"); a blocking call adds nothing, but
    /// no other task of the executor runs until the disk answers (a large commit: tens of
    /// ms). So: on for a thread that only commits (an embedded writer, offline maintenance),
    /// off for an executor that also serves (the server's raft shard). Durability and the
    /// order of the steps are the same either way.
    pub blocking_sync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_map_size: 64 << 30,
            grow_step: 64 << 20,
            writeback: true,
            blocking_sync: false,
        }
    }
}

/// Every way a backend operation can fail. Never a panic for bad input or a bad file.
#[derive(Debug)]
pub enum Error {
    /// An I/O error, with what was being done.
    Io {
        /// What the backend was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is locked by another open.
    Locked(PathBuf),
    /// The file is not a valid backend file, or is damaged (which page, what is wrong).
    Corrupt(String),
    /// A key, value or name exceeds its limit.
    TooLarge {
        /// Which thing: "key", "value", "tree name".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A tree was opened with a key order other than the one it was created with.
    KeyOrderMismatch {
        /// The tree.
        tree: String,
    },
    /// A write transaction is already open.
    WriterBusy,
    /// The reserved map size is exhausted.
    MapFull,
}

impl Error {
    /// A copy of this error (for a poisoned transaction that must keep reporting it).
    pub(crate) fn duplicate(&self, prefix: &str) -> Error {
        match self {
            Error::Io { context, source } => Error::Io {
                context: format!("{prefix}{context}"),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Locked(p) => Error::Locked(p.clone()),
            Error::Corrupt(s) => Error::Corrupt(format!("{prefix}{s}")),
            Error::TooLarge { what, size, limit } => Error::TooLarge {
                what,
                size: *size,
                limit: *limit,
            },
            Error::KeyOrderMismatch { tree } => Error::KeyOrderMismatch { tree: tree.clone() },
            Error::WriterBusy => Error::WriterBusy,
            Error::MapFull => Error::MapFull,
        }
    }

    fn io(context: String, source: std::io::Error) -> Error {
        Error::Io { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "I/O error while {context}: {source}"),
            Error::Locked(p) => write!(f, "{} is locked by another open", p.display()),
            Error::Corrupt(s) => write!(f, "corrupt backend file: {s}"),
            Error::TooLarge { what, size, limit } => {
                write!(f, "{what} too large: {size} exceeds the limit {limit}")
            }
            Error::KeyOrderMismatch { tree } => {
                write!(f, "tree {tree:?} was created with a different key order")
            }
            Error::WriterBusy => write!(f, "a write transaction is already open"),
            Error::MapFull => write!(f, "the reserved map size (Options::max_map_size) is full"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias for backend operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Most bytes handed to one `pwritev` when publishing: contiguous dirty pages are coalesced up
/// to this size, and a longer overflow run is written in pieces of it.
///
/// Why so small: since Linux 6.16 ext4 caches a file in large folios, sized by the write that
/// created them, and every later buffered write into a folio walks all of the folio's block
/// buffers. Overwriting one 4 KiB page (page reuse does that all the time) of a region first
/// written by 8 MiB writes cost 6.7 µs, of one written by 1 MiB writes 2.4 µs, by 64 KiB
/// writes 0.68 µs, by 4 KiB writes 0.65 µs (this machine, Linux 6.18; `perf/backend.md`).
pub const MAX_WRITE_BYTES: usize = 64 * 1024;

/// Publish yields to the executor's scheduler (if other tasks wait) after writing this many
/// pages, so a large publish does not hold the thread for its whole copy.
pub const PUBLISH_YIELD_PAGES: u64 = 256;

/// During [`Backend::compact_into`], the copy is published and synced whenever its write
/// transaction holds this many dirty pages, bounding memory.
pub const COMPACT_TXN_PAGES: u64 = 16 * 1024;

/// State shared by the writer and every reader thread.
pub(crate) struct Shared {
    path: PathBuf,
    /// The data file. Holds the exclusive flock for as long as any handle (writer or reader)
    /// lives, so no other writer can reuse pages a live reader still sees; also grows the
    /// file, carries [`Options::blocking_sync`]'s syncs, and serves the debug builds' check
    /// of the writer's page cache.
    file: std::fs::File,
    /// The whole reserved range; only pages below a snapshot's high water are ever touched.
    map: memmap2::Mmap,
    bits: Bitmap,
    reg: Registry,
    synced: AtomicU64,
}

/// The writer's private state between transactions.
struct WriterState {
    published: Snap,
    /// The freelist as of `published`; an open write transaction holds it (this is then an
    /// empty placeholder) and hands it back when it publishes or is dropped.
    freelist: Freelist,
    /// Free plus pending pages as of `published` (valid while a transaction holds the
    /// freelist).
    free_total: u64,
    /// The persisted freelist chain of `published` (segments oldest first, record count).
    chain: Vec<(u64, u64)>,
    chain_records: u64,
    durable_slot: usize,
    file_len: u64,
}

/// The writer's handle: open on a glommio executor; not `Send`.
pub struct Backend {
    shared: Arc<Shared>,
    file: glommio::io::BufferedFile,
    options: Options,
    max_pages: u64,
    state: RefCell<WriterState>,
    /// Page buffers of earlier transactions, for the next one to reuse (at most
    /// `MAX_SPARE_PAGES`; see there why).
    spare: RefCell<Vec<Box<[u8]>>>,
    /// The writer's copies of recently published pages, handed from one transaction to the
    /// next (see `recent.rs`).
    recent: RefCell<recent::RecentPages>,
    writer_busy: Cell<bool>,
    sync_lock: glommio::sync::Semaphore,
    /// See [`Options::writeback`].
    writeback: Option<Writeback>,
    /// Bytes written by publishes since the writeback thread was last kicked.
    unkicked_bytes: Cell<u64>,
    /// `pwritev` calls and bytes of all publishes since open (see [`Stats::page_writes`]).
    page_writes: Cell<(u64, u64)>,
}

/// A thread-safe handle for starting read transactions on any thread.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

/// Counters and sizes.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes in pages reachable from the latest published root.
    pub in_use_bytes: u64,
    /// Transaction id of the latest published transaction.
    pub published_txid: u64,
    /// Transaction id of the latest durable (synced) transaction.
    pub synced_txid: u64,
    /// Pages on the freelist.
    pub free_pages: u64,
    /// `pwritev` calls publishes made since open: with the bytes below, how contiguous
    /// the pages of write transactions were (one call per run of at most
    /// [`MAX_WRITE_BYTES`]).
    pub page_writes: u64,
    /// Bytes publishes wrote since open.
    pub page_write_bytes: u64,
}

/// What [`Backend::check`] found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Pages reachable from the checked root.
    pub reachable_pages: u64,
    /// Pages on the freelist (or pending reuse).
    pub free_pages: u64,
    /// Every problem found; empty means the file is consistent.
    pub problems: Vec<String>,
}

fn flock(file: &std::fs::File, how: libc::c_int, path: &Path) -> Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::Locked(path.to_path_buf()))
    } else {
        Err(Error::io(format!("locking {}", path.display()), e))
    }
}

fn read_metas(file: &std::fs::File, path: &Path, len: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    if len < 2 * PAGE_SIZE as u64 {
        return Err(Error::Corrupt(format!(
            "{}: {len} bytes is too small for the two meta pages ({} bytes); not a corekv backend file",
            path.display(),
            2 * PAGE_SIZE
        )));
    }
    let mut m = vec![0u8; 2 * PAGE_SIZE];
    file.read_exact_at(&mut m, 0)
        .map_err(|e| Error::io(format!("reading the meta pages of {}", path.display()), e))?;
    let m1 = m.split_off(PAGE_SIZE);
    Ok((m, m1))
}

fn snap_of(m: &Meta) -> Snap {
    Snap {
        txid: m.txid,
        catalog_root: m.catalog_root,
        high_water: m.high_water,
        freelist: m.freelist,
        freelist_pages: m.freelist_pages,
    }
}

/// Checks the file at `path` without opening it for writing: takes a shared lock (so it fails
/// with [`Error::Locked`] while a [`Backend`] has the file open; use [`Backend::check`] then),
/// picks the meta page as [`Backend::open`] would, and walks that snapshot. A damaged meta
/// page is listed as a problem even when the other one is usable.
pub fn check_file(path: impl AsRef<Path>) -> Result<CheckReport> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    flock(&file, libc::LOCK_SH, path)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat of {}", path.display()), e))?
        .len();
    let (m0, m1) = read_metas(&file, path, len)?;
    let (slot, meta) = page::choose_meta(path, &m0, &m1, len)?;
    let mut problems = Vec::new();
    let other = if slot == 0 { &m1 } else { &m0 };
    if let Err(e) = Meta::decode(other) {
        problems.push(format!("meta page {}: {e}", 1 - slot));
    }
    let snap = snap_of(&meta);
    // SAFETY: read-only shared mapping of `high_water` pages, all inside the file (checked by
    // choose_meta); the shared lock keeps writers of this library away while it lives.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .len(snap.high_water as usize * PAGE_SIZE)
            .map(&file)
    }
    .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    Ok(check::check_snapshot(&map, &snap, problems))
}

/// Whether the first `len` bytes of `file` are all zero (holes are skipped with SEEK_DATA,
/// and the scan stops at the first non-zero byte, so this is cheap for real files).
fn all_zero(file: &std::fs::File, len: u64) -> std::io::Result<bool> {
    const CHUNK: usize = 1 << 20;
    let fd = file.as_raw_fd();
    let mut buf = vec![0u8; CHUNK];
    let mut pos: u64 = 0;
    while pos < len {
        // SAFETY: plain syscalls on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(true); // only a hole up to the end
            }
            return Err(e);
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut at, end) = (data as u64, (hole as u64).min(len));
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        pos = end.max(pos + 1);
    }
    Ok(true)
}

/// The context of an I/O error while writing `len` bytes at byte `pos` of `path`.
fn write_context(len: usize, pos: u64, path: &Path) -> String {
    format!("writing {len} bytes at offset {pos} of {}", path.display())
}

async fn write_all(
    file: &glommio::io::BufferedFile,
    buf: Vec<u8>,
    pos: u64,
    path: &Path,
) -> Result<()> {
    let len = buf.len();
    let n = file
        .write_at(buf, pos)
        .await
        .map_err(|e| Error::io(write_context(len, pos, path), e.into()))?;
    if n != len {
        return Err(Error::io(
            write_context(len, pos, path),
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {len} bytes (disk full?)"),
            ),
        ));
    }
    Ok(())
}

impl Backend {
    /// Opens (creating if absent) the file at `path`, locking it exclusively. Must run on a
    /// glommio executor.
    ///
    /// Picks the valid meta page with the highest txid whose high-water mark fits in the file;
    /// refuses with [`Error::Corrupt`] if neither does, and with [`Error::Locked`] if the file
    /// is open elsewhere (also in this process). An empty file (or one holding at most two
    /// zeroed pages, as a crash during creation leaves) is initialised.
    pub async fn open(path: impl AsRef<Path>, options: Options) -> Result<Backend> {
        let path = path.as_ref().to_path_buf();
        let ps = PAGE_SIZE as u64;
        if options.max_map_size < 4 * ps || options.grow_step == 0 {
            return Err(Error::io(
                format!("opening {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "Options::max_map_size ({}) must be at least 4 pages and grow_step ({}) non-zero",
                        options.max_map_size, options.grow_step
                    ),
                ),
            ));
        }
        let max_pages = options.max_map_size / ps;
        let grow_step = options.grow_step.div_ceil(ps) * ps;
        let ctx = |what: &str| format!("{what} {}", path.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(ctx("opening"), e))?;
        flock(&file, libc::LOCK_EX, &path)?;
        let gfile = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(&path)
            .await
            .map_err(|e| Error::io(ctx("opening (io_uring)"), e.into()))?;
        let mut len = file
            .metadata()
            .map_err(|e| Error::io(ctx("stat of"), e))?
            .len();
        // A new file, or what a crash during creation can leave: nothing but zeros, or just the
        // first (empty) meta page; there is no data to lose in either. Metas are written and
        // synced before the file is sized.
        let fresh = all_zero(&file, len).map_err(|e| Error::io(ctx("reading"), e))?
            || (len >= ps && len < 2 * ps && {
                // Only the first meta of a new file got written: an empty database.
                let mut p0 = vec![0u8; PAGE_SIZE];
                file.read_exact_at(&mut p0, 0)
                    .map_err(|e| Error::io(ctx("reading"), e))?;
                Meta::decode(&p0).is_ok_and(|m| {
                    m.catalog_root == 0 && m.freelist == 0 && m.high_water == FIRST_DATA_PAGE
                })
            });
        if fresh {
            // Two valid metas describing an empty database, durable before the file grows.
            for txid in 0..2u64 {
                let m = Meta {
                    txid,
                    catalog_root: 0,
                    freelist: 0,
                    freelist_pages: 0,
                    high_water: FIRST_DATA_PAGE,
                };
                write_all(&gfile, m.encode(), txid * ps, &path).await?;
            }
            gfile
                .fdatasync()
                .await
                .map_err(|e| Error::io(ctx("fdatasync of new file"), e.into()))?;
            let init_len = file_len_for(4 * ps, grow_step, max_pages * ps);
            file.set_len(init_len)
                .map_err(|e| Error::io(ctx("sizing new file"), e))?;
            gfile
                .fdatasync()
                .await
                .map_err(|e| Error::io(ctx("fdatasync of new file"), e.into()))?;
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))?;
            len = init_len;
        }
        let (m0, m1) = read_metas(&file, &path, len)?;
        let (slot, meta) = page::choose_meta(&path, &m0, &m1, len)?;
        if meta.high_water > max_pages {
            return Err(Error::TooLarge {
                what: "database pages vs Options::max_map_size",
                size: meta.high_water as usize,
                limit: max_pages as usize,
            });
        }
        // SAFETY: read-only shared mapping. The range beyond the file's end is reserved but
        // never touched: every access is below a snapshot's high water, which is inside the
        // file (checked above and kept so by growing before writing).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(options.max_map_size as usize)
                .map(&file)
        }
        .map_err(|e| Error::io(ctx("mapping"), e))?;
        let bits = Bitmap::new(max_pages)
            .map_err(|e| Error::io(ctx("allocating the page bitmap of"), e))?;
        let snap = snap_of(&meta);
        let chain = freelist::load_chain(
            &View::new(&map, snap.high_water, &bits),
            snap.freelist,
            snap.freelist_pages,
        )
        .map_err(|e| match e {
            Error::Corrupt(m) => Error::Corrupt(format!("{}: {m}", path.display())),
            e => e,
        })?;
        let writeback = if options.writeback {
            Some(Writeback::start(&path)?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            path,
            file,
            map,
            bits,
            reg: Registry::new(snap),
            synced: AtomicU64::new(snap.txid),
        });
        Ok(Backend {
            shared,
            file: gfile,
            options: Options {
                grow_step,
                ..options
            },
            max_pages,
            state: RefCell::new(WriterState {
                published: snap,
                free_total: chain.set.free_pages() + chain.set.pending_pages(),
                freelist: chain.set,
                chain: chain.segments,
                chain_records: chain.records,
                durable_slot: slot,
                file_len: len,
            }),
            spare: RefCell::new(Vec::new()),
            recent: RefCell::new(recent::RecentPages::default()),
            writer_busy: Cell::new(false),
            sync_lock: glommio::sync::Semaphore::new(1),
            writeback,
            unkicked_bytes: Cell::new(0),
            page_writes: Cell::new((0, 0)),
        })
    }

    /// Asks the writeback thread (if [`Options::writeback`]) to start the kernel's writeback
    /// of every page published so far; returns at once (at most one thread wake-up). Makes
    /// nothing durable: only [`Backend::sync`] does.
    pub fn start_writeback(&self) {
        if let Some(w) = &self.writeback {
            self.unkicked_bytes.set(0);
            w.kick();
        }
    }

    /// The writeback thread's counters (None without [`Options::writeback`]).
    pub fn writeback_stats(&self) -> Option<WritebackStats> {
        self.writeback.as_ref().map(Writeback::stats)
    }

    /// Counts `bytes` just written by a publish and kicks the writeback thread once
    /// [`WRITEBACK_KICK_BYTES`] have accumulated.
    fn wrote(&self, bytes: u64) {
        let (calls, total) = self.page_writes.get();
        self.page_writes.set((calls + 1, total + bytes));
        let n = self.unkicked_bytes.get() + bytes;
        if n >= WRITEBACK_KICK_BYTES {
            self.start_writeback();
        } else {
            self.unkicked_bytes.set(n);
        }
    }

    /// A handle for readers on other threads.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// Starts a read transaction on the latest published snapshot.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        self.reader().begin_read()
    }

    /// Starts the write transaction; [`Error::WriterBusy`] if one is open.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        if self.writer_busy.get() {
            return Err(Error::WriterBusy);
        }
        let mut st = self.state.borrow_mut();
        // Reuse rule: pages freed by txn T come back once T is durable (the synced meta no
        // longer sees them) and no pinned reader is older than T.
        let limit = self
            .shared
            .synced
            .load(SeqCst)
            .min(self.shared.reg.oldest_pinned());
        st.freelist.release(limit);
        debug_assert_eq!(
            st.freelist.free_pages() + st.freelist.pending_pages(),
            st.free_total
        );
        // Taken, not cloned (a clone per transaction was ~3% of a server put's CPU); the
        // transaction rolls its changes back if it does not publish (`WriteTxn::drop`).
        let freelist = std::mem::take(&mut st.freelist);
        let core = TxnCore::new(
            self.shared.clone(),
            st.published,
            freelist,
            (st.chain.clone(), st.chain_records),
            self.max_pages,
            (
                std::mem::take(&mut *self.spare.borrow_mut()),
                std::mem::take(&mut *self.recent.borrow_mut()),
            ),
        );
        self.writer_busy.set(true);
        Ok(WriteTxn {
            backend: self,
            core,
            freelist_returned: false,
            _busy: BusyGuard(&self.writer_busy),
        })
    }

    /// Makes every published transaction durable: data pages, fdatasync, meta page,
    /// fdatasync. Returns the txid now durable.
    ///
    /// Concurrent calls are serialised; a call that finds nothing new published returns at
    /// once. The meta goes to the slot *not* holding the current durable meta, so a torn meta
    /// write falls back to the previous durable state. With [`Options::blocking_sync`] the
    /// disk waits block the calling thread instead of yielding to the executor.
    pub async fn sync(&self) -> Result<u64> {
        let _permit = self
            .sync_lock
            .acquire_permit(1)
            .await
            .map_err(|e| Error::io("waiting for the sync lock".into(), e.into()))?;
        let snap = self.shared.reg.load();
        let synced = self.shared.synced.load(SeqCst);
        if snap.txid <= synced {
            return Ok(synced);
        }
        let path = &self.shared.path;
        let data_sync_err =
            |e| Error::io(format!("fdatasync (data pages) of {}", path.display()), e);
        let meta_sync_err =
            |e| Error::io(format!("fdatasync (meta page) of {}", path.display()), e);
        let slot = 1 - self.state.borrow().durable_slot;
        let meta = Meta {
            txid: snap.txid,
            catalog_root: snap.catalog_root,
            freelist: snap.freelist,
            freelist_pages: snap.freelist_pages,
            high_water: snap.high_water,
        }
        .encode();
        let meta_pos = (slot * PAGE_SIZE) as u64;
        // Data pages durable before the meta that references them is written.
        if self.options.blocking_sync {
            let file = &self.shared.file;
            file.sync_data().map_err(data_sync_err)?;
            file.write_all_at(&meta, meta_pos)
                .map_err(|e| Error::io(write_context(meta.len(), meta_pos, path), e))?;
            file.sync_data().map_err(meta_sync_err)?;
        } else {
            self.file
                .fdatasync()
                .await
                .map_err(|e| data_sync_err(e.into()))?;
            write_all(&self.file, meta, meta_pos, path).await?;
            self.file
                .fdatasync()
                .await
                .map_err(|e| meta_sync_err(e.into()))?;
        }
        self.state.borrow_mut().durable_slot = slot;
        self.shared.synced.store(snap.txid, SeqCst);
        Ok(snap.txid)
    }

    /// Walks every page of the latest published snapshot and the freelist.
    pub fn check(&self) -> Result<CheckReport> {
        let rt = self.begin_read()?;
        Ok(check::check_snapshot(
            &self.shared.map,
            &rt.snap,
            Vec::new(),
        ))
    }

    /// Writes a compact copy of the latest published snapshot to a new file at `path`.
    ///
    /// Refuses to overwrite an existing file. The copy is written in key order (pages packed
    /// full), published and synced in batches of [`COMPACT_TXN_PAGES`] dirty pages, and is
    /// durable when this returns.
    pub async fn compact_into(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::io(
                format!("compacting into {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "target file exists"),
            ));
        }
        let src = self.begin_read()?;
        let v = src.view();
        let mut trees = Vec::new();
        let mut cat = RawRange::new(
            v,
            src.snap.catalog_root,
            KeyOrder::Bytewise,
            Bound::Unbounded,
            Bound::Unbounded,
        )?;
        while let Some(item) = cat.next_front() {
            let (name, d) = item?;
            let (root, order) = decode_desc(name, d)?;
            trees.push((name.to_vec(), root, order));
        }
        let dst = Backend::open(path, self.options.clone()).await?;
        let mut txn = dst.begin_write()?;
        for (name, root, order) in trees {
            txn.open_tree(&name, order)?;
            let mut r = RawRange::new(v, root, order, Bound::Unbounded, Bound::Unbounded)?;
            while let Some(item) = r.next_front() {
                let (k, val) = item?;
                txn.open_tree(&name, order)?.put(k, val)?;
                if txn.core.dirty_pages() >= COMPACT_TXN_PAGES {
                    txn.publish().await?;
                    dst.sync().await?;
                    txn = dst.begin_write()?;
                }
            }
        }
        txn.publish().await?;
        dst.sync().await?;
        Ok(())
    }

    /// Current counters. `in_use_bytes` counts every data page below the high-water mark that
    /// is not free or pending reuse (the freelist's own pages included, the two meta pages
    /// not), which is what [`Backend::check`] reports as reachable.
    pub fn stats(&self) -> Stats {
        let st = self.state.borrow();
        let free = st.free_total;
        Stats {
            file_size: st.file_len,
            in_use_bytes: (st.published.high_water - FIRST_DATA_PAGE - free) * PAGE_SIZE as u64,
            published_txid: st.published.txid,
            synced_txid: self.shared.synced.load(SeqCst),
            free_pages: free,
            page_writes: self.page_writes.get().0,
            page_write_bytes: self.page_writes.get().1,
        }
    }

    /// Grows the file so it holds `hw` pages (to [`file_len_for`] them).
    fn ensure_len(&self, hw: u64) -> Result<()> {
        let need = hw * PAGE_SIZE as u64;
        let mut st = self.state.borrow_mut();
        if need <= st.file_len {
            return Ok(());
        }
        let new_len = file_len_for(
            need,
            self.options.grow_step,
            self.max_pages * PAGE_SIZE as u64,
        );
        debug_assert!(new_len >= need && new_len.is_multiple_of(PAGE_SIZE as u64));
        self.shared.file.set_len(new_len).map_err(|e| {
            Error::io(
                format!("growing {} to {new_len} bytes", self.shared.path.display()),
                e,
            )
        })?;
        st.file_len = new_len;
        Ok(())
    }

    /// Seals and writes a transaction's dirty pages (sorted by id): contiguous pages with one
    /// `pwritev` of at most [`MAX_WRITE_BYTES`] straight from the page buffers (no coalescing
    /// copy), on this thread.
    ///
    /// Why not io_uring: ext4 cannot do a buffered write without blocking, so io_uring hands
    /// every write to an io-wq worker, which runs the writes of one file one at a time, ~4 µs
    /// per scattered 4 KiB page (hand-off, wake-up, completion), while a plain `pwrite` of the
    /// same page costs ~1.5 µs of CPU (`perf/backend.md`, measured). The pages written here
    /// are free pages (the reuse rule: nothing durable or pinned reaches them) or new ones
    /// beyond the old high water, so they are clean in the page cache and the copy rarely
    /// waits for the disk. To bound how long other tasks on this executor wait, publish
    /// yields to the scheduler (if it wants the thread) every [`PUBLISH_YIELD_PAGES`] pages.
    /// Every [`WRITEBACK_KICK_BYTES`] written, the writeback thread is kicked (see
    /// `writeback.rs`), so the disk is already writing while the rest is copied.
    async fn write_pages(&self, pages: &mut [DirtyPage], txid: u64) -> Result<()> {
        for p in pages.iter_mut() {
            p.seal(txid);
        }
        let fd = self.file.as_raw_fd();
        let path = &self.shared.path;
        // Pieces of at most MAX_WRITE_BYTES, in file order.
        let pieces = pages.iter().flat_map(|p| {
            p.buf
                .chunks(MAX_WRITE_BYTES)
                .enumerate()
                .map(move |(k, c)| (p.id * PAGE_SIZE as u64 + (k * MAX_WRITE_BYTES) as u64, c))
        });
        let mut group: Vec<&[u8]> = Vec::with_capacity(MAX_WRITE_BYTES / PAGE_SIZE);
        let (mut start, mut end, mut since_yield) = (0u64, 0u64, 0usize);
        for (pos, piece) in pieces {
            if !group.is_empty()
                && (pos != end || (end - start) as usize + piece.len() > MAX_WRITE_BYTES)
            {
                pwritev_all(fd, &group, start, path)?;
                self.wrote(end - start);
                since_yield += (end - start) as usize;
                group.clear();
                if since_yield >= PUBLISH_YIELD_PAGES as usize * PAGE_SIZE {
                    glommio::yield_if_needed().await;
                    since_yield = 0;
                }
            }
            if group.is_empty() {
                start = pos;
            }
            group.push(piece);
            end = pos + piece.len() as u64;
        }
        if !group.is_empty() {
            pwritev_all(fd, &group, start, path)?;
            self.wrote(end - start);
        }
        Ok(())
    }
}

/// Writes `bufs` back to back at byte `pos` of `fd` with `pwritev`, resuming after short
/// writes and `EINTR`. `path` names the file in errors.
fn pwritev_all(fd: libc::c_int, bufs: &[&[u8]], pos: u64, path: &Path) -> Result<()> {
    debug_assert!(
        !bufs.is_empty() && bufs.iter().map(|b| b.len()).sum::<usize>() <= MAX_WRITE_BYTES
    );
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let ctx = || write_context(total, pos, path);
    let (mut first, mut skip, mut done) = (0, 0, 0);
    while done < total {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let b = if k == 0 { &b[skip..] } else { b };
                libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                }
            })
            .collect();
        // SAFETY: every iovec points into a live borrowed slice of its stated length, and
        // pwritev only reads from them.
        let n = unsafe {
            libc::pwritev(
                fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                (pos + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io(ctx(), e));
        }
        if n == 0 {
            return Err(Error::io(
                ctx(),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {done} of {total} bytes (disk full?)"),
                ),
            ));
        }
        done += n as usize;
        let mut n = n as usize;
        while n > 0 {
            let left = bufs[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl Reader {
    /// Starts a read transaction on the latest published snapshot; callable on any thread.
    /// Fails with [`Error::TooLarge`] when [`MAX_READERS`] read transactions are open.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        let (slot, snap) = self.shared.reg.pin()?;
        Ok(ReadTxn {
            shared: self.shared.clone(),
            slot,
            snap,
        })
    }
}

/// A pinned, consistent snapshot. `Send`: may be moved to another thread.
pub struct ReadTxn {
    shared: Arc<Shared>,
    slot: usize,
    snap: Snap,
}

impl Drop for ReadTxn {
    fn drop(&mut self) {
        self.shared.reg.unpin(self.slot);
    }
}

impl ReadTxn {
    fn view(&self) -> View<'_> {
        View::new(&self.shared.map, self.snap.high_water, &self.shared.bits)
    }

    /// Transaction id of the snapshot.
    pub fn txid(&self) -> u64 {
        self.snap.txid
    }

    /// The named tree, or `None` if it does not exist in this snapshot.
    pub fn tree(&self, name: &[u8]) -> Result<Option<Tree<'_>>> {
        let v = self.view();
        let Some(d) = view::get(&v, self.snap.catalog_root, name, KeyOrder::Bytewise)? else {
            return Ok(None);
        };
        let (root, order) = decode_desc(name, d)?;
        Ok(Some(Tree { v, root, order }))
    }
}

fn bounds<'r, R: RangeBounds<&'r [u8]>>(range: &R) -> (Bound<&'r [u8]>, Bound<&'r [u8]>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

/// A read-only view of one tree in a snapshot.
pub struct Tree<'t> {
    v: View<'t>,
    root: u64,
    order: KeyOrder,
}

impl<'t> Tree<'t> {
    /// The value of `key`, borrowed zero-copy from the snapshot.
    pub fn get(&self, key: &[u8]) -> Result<Option<&'t [u8]>> {
        view::get(&self.v, self.root, key, self.order)
    }

    /// Entries with keys in `range`, in key order; `.rev()` walks backwards.
    pub fn range<'r, R: RangeBounds<&'r [u8]>>(&self, range: R) -> Result<Range<'t>> {
        let (s, e) = bounds(&range);
        Ok(Range {
            raw: RawRange::new(self.v, self.root, self.order, s, e)?,
        })
    }

    /// Number of entries with keys in `range` (walks the range's leaves; values are not read).
    pub fn count<'r, R: RangeBounds<&'r [u8]>>(&self, range: R) -> Result<u64> {
        let (s, e) = bounds(&range);
        RawRange::new(self.v, self.root, self.order, s, e)?.count()
    }

    /// A cursor positioned before the first entry.
    pub fn cursor(&self) -> Cursor<'t> {
        Cursor {
            raw: RawCursor::new(self.v, self.root, self.order),
        }
    }
}

/// A double-ended iterator over a key range. Items borrow from the snapshot. After an error
/// the iterator ends.
pub struct Range<'t> {
    raw: RawRange<'t>,
}

impl<'t> Iterator for Range<'t> {
    type Item = Result<(&'t [u8], &'t [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        self.raw.next_front()
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.raw.next_back()
    }
}

/// A movable position in a tree. Moving past either end leaves it there: `next` after the end
/// returns `None` and `prev` from there returns the last entry (and vice versa).
pub struct Cursor<'t> {
    raw: RawCursor<'t>,
}

impl<'t> Cursor<'t> {
    /// Moves to the first entry with key >= `key`; returns it.
    pub fn seek(&mut self, key: &[u8]) -> Result<Option<(&'t [u8], &'t [u8])>> {
        self.raw.seek(key)?;
        self.raw.current()
    }
    /// Moves to the last entry with key <= `key`; returns it.
    pub fn seek_for_prev(&mut self, key: &[u8]) -> Result<Option<(&'t [u8], &'t [u8])>> {
        self.raw.seek_for_prev(key)?;
        self.raw.current()
    }
    /// Moves to the next entry (the first, if unpositioned).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<(&'t [u8], &'t [u8])>> {
        self.raw.step_next()?;
        self.raw.current()
    }
    /// Moves to the previous entry (the last, if unpositioned).
    pub fn prev(&mut self) -> Result<Option<(&'t [u8], &'t [u8])>> {
        self.raw.step_prev()?;
        self.raw.current()
    }
}

/// Clears the writer-busy flag when the write transaction ends (publish or drop).
struct BusyGuard<'b>(&'b Cell<bool>);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// The single write transaction. Dropping it without [`WriteTxn::publish`] aborts it.
///
/// Edits are copy-on-write in memory; nothing reaches the file before publish. If an edit
/// fails half-way (e.g. [`Error::MapFull`]), the transaction is poisoned: every later call
/// repeats the error and it can only be dropped.
pub struct WriteTxn<'b> {
    backend: &'b Backend,
    core: TxnCore,
    /// Set once a publish handed the freelist back to the backend; until then dropping the
    /// transaction rolls the freelist back and returns it.
    freelist_returned: bool,
    _busy: BusyGuard<'b>,
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        let (spare, recent) = self.core.take_buffers();
        *self.backend.spare.borrow_mut() = spare;
        *self.backend.recent.borrow_mut() = recent;
        if !self.freelist_returned {
            let fl = self.core.abort_freelist();
            let mut st = self.backend.state.borrow_mut();
            debug_assert_eq!(fl.free_pages() + fl.pending_pages(), st.free_total);
            st.freelist = fl;
        }
    }
}

impl<'b> WriteTxn<'b> {
    /// Transaction id this transaction will have when published.
    pub fn txid(&self) -> u64 {
        self.core.txid
    }

    /// Opens the named tree, creating it with `order` if absent.
    pub fn open_tree(&mut self, name: &[u8], order: KeyOrder) -> Result<TreeMut<'_>> {
        if name.len() > MAX_TREE_NAME_SIZE {
            return Err(Error::TooLarge {
                what: "tree name",
                size: name.len(),
                limit: MAX_TREE_NAME_SIZE,
            });
        }
        self.core.check_poison()?;
        let idx = match self.core.find_tree(name)? {
            Some(i) => {
                if self.core.trees[i].order != order {
                    return Err(Error::KeyOrderMismatch {
                        tree: String::from_utf8_lossy(name).into_owned(),
                    });
                }
                i
            }
            None => {
                let fresh = write::TreeState {
                    name: name.to_vec(),
                    root: 0,
                    order,
                    dirty: true,
                    dropped: false,
                };
                match self.core.trees.iter().position(|t| t.name == name) {
                    Some(i) => {
                        self.core.trees[i] = fresh;
                        i
                    }
                    None => {
                        self.core.trees.push(fresh);
                        self.core.trees.len() - 1
                    }
                }
            }
        };
        Ok(TreeMut {
            core: &mut self.core,
            idx,
        })
    }

    /// Deletes a tree and frees its pages; returns whether it existed.
    pub fn drop_tree(&mut self, name: &[u8]) -> Result<bool> {
        if name.len() > MAX_TREE_NAME_SIZE {
            return Ok(false);
        }
        self.core.check_poison()?;
        let Some(i) = self.core.find_tree(name)? else {
            return Ok(false);
        };
        self.core.guarded(|c| {
            let root = c.trees[i].root;
            c.free_tree(root, 0)?;
            let t = &mut c.trees[i];
            t.root = 0;
            t.dropped = true;
            t.dirty = true;
            Ok(true)
        })
    }

    /// Makes this transaction visible to new readers (no fsync). Returns its txid, which is
    /// always above every earlier one (a transaction that changed nothing writes no page but
    /// still gets a new txid).
    pub async fn publish(mut self) -> Result<u64> {
        // On any error below, `drop` rolls the freelist back: nothing written here is
        // reachable from a published or durable snapshot.
        let backend = self.backend;
        let core = &mut self.core;
        core.check_poison()?;
        let snap = if core.is_dirty() {
            let (mut pages, snap) = core.prepare_commit()?;
            backend.ensure_len(snap.high_water)?;
            backend.write_pages(&mut pages, snap.txid).await?;
            core.keep_written(pages);
            snap
        } else {
            // Nothing changed: a new txid over the same pages (nothing to write).
            let base = backend.state.borrow().published;
            Snap {
                txid: core.txid,
                ..base
            }
        };
        backend.shared.reg.publish(snap);
        let mut st = backend.state.borrow_mut();
        st.published = snap;
        st.freelist = core.commit_freelist();
        st.free_total = st.freelist.free_pages() + st.freelist.pending_pages();
        st.chain = std::mem::take(&mut core.chain);
        st.chain_records = core.chain_records;
        self.freelist_returned = true;
        Ok(snap.txid)
    }
}

/// A writable view of one tree inside the write transaction (reads see its own writes).
pub struct TreeMut<'w> {
    core: &'w mut TxnCore,
    idx: usize,
}

impl TreeMut<'_> {
    /// Inserts or replaces.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_SIZE {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit: MAX_KEY_SIZE,
            });
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len(),
                limit: MAX_VALUE_SIZE,
            });
        }
        let idx = self.idx;
        self.core.guarded(|c| {
            let (mut root, order) = (c.trees[idx].root, c.trees[idx].order);
            let v = c.make_val(key, value)?;
            c.put(&mut root, order, key, v)?;
            let t = &mut c.trees[idx];
            t.root = root;
            t.dirty = true;
            Ok(())
        })
    }
    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        if key.len() > MAX_KEY_SIZE {
            return Ok(false);
        }
        let idx = self.idx;
        self.core.guarded(|c| {
            let (mut root, order) = (c.trees[idx].root, c.trees[idx].order);
            let found = c.del(&mut root, order, key)?;
            if found {
                let t = &mut c.trees[idx];
                t.root = root;
                t.dirty = true;
            }
            Ok(found)
        })
    }
    /// The current value of `key` in this transaction (copied out).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.core.check_poison()?;
        let t = &self.core.trees[self.idx];
        self.core.get(t.root, t.order, key)
    }
    /// At most `limit` entries in `range` as seen by this transaction (copied out), in key
    /// order.
    pub fn scan<'r, R: RangeBounds<&'r [u8]>>(
        &self,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.collect(&range, limit, false)
    }

    /// At most `limit` entries in `range` as seen by this transaction (copied out), in
    /// descending key order.
    pub fn scan_rev<'r, R: RangeBounds<&'r [u8]>>(
        &self,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.collect(&range, limit, true)
    }

    /// At most `limit` entries of `range`, forward or in descending key order.
    fn collect<'r, R: RangeBounds<&'r [u8]>>(
        &self,
        range: &R,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.core.check_poison()?;
        let (s, e) = bounds(range);
        let t = &self.core.trees[self.idx];
        let mut out = Vec::new();
        if limit > 0 {
            if reverse {
                self.core
                    .scan_rev(t.root, t.order, s, e, limit, &mut out, 0)?;
            } else {
                self.core.scan(t.root, t.order, s, e, limit, &mut out, 0)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
