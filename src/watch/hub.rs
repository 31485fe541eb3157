//! A shard's watch hub: its streams and watchers, batch delivery, catch-up and progress.
//!
//! Single-threaded (it lives in an `Rc<RefCell<_>>` on its shard's executor); every method is
//! synchronous, so a batch, a catch-up step or a create runs atomically with respect to the
//! others. Three tasks drive it ([`spawn`]): the inbox task (batches from the applier), the
//! catch-up task and the progress ticker; each stream has a sender task (in the service) that
//! pops its queue with [`Hub::pop`].
//!
//! A watcher is in exactly one state:
//! - `Synced`: in the index; has every event up to `received` queued.
//! - `Behind`: in the catch-up queue; has every event before `next_rev` queued.
//! - `Ahead`: waiting in `ahead` until `received + 1 == next_rev` (it caught up from a
//!   snapshot newer than what the hub has received, or it starts in the future).

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hashbrown::HashTable;

use super::index::{KeyIndex, KeyRange, Slots, NIL};
use super::{
    event_bytes, kv_bytes, AppliedBatch, Inbox, CATCHUP_EVENTS_PER_STEP, CATCHUP_STEPS_PER_ROUND,
    MAX_RESPONSE_BYTES, MAX_SHARED_RESPONSE_BYTES, MAX_STREAM_QUEUE_BYTES, MAX_WATCHERS_PER_STREAM,
};
use crate::backend::Reader;
use crate::mvcc::history::{read_history, version_at};
use crate::mvcc::read::{check_key, revisions, SnapshotView};
use crate::mvcc::{Error, ErrorCode, EventKind, KeyValue, Result, Revision};

/// A validated-on-create watch request (etcd's WatchCreateRequest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// First key.
    pub key: Vec<u8>,
    /// Range end, etcd's conventions (empty: single key; "\0": from key).
    pub range_end: Vec<u8>,
    /// <= 0: from the next revision; otherwise the first revision wanted.
    pub start_revision: Revision,
    /// Periodic progress responses while synced.
    pub progress_notify: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Attach the previous version to events.
    pub prev_kv: bool,
    /// 0: server-assigned; otherwise must be unused on the stream.
    pub watch_id: i64,
    /// Split revisions larger than [`MAX_RESPONSE_BYTES`].
    pub fragment: bool,
}

/// What a stream's sender sends next (turned into a `WatchResponse` by the service).
#[derive(Debug)]
pub enum Outgoing {
    /// The watcher exists; precedes its events.
    Created {
        /// Watch id.
        watch_id: i64,
        /// Header revision.
        revision: Revision,
    },
    /// The watcher is gone.
    Canceled {
        /// Watch id.
        watch_id: i64,
        /// Header revision.
        revision: Revision,
        /// The compacted revision, when canceled because its start was compacted.
        compact_revision: Revision,
        /// Why.
        reason: String,
    },
    /// Every event up to `revision` has been sent before this (watch id -1: the stream).
    Progress {
        /// Watch id, or -1 for a stream-wide answer to `requestProgress`.
        watch_id: i64,
        /// Revision every watcher concerned is complete up to.
        revision: Revision,
    },
    /// Events of whole revisions (or one fragment of one revision).
    Events {
        /// Watch id.
        watch_id: i64,
        /// Other watchers of the same stream this identical response is also for (the same
        /// events, prev_kv and fragment settings): encoded and sent once, copied per watcher
        /// by the client library.
        more_ids: Box<[i64]>,
        /// Header revision: the watcher has every event up to it after this response.
        revision: Revision,
        /// More fragments of the same revision follow.
        fragment: bool,
        /// Where the events live (shared by every watcher they concern).
        source: Arc<AppliedBatch>,
        /// Indexes into `source.events`, in order.
        events: Vec<u32>,
        /// The previous versions, one per event, when the watcher asked for them.
        prev_kvs: Option<Vec<Option<KeyValue>>>,
    },
}

impl Outgoing {
    /// How many watchers this response is for (the client library makes a copy for each).
    pub fn copies(&self) -> usize {
        match self {
            Outgoing::Events { more_ids, .. } => 1 + more_ids.len(),
            _ => 1,
        }
    }

    /// Estimated size of all its copies as the client gets them (what the stream's queue
    /// limit counts, so a slow client's backlog is bounded as if every copy were queued).
    pub fn bytes(&self) -> usize {
        match self {
            Outgoing::Events {
                source,
                events,
                prev_kvs,
                more_ids,
                ..
            } => {
                let evs: usize = events
                    .iter()
                    .map(|&i| event_bytes(&source.events[i as usize]))
                    .sum();
                let prevs: usize = prev_kvs.iter().flatten().flatten().map(kv_bytes).sum();
                (64 + evs + prevs) * (1 + more_ids.len())
            }
            Outgoing::Canceled { reason, .. } => 64 + reason.len(),
            _ => 64,
        }
    }
}

/// A one-waiter wake-up signal for tasks on the same executor.
#[derive(Default)]
pub struct Doorbell {
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Doorbell {
    /// Wakes the waiter (or makes its next wait return at once).
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once the bell has rung since the last wait returned.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if self.rung.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Synced,
    Behind,
    Ahead,
}

const F_PREV_KV: u8 = 1;
const F_PROGRESS: u8 = 2;
const F_FRAGMENT: u8 = 4;
const F_NO_PUT: u8 = 8;
const F_NO_DELETE: u8 = 16;
/// Events were queued since the last progress tick (etcd sends progress only to idle ones).
const F_SENT: u8 = 32;

/// One watcher; kept small (the hub holds 100,000s): 56 bytes with a short key inline, one
/// byte of flags.
struct Watcher {
    range: KeyRange,
    id: i64,
    next_rev: Revision,
    stream: u64,
    next: u32,
    flags: u8,
    state: State,
}

impl Watcher {
    fn wants(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Put => self.flags & F_NO_PUT == 0,
            EventKind::Delete => self.flags & F_NO_DELETE == 0,
        }
    }
}

struct WatcherSlab(Vec<Option<Watcher>>);

impl WatcherSlab {
    fn get(&self, slot: u32) -> &Watcher {
        self.0[slot as usize]
            .as_ref()
            .expect("slot refers to a live watcher")
    }
    fn get_mut(&mut self, slot: u32) -> &mut Watcher {
        self.0[slot as usize]
            .as_mut()
            .expect("slot refers to a live watcher")
    }
    fn live(&self, slot: u32) -> Option<&Watcher> {
        self.0.get(slot as usize).and_then(|w| w.as_ref())
    }
}

impl Slots for WatcherSlab {
    fn range(&self, slot: u32) -> &KeyRange {
        &self.get(slot).range
    }
    fn next(&self, slot: u32) -> u32 {
        self.get(slot).next
    }
    fn set_next(&mut self, slot: u32, next: u32) {
        self.get_mut(slot).next = next;
    }
}

struct Stream {
    /// The stream's watchers by watch id: slots, hashed and compared through the id in the
    /// slot (4 bytes per watcher instead of a copy of the id).
    ids: HashTable<u32>,
    next_id: i64,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    /// Watchers of this stream in state Behind.
    behind: usize,
    progress_pending: bool,
    bell: Rc<Doorbell>,
}

/// One watcher's matches in a batch (a range of the sorted hits), with what decides whether
/// another watcher can share its response.
struct Run {
    stream: u64,
    /// The flags that shape the response: prev_kv and fragment.
    shape: u8,
    hits: std::ops::Range<u32>,
    slot: u32,
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Live watchers.
    pub watchers: usize,
    /// Synced watchers.
    pub synced: usize,
    /// Watchers catching up.
    pub behind: usize,
    /// Live streams.
    pub streams: usize,
    /// Bytes queued on all streams.
    pub queued_bytes: usize,
    /// Revision up to which the hub has received every batch.
    pub received: Revision,
    /// Times the hub lost batches (queue full) and moved everyone to catch-up.
    pub lags: u64,
}

/// A shard's watch hub.
pub struct Hub {
    reader: Reader,
    received: Revision,
    watchers: WatcherSlab,
    free: Vec<u32>,
    index: KeyIndex,
    behind: VecDeque<u32>,
    ahead: BTreeMap<Revision, Vec<u32>>,
    streams: HashMap<u64, Stream>,
    id_hasher: RandomState,
    next_stream: u64,
    catchup_bell: Rc<Doorbell>,
    lags: u64,
}

impl Hub {
    /// A hub whose received revision starts at the current published revision (every batch
    /// published later reaches its inbox, which must exist before this call).
    pub fn new(reader: Reader) -> Result<Hub> {
        let received = {
            let txn = reader.begin_read()?;
            let mut view = SnapshotView::new(&txn)?;
            revisions(&mut view)?.0
        };
        Ok(Hub {
            reader,
            received,
            watchers: WatcherSlab(Vec::new()),
            free: Vec::new(),
            index: KeyIndex::new(),
            behind: VecDeque::new(),
            ahead: BTreeMap::new(),
            streams: HashMap::new(),
            id_hasher: RandomState::new(),
            next_stream: 1,
            catchup_bell: Rc::new(Doorbell::default()),
            lags: 0,
        })
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            watchers: self.watchers.0.len() - self.free.len(),
            synced: self.index.len(),
            behind: self.streams.values().map(|s| s.behind).sum(),
            streams: self.streams.len(),
            queued_bytes: self.streams.values().map(|s| s.queued_bytes).sum(),
            received: self.received,
            lags: self.lags,
        }
    }

    fn stream(&mut self, sid: u64) -> &mut Stream {
        self.streams
            .get_mut(&sid)
            .expect("stream id refers to an open stream")
    }

    /// The slot of watcher `id` of stream `sid`, if it exists.
    fn slot_of(&self, sid: u64, id: i64) -> Option<u32> {
        let s = self.streams.get(&sid)?;
        let hash = self.id_hasher.hash_one(id);
        s.ids
            .find(hash, |&slot| self.watchers.get(slot).id == id)
            .copied()
    }

    /// Opens a stream whose sender waits on `bell`; returns its id (never reused).
    pub fn open_stream(&mut self, bell: Rc<Doorbell>) -> u64 {
        let s = Stream {
            ids: HashTable::new(),
            next_id: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            behind: 0,
            progress_pending: false,
            bell,
        };
        let sid = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(sid, s);
        sid
    }

    /// Whether stream `sid` is open.
    pub fn is_open(&self, sid: u64) -> bool {
        self.streams.contains_key(&sid)
    }

    /// Closes a stream: drops its watchers and its queue, and wakes its sender to exit.
    pub fn close_stream(&mut self, sid: u64) {
        let Some(stream) = self.streams.remove(&sid) else {
            return;
        };
        // Unlink the stream's watchers in bulk: one pass over each key's list and each
        // future revision's waiting list, however many of the stream's watchers are on it.
        // One at a time, closing a stream with n watchers on a key walked that key's list n
        // times: seconds of a stalled shard (and of a stalled shutdown) at 100,000 watchers.
        let mut synced = HashSet::new();
        let mut ahead = HashSet::new();
        let mut ahead_revs = BTreeSet::new();
        for &slot in stream.ids.iter() {
            let w = self.watchers.get(slot);
            match w.state {
                State::Synced => {
                    synced.insert(slot);
                }
                State::Ahead => {
                    ahead.insert(slot);
                    ahead_revs.insert(w.next_rev);
                }
                // Its stream's `behind` count goes with the stream; the catch-up queue skips
                // freed slots.
                State::Behind => {}
            }
        }
        self.index.remove_all(&mut self.watchers, &synced);
        for rev in ahead_revs {
            if let Some(waiting) = self.ahead.get_mut(&rev) {
                waiting.retain(|s| !ahead.contains(s));
                if waiting.is_empty() {
                    self.ahead.remove(&rev);
                }
            }
        }
        for slot in stream.ids {
            self.watchers.0[slot as usize] = None;
            self.free.push(slot);
        }
        stream.bell.ring();
    }

    /// Takes the next response of stream `sid` (None if empty or closed).
    pub fn pop(&mut self, sid: u64) -> Option<Outgoing> {
        let s = self.streams.get_mut(&sid)?;
        let out = s.queue.pop_front()?;
        s.queued_bytes -= out.bytes();
        if s.queued_bytes <= MAX_STREAM_QUEUE_BYTES / 2 && s.behind > 0 {
            // Room again for this stream's watchers that are catching up.
            self.catchup_bell.ring();
        }
        Some(out)
    }

    fn push(&mut self, sid: u64, out: Outgoing) {
        let bytes = out.bytes();
        let s = self.stream(sid);
        s.queued_bytes += bytes;
        s.queue.push_back(out);
        s.bell.ring();
    }

    /// Whether stream `sid` can take `bytes` more (an empty queue always takes one response,
    /// so a revision larger than the buffer still gets through).
    fn has_room(&self, sid: u64, bytes: usize) -> bool {
        let s = self.streams.get(&sid).expect("open stream");
        s.queue.is_empty() || s.queued_bytes + bytes <= MAX_STREAM_QUEUE_BYTES
    }

    /// Creates a watcher on stream `sid`; returns its id. The `created` response is queued
    /// before anything else for the watcher.
    pub fn create(&mut self, sid: u64, req: CreateRequest) -> Result<i64> {
        check_key("watch", &req.key)?;
        if !req.range_end.is_empty() && req.range_end != [0] && req.range_end <= req.key {
            return Err(Error::new(
                ErrorCode::InvalidRange,
                format!(
                    "watch: range end {:?} is not after key {:?}: the range is empty",
                    String::from_utf8_lossy(&req.range_end),
                    String::from_utf8_lossy(&req.key)
                ),
            ));
        }
        if req.watch_id < 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("watch: watch id {} is negative", req.watch_id),
            ));
        }
        let current = {
            let txn = self.reader.begin_read()?;
            let mut view = SnapshotView::new(&txn)?;
            revisions(&mut view)?.0
        };
        if self.stream(sid).ids.len() >= MAX_WATCHERS_PER_STREAM {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("watch: the stream already has MAX_WATCHERS_PER_STREAM ({MAX_WATCHERS_PER_STREAM}) watchers"),
            ));
        }
        let id = if req.watch_id == 0 {
            // Ids are not reused while the stream lives (as etcd): skip client-chosen ones.
            let mut next = self.stream(sid).next_id;
            while self.slot_of(sid, next).is_some() {
                next += 1;
            }
            self.stream(sid).next_id = next + 1;
            next
        } else if self.slot_of(sid, req.watch_id).is_some() {
            return Err(Error::new(
                ErrorCode::WatchIdExists,
                format!(
                    "watch: watch id {} already exists on this stream",
                    req.watch_id
                ),
            ));
        } else {
            req.watch_id
        };
        let mut flags = 0;
        for (on, f) in [
            (req.prev_kv, F_PREV_KV),
            (req.progress_notify, F_PROGRESS),
            (req.fragment, F_FRAGMENT),
            (req.no_put, F_NO_PUT),
            (req.no_delete, F_NO_DELETE),
        ] {
            if on {
                flags |= f;
            }
        }
        let next_rev = if req.start_revision <= 0 {
            current + 1
        } else {
            req.start_revision
        };
        let w = Watcher {
            range: KeyRange::new(&req.key, &req.range_end),
            id,
            next_rev,
            stream: sid,
            next: NIL,
            flags,
            state: State::Ahead, // placed below
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.watchers.0[slot as usize] = Some(w);
                slot
            }
            None => {
                self.watchers.0.push(Some(w));
                (self.watchers.0.len() - 1) as u32
            }
        };
        let hash = self.id_hasher.hash_one(id);
        let (hasher, watchers) = (&self.id_hasher, &self.watchers);
        self.streams
            .get_mut(&sid)
            .expect("open stream")
            .ids
            .insert_unique(hash, slot, |&s| hasher.hash_one(watchers.get(s).id));
        self.push(
            sid,
            Outgoing::Created {
                watch_id: id,
                revision: current,
            },
        );
        // `current` is a published boundary only when the watcher starts "now".
        self.place(slot, next_rev, req.start_revision <= 0, true);
        Ok(id)
    }

    /// Cancels watcher `id` of stream `sid`; a `canceled` response follows its last event.
    pub fn cancel(&mut self, sid: u64, id: i64) -> Result<()> {
        let Some(slot) = self.slot_of(sid, id) else {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("watch cancel: no watcher with id {id} on this stream"),
            ));
        };
        let revision = self.received;
        self.drop_watcher(slot, true);
        self.push(
            sid,
            Outgoing::Canceled {
                watch_id: id,
                revision,
                compact_revision: 0,
                reason: String::new(),
            },
        );
        self.maybe_progress(sid);
        Ok(())
    }

    /// Asks for a stream-wide progress response, sent once every watcher of the stream is
    /// synced (at once if they are).
    pub fn request_progress(&mut self, sid: u64) {
        self.stream(sid).progress_pending = true;
        self.maybe_progress(sid);
    }

    fn maybe_progress(&mut self, sid: u64) {
        let revision = self.received;
        let s = self.stream(sid);
        if s.progress_pending && s.behind == 0 {
            s.progress_pending = false;
            self.push(
                sid,
                Outgoing::Progress {
                    watch_id: -1,
                    revision,
                },
            );
        }
    }

    /// Removes a watcher from every structure; with `remove_id` false the caller already took
    /// the stream's id map. Callers queue the watcher's `canceled` response and then call
    /// `maybe_progress` (a pending progress must follow the cancel, not precede it).
    fn drop_watcher(&mut self, slot: u32, remove_id: bool) {
        let (state, sid, id) = {
            let w = self.watchers.get(slot);
            (w.state, w.stream, w.id)
        };
        match state {
            State::Synced => self.index.remove(&mut self.watchers, slot),
            State::Behind => {
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.behind -= 1;
                }
            }
            State::Ahead => {
                // Remove its entry now: a watcher may wait on a far-future revision, and
                // stale entries must not pile up under create/cancel churn.
                let rev = self.watchers.get(slot).next_rev;
                if let Some(waiting) = self.ahead.get_mut(&rev) {
                    waiting.retain(|&s| s != slot);
                    if waiting.is_empty() {
                        self.ahead.remove(&rev);
                    }
                }
            }
        }
        if remove_id {
            let hash = self.id_hasher.hash_one(id);
            let watchers = &self.watchers;
            if let Ok(entry) = self
                .streams
                .get_mut(&sid)
                .expect("open stream")
                .ids
                .find_entry(hash, |&s| watchers.get(s).id == id)
            {
                entry.remove();
            } else {
                debug_assert!(false, "watcher {id} is in its stream's id table");
            }
        }
        self.watchers.0[slot as usize] = None;
        self.free.push(slot);
    }

    /// Puts a watcher whose events before `next_rev` are all queued where it belongs.
    /// `at_boundary`: `next_rev - 1` is a published revision (so the hub may jump to it when
    /// no watcher is synced). `fresh`: the watcher is not yet in any structure.
    fn place(&mut self, slot: u32, next_rev: Revision, at_boundary: bool, fresh: bool) {
        let (old, sid) = {
            let w = self.watchers.get_mut(slot);
            w.next_rev = next_rev;
            (if fresh { None } else { Some(w.state) }, w.stream)
        };
        debug_assert_ne!(
            old,
            Some(State::Synced),
            "only unsynced watchers are placed"
        );
        if next_rev > self.received + 1 && at_boundary && self.index.is_empty() {
            // Nobody depends on `received`: advance it to the published revision this
            // watcher reached; batches at or below it are then skipped.
            self.received = next_rev - 1;
            self.resolve_ahead();
        }
        let new = if next_rev == self.received + 1 {
            State::Synced
        } else if next_rev > self.received + 1 {
            State::Ahead
        } else {
            State::Behind
        };
        if old == Some(State::Behind) && new == State::Behind {
            self.behind.push_back(slot);
            return;
        }
        if old == Some(State::Behind) {
            self.stream(sid).behind -= 1;
        }
        self.watchers.get_mut(slot).state = new;
        match new {
            State::Synced => self.index.insert(&mut self.watchers, slot),
            State::Ahead => self.ahead.entry(next_rev).or_default().push(slot),
            State::Behind => {
                self.stream(sid).behind += 1;
                self.behind.push_back(slot);
                self.catchup_bell.ring();
            }
        }
        if old == Some(State::Behind) {
            self.maybe_progress(sid);
        }
    }

    /// Moves a synced watcher to catch-up from `next_rev`.
    fn unsync(&mut self, slot: u32, next_rev: Revision) {
        debug_assert_eq!(self.watchers.get(slot).state, State::Synced);
        self.index.remove(&mut self.watchers, slot);
        let sid = {
            let w = self.watchers.get_mut(slot);
            w.state = State::Behind;
            w.next_rev = next_rev;
            w.stream
        };
        self.stream(sid).behind += 1;
        self.behind.push_back(slot);
        self.catchup_bell.ring();
    }

    /// Joins every `ahead` watcher the hub has reached (or passed: those catch up).
    fn resolve_ahead(&mut self) {
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.received + 1 {
                break;
            }
            let (rev, slots) = entry.remove_entry();
            for slot in slots {
                match self.watchers.live(slot) {
                    Some(w) if w.state == State::Ahead && w.next_rev == rev => {}
                    _ => continue, // canceled, or a stale entry of a reused slot
                }
                // Not via `place` (that would re-enter here): inline the two outcomes.
                let sid = self.watchers.get(slot).stream;
                if rev == self.received + 1 {
                    self.watchers.get_mut(slot).state = State::Synced;
                    self.index.insert(&mut self.watchers, slot);
                } else {
                    self.watchers.get_mut(slot).state = State::Behind;
                    self.stream(sid).behind += 1;
                    self.behind.push_back(slot);
                    self.catchup_bell.ring();
                }
            }
        }
    }

    /// The hub missed batches: every synced watcher catches up from the next revision.
    pub fn on_lag(&mut self) {
        self.lags += 1;
        let from = self.received + 1;
        let synced: Vec<u32> = (0..self.watchers.0.len() as u32)
            .filter(|&s| matches!(self.watchers.live(s), Some(w) if w.state == State::Synced))
            .collect();
        for slot in synced {
            self.unsync(slot, from);
        }
    }

    /// Delivers a batch from the applier to the synced watchers.
    pub fn on_batch(&mut self, batch: Arc<AppliedBatch>) {
        if batch.revision <= self.received {
            return; // already covered (the hub advanced to a snapshot past it)
        }
        if batch.prev_revision != self.received {
            // A batch went missing: nobody synced can be trusted to be complete.
            self.on_lag();
            self.received = batch.revision;
            self.resolve_ahead();
            return;
        }
        if !self.index.is_empty() {
            self.deliver(&batch);
        }
        self.received = batch.revision;
        self.resolve_ahead();
    }

    fn deliver(&mut self, batch: &Arc<AppliedBatch>) {
        let mut hits: Vec<(u32, u32)> = Vec::new();
        for (i, ev) in batch.events.iter().enumerate() {
            let watchers = &self.watchers;
            self.index
                .for_each_match(watchers, ev.kv.key.as_slice(), |slot| {
                    if watchers.get(slot).wants(ev.kind) {
                        hits.push((slot, i as u32));
                    }
                });
        }
        if hits.is_empty() {
            return;
        }
        hits.sort_unstable();
        // One run of hits per watcher, then watchers of the same stream that get the very same
        // response (same events, same prev_kv and fragment settings) are grouped: their
        // response is built, queued and encoded once (1,000 watchers on one key over 100
        // streams: 100 responses per revision instead of 1,000).
        let mut runs: Vec<Run> = Vec::new();
        let mut start = 0;
        while start < hits.len() {
            let slot = hits[start].0;
            let end = start + hits[start..].partition_point(|h| h.0 == slot);
            let w = self.watchers.get(slot);
            runs.push(Run {
                stream: w.stream,
                shape: w.flags & (F_PREV_KV | F_FRAGMENT),
                hits: start as u32..end as u32,
                slot,
            });
            start = end;
        }
        let events_of = |r: &Run| {
            hits[r.hits.start as usize..r.hits.end as usize]
                .iter()
                .map(|h| h.1)
        };
        runs.sort_unstable_by(|a, b| {
            (a.stream, a.shape)
                .cmp(&(b.stream, b.shape))
                .then_with(|| events_of(a).cmp(events_of(b)))
                .then(a.slot.cmp(&b.slot))
        });
        let mut prev_cache: Option<(crate::backend::ReadTxn, HashMap<u32, Option<KeyValue>>)> =
            None;
        let mut slots: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < runs.len() {
            let first = &runs[i];
            let mut j = i + 1;
            while j < runs.len()
                && (runs[j].stream, runs[j].shape) == (first.stream, first.shape)
                && events_of(&runs[j]).eq(events_of(first))
            {
                j += 1;
            }
            let events: Vec<u32> = events_of(first).collect();
            slots.clear();
            slots.extend(runs[i..j].iter().map(|r| r.slot));
            let prev_kv = first.shape & F_PREV_KV != 0;
            i = j;
            let prev_kvs = if prev_kv {
                match self.prev_kvs_cached(&mut prev_cache, batch, &events) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        for &slot in &slots {
                            self.fail_watcher(slot, &e);
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            // Split the group so that one shared response stands for at most
            // MAX_SHARED_RESPONSE_BYTES of copies (at least one watcher per part).
            let copy_bytes = 64
                + events
                    .iter()
                    .map(|&e| event_bytes(&batch.events[e as usize]))
                    .sum::<usize>()
                + prev_kvs
                    .iter()
                    .flatten()
                    .flatten()
                    .map(kv_bytes)
                    .sum::<usize>();
            let per_part = (MAX_SHARED_RESPONSE_BYTES / copy_bytes).max(1);
            for part in slots.chunks(per_part) {
                if let Some(stop) = self.emit(
                    part,
                    batch,
                    events.clone(),
                    prev_kvs.clone(),
                    batch.revision,
                ) {
                    for &slot in part {
                        self.unsync(slot, stop);
                    }
                }
            }
        }
    }

    fn prev_kvs_cached(
        &self,
        cache: &mut Option<(crate::backend::ReadTxn, HashMap<u32, Option<KeyValue>>)>,
        batch: &AppliedBatch,
        events: &[u32],
    ) -> Result<Vec<Option<KeyValue>>> {
        if cache.is_none() {
            *cache = Some((self.reader.begin_read()?, HashMap::new()));
        }
        let (txn, map) = cache.as_mut().expect("just set");
        let mut view = SnapshotView::new(txn)?;
        let mut out = Vec::with_capacity(events.len());
        for &i in events {
            if let Some(p) = map.get(&i) {
                out.push(p.clone());
                continue;
            }
            let ev = &batch.events[i as usize];
            let p = version_at(&mut view, &ev.kv.key, ev.kv.mod_revision - 1)?;
            map.insert(i, p.clone());
            out.push(p);
        }
        Ok(out)
    }

    fn fail_watcher(&mut self, slot: u32, e: &Error) {
        let (sid, id) = {
            let w = self.watchers.get(slot);
            (w.stream, w.id)
        };
        crate::log!(Warn, "watch {id}: canceled after a storage error: {e}");
        let revision = self.received;
        self.drop_watcher(slot, true);
        self.push(
            sid,
            Outgoing::Canceled {
                watch_id: id,
                revision,
                compact_revision: 0,
                reason: format!("storage error: {e}"),
            },
        );
        self.maybe_progress(sid);
    }

    /// Queues `events` (indexes into `source`, in revision order) for the watchers in `slots`
    /// (all of one stream, with the same fragment setting, and `prev_kvs` for all of them or
    /// none) in responses of whole revisions (split only with fragment), each response shared
    /// by all of them. Returns None if everything was queued, or the first revision that did
    /// not fit in the stream's buffer (for all of them alike).
    fn emit(
        &mut self,
        slots: &[u32],
        source: &Arc<AppliedBatch>,
        events: Vec<u32>,
        mut prev_kvs: Option<Vec<Option<KeyValue>>>,
        header_rev: Revision,
    ) -> Option<Revision> {
        let (sid, fragment) = {
            let w = self.watchers.get(slots[0]);
            (w.stream, w.flags & F_FRAGMENT != 0)
        };
        let mut ids = Vec::with_capacity(slots.len());
        for &slot in slots {
            let w = self.watchers.get_mut(slot);
            debug_assert_eq!(
                (w.stream, w.flags & F_FRAGMENT != 0),
                (sid, fragment),
                "a group shares its stream and fragment setting"
            );
            w.flags |= F_SENT;
            ids.push(w.id);
        }
        let id = ids[0];
        let more_ids: Box<[i64]> = ids[1..].into();
        let rev_of = |i: u32| source.events[i as usize].kv.mod_revision;
        let size_of = |k: usize, prev: &Option<Vec<Option<KeyValue>>>| {
            event_bytes(&source.events[events[k] as usize])
                + prev
                    .as_ref()
                    .and_then(|p| p[k].as_ref())
                    .map_or(0, kv_bytes)
        };
        let mut at = 0;
        while at < events.len() {
            // Take whole revisions while they fit the response limit (at least one).
            let mut end = at;
            let mut bytes = 64;
            let mut split = false;
            while end < events.len() {
                let rev = rev_of(events[end]);
                let mut rev_end = end;
                let mut rev_bytes = 0;
                while rev_end < events.len() && rev_of(events[rev_end]) == rev {
                    rev_bytes += size_of(rev_end, &prev_kvs);
                    rev_end += 1;
                }
                if end > at && bytes + rev_bytes > MAX_RESPONSE_BYTES {
                    break;
                }
                if end == at && fragment && rev_bytes > MAX_RESPONSE_BYTES {
                    // Split this revision: as many events as fit (at least one).
                    let mut cut = end;
                    while cut < rev_end
                        && (cut == end || bytes + size_of(cut, &prev_kvs) <= MAX_RESPONSE_BYTES)
                    {
                        bytes += size_of(cut, &prev_kvs);
                        cut += 1;
                    }
                    split = cut < rev_end;
                    end = cut;
                    break;
                }
                bytes += rev_bytes;
                end = rev_end;
            }
            debug_assert!(end > at);
            let first_rev = rev_of(events[at]);
            if !self.has_room(sid, bytes * ids.len()) {
                if at > 0 && rev_of(events[at - 1]) == first_rev {
                    // Mid-revision (fragmenting): fragments already queued cannot be taken
                    // back, so finish this revision regardless of the buffer.
                } else {
                    return Some(first_rev);
                }
            }
            let last_rev = rev_of(events[end - 1]);
            let chunk: Vec<u32> = events[at..end].to_vec();
            let prev_chunk = prev_kvs.as_mut().map(|p| p[at..end].to_vec());
            self.push(
                sid,
                Outgoing::Events {
                    watch_id: id,
                    more_ids: more_ids.clone(),
                    revision: if split || end < events.len() {
                        last_rev
                    } else {
                        header_rev
                    },
                    fragment: split,
                    source: source.clone(),
                    events: chunk,
                    prev_kvs: prev_chunk,
                },
            );
            at = end;
        }
        None
    }

    /// Runs up to [`CATCHUP_STEPS_PER_ROUND`] catch-up steps; returns whether eligible work
    /// remains (false: wait for the catch-up bell).
    pub fn catchup_round(&mut self) -> bool {
        let mut steps = 0;
        let mut skipped = 0;
        while steps < CATCHUP_STEPS_PER_ROUND {
            let Some(slot) = self.behind.pop_front() else {
                return false;
            };
            let Some(w) = self.watchers.live(slot) else {
                continue; // canceled
            };
            if w.state != State::Behind {
                continue; // stale entry
            }
            let sid = w.stream;
            let s = self.streams.get(&sid).expect("open stream");
            if s.queued_bytes > MAX_STREAM_QUEUE_BYTES / 2 {
                // Its client has not read the backlog yet; `pop` rings when it has.
                self.behind.push_back(slot);
                skipped += 1;
                if skipped > self.behind.len() {
                    return false;
                }
                continue;
            }
            skipped = 0;
            steps += 1;
            if let Err(e) = self.catchup_step(slot) {
                self.fail_watcher(slot, &e);
            }
        }
        !self.behind.is_empty()
    }

    fn catchup_step(&mut self, slot: u32) -> Result<()> {
        let txn = self.reader.begin_read()?;
        let mut view = SnapshotView::new(&txn)?;
        let (current, compacted) = revisions(&mut view)?;
        debug_assert!(
            current >= self.received,
            "snapshots are never behind the hub"
        );
        let (next_rev, sid, id, range, flags) = {
            let w = self.watchers.get(slot);
            (w.next_rev, w.stream, w.id, w.range.clone(), w.flags)
        };
        if compacted > 0 && next_rev < compacted {
            self.drop_watcher(slot, true);
            self.push(
                sid,
                Outgoing::Canceled {
                    watch_id: id,
                    revision: current,
                    compact_revision: compacted,
                    reason: format!(
                        "required revision {next_rev} has been compacted (compacted revision {compacted})"
                    ),
                },
            );
            self.maybe_progress(sid);
            return Ok(());
        }
        let wants = |kind: EventKind| match kind {
            EventKind::Put => flags & F_NO_PUT == 0,
            EventKind::Delete => flags & F_NO_DELETE == 0,
        };
        let chunk = read_history(
            &txn,
            next_rev,
            current,
            CATCHUP_EVENTS_PER_STEP,
            |kind, key| wants(kind) && range.contains(key),
        )?;
        let mut stop = None;
        if !chunk.events.is_empty() {
            let prev_kvs = if flags & F_PREV_KV != 0 {
                let mut p = Vec::with_capacity(chunk.events.len());
                for ev in &chunk.events {
                    p.push(version_at(&mut view, &ev.kv.key, ev.kv.mod_revision - 1)?);
                }
                Some(p)
            } else {
                None
            };
            let n = chunk.events.len() as u32;
            let source = Arc::new(AppliedBatch::new(
                next_rev - 1,
                chunk.next - 1,
                chunk.events,
            ));
            stop = self.emit(&[slot], &source, (0..n).collect(), prev_kvs, chunk.next - 1);
        }
        drop(txn);
        match stop {
            Some(rev) => {
                self.watchers.get_mut(slot).next_rev = rev;
                self.behind.push_back(slot);
            }
            None => self.place(slot, chunk.next, chunk.next == current + 1, false),
        }
        Ok(())
    }

    /// Sends a progress response to every synced watcher that asked for them and had no
    /// events since the last tick (etcd's behaviour), if its stream has room.
    pub fn progress_tick(&mut self) {
        let revision = self.received;
        for slot in 0..self.watchers.0.len() as u32 {
            let Some(w) = self.watchers.0[slot as usize].as_mut() else {
                continue;
            };
            let sent = w.flags & F_SENT != 0;
            w.flags &= !F_SENT;
            if w.flags & F_PROGRESS == 0 || sent || w.state == State::Behind {
                continue;
            }
            let (sid, id) = (w.stream, w.id);
            if self.has_room(sid, 64) {
                self.push(
                    sid,
                    Outgoing::Progress {
                        watch_id: id,
                        revision,
                    },
                );
            }
        }
    }

    /// Heap bytes held per watcher slot (struct only), for memory accounting in benchmarks.
    pub fn watcher_struct_bytes() -> usize {
        std::mem::size_of::<Option<Watcher>>()
    }
}

/// The hub of a shard and its tasks.
pub type SharedHub = Rc<RefCell<Hub>>;

/// Starts a shard's hub: the inbox task, the catch-up task and (with a non-zero interval)
/// the progress ticker, all detached on the current glommio executor.
pub fn spawn(reader: Reader, inbox: Inbox, progress_interval: Duration) -> Result<SharedHub> {
    let hub = Rc::new(RefCell::new(Hub::new(reader)?));
    let bell = hub.borrow().catchup_bell.clone();
    {
        let hub = hub.clone();
        glommio::spawn_local(async move {
            use futures::FutureExt;
            loop {
                futures::select_biased! {
                    b = inbox.batches.recv_async().fuse() => match b {
                        Ok(b) => {
                            inbox.taken(&b);
                            let mut h = hub.borrow_mut();
                            h.on_batch(b);
                            // Take whatever else is queued in the same borrow.
                            while let Ok(b) = inbox.batches.try_recv() {
                                inbox.taken(&b);
                                h.on_batch(b);
                            }
                        }
                        Err(_) => return, // the applier is gone: shutting down
                    },
                    l = inbox.lag.recv_async().fuse() => match l {
                        Ok(()) => hub.borrow_mut().on_lag(),
                        Err(_) => return,
                    },
                }
            }
        })
        .detach();
    }
    {
        let hub = hub.clone();
        glommio::spawn_local(async move {
            loop {
                let more = hub.borrow_mut().catchup_round();
                if more {
                    yield_now().await;
                } else {
                    bell.wait().await;
                }
            }
        })
        .detach();
    }
    if !progress_interval.is_zero() {
        let hub = hub.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(progress_interval).await;
                hub.borrow_mut().progress_tick();
            }
        })
        .detach();
    }
    Ok(hub)
}

/// A future that is pending once, so a busy loop lets other tasks run.
pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Yields once to the executor.
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-watcher memory target (< 200 bytes per idle watcher, measured in
    /// `perf/watch-lease.md`) rests on this size: growing the slot shows up here first.
    #[test]
    fn a_watcher_slot_stays_56_bytes() {
        assert_eq!(Hub::watcher_struct_bytes(), 56);
    }
}
