//! Watch: per-shard watch hubs fed by the applier's fan-out.
//!
//! - The applier (raft shard) sends every published batch's events, with the batch's revision
//!   range, to every shard's [`Inbox`] through [`FanOut::publish`], which never blocks: each
//!   shard's queue is bounded in batches and bytes, and when it is full the batch is dropped
//!   *for that shard only* and the shard is told it lags. Events are shared (`Arc`), never
//!   copied per shard or per watcher.
//! - A shard's [`hub::Hub`] keeps the watchers created on its connections. Synced watchers
//!   are matched against each batch through an [`index::KeyIndex`]; a watcher that starts in
//!   the past, whose client is too slow (its stream's send buffer is full), or whose shard
//!   lagged is *unsynced*: it catches up from the `history` tree of a published snapshot in
//!   bounded chunks and rejoins the synced set exactly at the revision where it stopped.
//!   Because a batch is published before it is sent, a snapshot is never behind what the hub
//!   has received; a watcher that catches up *past* the hub waits until the hub reaches it.
//!
//! Guarantees (etcd's): ordered, unique and gap-free per watcher; a revision never split
//! across responses unless the watcher asked for fragments; "created" precedes events;
//! progress notifications only when every event up to their revision was queued before them.

pub mod hub;
pub mod index;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mvcc::{Event, KeyValue, Revision};

/// Batches queued per shard between the applier and that shard's hub.
pub const FANOUT_QUEUE_BATCHES: usize = 4096;
/// Event bytes (keys + values + per-event overhead) queued per shard before the shard is
/// declared lagging (its watchers then catch up from history instead).
pub const MAX_FANOUT_QUEUED_BYTES: usize = 64 << 20;
/// Bytes one stream may hold queued for its client before its watchers are unsynced (they
/// then catch up from history once the client has read the backlog).
pub const MAX_STREAM_QUEUE_BYTES: usize = 1 << 20;
/// Largest response (estimated bytes) built by merging revisions or, with `fragment`,
/// by splitting one revision; a revision without `fragment` is sent whole however large.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Most bytes one shared response may stand for: its estimated size times the watchers it is
/// for (the client library makes one copy per watcher). Watchers that would get the same
/// response are grouped up to this, so what a client materializes from one wire response
/// stays bounded however many watchers of a stream share a key.
pub const MAX_SHARED_RESPONSE_BYTES: usize = 64 << 10;
/// History entries read per catch-up step (a step may finish its last revision beyond it).
pub const CATCHUP_EVENTS_PER_STEP: usize = 1000;
/// Catch-up steps per round before the catch-up task yields to other tasks.
pub const CATCHUP_STEPS_PER_ROUND: usize = 8;
/// Watchers one stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 1 << 20;
/// Default `--watch-progress-notify-interval` (etcd's default: 10 minutes).
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// Estimated bytes of one event beyond its key and value (for the byte budgets above).
pub const EVENT_OVERHEAD_BYTES: usize = 64;

/// The events of one published apply batch: revisions `prev_revision + 1 ..= revision`.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    /// Store revision before the batch.
    pub prev_revision: Revision,
    /// Store revision after the batch (published before the batch is sent).
    pub revision: Revision,
    /// Every change of the batch in (revision, sub) order; `kv.mod_revision` is its revision.
    pub events: Vec<Event>,
    /// Estimated bytes (for the fan-out byte budget).
    pub bytes: usize,
}

impl AppliedBatch {
    /// A batch of `events` covering `prev_revision + 1 ..= revision`.
    pub fn new(prev_revision: Revision, revision: Revision, events: Vec<Event>) -> AppliedBatch {
        debug_assert!(events
            .windows(2)
            .all(|w| w[0].kv.mod_revision <= w[1].kv.mod_revision));
        debug_assert!(events
            .iter()
            .all(|e| e.kv.mod_revision > prev_revision && e.kv.mod_revision <= revision));
        let bytes = events.iter().map(event_bytes).sum();
        AppliedBatch {
            prev_revision,
            revision,
            events,
            bytes,
        }
    }
}

/// Estimated bytes of an event (key, value, overhead).
pub fn event_bytes(e: &Event) -> usize {
    e.kv.key.len() + e.kv.value.len() + EVENT_OVERHEAD_BYTES
}

/// Estimated bytes of a key-value (prev_kv).
pub fn kv_bytes(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len() + EVENT_OVERHEAD_BYTES
}

#[derive(Clone)]
struct ShardQueue {
    batches: flume::Sender<Arc<AppliedBatch>>,
    lag: flume::Sender<()>,
    queued_bytes: Arc<AtomicUsize>,
}

/// The applier's side of the fan-out: one bounded queue per shard.
#[derive(Clone)]
pub struct FanOut {
    shards: Vec<ShardQueue>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FanOut({} shards)", self.shards.len())
    }
}

/// A shard hub's side of the fan-out.
pub struct Inbox {
    /// Published batches, in revision order (some may be missing after a lag).
    pub batches: flume::Receiver<Arc<AppliedBatch>>,
    /// Rung (capacity 1) when a batch for this shard was dropped.
    pub lag: flume::Receiver<()>,
    /// Bytes of the batches queued in `batches` (the receiver subtracts what it takes).
    pub queued_bytes: Arc<AtomicUsize>,
}

impl Inbox {
    /// Accounts for a batch taken from `batches`.
    pub fn taken(&self, batch: &AppliedBatch) {
        self.queued_bytes.fetch_sub(batch.bytes, Ordering::Relaxed);
    }
}

/// Creates the fan-out for `shards` shards: the applier's sender and one inbox per shard.
pub fn fan_out(shards: usize) -> (FanOut, Vec<Inbox>) {
    let mut queues = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (btx, brx) = flume::bounded(FANOUT_QUEUE_BATCHES);
        let (ltx, lrx) = flume::bounded(1);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        queues.push(ShardQueue {
            batches: btx,
            lag: ltx,
            queued_bytes: queued_bytes.clone(),
        });
        inboxes.push(Inbox {
            batches: brx,
            lag: lrx,
            queued_bytes,
        });
    }
    (FanOut { shards: queues }, inboxes)
}

impl FanOut {
    /// Sends a published batch to every shard without ever waiting: a shard whose queue is
    /// full (in batches or bytes) misses it and is told it lags; its hub then moves its
    /// watchers to catch-up, so nothing is lost and the applier is never slowed.
    pub fn publish(&self, batch: AppliedBatch) {
        if batch.revision <= batch.prev_revision {
            debug_assert!(batch.events.is_empty());
            return; // nothing changed: no revision to announce
        }
        let bytes = batch.bytes;
        let batch = Arc::new(batch);
        for q in &self.shards {
            let queued = q.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            let sent = queued + bytes <= MAX_FANOUT_QUEUED_BYTES
                && q.batches.try_send(batch.clone()).is_ok();
            if !sent {
                q.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                // Capacity 1: a lag already signalled and not yet seen is enough.
                let _ = q.lag.try_send(());
            }
        }
    }
}
