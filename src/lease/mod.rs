//! Per-shard lease tables: ownership by id, keep-alives in memory, expiry, checkpoints.
//!
//! Lease state is partitioned across the shards: lease `id` is owned by shard
//! [`owner_shard`]`(id, shards)`. The owner holds the lease's deadline in its
//! [`table::LeaseTable`]; nothing else in the process does.
//!
//! - Grant / revoke / checkpoint go through raft. After the applier publishes a batch it sends
//!   each applied grant and revoke to the owner's inbox ([`LeaseMsg::Applied`]) *before* the
//!   proposer is answered, so a client that got its grant answer finds the lease in the
//!   owner's table (every table access first drains the inbox, see
//!   [`LeaseShard::process_pending`]).
//! - Keep-alives arriving on any shard are split by owner: ids owned locally refresh the local
//!   table; the rest are forwarded in one message per owner over the owner's inbox and
//!   answered from there. A keep-alive only moves a deadline in memory: no WAL write, no raft
//!   proposal.
//! - Each shard's [`LeaseShard::run`] task pops expired leases from the expiry heap and
//!   proposes their revokes (at most [`MAX_REVOKES_IN_FLIGHT`] at once; a revoke that was not
//!   applied is proposed again after `REVOKE_RETRY_INTERVAL`, and a lease that is already
//!   revoking is not proposed twice), and every checkpoint interval proposes the remaining
//!   TTLs of its leases (in chunks of `MAX_CHECKPOINTS_PER_REQUEST`), so a restart resumes
//!   leases from their checkpointed remaining TTL instead of a fresh TTL.
//! - At start-up each shard loads the leases it owns from the published backend state, with
//!   their checkpointed remaining TTL. Grants and revokes replayed from the WAL afterwards are
//!   idempotent in the table (a held id is not reset; an unknown revoke is ignored).

pub mod table;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::FutureExt;

use crate::backend::Reader;
use crate::mvcc::lease::{LeaseEvent, MAX_CHECKPOINTS_PER_REQUEST};
use crate::mvcc::{self, Error, ErrorCode, WriteRequest};
use crate::raft::{ProposeResult, RaftRequest};
use table::{ttl_duration, LeaseTable};

/// Capacity of each shard's lease inbox (messages; senders wait when it is full). The
/// consumer never waits on anything while handling a message, so the inbox drains quickly.
pub const LEASE_INBOX_CAPACITY: usize = 4096;
/// Revoke proposals a shard has in flight at most (etcd limits its revoke rate similarly),
/// so a mass expiry cannot flood the raft queue.
pub const MAX_REVOKES_IN_FLIGHT: usize = 1000;
/// Longest a shard's lease task sleeps without looking at its expiry heap.
pub const LEASE_TICK: Duration = Duration::from_millis(500);
/// Default `--lease-checkpoint-interval` (etcd's default).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// The owner shard of lease `id` among `shards` shards: a splitmix64 finalizer of the id,
/// modulo the shard count. Mixing spreads sequential (server-chosen) ids evenly; the function
/// is pure, so every shard computes the same owner. The shard count may change between
/// restarts: ownership is recomputed when the tables are loaded.
pub fn owner_shard(id: i64, shards: usize) -> usize {
    debug_assert!(shards > 0);
    let mut z = id as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % shards as u64) as usize
}

/// Lease settings shared by every shard.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Smallest TTL granted, seconds (smaller requests are raised to it, as etcd does).
    pub min_ttl: i64,
    /// How often each owner shard checkpoints its leases' remaining TTLs.
    pub checkpoint_interval: Duration,
}

/// A message to a shard's lease inbox.
pub enum LeaseMsg {
    /// Grants and revokes applied (and published) by the applier, for leases this shard owns.
    Applied(Vec<LeaseEvent>),
    /// Keep-alives forwarded from another shard: answer the TTL per id (0: not found).
    KeepAlive {
        /// Lease ids, all owned by the receiving shard.
        ids: Vec<i64>,
        /// The TTLs, in the order of `ids`.
        reply: oneshot::Sender<Vec<i64>>,
    },
    /// (granted TTL, remaining seconds) of a lease owned by the receiving shard.
    Remaining {
        /// The lease id.
        id: i64,
        /// `None` if the shard does not hold the lease.
        reply: oneshot::Sender<Option<(i64, i64)>>,
    },
}

/// The senders of every shard's lease inbox, indexed by shard.
pub type LeaseInboxes = Arc<Vec<flume::Sender<LeaseMsg>>>;

/// Creates one bounded inbox per shard.
pub fn inboxes(shards: usize) -> (LeaseInboxes, Vec<flume::Receiver<LeaseMsg>>) {
    let (txs, rxs) = (0..shards)
        .map(|_| flume::bounded(LEASE_INBOX_CAPACITY))
        .unzip();
    (Arc::new(txs), rxs)
}

/// Routes the applier's lease events to their owner shards.
#[derive(Clone)]
pub struct LeaseSink {
    inboxes: LeaseInboxes,
}

impl LeaseSink {
    /// A sink over every shard's inbox.
    pub fn new(inboxes: LeaseInboxes) -> LeaseSink {
        LeaseSink { inboxes }
    }

    /// Sends `events` to their owners (one message per owner, order kept per lease). Waits
    /// while an inbox is full. A shard that stopped is skipped (shutdown).
    pub async fn deliver(&self, events: Vec<LeaseEvent>) {
        if events.is_empty() {
            return;
        }
        let shards = self.inboxes.len();
        let mut by_owner: Vec<Vec<LeaseEvent>> = vec![Vec::new(); shards];
        for ev in events {
            by_owner[owner_shard(ev.id(), shards)].push(ev);
        }
        for (shard, evs) in by_owner.into_iter().enumerate() {
            if !evs.is_empty() {
                let _ = self.inboxes[shard].send_async(LeaseMsg::Applied(evs)).await;
            }
        }
    }
}

/// One shard's lease runtime: its table, its inbox and the senders of every other inbox.
pub struct LeaseShard {
    shard: usize,
    table: RefCell<LeaseTable>,
    inbox: flume::Receiver<LeaseMsg>,
    inboxes: LeaseInboxes,
    config: LeaseConfig,
    revokes_in_flight: Cell<usize>,
    checkpoint_in_flight: Cell<bool>,
    forwarded: Cell<u64>,
    served_local: Cell<u64>,
}

fn unavailable() -> Error {
    Error::new(
        ErrorCode::Unavailable,
        "the lease owner shard is not running (server shutting down)",
    )
}

impl LeaseShard {
    /// Shard `shard`'s lease runtime, with the leases it owns loaded from the published
    /// backend state (each resumes with its checkpointed remaining TTL).
    pub fn open(
        shard: usize,
        inbox: flume::Receiver<LeaseMsg>,
        inboxes: LeaseInboxes,
        config: LeaseConfig,
        reader: &Reader,
    ) -> mvcc::Result<LeaseShard> {
        let mut table = LeaseTable::new();
        let shards = inboxes.len();
        let rtxn = reader.begin_read()?;
        let now = Instant::now();
        for (id, rec) in mvcc::lease::read_all(&rtxn)? {
            if owner_shard(id, shards) == shard {
                let remaining = if rec.remaining_ttl > 0 {
                    rec.remaining_ttl.min(rec.ttl)
                } else {
                    rec.ttl
                };
                table.insert(id, rec.ttl, ttl_duration(remaining), now);
            }
        }
        Ok(LeaseShard {
            shard,
            table: RefCell::new(table),
            inbox,
            inboxes,
            config,
            revokes_in_flight: Cell::new(0),
            checkpoint_in_flight: Cell::new(false),
            forwarded: Cell::new(0),
            served_local: Cell::new(0),
        })
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// The lease settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Leases held by this shard's table.
    pub fn len(&self) -> usize {
        self.table.borrow().len()
    }

    /// Whether this shard's table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.borrow().is_empty()
    }

    /// (keep-alive ids forwarded to other shards, keep-alive ids served from this shard's
    /// table, including those forwarded here): which paths keep-alives took.
    pub fn keep_alive_counts(&self) -> (u64, u64) {
        (self.forwarded.get(), self.served_local.get())
    }

    /// Handles every message waiting in the inbox. Called before any table access, so a
    /// grant the applier announced before answering its client is always visible.
    pub fn process_pending(&self) {
        while let Ok(msg) = self.inbox.try_recv() {
            self.handle(msg);
        }
    }

    fn handle(&self, msg: LeaseMsg) {
        let now = Instant::now();
        match msg {
            LeaseMsg::Applied(events) => {
                let mut table = self.table.borrow_mut();
                for ev in events {
                    debug_assert_eq!(owner_shard(ev.id(), self.shards()), self.shard);
                    match ev {
                        LeaseEvent::Granted {
                            id,
                            ttl,
                            remaining_ttl,
                        } => table.insert(id, ttl, ttl_duration(remaining_ttl), now),
                        LeaseEvent::Revoked { id } => {
                            table.remove(id);
                        }
                    }
                }
            }
            LeaseMsg::KeepAlive { ids, reply } => {
                let ttls = self.keep_alive_local(&ids, now);
                let _ = reply.send(ttls);
            }
            LeaseMsg::Remaining { id, reply } => {
                let _ = reply.send(self.table.borrow().remaining(id, now));
            }
        }
    }

    fn keep_alive_local(&self, ids: &[i64], now: Instant) -> Vec<i64> {
        let mut table = self.table.borrow_mut();
        self.served_local
            .set(self.served_local.get() + ids.len() as u64);
        ids.iter()
            .map(|&id| table.keep_alive(id, now).unwrap_or(0))
            .collect()
    }

    /// Refreshes every lease in `ids` on its owner shard; returns the TTL per id, 0 for a
    /// lease that does not exist (or expired and is being revoked), and how many ids were
    /// forwarded to another shard.
    pub async fn keep_alive(&self, ids: &[i64]) -> mvcc::Result<(Vec<i64>, usize)> {
        self.process_pending();
        let shards = self.shards();
        let mut out = vec![0i64; ids.len()];
        // Positions and ids per owner shard.
        let mut by_owner: Vec<(Vec<usize>, Vec<i64>)> = vec![(Vec::new(), Vec::new()); shards];
        for (pos, &id) in ids.iter().enumerate() {
            if id <= 0 {
                continue; // never a lease: answered 0 (not found)
            }
            let owner = owner_shard(id, shards);
            by_owner[owner].0.push(pos);
            by_owner[owner].1.push(id);
        }
        let mut waits = Vec::new();
        let mut forwarded = 0;
        for (owner, (positions, owned)) in by_owner.into_iter().enumerate() {
            if owned.is_empty() {
                continue;
            }
            if owner == self.shard {
                let ttls = self.keep_alive_local(&owned, Instant::now());
                for (pos, ttl) in positions.into_iter().zip(ttls) {
                    out[pos] = ttl;
                }
                continue;
            }
            self.forwarded
                .set(self.forwarded.get() + owned.len() as u64);
            forwarded += owned.len();
            let (tx, rx) = oneshot::channel();
            self.inboxes[owner]
                .send_async(LeaseMsg::KeepAlive {
                    ids: owned,
                    reply: tx,
                })
                .await
                .map_err(|_| unavailable())?;
            waits.push((positions, rx));
        }
        for (positions, rx) in waits {
            let ttls = rx.await.map_err(|_| unavailable())?;
            debug_assert_eq!(ttls.len(), positions.len());
            for (pos, ttl) in positions.into_iter().zip(ttls) {
                out[pos] = ttl;
            }
        }
        Ok((out, forwarded))
    }

    /// (granted TTL, remaining seconds) of lease `id` from its owner's table, `None` if the
    /// owner does not hold it.
    pub async fn remaining(&self, id: i64) -> mvcc::Result<Option<(i64, i64)>> {
        self.process_pending();
        let owner = owner_shard(id, self.shards());
        if owner == self.shard {
            return Ok(self.table.borrow().remaining(id, Instant::now()));
        }
        let (tx, rx) = oneshot::channel();
        self.inboxes[owner]
            .send_async(LeaseMsg::Remaining { id, reply: tx })
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }

    /// Serves the inbox, expires leases and checkpoints them; runs until cancelled (at
    /// shutdown). Never waits on a proposal while holding up the inbox: proposals run as
    /// their own tasks.
    pub async fn run(self: Rc<Self>, raft: flume::Sender<RaftRequest>) {
        let mut next_checkpoint = Instant::now() + self.config.checkpoint_interval;
        loop {
            let now = Instant::now();
            let wake = self
                .table
                .borrow()
                .next_deadline()
                .map_or(now + LEASE_TICK, |d| d.min(now + LEASE_TICK))
                .min(next_checkpoint);
            let sleep = wake.saturating_duration_since(now);
            futures::select_biased! {
                msg = self.inbox.recv_async() => match msg {
                    Ok(msg) => {
                        self.handle(msg);
                        self.process_pending();
                    }
                    Err(_) => return,
                },
                _ = glommio::timer::sleep(sleep).fuse() => {}
            }
            let now = Instant::now();
            self.expire(&raft, now);
            if now >= next_checkpoint {
                next_checkpoint = now + self.config.checkpoint_interval;
                self.checkpoint(&raft, now);
            }
        }
    }

    fn expire(self: &Rc<Self>, raft: &flume::Sender<RaftRequest>, now: Instant) {
        let room = MAX_REVOKES_IN_FLIGHT.saturating_sub(self.revokes_in_flight.get());
        if room == 0 {
            return;
        }
        let expired = self.table.borrow_mut().pop_expired(now, room);
        for id in expired {
            self.revokes_in_flight.set(self.revokes_in_flight.get() + 1);
            let me = self.clone();
            let raft = raft.clone();
            glommio::spawn_local(async move {
                let result = propose(&raft, WriteRequest::LeaseRevoke { id }).await;
                me.revokes_in_flight.set(me.revokes_in_flight.get() - 1);
                match result {
                    // The Revoked event reaches the inbox from the applier.
                    Ok(_) => {}
                    Err(e) if e.code == ErrorCode::LeaseNotFound => {
                        me.table.borrow_mut().remove(id);
                    }
                    // Retried after REVOKE_RETRY_INTERVAL by the table.
                    Err(e) => crate::log!(
                        Warn,
                        "shard {}: revoke of expired lease {id:x} failed: {e}",
                        me.shard
                    ),
                }
            })
            .detach();
        }
    }

    fn checkpoint(self: &Rc<Self>, raft: &flume::Sender<RaftRequest>, now: Instant) {
        if self.checkpoint_in_flight.get() {
            return; // the previous one is still being applied: skip a round
        }
        let checkpoints = self.table.borrow().checkpoints(now);
        if checkpoints.is_empty() {
            return;
        }
        self.checkpoint_in_flight.set(true);
        let me = self.clone();
        let raft = raft.clone();
        glommio::spawn_local(async move {
            for chunk in checkpoints.chunks(MAX_CHECKPOINTS_PER_REQUEST) {
                let req = WriteRequest::LeaseCheckpoint(chunk.to_vec());
                if let Err(e) = propose(&raft, req).await {
                    crate::log!(Warn, "shard {}: lease checkpoint failed: {e}", me.shard);
                    break;
                }
            }
            me.checkpoint_in_flight.set(false);
        })
        .detach();
    }
}

/// Proposes `request` through the raft shard and waits for its result.
async fn propose(
    raft: &flume::Sender<RaftRequest>,
    request: WriteRequest,
) -> mvcc::Result<ProposeResult> {
    let (tx, rx) = oneshot::channel();
    raft.send_async(RaftRequest::Propose {
        request,
        wait_compaction: false,
        reply: tx,
    })
    .await
    .map_err(|_| unavailable())?;
    let out = rx.await.map_err(|_| unavailable())?;
    match &out.result {
        Ok(_) => Ok(out),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_spreads_sequential_ids() {
        for shards in [1usize, 2, 3, 8] {
            let mut counts = vec![0usize; shards];
            for id in 1..=10_000i64 {
                let o = owner_shard(id, shards);
                assert!(o < shards);
                counts[o] += 1;
            }
            let fair = 10_000 / shards;
            for c in counts {
                assert!(c > fair * 8 / 10 && c < fair * 12 / 10, "{shards}: {c}");
            }
        }
        assert_eq!(owner_shard(12345, 4), owner_shard(12345, 4));
    }
}
