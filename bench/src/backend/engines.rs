//! The three engines behind one static-dispatch trait: corekv's backend, LMDB (through heed)
//! and redb.
//!
//! Equal durability: every [`Engine::write`] returns only once its batch is durable on disk
//! (corekv: publish + sync; LMDB: commit with default flags, which fsyncs; redb: commit with
//! `Durability::Immediate`). Reads always go through a read transaction (snapshot).

use std::path::Path;
use std::time::{Duration, Instant};

use super::workload::Batch;
use super::Config;

/// Name of the corekv tree / LMDB database / redb table every engine stores the data in.
pub const TABLE: &str = "bench";

/// Default address space reserved by corekv and LMDB for their maps (not disk: the files
/// only grow as pages are used), so it only has to exceed the largest data set we run.
pub const DEFAULT_MAP_SIZE: u64 = 64 << 30;

/// Largest key LMDB accepts with its default build (`MDB_MAXKEYSIZE`); the CLI rejects larger
/// keys so that all three engines run the same data.
pub const LMDB_MAX_KEY_SIZE: usize = 511;

/// Where the time of one durable write transaction went.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteTimes {
    /// Begin the transaction and apply every put (in memory for all three engines).
    pub apply: Duration,
    /// corekv only: `publish` (dirty pages handed to the file, snapshot made visible).
    pub publish: Duration,
    /// Making it durable: corekv `sync`; LMDB and redb `commit` (which writes and fsyncs).
    pub sync: Duration,
}

impl WriteTimes {
    /// The durable-commit latency: everything after the last put.
    pub fn commit(&self) -> Duration {
        self.publish + self.sync
    }
}

/// One storage engine under test. Static dispatch: the timed loops are monomorphised per
/// engine, so no engine pays for an indirection the others do not.
#[allow(async_fn_in_trait)] // only used on the single-threaded glommio executor; no Send needed
pub trait Engine: Sized {
    /// Engine name in reports.
    const NAME: &'static str;

    /// A read-only view of the data inside one read transaction.
    type View<'a>;

    /// Creates an empty database inside the (empty, existing) directory `dir`, reserving
    /// `cfg.map_size` bytes of address space where the engine maps its file (corekv, LMDB).
    async fn open(dir: &Path, cfg: &Config) -> Result<Self, String>;

    /// Writes `batch` in one transaction and returns once it is durable, with where the time
    /// went.
    async fn write(&mut self, batch: &Batch) -> Result<WriteTimes, String>;

    /// Starts a read transaction, opens the table, runs `f` on it and ends the transaction.
    fn read<R>(&self, f: impl FnOnce(&Self::View<'_>) -> Result<R, String>) -> Result<R, String>;

    /// Looks `key` up and hands the borrowed value to `f`.
    fn get<R>(
        view: &Self::View<'_>,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, String>;

    /// Visits at most `limit` entries starting at the first key >= `start` going forward, or
    /// at the last key <= `start` going backward; returns how many it visited.
    fn scan(
        view: &Self::View<'_>,
        start: &[u8],
        limit: usize,
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, String>;

    /// Closes the database, reporting errors instead of swallowing them in `Drop`.
    async fn close(self) -> Result<(), String>;
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------------------
// corekv

use corekv::backend as ck;

/// corekv's backend: single writer on this glommio executor, reads through a [`ck::Reader`]
/// (the thread-safe handle other shards would use).
pub struct Corekv {
    backend: ck::Backend,
    reader: ck::Reader,
}

/// File name of the corekv database inside the engine's directory.
pub const COREKV_FILE: &str = "corekv.db";

impl Engine for Corekv {
    const NAME: &'static str = "corekv";
    type View<'a> = ck::Tree<'a>;

    async fn open(dir: &Path, cfg: &Config) -> Result<Self, String> {
        let path = dir.join(COREKV_FILE);
        let options = ck::Options {
            max_map_size: cfg.map_size,
            blocking_sync: cfg.corekv_blocking_sync,
            ..ck::Options::default()
        };
        let backend = ck::Backend::open(&path, options)
            .await
            .map_err(|e| format!("corekv: open {}: {e}", path.display()))?;
        let reader = backend.reader();
        Ok(Corekv { backend, reader })
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteTimes, String> {
        let start = Instant::now();
        let mut txn = self
            .backend
            .begin_write()
            .map_err(err("corekv: begin_write"))?;
        {
            let mut tree = txn
                .open_tree(TABLE.as_bytes(), ck::KeyOrder::Bytewise)
                .map_err(err("corekv: open_tree"))?;
            for (k, v) in batch.iter() {
                tree.put(k, v).map_err(err("corekv: put"))?;
            }
        }
        let applied = Instant::now();
        txn.publish().await.map_err(err("corekv: publish"))?;
        let published = Instant::now();
        self.backend.sync().await.map_err(err("corekv: sync"))?;
        Ok(WriteTimes {
            apply: applied - start,
            publish: published - applied,
            sync: published.elapsed(),
        })
    }

    fn read<R>(&self, f: impl FnOnce(&Self::View<'_>) -> Result<R, String>) -> Result<R, String> {
        let txn = self
            .reader
            .begin_read()
            .map_err(err("corekv: begin_read"))?;
        let tree = txn
            .tree(TABLE.as_bytes())
            .map_err(err("corekv: tree"))?
            .ok_or_else(|| format!("corekv: tree {TABLE:?} missing in the snapshot"))?;
        f(&tree)
    }

    fn get<R>(
        view: &Self::View<'_>,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, String> {
        Ok(f(view.get(key).map_err(err("corekv: get"))?))
    }

    fn scan(
        view: &Self::View<'_>,
        start: &[u8],
        limit: usize,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, String> {
        let mut n = 0;
        if reverse {
            for item in view.range(..=start).map_err(err("corekv: range"))?.rev() {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("corekv: range next_back"))?;
                f(k, v);
                n += 1;
            }
        } else {
            for item in view.range(start..).map_err(err("corekv: range"))? {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("corekv: range next"))?;
                f(k, v);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn close(self) -> Result<(), String> {
        // The last write already synced; `self` drops here, which releases the file lock and
        // the mapping (the API has no fallible close).
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// LMDB through heed

use heed::types::Bytes;

/// LMDB through heed with default (durable) environment flags.
pub struct Lmdb {
    env: heed::Env,
    db: heed::Database<'static, Bytes, Bytes>,
}

/// A heed read transaction plus the database handle.
pub struct LmdbView<'a> {
    txn: heed::RoTxn<'a, heed::WithTls>,
    db: heed::Database<'static, Bytes, Bytes>,
}

impl Engine for Lmdb {
    const NAME: &'static str = "lmdb";
    type View<'a> = LmdbView<'a>;

    async fn open(dir: &Path, cfg: &Config) -> Result<Self, String> {
        let map_size = usize::try_from(cfg.map_size)
            .map_err(|_| format!("lmdb: map size {} does not fit this platform", cfg.map_size))?;
        let mut options = heed::EnvOpenOptions::new();
        options.map_size(map_size).max_dbs(1);
        // SAFETY: the directory is fresh and private to this run, so no other process or
        // environment in this process maps the same file (heed's safety requirement).
        let env = unsafe { options.open(dir) }
            .map_err(|e| format!("lmdb: open {}: {e}", dir.display()))?;
        let wtxn = env.write_txn().map_err(err("lmdb: write_txn"))?;
        // heed 0.23 hands out a `'static` database handle only once its creation committed.
        let created = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, Some(TABLE))
                    .map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(err("lmdb: create database"))?;
        let heed::CommitOrAbort::Commit(db) = created else {
            return Err("lmdb: creating the database was aborted".into());
        };
        Ok(Lmdb { env, db })
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteTimes, String> {
        let start = Instant::now();
        let mut wtxn = self.env.write_txn().map_err(err("lmdb: write_txn"))?;
        for (k, v) in batch.iter() {
            self.db.put(&mut wtxn, k, v).map_err(err("lmdb: put"))?;
        }
        let applied = Instant::now();
        wtxn.commit().map_err(err("lmdb: commit"))?;
        Ok(WriteTimes {
            apply: applied - start,
            publish: Duration::ZERO,
            sync: applied.elapsed(),
        })
    }

    fn read<R>(&self, f: impl FnOnce(&Self::View<'_>) -> Result<R, String>) -> Result<R, String> {
        let txn = self.env.read_txn().map_err(err("lmdb: read_txn"))?;
        f(&LmdbView { txn, db: self.db })
    }

    fn get<R>(
        view: &Self::View<'_>,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, String> {
        Ok(f(view.db.get(&view.txn, key).map_err(err("lmdb: get"))?))
    }

    fn scan(
        view: &Self::View<'_>,
        start: &[u8],
        limit: usize,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, String> {
        use std::ops::Bound::{self, Included, Unbounded};
        // LMDB rejects zero-length keys (MDB_BAD_VALSIZE), also as a seek target; no stored
        // key is empty, so "from the empty key" is "from the first key" / "nothing before".
        let from = if start.is_empty() {
            if reverse {
                return Ok(0);
            }
            Unbounded
        } else {
            Included(start)
        };
        let mut n = 0;
        if reverse {
            let bounds: (Bound<&[u8]>, _) = (Unbounded, from);
            for item in view
                .db
                .rev_range(&view.txn, &bounds)
                .map_err(err("lmdb: rev_range"))?
            {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("lmdb: rev_range next"))?;
                f(k, v);
                n += 1;
            }
        } else {
            let bounds: (_, Bound<&[u8]>) = (from, Unbounded);
            for item in view
                .db
                .range(&view.txn, &bounds)
                .map_err(err("lmdb: range"))?
            {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("lmdb: range next"))?;
                f(k, v);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn close(self) -> Result<(), String> {
        // Consuming the only `Env` handle closes the environment; wait until LMDB has
        // actually closed it so the next engine starts on a quiet machine.
        let Lmdb { env, db: _ } = self;
        env.prepare_for_closing().wait();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// redb

use redb::{ReadableDatabase, TableDefinition};

const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new(TABLE);

/// File name of the redb database inside the engine's directory.
pub const REDB_FILE: &str = "redb.db";

/// redb with `Durability::Immediate` on every write transaction and its default cache.
pub struct Redb {
    db: redb::Database,
}

impl Engine for Redb {
    const NAME: &'static str = "redb";
    type View<'a> = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

    async fn open(dir: &Path, _cfg: &Config) -> Result<Self, String> {
        // redb reads through its own page cache, not a map.
        let path = dir.join(REDB_FILE);
        let db = redb::Database::create(&path)
            .map_err(|e| format!("redb: create {}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(err("redb: begin_write"))?;
        txn.open_table(REDB_TABLE)
            .map_err(err("redb: open_table"))?;
        txn.commit().map_err(err("redb: commit"))?;
        Ok(Redb { db })
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteTimes, String> {
        let start = Instant::now();
        let mut txn = self.db.begin_write().map_err(err("redb: begin_write"))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(err("redb: set_durability"))?;
        {
            let mut table = txn
                .open_table(REDB_TABLE)
                .map_err(err("redb: open_table"))?;
            for (k, v) in batch.iter() {
                table.insert(k, v).map_err(err("redb: insert"))?;
            }
        }
        let applied = Instant::now();
        txn.commit().map_err(err("redb: commit"))?;
        Ok(WriteTimes {
            apply: applied - start,
            publish: Duration::ZERO,
            sync: applied.elapsed(),
        })
    }

    fn read<R>(&self, f: impl FnOnce(&Self::View<'_>) -> Result<R, String>) -> Result<R, String> {
        let txn = self.db.begin_read().map_err(err("redb: begin_read"))?;
        let table = txn
            .open_table(REDB_TABLE)
            .map_err(err("redb: open_table"))?;
        f(&table)
    }

    fn get<R>(
        view: &Self::View<'_>,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, String> {
        let guard = view.get(key).map_err(err("redb: get"))?;
        Ok(f(guard.as_ref().map(|g| g.value())))
    }

    fn scan(
        view: &Self::View<'_>,
        start: &[u8],
        limit: usize,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, String> {
        let mut n = 0;
        if reverse {
            for item in view.range(..=start).map_err(err("redb: range"))?.rev() {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("redb: range next_back"))?;
                f(k.value(), v.value());
                n += 1;
            }
        } else {
            for item in view.range(start..).map_err(err("redb: range"))? {
                if n == limit {
                    break;
                }
                let (k, v) = item.map_err(err("redb: range next"))?;
                f(k.value(), v.value());
                n += 1;
            }
        }
        Ok(n)
    }

    async fn close(self) -> Result<(), String> {
        // Every commit was durable; `self` drops here (redb's close is its `Drop`).
        Ok(())
    }
}
