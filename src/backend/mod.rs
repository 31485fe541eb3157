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

use std::cmp::Ordering;
use std::fmt;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};

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
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        let _ = (a, b);
        unimplemented!()
    }
}

/// Tunables for [`Backend::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual address space reserved for the mapping; the file can grow up to this size
    /// without remapping.
    pub max_map_size: u64,
    /// Bytes by which the file grows when it needs more pages.
    pub grow_step: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_map_size: 64 << 30,
            grow_step: 64 << 20,
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Error {}

/// Result alias for backend operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The writer's handle: open on a glommio executor; not `Send`.
pub struct Backend {
    _private: (),
}

/// A thread-safe handle for starting read transactions on any thread.
#[derive(Clone)]
pub struct Reader {
    _private: (),
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

impl Backend {
    /// Opens (creating if absent) the file at `path`, locking it exclusively. Must run on a
    /// glommio executor.
    pub async fn open(path: impl AsRef<Path>, options: Options) -> Result<Backend> {
        let _ = (path.as_ref(), options);
        unimplemented!()
    }

    /// A handle for readers on other threads.
    pub fn reader(&self) -> Reader {
        unimplemented!()
    }

    /// Starts a read transaction on the latest published snapshot.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        unimplemented!()
    }

    /// Starts the write transaction; [`Error::WriterBusy`] if one is open.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        unimplemented!()
    }

    /// Makes every published transaction durable: data pages, fdatasync, meta page,
    /// fdatasync. Returns the txid now durable.
    pub async fn sync(&self) -> Result<u64> {
        unimplemented!()
    }

    /// Walks every page of the latest published snapshot and the freelist.
    pub fn check(&self) -> Result<CheckReport> {
        unimplemented!()
    }

    /// Writes a compact copy of the latest published snapshot to a new file at `path`.
    pub async fn compact_into(&self, path: impl AsRef<Path>) -> Result<()> {
        let _ = path.as_ref();
        unimplemented!()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        unimplemented!()
    }
}

impl Reader {
    /// Starts a read transaction on the latest published snapshot; callable on any thread.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        unimplemented!()
    }
}

/// A pinned, consistent snapshot. `Send`: may be moved to another thread.
pub struct ReadTxn {
    _private: (),
}

impl ReadTxn {
    /// Transaction id of the snapshot.
    pub fn txid(&self) -> u64 {
        unimplemented!()
    }

    /// The named tree, or `None` if it does not exist in this snapshot.
    pub fn tree(&self, name: &[u8]) -> Result<Option<Tree<'_>>> {
        let _ = name;
        unimplemented!()
    }
}

/// A read-only view of one tree in a snapshot.
pub struct Tree<'t> {
    _txn: std::marker::PhantomData<&'t ()>,
}

impl<'t> Tree<'t> {
    /// The value of `key`, borrowed zero-copy from the snapshot.
    pub fn get(&self, key: &[u8]) -> Result<Option<&'t [u8]>> {
        let _ = key;
        unimplemented!()
    }

    /// Entries with keys in `range`, in key order; `.rev()` walks backwards.
    pub fn range<'r, R: RangeBounds<&'r [u8]>>(&self, range: R) -> Result<Range<'t>> {
        let _ = range.start_bound();
        unimplemented!()
    }

    /// Number of entries with keys in `range`.
    pub fn count<'r, R: RangeBounds<&'r [u8]>>(&self, range: R) -> Result<u64> {
        let _ = range.start_bound();
        unimplemented!()
    }

    /// A cursor positioned before the first entry.
    pub fn cursor(&self) -> Cursor<'t> {
        unimplemented!()
    }
}

/// A double-ended iterator over a key range. Items borrow from the snapshot.
pub struct Range<'t> {
    _txn: std::marker::PhantomData<&'t ()>,
}

impl<'t> Iterator for Range<'t> {
    type Item = Result<(&'t [u8], &'t [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        unimplemented!()
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        unimplemented!()
    }
}

/// A movable position in a tree.
pub struct Cursor<'t> {
    _txn: std::marker::PhantomData<&'t ()>,
}

impl<'t> Cursor<'t> {
    /// Moves to the first entry with key >= `key`; returns it.
    pub fn seek(&mut self, key: &[u8]) -> Result<Option<(&'t [u8], &'t [u8])>> {
        let _ = key;
        unimplemented!()
    }
    /// Moves to the last entry with key <= `key`; returns it.
    pub fn seek_for_prev(&mut self, key: &[u8]) -> Result<Option<(&'t [u8], &'t [u8])>> {
        let _ = key;
        unimplemented!()
    }
    /// Moves to the next entry (the first, if unpositioned).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<(&'t [u8], &'t [u8])>> {
        unimplemented!()
    }
    /// Moves to the previous entry (the last, if unpositioned).
    pub fn prev(&mut self) -> Result<Option<(&'t [u8], &'t [u8])>> {
        unimplemented!()
    }
}

/// The single write transaction. Dropping it without [`WriteTxn::publish`] aborts it.
pub struct WriteTxn<'b> {
    _backend: std::marker::PhantomData<&'b Backend>,
}

impl<'b> WriteTxn<'b> {
    /// Opens the named tree, creating it with `order` if absent.
    pub fn open_tree(&mut self, name: &[u8], order: KeyOrder) -> Result<TreeMut<'_>> {
        let _ = (name, order);
        unimplemented!()
    }

    /// Deletes a tree and frees its pages; returns whether it existed.
    pub fn drop_tree(&mut self, name: &[u8]) -> Result<bool> {
        let _ = name;
        unimplemented!()
    }

    /// Makes this transaction visible to new readers (no fsync). Returns its txid.
    pub async fn publish(self) -> Result<u64> {
        unimplemented!()
    }
}

/// A writable view of one tree inside the write transaction (reads see its own writes).
pub struct TreeMut<'w> {
    _txn: std::marker::PhantomData<&'w mut ()>,
}

impl TreeMut<'_> {
    /// Inserts or replaces.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let _ = (key, value);
        unimplemented!()
    }
    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let _ = key;
        unimplemented!()
    }
    /// The current value of `key` in this transaction (copied out).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _ = key;
        unimplemented!()
    }
    /// At most `limit` entries in `range` as seen by this transaction (copied out), in key
    /// order.
    pub fn scan<'r, R: RangeBounds<&'r [u8]>>(
        &self,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _ = (range.start_bound(), limit);
        unimplemented!()
    }

    /// At most `limit` entries in `range` as seen by this transaction (copied out), in
    /// descending key order.
    pub fn scan_rev<'r, R: RangeBounds<&'r [u8]>>(
        &self,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _ = (range.start_bound(), limit);
        unimplemented!()
    }
}
