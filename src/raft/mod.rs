//! The consensus layer: a raft-rs `RawNode` on the raft shard, its log on the WAL, and the
//! applier that turns committed entries into backend state.
//!
//! Every write request from any shard arrives here as a [`RaftRequest::Propose`]. The loop
//! proposes everything queued and queues each raft `Ready`'s entries and hard state on the
//! WAL (group commit: one write, one fdatasync for everything queued meanwhile) without
//! waiting; raft learns that they are durable when the append completes, and only then
//! commits them. Meanwhile the loop applies what is already committed and takes new
//! proposals, so fsync and apply overlap. Each proposer is answered once its entry is applied
//! and published; the backend is synced in a background task. A single voter for now: the cluster issue adds peers, transport
//! and snapshots.

pub mod storage;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{Entry, EntryType};
use ::raft::RawNode;
use futures::channel::oneshot;
use futures::FutureExt;

use crate::backend::{self, Backend, Reader};
use crate::mvcc::{self, Error, ErrorCode, Limits, Revision, WriteRequest, WriteResponse};
use crate::server::applier::{Applier, CommittedEntry};
use crate::wal::{self, Record, Wal};
use storage::LogStore;

/// Interval of raft's logical clock.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Election timeout in ticks (also the base of the minimum lease TTL, as in etcd).
pub const ELECTION_TICK: usize = 10;
/// Proposals taken from the queue before the loop processes a Ready.
pub const MAX_PROPOSALS_PER_READY: usize = 4096;
/// Capacity of the queue from the shards to the raft shard (senders wait when it is full).
pub const REQUEST_QUEUE_CAPACITY: usize = 8192;
/// Bytes of committed entries handed to the applier per Ready.
pub const MAX_COMMITTED_BYTES_PER_READY: u64 = 16 << 20;
/// Bytes of proposed but uncommitted entries raft accepts before refusing proposals.
pub const MAX_UNCOMMITTED_BYTES: u64 = 256 << 20;
/// Name of the backend file inside the data directory.
pub const BACKEND_FILE: &str = "db";

/// What a proposer receives once its request is applied.
#[derive(Clone, Debug)]
pub struct ProposeResult {
    /// Response or error.
    pub result: mvcc::Result<WriteResponse>,
    /// Store revision after the request.
    pub revision: Revision,
    /// Raft term when it was applied.
    pub term: u64,
}

/// State of the node, for the Maintenance status call.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// Backend file size, bytes.
    pub db_size: u64,
    /// Bytes in use in the backend.
    pub db_size_in_use: u64,
    /// Leader's member id (0 if none).
    pub leader: u64,
    /// Last raft log index.
    pub raft_index: u64,
    /// Current raft term.
    pub raft_term: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Store revision.
    pub revision: Revision,
}

/// A request from any shard to the raft shard.
pub enum RaftRequest {
    /// Replicate and apply a write; `wait_compaction` delays the reply of a compaction until
    /// history below it is physically removed.
    Propose {
        /// The write.
        request: WriteRequest,
        /// Reply only after physical compaction (compaction with `physical`).
        wait_compaction: bool,
        /// Where the result goes.
        reply: oneshot::Sender<ProposeResult>,
    },
    /// Reply once every write committed before this request arrived is applied (and so
    /// visible in the published backend snapshot): the linearizable read barrier.
    ReadBarrier {
        /// Receives the applied index the reader may read at, or an error.
        reply: oneshot::Sender<mvcc::Result<u64>>,
    },
    /// Report status.
    Status {
        /// Where the status goes.
        reply: oneshot::Sender<NodeStatus>,
    },
}

/// Identity of this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// Cluster id.
    pub cluster_id: u64,
    /// Member id (also the raft id: never 0).
    pub member_id: u64,
}

impl Ids {
    /// Ids derived from the member name (stable across restarts; recorded in the WAL).
    pub fn from_name(name: &str) -> Ids {
        Ids {
            cluster_id: fnv1a(format!("corekv-cluster/{name}").as_bytes()) | 1,
            member_id: fnv1a(format!("corekv-member/{name}").as_bytes()) | 1,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Values every shard reads without asking the raft shard.
#[derive(Debug, Default)]
pub struct SharedState {
    /// Current raft term.
    pub term: AtomicU64,
    /// Current leader (0 if unknown).
    pub leader: AtomicU64,
}

/// Settings for [`RaftShard::open`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory (holds `wal/` and the backend file).
    pub data_dir: PathBuf,
    /// Member identity.
    pub ids: Ids,
    /// Write-path limits.
    pub limits: Limits,
    /// Backend quota, bytes.
    pub quota_backend_bytes: u64,
    /// WAL options.
    pub wal: wal::Options,
    /// Backend options.
    pub backend: backend::Options,
    /// Where applied events go (every shard's watch hub); None: nowhere.
    pub watch: Option<crate::watch::FanOut>,
}

/// Everything the raft shard owns: the raft node, the WAL, the applier and the waiters.
pub struct RaftShard {
    node: RawNode<LogStore>,
    wal: Rc<Wal>,
    applier: Applier,
    shared: Arc<SharedState>,
    waiters: HashMap<u64, (oneshot::Sender<ProposeResult>, bool)>,
    compaction_waiters: Vec<(oneshot::Sender<ProposeResult>, ProposeResult)>,
    /// Read barriers waiting for the applied index to reach a commit index; `None` until the
    /// leader has committed an entry of its own term (before that its commit index may lag
    /// behind entries acknowledged in an earlier term, e.g. right after a restart).
    read_waiters: Vec<(Option<u64>, oneshot::Sender<mvcc::Result<u64>>)>,
    id_nonce: u64,
    next_id: u64,
    last_tick: Instant,
    wal_max_batch_bytes: usize,
    /// Readies whose entries are queued on the WAL but not yet durable, oldest first. Raft
    /// learns of their persistence (and so commits them) only when their appends complete,
    /// which lets the loop apply earlier entries and take new proposals meanwhile.
    persisting: VecDeque<PendingPersist>,
    /// Entries committed by raft and not yet applied, in log order.
    committed: Vec<Entry>,
    lease_sink: Option<crate::lease::LeaseSink>,
}

/// What woke the raft loop.
enum Wake {
    Persisted(Result<(), String>),
    Request(Result<RaftRequest, flume::RecvError>),
    Tick,
}

/// The WAL appends of one raft `Ready`, in flight.
struct PendingPersist {
    /// The Ready's number (`RawNode::on_persist_ready`).
    number: u64,
    /// Appends not yet known durable, in queue order.
    appends: VecDeque<wal::AppendFuture>,
}

impl PendingPersist {
    /// Waits until every append is durable. Cancel-safe: an append is dropped from the queue
    /// the moment it completes, so a cancelled wait resumes where it stopped.
    async fn wait(&mut self) -> Result<(), String> {
        while let Some(append) = self.appends.front_mut() {
            append
                .await
                .map_err(|e| format!("WAL append failed: {e}"))?;
            self.appends.pop_front();
        }
        Ok(())
    }
}

impl RaftShard {
    /// Opens the backend and the WAL in `config.data_dir`, replays the log, and starts a raft
    /// node that becomes leader of its single-voter cluster. Must run on the raft shard's
    /// executor.
    pub async fn open(config: NodeConfig) -> Result<(RaftShard, Reader), String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("create data dir {}: {e}", config.data_dir.display()))?;
        let backend = Backend::open(config.data_dir.join(BACKEND_FILE), config.backend.clone())
            .await
            .map_err(|e| format!("open backend: {e}"))?;
        let reader = backend.reader();
        let mut applier = Applier::new(backend, config.limits.clone(), config.quota_backend_bytes)
            .map_err(|e| format!("read backend state: {e}"))?;
        if let Some(fan_out) = config.watch.clone() {
            applier.set_watch_fan_out(fan_out);
        }
        let ids = config.ids;
        let mut store = LogStore::new(ids.member_id);
        let (wal, info) = Wal::open(&config.data_dir, config.wal.clone(), |r| store.recover(r))
            .await
            .map_err(|e| format!("open WAL: {e}"))?;
        store
            .finish_recovery()
            .map_err(|e| format!("replay WAL: {e}"))?;
        match store.metadata() {
            None => wal
                .append(vec![Record::Metadata {
                    cluster_id: ids.cluster_id,
                    member_id: ids.member_id,
                }])
                .await
                .map_err(|e| format!("write WAL metadata: {e}"))?,
            Some((cluster, member)) if (cluster, member) != (ids.cluster_id, ids.member_id) => {
                return Err(format!(
                    "data dir {} belongs to member {member:x} of cluster {cluster:x}, not to this member ({:x} of {:x}): check --name",
                    config.data_dir.display(),
                    ids.member_id,
                    ids.cluster_id
                ))
            }
            Some(_) => {}
        }
        let applied = applier.applied_index();
        if applied > store.last() {
            return Err(format!(
                "backend has applied index {applied} but the WAL ends at {}: the WAL lost acknowledged entries",
                store.last()
            ));
        }
        store.ensure_commit_at_least(applied);
        crate::log!(
            Info,
            "recovered: backend applied index {applied}, WAL {} records in {} segments, log {}..={}",
            info.records,
            info.segments,
            store.first(),
            store.last()
        );
        let raft_config = ::raft::Config {
            id: ids.member_id,
            election_tick: ELECTION_TICK,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: MAX_COMMITTED_BYTES_PER_READY,
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            ..::raft::Config::default()
        };
        raft_config
            .validate()
            .map_err(|e| format!("raft config: {e}"))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node =
            RawNode::new(&raft_config, store, &logger).map_err(|e| format!("raft: {e}"))?;
        // The only voter: campaigning wins at once.
        node.campaign().map_err(|e| format!("raft campaign: {e}"))?;
        let id_nonce = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64).rotate_left(32))
            & !0xFFFF_FFFF;
        let wal_max_batch_bytes = config.wal.max_batch_bytes;
        Ok((
            RaftShard {
                node,
                wal: Rc::new(wal),
                applier,
                shared: Arc::new(SharedState::default()),
                waiters: HashMap::new(),
                compaction_waiters: Vec::new(),
                read_waiters: Vec::new(),
                id_nonce,
                next_id: 1,
                last_tick: Instant::now(),
                wal_max_batch_bytes,
                persisting: VecDeque::new(),
                committed: Vec::new(),
                lease_sink: None,
            },
            reader,
        ))
    }

    /// Where applied lease grants and revokes go: their owner shards' lease tables. They are
    /// delivered after the batch is published and before any proposer of it is answered.
    pub fn set_lease_sink(&mut self, sink: crate::lease::LeaseSink) {
        self.lease_sink = Some(sink);
    }

    /// Values shared with the other shards.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    /// Serves requests until `stop` fires or every sender of `requests` is gone, then
    /// finishes the committed work, syncs the backend and closes the WAL. Requests still
    /// queued then are answered `Unavailable`.
    pub async fn run(
        mut self,
        requests: flume::Receiver<RaftRequest>,
        stop: oneshot::Receiver<()>,
    ) -> Result<(), String> {
        self.process_ready()?;
        let mut stop = stop.fuse();
        loop {
            self.apply_committed().await?;
            self.maybe_sync_and_release(false).await?;
            let until_tick = TICK_INTERVAL.saturating_sub(self.last_tick.elapsed());
            let next = {
                let persisted = async {
                    match self.persisting.front_mut() {
                        Some(p) => p.wait().await,
                        None => futures::future::pending().await,
                    }
                };
                futures::select_biased! {
                    _ = stop => break,
                    r = persisted.fuse() => Wake::Persisted(r),
                    r = requests.recv_async() => Wake::Request(r),
                    _ = glommio::timer::sleep(until_tick).fuse() => Wake::Tick,
                }
            };
            match next {
                Wake::Persisted(r) => {
                    r?;
                    let done = self.persisting.pop_front().expect("the awaited persist");
                    let mut number = done.number;
                    // The WAL's group commit makes several Readies durable with one fdatasync:
                    // take every one already durable, so their entries commit and are applied
                    // in one backend transaction rather than one transaction per Ready.
                    while let Some(next) = self.persisting.front_mut() {
                        match next.wait().now_or_never() {
                            Some(r) => {
                                r?;
                                number = self
                                    .persisting
                                    .pop_front()
                                    .expect("the polled persist")
                                    .number;
                            }
                            None => break,
                        }
                    }
                    // Acknowledging the latest Ready covers every earlier one.
                    self.node.on_persist_ready(number);
                }
                Wake::Request(Err(_)) => break,
                Wake::Request(Ok(req)) => {
                    self.handle(req);
                    let mut taken = 1;
                    while taken < MAX_PROPOSALS_PER_READY {
                        match requests.try_recv() {
                            Ok(req) => self.handle(req),
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                }
                Wake::Tick => {}
            }
            if self.last_tick.elapsed() >= TICK_INTERVAL {
                self.node.tick();
                self.last_tick = Instant::now();
            }
            self.process_ready()?;
        }
        // Finish what is in flight: every queued append, then every committed entry.
        while let Some(mut p) = self.persisting.pop_front() {
            p.wait().await?;
            self.node.on_persist_ready(p.number);
            self.process_ready()?;
        }
        self.apply_committed().await?;
        self.maybe_sync_and_release(true).await?;
        self.refuse_pending(&requests);
        self.wal.close().await;
        crate::log!(
            Info,
            "raft shard stopped at applied index {}",
            self.applier.applied_index()
        );
        Ok(())
    }

    fn refuse_pending(&mut self, requests: &flume::Receiver<RaftRequest>) {
        let unavailable = || Error::new(ErrorCode::Unavailable, "server is shutting down");
        let (revision, term) = (self.applier.revision(), self.node.raft.term);
        let refuse = |reply: oneshot::Sender<ProposeResult>| {
            let _ = reply.send(ProposeResult {
                result: Err(unavailable()),
                revision,
                term,
            });
        };
        for (_, (reply, _)) in self.waiters.drain() {
            refuse(reply);
        }
        for (reply, _) in self.compaction_waiters.drain(..) {
            refuse(reply);
        }
        for (_, reply) in self.read_waiters.drain(..) {
            let _ = reply.send(Err(unavailable()));
        }
        while let Ok(req) = requests.try_recv() {
            match req {
                RaftRequest::Propose { reply, .. } => refuse(reply),
                RaftRequest::ReadBarrier { reply } => {
                    let _ = reply.send(Err(unavailable()));
                }
                RaftRequest::Status { .. } => {}
            }
        }
    }

    fn handle(&mut self, req: RaftRequest) {
        match req {
            RaftRequest::Propose {
                request,
                wait_compaction,
                reply,
            } => {
                let id = self.id_nonce | (self.next_id & 0xFFFF_FFFF);
                self.next_id += 1;
                let data = crate::api::encode_proposal(id, &request);
                match self.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        self.waiters.insert(id, (reply, wait_compaction));
                    }
                    Err(e) => {
                        let _ = reply.send(ProposeResult {
                            result: Err(Error::new(
                                ErrorCode::Unavailable,
                                format!("proposal refused: {e}"),
                            )),
                            revision: self.applier.revision(),
                            term: self.node.raft.term,
                        });
                    }
                }
            }
            RaftRequest::ReadBarrier { reply } => {
                // A single voter that is leader knows its commit index is the cluster's, once
                // it has committed an entry of its own term (raft's rule for read index).
                let commit = self.read_commit_index();
                match commit {
                    Some(commit) if self.applier.applied_index() >= commit => {
                        let _ = reply.send(Ok(self.applier.applied_index()));
                    }
                    _ => self.read_waiters.push((commit, reply)),
                }
            }
            RaftRequest::Status { reply } => {
                let stats = self.applier.backend().stats();
                let _ = reply.send(NodeStatus {
                    db_size: stats.file_size,
                    db_size_in_use: stats.in_use_bytes,
                    leader: self.node.raft.leader_id,
                    raft_index: self.node.raft.raft_log.last_index(),
                    raft_term: self.node.raft.term,
                    applied_index: self.applier.applied_index(),
                    revision: self.applier.revision(),
                });
            }
        }
    }

    /// Takes every raft `Ready`: queues its entries (and hard state) on the WAL without
    /// waiting for them to become durable, hands raft the entries through the log store, and
    /// collects the committed entries for [`Self::apply_committed`]. Raft counts the entries
    /// as persisted only when their appends complete (`on_persist_ready` in [`Self::run`]),
    /// so nothing commits, and no client is answered, before its entry is durable; meanwhile
    /// the loop applies earlier entries and proposes new ones, overlapping fsync and apply.
    fn process_ready(&mut self) -> Result<(), String> {
        while self.node.has_ready() {
            let mut rd = self.node.ready();
            if !rd.snapshot().is_empty() {
                return Err(
                    "raft produced a snapshot, which a single-voter node never receives".into(),
                );
            }
            // Messages to peers: none exist yet (single voter).
            debug_assert!(rd.messages().is_empty() && rd.persisted_messages().is_empty());
            self.committed.extend(rd.take_committed_entries());
            let mut records: Vec<Record> = rd
                .entries()
                .iter()
                .map(|e| Record::Entry {
                    index: e.index,
                    term: e.term,
                    data: e.data.to_vec(),
                })
                .collect();
            // A hard state that only raises the commit index need not be persisted on its
            // own (an extra fsync per batch): it rides along with the next entries, and after
            // a restart the single voter re-commits its log anyway.
            if let Some(hs) = rd.hs() {
                if rd.must_sync() || !records.is_empty() {
                    records.push(Record::HardState {
                        term: hs.term,
                        vote: hs.vote,
                        commit: hs.commit,
                    });
                }
                self.node.mut_store().set_hard_state(hs);
            }
            if !records.is_empty() {
                let appends = self.append_to_wal(records).into();
                self.persisting.push_back(PendingPersist {
                    number: rd.number(),
                    appends,
                });
            }
            self.node.mut_store().append(rd.entries());
            self.node.advance_append_async(rd);
            self.shared
                .term
                .store(self.node.raft.term, Ordering::Relaxed);
            self.shared
                .leader
                .store(self.node.raft.leader_id, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Applies the committed entries collected by [`Self::process_ready`] and answers their
    /// proposers.
    async fn apply_committed(&mut self) -> Result<(), String> {
        let committed = std::mem::take(&mut self.committed);
        self.apply(committed).await?;
        self.node.advance_apply();
        Ok(())
    }

    /// Queues `records` on the WAL in batches within its batch limit (a batch is atomic in
    /// recovery; consecutive batches recover as a prefix, which raft's log allows).
    fn append_to_wal(&self, records: Vec<Record>) -> Vec<wal::AppendFuture> {
        let mut futures = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for r in records {
            let size = wal::encoded_len(&r);
            if !batch.is_empty() && bytes + size > self.wal_max_batch_bytes {
                futures.push(self.wal.append(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += size;
            batch.push(r);
        }
        if !batch.is_empty() {
            futures.push(self.wal.append(batch));
        }
        futures
    }

    async fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() && self.compaction_waiters.is_empty() {
            return Ok(());
        }
        let committed: Vec<CommittedEntry> = entries
            .into_iter()
            .map(|e| CommittedEntry {
                index: e.index,
                term: e.term,
                data: if e.entry_type == EntryType::EntryNormal {
                    e.data.to_vec()
                } else {
                    Vec::new()
                },
            })
            .collect();
        let results = self
            .applier
            .apply(&committed)
            .await
            .map_err(|e| format!("apply failed: {e}"))?;
        let lease_events = self.applier.take_lease_events();
        if let Some(sink) = &self.lease_sink {
            sink.deliver(lease_events).await;
        }
        let term = self.node.raft.term;
        for r in results {
            let Some((reply, wait_compaction)) = self.waiters.remove(&r.proposal_id) else {
                continue; // replayed, or proposed before a restart
            };
            let out = ProposeResult {
                result: r.result,
                revision: r.revision,
                term,
            };
            if wait_compaction && out.result.is_ok() && !self.applier.compaction_done() {
                self.compaction_waiters.push((reply, out));
            } else {
                let _ = reply.send(out);
            }
        }
        if self.applier.compaction_done() {
            for (reply, out) in self.compaction_waiters.drain(..) {
                let _ = reply.send(out);
            }
        }
        // After the replies: the writeback thread's wake-up must not delay them.
        self.applier.start_writeback();
        let applied = self.applier.applied_index();
        if let Some(commit) = self.read_commit_index() {
            for (waiting_for, _) in &mut self.read_waiters {
                waiting_for.get_or_insert(commit);
            }
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .read_waiters
            .drain(..)
            .partition(|(commit, _)| commit.is_some_and(|c| c <= applied));
        self.read_waiters = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(applied));
        }
        Ok(())
    }

    /// The commit index a linearizable read must see applied, or `None` while the leader has
    /// not yet committed an entry of its current term.
    fn read_commit_index(&self) -> Option<u64> {
        let raft = &self.node.raft;
        raft.commit_to_current_term()
            .then_some(raft.raft_log.committed)
    }

    async fn maybe_sync_and_release(&mut self, force: bool) -> Result<(), String> {
        // Physical compaction proceeds in bounded steps between client batches.
        if !self.compaction_waiters.is_empty() || !self.applier.compaction_done() {
            self.apply(Vec::new()).await?;
        }
        let durable = if force {
            self.applier.sync_all().await
        } else {
            self.applier.background_sync()
        }
        .map_err(|e| format!("backend sync failed: {e}"))?;
        let Some(durable) = durable else {
            return Ok(());
        };
        let store = self.node.mut_store();
        let Some(term) = store.term_of(durable) else {
            return Ok(());
        };
        store.compact(durable);
        if self.wal.segments().len() > 1 {
            // Mark the backend as covering `durable`, then drop segments wholly below it.
            self.wal
                .append(vec![Record::Snapshot {
                    index: durable,
                    term,
                }])
                .await
                .map_err(|e| format!("WAL snapshot marker: {e}"))?;
            self.wal
                .release(durable + 1)
                .await
                .map_err(|e| format!("WAL release: {e}"))?;
        }
        Ok(())
    }
}
