//! The applier: the single writer of the backend.
//!
//! It applies committed raft log entries in order, a batch per backend write transaction,
//! records the applied index in that same transaction, publishes the result to readers
//! (no fsync), and syncs the backend periodically. Durability of an acknowledged write comes
//! from the WAL; after a crash the entries above the backend's durable applied index are
//! replayed, and because the applied index commits atomically with the changes, each entry
//! is applied exactly once.
//!
//! Between syncs, the backend's writeback thread (`backend::writeback`) is asked to start
//! writing the backend's dirty pages soon after each publish, so a sync's `fdatasync` finds
//! little left to flush. Without it each 100 ms sync flushed every page written since the
//! last one in one burst (6-8 ms on this machine's disk), and the WAL's O_DIRECT write +
//! fdatasync that a put waits on queued behind that burst: the 1-client put p99 was set by
//! those few puts per sync.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::api::decode_proposal;
use crate::backend::{self, Backend};
use crate::mvcc::read::KvView;
use crate::mvcc::{
    self, Error, ErrorCode, Limits, Revision, SnapshotView, WriteBatch, WriteRequest, WriteResponse,
};

/// Sync the backend at least this often while entries are being applied.
pub const BACKEND_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Sync the backend after at most this many unsynced applied entries.
pub const BACKEND_SYNC_ENTRIES: u64 = 10_000;
/// Key and value bytes applied in one backend write transaction before it is published and a
/// new one begun: keeps every transaction far below the backend's `MAX_TXN_DIRTY_PAGES`
/// (one request adds at most `mvcc::store::MAX_CHANGE_BYTES_PER_REQUEST` on top).
pub const MAX_APPLY_TXN_BYTES: usize = 64 << 20;
/// History events physically compacted per applied batch, so compaction never stalls writes.
pub const COMPACTION_EVENTS_PER_BATCH: usize = 1_000;

/// A committed raft log entry handed to the applier.
#[derive(Clone, Debug)]
pub struct CommittedEntry {
    /// Raft log index.
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Encoded proposal; empty for raft's own no-op entries.
    pub data: Vec<u8>,
}

/// The result of applying one proposal.
#[derive(Clone, Debug)]
pub struct AppliedResult {
    /// The proposal id (the proposer's key for the waiting client).
    pub proposal_id: u64,
    /// Raft index of the entry.
    pub index: u64,
    /// Response or error.
    pub result: mvcc::Result<WriteResponse>,
    /// Store revision after the request (the response header's revision).
    pub revision: Revision,
}

/// The single writer of the backend. Lives on the raft shard's executor.
pub struct Applier {
    backend: Rc<Backend>,
    limits: Limits,
    quota_bytes: u64,
    applied_index: u64,
    applied_term: u64,
    revision: Revision,
    compacted: Revision,
    compaction_done: bool,
    synced_index: u64,
    last_sync: Instant,
    /// A backend sync running in a background task: the applied index it makes durable and
    /// where its result arrives.
    sync_in_flight: Option<(u64, oneshot::Receiver<backend::Result<u64>>)>,
    /// Where each published batch's events go (every shard's watch hub).
    watch: Option<crate::watch::FanOut>,
    lease_events: Vec<mvcc::lease::LeaseEvent>,
}

impl Applier {
    /// Takes over `backend`, reading the applied index and revisions it holds.
    pub fn new(backend: Backend, limits: Limits, quota_bytes: u64) -> mvcc::Result<Applier> {
        let (applied_index, applied_term, revision, compacted, compaction_done) = {
            let rtxn = backend.begin_read()?;
            let mut view = SnapshotView::new(&rtxn)?;
            let (index, term) = mvcc::read::applied(&mut view)?;
            let (rev, compacted) = mvcc::read::revisions(&mut view)?;
            let done = view.counter(mvcc::encoding::META_COMPACT_DONE)? >= compacted;
            (index, term, rev, compacted, done)
        };
        Ok(Applier {
            backend: Rc::new(backend),
            limits,
            quota_bytes,
            applied_index,
            applied_term,
            revision,
            compacted,
            compaction_done,
            synced_index: applied_index,
            last_sync: Instant::now(),
            sync_in_flight: None,
            watch: None,
            lease_events: Vec::new(),
        })
    }

    /// Sends every batch published from now on to `fan_out` (the shards' watch hubs).
    pub fn set_watch_fan_out(&mut self, fan_out: crate::watch::FanOut) {
        self.watch = Some(fan_out);
    }

    /// Asks the backend's writeback thread (if its options run one) to start writing back
    /// every page published so far; returns at once. Call after answering the proposers of a
    /// batch, so that their replies do not wait for the thread's wake-up. Durability is
    /// unchanged: only [`Applier::background_sync`] / [`Applier::sync_all`] make pages durable.
    pub fn start_writeback(&self) {
        self.backend.start_writeback();
    }

    /// The backend (readers, stats, check).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Index of the last applied entry (published to readers).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Index of the last applied entry that is durable in the backend; WAL records at or
    /// below it may be released.
    pub fn synced_index(&self) -> u64 {
        self.synced_index
    }

    /// Current store revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether history below the compacted revision has been physically removed.
    pub fn compaction_done(&self) -> bool {
        self.compaction_done
    }

    /// The lease grants and revokes of every batch published since the last call, in order;
    /// the raft shard hands them to the owner shards before answering the proposers.
    pub fn take_lease_events(&mut self) -> Vec<mvcc::lease::LeaseEvent> {
        std::mem::take(&mut self.lease_events)
    }

    /// Applies `entries` (consecutive, starting right after the applied index; entries at or
    /// below it are skipped, which makes replay idempotent) in one backend transaction and
    /// publishes the result. Returns one result per proposal entry, in order.
    pub async fn apply(&mut self, entries: &[CommittedEntry]) -> mvcc::Result<Vec<AppliedResult>> {
        let mut results = Vec::new();
        let fresh: Vec<&CommittedEntry> = entries
            .iter()
            .filter(|e| e.index > self.applied_index)
            .collect();
        if fresh.is_empty() && (self.compaction_done || self.compacted == 0) {
            return Ok(results);
        }
        let mut rest = &fresh[..];
        loop {
            let taken = self.apply_chunk(rest, &mut results).await?;
            rest = &rest[taken..];
            if rest.is_empty() {
                return Ok(results);
            }
        }
    }

    /// Applies a prefix of `fresh` in one backend transaction, until the entries are used up
    /// or [`MAX_APPLY_TXN_BYTES`] are written; publishes it and returns how many it applied.
    async fn apply_chunk(
        &mut self,
        fresh: &[&CommittedEntry],
        results: &mut Vec<AppliedResult>,
    ) -> mvcc::Result<usize> {
        let mut taken = 0;
        let mut lease_events = Vec::new();
        let over_quota = self.backend.stats().in_use_bytes > self.quota_bytes;
        let mut wtxn = self.backend.begin_write()?;
        let prev_revision = self.revision;
        let mut events = Vec::new();
        let (last_index, last_term, revision, compacted, done) = {
            let mut batch = WriteBatch::begin(&mut wtxn, self.limits.clone())?;
            let mut last = (self.applied_index, self.applied_term);
            let mut written = 0usize;
            for &entry in fresh {
                if written >= MAX_APPLY_TXN_BYTES {
                    break;
                }
                taken += 1;
                debug_assert_eq!(
                    entry.index,
                    last.0 + 1,
                    "entries are applied in log order without gaps"
                );
                last = (entry.index, entry.term);
                if entry.data.is_empty() {
                    continue;
                }
                let (proposal_id, result) = match decode_proposal(&entry.data) {
                    Ok((id, req)) => {
                        if over_quota && adds_data(&req) {
                            let e = Error::new(
                                ErrorCode::NoSpace,
                                format!(
                                    "database space exceeded: backend pages in use exceed --quota-backend-bytes ({} bytes); free pages with `corekvctl compaction REV --physical` or by deleting keys, or raise the quota (`corekvctl defrag --data-dir` on a stopped member shrinks the file)",
                                    self.quota_bytes
                                ),
                            );
                            (id, Err(e))
                        } else {
                            let (result, _) = batch.apply(&req);
                            lease_events.extend(batch.take_lease_events());
                            let applied = batch.take_events();
                            written += applied
                                .iter()
                                .map(|e| e.kv.key.len() + e.kv.value.len())
                                .sum::<usize>();
                            if self.watch.is_some() {
                                events.extend(applied);
                            }
                            if let Err(e) = &result {
                                if e.code == ErrorCode::Internal {
                                    // A backend failure mid-transaction: abandon the whole batch.
                                    return Err(e.clone());
                                }
                            }
                            (id, result)
                        }
                    }
                    Err(e) => (
                        0,
                        Err(Error::new(
                            ErrorCode::Internal,
                            format!("log entry {} does not decode: {e}", entry.index),
                        )),
                    ),
                };
                results.push(AppliedResult {
                    proposal_id,
                    index: entry.index,
                    result,
                    revision: batch.revision(),
                });
            }
            batch.set_applied(last.0, last.1)?;
            let done = batch.compact_step(COMPACTION_EVENTS_PER_BATCH)?;
            let _ = batch.take_events();
            (last.0, last.1, batch.revision(), batch.compacted(), done)
        };
        wtxn.publish().await?;
        if let Some(watch) = &self.watch {
            // After publish: a hub's snapshot is never behind the batches it has received.
            watch.publish(crate::watch::AppliedBatch::new(
                prev_revision,
                revision,
                events,
            ));
        }
        self.lease_events.extend(lease_events);
        self.applied_index = last_index;
        self.applied_term = last_term;
        self.revision = revision;
        self.compacted = compacted;
        self.compaction_done = done;
        Ok(taken)
    }

    /// Starts a backend sync in a background task when one is due (enough time or entries
    /// since the last) and none is running, so the raft loop keeps proposing, persisting and
    /// applying during the backend's fdatasyncs (the backend allows publishes while a sync
    /// runs: the sync covers the snapshot published when it began). Returns the applied index
    /// a background sync made durable if one finished since the last call.
    pub fn background_sync(&mut self) -> backend::Result<Option<u64>> {
        let mut durable = None;
        if let Some((index, rx)) = &mut self.sync_in_flight {
            match rx.try_recv() {
                Ok(None) => return Ok(None),
                Ok(Some(result)) => {
                    let index = *index;
                    self.sync_in_flight = None;
                    result?;
                    self.synced_index = index;
                    durable = Some(index);
                }
                Err(oneshot::Canceled) => {
                    self.sync_in_flight = None;
                    return Err(sync_task_lost());
                }
            }
        }
        let due = self.applied_index - self.synced_index >= BACKEND_SYNC_ENTRIES
            || (self.applied_index > self.synced_index
                && self.last_sync.elapsed() >= BACKEND_SYNC_INTERVAL);
        if due {
            let (tx, rx) = oneshot::channel();
            let backend = self.backend.clone();
            glommio::spawn_local(async move {
                let _ = tx.send(backend.sync().await);
            })
            .detach();
            self.sync_in_flight = Some((self.applied_index, rx));
            self.last_sync = Instant::now();
        }
        Ok(durable)
    }

    /// Waits for a background sync, then makes everything applied durable in the backend;
    /// returns the applied index now durable if anything was synced.
    pub async fn sync_all(&mut self) -> backend::Result<Option<u64>> {
        let mut durable = None;
        if let Some((index, rx)) = self.sync_in_flight.take() {
            match rx.await {
                Ok(result) => {
                    result?;
                    self.synced_index = index;
                    durable = Some(index);
                }
                Err(oneshot::Canceled) => return Err(sync_task_lost()),
            }
        }
        if self.applied_index > self.synced_index {
            let index = self.applied_index;
            self.backend.sync().await?;
            self.synced_index = index;
            self.last_sync = Instant::now();
            durable = Some(index);
        }
        Ok(durable)
    }
}

fn sync_task_lost() -> backend::Error {
    backend::Error::Io {
        context: "waiting for the background backend sync".into(),
        source: std::io::Error::other("the sync task ended without a result"),
    }
}

/// Whether a request can make the database larger (refused when over quota; deletes and
/// compactions are always allowed so that space can be reclaimed).
fn adds_data(req: &WriteRequest) -> bool {
    fn ops_add(ops: &[mvcc::RequestOp]) -> bool {
        ops.iter().any(|op| match op {
            mvcc::RequestOp::Put(_) => true,
            mvcc::RequestOp::Txn(t) => ops_add(&t.success) || ops_add(&t.failure),
            _ => false,
        })
    }
    match req {
        WriteRequest::Put(_) => true,
        WriteRequest::Txn(t) => ops_add(&t.success) || ops_add(&t.failure),
        WriteRequest::LeaseGrant(_) => true,
        WriteRequest::DeleteRange(_)
        | WriteRequest::Compact { .. }
        | WriteRequest::LeaseRevoke { .. }
        | WriteRequest::LeaseCheckpoint(_) => false,
    }
}
