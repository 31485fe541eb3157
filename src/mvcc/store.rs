//! The write path: applying write requests inside one backend write transaction.
//!
//! The applier opens one [`WriteBatch`] per backend write transaction and applies many
//! requests in it, each getting its own revision (a request that changes nothing gets
//! none). Validation happens before any change, so a failed request leaves no trace.

use std::ops::Bound;

use super::encoding::{
    encode_counter, history_key, history_value, kv_key, split_history_key, split_history_value,
    split_kv_key, RecordHeader, VersionRecord, HISTORY_TREE, KV_ORDER, KV_TREE, META_APPLIED_INDEX,
    META_APPLIED_TERM, META_COMPACT_DONE, META_COMPACT_REVISION, META_REVISION, META_TREE,
};
use super::lease::{self, LeaseEvent, LeaseMove};
use super::read::{
    check_key, check_range_request, evaluate_compare, for_each_visible, latest, range_at,
    resolve_revision, revisions, to_key_value, KvView, RangeEnd, RawEntry,
};
use super::types::{
    DeleteRangeRequest, DeleteRangeResponse, Error, ErrorCode, Event, EventKind, KeyValue,
    PutRequest, PutResponse, RequestOp, ResponseOp, Result, Revision, TxnRequest, TxnResponse,
    WriteRequest, WriteResponse,
};
use crate::backend::{KeyOrder, WriteTxn};

/// Most keys one request may change (puts plus deleted keys): bounds the backend transaction
/// and the memory of one request; a larger delete must be split into smaller ranges.
pub const MAX_CHANGES_PER_REQUEST: usize = 100_000;
/// Most key and value bytes one request may write (deleted keys count their key bytes).
pub const MAX_CHANGE_BYTES_PER_REQUEST: usize = 64 << 20;

/// Deepest nesting of transactions accepted.
pub const MAX_TXN_DEPTH: usize = 16;
/// Default for [`Limits::max_txn_ops`] (etcd's default).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Per-request limits enforced by the write path.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most compares, success ops or failure ops in one transaction level.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }
}

/// Entries the first chunk of a walk over the write transaction's `kv` tree copies out.
const WRITE_SCAN_FIRST_CHUNK: usize = 8;
/// Most entries one chunk of such a walk copies out.
const WRITE_SCAN_MAX_CHUNK: usize = 256;

/// A [`KvView`] of the state inside the write transaction, including its own changes.
pub struct WriteView<'a, 'b> {
    txn: &'a mut WriteTxn<'b>,
}

impl<'a, 'b> WriteView<'a, 'b> {
    /// A view over `txn`.
    pub fn new(txn: &'a mut WriteTxn<'b>) -> WriteView<'a, 'b> {
        WriteView { txn }
    }
}

impl KvView for WriteView<'_, '_> {
    fn seek(&mut self, k: &[u8]) -> Result<Option<RawEntry>> {
        let tree = self.txn.open_tree(KV_TREE, KV_ORDER)?;
        Ok(tree
            .scan((Bound::Included(k), Bound::Unbounded), 1)?
            .into_iter()
            .next())
    }

    fn seek_for_prev(&mut self, k: &[u8]) -> Result<Option<RawEntry>> {
        let tree = self.txn.open_tree(KV_TREE, KV_ORDER)?;
        Ok(tree
            .scan_rev((Bound::Unbounded, Bound::Included(k)), 1)?
            .into_iter()
            .next())
    }

    fn scan_from<F>(&mut self, from: &[u8], mut f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8], Option<&[u8]>) -> Result<bool>,
    {
        let tree = self.txn.open_tree(KV_TREE, KV_ORDER)?;
        // The transaction's tree is copied out a chunk at a time; chunks grow so a short walk
        // copies little and a long one makes few calls. The following chunk is read before
        // the last entry of this one is visited, which needs the next key.
        let mut chunk_len = WRITE_SCAN_FIRST_CHUNK;
        let mut chunk = tree.scan((Bound::Included(from), Bound::Unbounded), chunk_len)?;
        loop {
            let following = match chunk.last() {
                Some((last, _)) if chunk.len() == chunk_len => {
                    chunk_len = (chunk_len * 2).min(WRITE_SCAN_MAX_CHUNK);
                    Some(tree.scan((Bound::Excluded(&last[..]), Bound::Unbounded), chunk_len)?)
                }
                _ => None,
            };
            for (i, (k, v)) in chunk.iter().enumerate() {
                let next = match chunk.get(i + 1) {
                    Some((nk, _)) => Some(&nk[..]),
                    None => following
                        .as_ref()
                        .and_then(|c| c.first())
                        .map(|(nk, _)| &nk[..]),
                };
                if !f(k, v, next)? {
                    return Ok(());
                }
            }
            match following {
                Some(c) if !c.is_empty() => chunk = c,
                _ => return Ok(()),
            }
        }
    }

    fn counter(&mut self, name: &[u8]) -> Result<i64> {
        let tree = self.txn.open_tree(META_TREE, KeyOrder::Bytewise)?;
        match tree.get(name)? {
            None => Ok(0),
            Some(v) => super::encoding::decode_counter(name, &v),
        }
    }
}

/// Applies write requests in one backend write transaction and collects their events.
pub struct WriteBatch<'a, 'b> {
    view: WriteView<'a, 'b>,
    limits: Limits,
    current: Revision,
    compacted: Revision,
    events: Vec<Event>,
    lease_events: Vec<LeaseEvent>,
}

/// The outcome of one applied request: its response, or its error, and the store revision
/// after it (the response header's revision).
pub type Applied = (Result<WriteResponse>, Revision);

impl<'a, 'b> WriteBatch<'a, 'b> {
    /// Starts applying requests inside `txn`.
    pub fn begin(txn: &'a mut WriteTxn<'b>, limits: Limits) -> Result<WriteBatch<'a, 'b>> {
        let mut view = WriteView::new(txn);
        let (current, compacted) = revisions(&mut view)?;
        Ok(WriteBatch {
            view,
            limits,
            current,
            compacted,
            events: Vec::new(),
            lease_events: Vec::new(),
        })
    }

    /// The store revision after everything applied so far.
    pub fn revision(&self) -> Revision {
        self.current
    }

    /// The compacted revision.
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// Applies one request. An error leaves the store unchanged; a backend failure is an
    /// `Internal` error after which the whole backend transaction must be abandoned.
    pub fn apply(&mut self, req: &WriteRequest) -> Applied {
        let result = match req {
            WriteRequest::Put(p) => self.apply_put(p).map(WriteResponse::Put),
            WriteRequest::DeleteRange(d) => self.apply_delete(d).map(WriteResponse::DeleteRange),
            WriteRequest::Txn(t) => self.apply_txn(t).map(WriteResponse::Txn),
            WriteRequest::Compact { revision } => self
                .apply_compact(*revision)
                .map(|()| WriteResponse::Compact),
            WriteRequest::LeaseGrant(g) => lease::grant(self.view.txn, g).map(|ev| {
                let LeaseEvent::Granted { id, ttl, .. } = ev else {
                    unreachable!("grant returns a Granted event")
                };
                self.lease_events.push(ev);
                WriteResponse::LeaseGrant { id, ttl }
            }),
            WriteRequest::LeaseRevoke { id } => self
                .apply_lease_revoke(*id)
                .map(|()| WriteResponse::LeaseRevoke),
            WriteRequest::LeaseCheckpoint(c) => {
                lease::checkpoint(self.view.txn, c).map(|()| WriteResponse::LeaseCheckpoint)
            }
        };
        (result, self.current)
    }

    /// Records that the state now includes raft log entry `index` of `term`; written in the
    /// same backend transaction as the entry's changes, so replay resumes exactly.
    pub fn set_applied(&mut self, index: u64, term: u64) -> Result<()> {
        let mut meta = self.view.txn.open_tree(META_TREE, KeyOrder::Bytewise)?;
        meta.put(META_APPLIED_INDEX, &encode_counter(index as i64))?;
        meta.put(META_APPLIED_TERM, &encode_counter(term as i64))?;
        Ok(())
    }

    /// The events of every change applied so far, in revision order; clears them.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The lease grants and revokes applied so far, in order; clears them. The applier hands
    /// them to the leases' owner shards once the batch is published.
    pub fn take_lease_events(&mut self) -> Vec<LeaseEvent> {
        std::mem::take(&mut self.lease_events)
    }

    /// Revokes lease `id`: deletes every attached key at one new revision through the normal
    /// delete path (so the deletes enter `history` and the events), then removes the lease.
    /// The per-lease attach limits keep this within the per-request change limits.
    fn apply_lease_revoke(&mut self, id: i64) -> Result<()> {
        lease::check_id("lease revoke", id)?;
        if lease::get(self.view.txn, id)?.is_none() {
            return Err(Error::new(
                ErrorCode::LeaseNotFound,
                format!("lease revoke: lease {id:x} not found"),
            ));
        }
        let keys = lease::attached_keys(self.view.txn, id)?;
        self.run_change(|c, view| {
            for key in keys {
                let d = DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                };
                let resp = c.delete_range(view, &d)?;
                if resp.deleted != 1 {
                    return Err(Error::new(
                        ErrorCode::Internal,
                        format!(
                            "corrupt lease data: key {:?} is attached to lease {id:x} but does not exist",
                            String::from_utf8_lossy(&d.key)
                        ),
                    ));
                }
            }
            Ok(())
        })?;
        let ev = lease::remove(self.view.txn, id)?;
        self.lease_events.push(ev);
        Ok(())
    }

    fn apply_put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        check_put(p)?;
        check_put_against_state(&mut self.view, p, self.current)?;
        let resp = self.run_change(|c, view| c.put(view, p))?;
        Ok(resp)
    }

    fn apply_delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        check_key("delete", &d.key)?;
        let resp = self.run_change(|c, view| c.delete_range(view, d))?;
        Ok(resp)
    }

    fn apply_txn(&mut self, t: &TxnRequest) -> Result<TxnResponse> {
        check_txn(t, &self.limits, 0)?;
        // Every compare, nested ones included, sees the state before the transaction.
        let mut path = Vec::new();
        txn_path(&mut self.view, t, &mut path)?;
        let mut cursor = 0;
        check_txn_path(
            &mut self.view,
            t,
            &path,
            &mut cursor,
            self.current,
            self.compacted,
        )?;
        debug_assert_eq!(cursor, path.len(), "pre-checks walk the whole path");
        let compacted = self.compacted;
        let mut cursor = 0;
        let resp = self.run_change(|c, view| c.txn(view, t, &path, &mut cursor, compacted))?;
        Ok(resp)
    }

    fn apply_compact(&mut self, revision: Revision) -> Result<()> {
        if revision <= self.compacted {
            return Err(Error::new(
                ErrorCode::Compacted,
                format!(
                    "compact: revision {revision} has already been compacted (compacted revision {})",
                    self.compacted
                ),
            ));
        }
        if revision > self.current {
            return Err(Error::new(
                ErrorCode::FutureRevision,
                format!(
                    "compact: revision {revision} is above the current revision {}",
                    self.current
                ),
            ));
        }
        self.view
            .txn
            .open_tree(META_TREE, KeyOrder::Bytewise)?
            .put(META_COMPACT_REVISION, &encode_counter(revision))?;
        self.compacted = revision;
        Ok(())
    }

    /// Whether history below the compacted revision has been physically removed.
    pub fn compaction_done(&mut self) -> Result<bool> {
        Ok(self.view.counter(META_COMPACT_DONE)? >= self.compacted)
    }

    /// Physically removes up to `max_events` history events below the compacted revision and
    /// every key version no read at or above it can see. Returns whether compaction is done.
    pub fn compact_step(&mut self, max_events: usize) -> Result<bool> {
        let target = self.compacted;
        if self.view.counter(META_COMPACT_DONE)? >= target {
            return Ok(true);
        }
        let end = history_key(target, 0);
        let entries = self
            .view
            .txn
            .open_tree(HISTORY_TREE, KeyOrder::Bytewise)?
            .scan(
                (Bound::Unbounded, Bound::Excluded(&end[..])),
                max_events.max(1),
            )?;
        let done = entries.len() < max_events.max(1);
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
        for (k, v) in &entries {
            let (rev, _) = split_history_key(k)?;
            debug_assert!(rev < target);
            let (_, key) = split_history_value(v)?;
            keys.push(key.to_vec());
        }
        keys.sort();
        keys.dedup();
        for key in &keys {
            self.compact_key(key, target)?;
        }
        let mut history = self.view.txn.open_tree(HISTORY_TREE, KeyOrder::Bytewise)?;
        for (k, _) in &entries {
            history.delete(k)?;
        }
        if done {
            self.view
                .txn
                .open_tree(META_TREE, KeyOrder::Bytewise)?
                .put(META_COMPACT_DONE, &encode_counter(target))?;
        }
        Ok(done)
    }

    /// Removes every version of `key` below its version visible at `target`, and that one too
    /// if it is a tombstone below `target`.
    fn compact_key(&mut self, key: &[u8], target: Revision) -> Result<()> {
        let Some((k, v)) = self.view.seek_for_prev(&kv_key(key, target))? else {
            return Ok(());
        };
        let (user, keep_rev) = split_kv_key(&k)?;
        if user != key {
            return Ok(());
        }
        let tombstone = RecordHeader::decode(&v)?.kind == EventKind::Delete;
        let start = kv_key(key, 0);
        let stop = kv_key(key, keep_rev);
        let mut tree = self.view.txn.open_tree(KV_TREE, KV_ORDER)?;
        loop {
            // Bounded batches: a key may have a long history.
            let old = tree.scan(
                (Bound::Included(&start[..]), Bound::Excluded(&stop[..])),
                COMPACT_SCAN_BATCH,
            )?;
            for (k, _) in &old {
                tree.delete(k)?;
            }
            if old.len() < COMPACT_SCAN_BATCH {
                break;
            }
        }
        if tombstone && keep_rev < target {
            tree.delete(&stop)?;
        }
        Ok(())
    }

    /// Runs one request's changes at the next revision. If it fails part-way (a limit, a
    /// response too large inside a txn), the writes it already made are removed again, so a
    /// failed request leaves no trace; only backend failures (`Internal`) leave the batch to
    /// be abandoned by the caller.
    fn run_change<T>(
        &mut self,
        f: impl FnOnce(&mut Change, &mut WriteView<'a, 'b>) -> Result<T>,
    ) -> Result<T> {
        let mut change = Change::new(self.current + 1);
        match f(&mut change, &mut self.view) {
            Ok(resp) => {
                if let Err(e) = lease::apply_moves(self.view.txn, &change.lease_moves) {
                    // Checked before any lease write: only the kv/history writes to undo.
                    change.undo(&mut self.view)?;
                    return Err(e);
                }
                self.commit_change(change)?;
                Ok(resp)
            }
            Err(e) => {
                change.undo(&mut self.view)?;
                Err(e)
            }
        }
    }

    fn commit_change(&mut self, change: Change) -> Result<()> {
        if change.events.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(change.rev, self.current + 1);
        self.view
            .txn
            .open_tree(META_TREE, KeyOrder::Bytewise)?
            .put(META_REVISION, &encode_counter(change.rev))?;
        self.current = change.rev;
        self.events.extend(change.events);
        Ok(())
    }
}

/// Versions of one key removed per scan during compaction.
const COMPACT_SCAN_BATCH: usize = 1024;

/// The changes of one request, all at revision `rev`.
struct Change {
    rev: Revision,
    events: Vec<Event>,
    /// Key and value bytes written so far (bounded by MAX_CHANGE_BYTES_PER_REQUEST).
    bytes: usize,
    /// Keys whose lease changes (attach / detach), applied when the change succeeds. A key
    /// changes at most once per request (the txn duplicate-key rule), so order is free.
    lease_moves: Vec<LeaseMove>,
}

impl Change {
    fn new(rev: Revision) -> Change {
        Change {
            rev,
            events: Vec::new(),
            bytes: 0,
            lease_moves: Vec::new(),
        }
    }

    /// Fails if `more` further changes of `bytes` bytes would exceed the per-request limits.
    fn reserve(&self, more: usize, bytes: usize) -> Result<()> {
        if self.events.len() + more > MAX_CHANGES_PER_REQUEST {
            return Err(Error::new(
                ErrorCode::RequestTooLarge,
                format!(
                    "the request changes more than {MAX_CHANGES_PER_REQUEST} keys; split it into smaller ranges"
                ),
            ));
        }
        if self.bytes + bytes > MAX_CHANGE_BYTES_PER_REQUEST {
            return Err(Error::new(
                ErrorCode::RequestTooLarge,
                format!(
                    "the request writes more than {MAX_CHANGE_BYTES_PER_REQUEST} bytes of keys and values; split it"
                ),
            ));
        }
        Ok(())
    }

    /// Removes every write this change made: all are at the fresh revision `rev`, which
    /// nothing else uses, so deleting them restores the state before the change.
    fn undo(&self, view: &mut WriteView<'_, '_>) -> Result<()> {
        for (sub, ev) in self.events.iter().enumerate() {
            debug_assert_eq!(ev.kv.mod_revision, self.rev);
            view.txn
                .open_tree(KV_TREE, KV_ORDER)?
                .delete(&kv_key(&ev.kv.key, self.rev))?;
            view.txn
                .open_tree(HISTORY_TREE, KeyOrder::Bytewise)?
                .delete(&history_key(self.rev, sub as u32))?;
        }
        Ok(())
    }

    fn next_sub(&self) -> u32 {
        // Invariant: at most MAX_CHANGES_PER_REQUEST (< u32::MAX) changes per revision.
        u32::try_from(self.events.len()).expect("changes per revision fit in u32")
    }

    fn record(
        &mut self,
        view: &mut WriteView<'_, '_>,
        key: &[u8],
        rec: VersionRecord,
    ) -> Result<()> {
        let size = key.len() + rec.value.len();
        self.reserve(1, size)?;
        self.bytes += size;
        let kind = rec.kind;
        view.txn
            .open_tree(KV_TREE, KV_ORDER)?
            .put(&kv_key(key, self.rev), &rec.encode())?;
        view.txn
            .open_tree(HISTORY_TREE, KeyOrder::Bytewise)?
            .put(&history_key(self.rev, rec.sub), &history_value(kind, key))?;
        // The event owns the record's value: moved, not copied (a put's value is copied
        // once from the request and once into the encoded record, nothing more).
        let kv = match kind {
            EventKind::Put => rec.into_key_value(key, self.rev),
            EventKind::Delete => KeyValue {
                key: key.to_vec(),
                mod_revision: self.rev,
                ..KeyValue::default()
            },
        };
        self.events.push(Event { kind, kv });
        Ok(())
    }

    fn put(&mut self, view: &mut WriteView<'_, '_>, p: &PutRequest) -> Result<PutResponse> {
        let found = latest(view, &p.key, self.rev)?;
        let header = found
            .as_ref()
            .map(|(_, rec)| RecordHeader::decode(rec))
            .transpose()?;
        let (create_revision, version) = match &header {
            Some(h) => (h.create_revision, h.version + 1),
            None => (self.rev, 1),
        };
        let value = match (&found, p.ignore_value) {
            (Some((_, rec)), true) => RecordHeader::value_of(rec).to_vec(),
            _ => p.value.clone(),
        };
        let lease = match (&header, p.ignore_lease) {
            (Some(h), true) => h.lease,
            _ => p.lease,
        };
        // The previous key-value is decoded (key and value copied) only when the response
        // asks for it: most puts need just the record header.
        let prev = match &found {
            Some((mod_rev, rec)) if p.prev_kv => Some(to_key_value(&p.key, *mod_rev, rec, true)?),
            _ => None,
        };
        let rec = VersionRecord {
            kind: EventKind::Put,
            create_revision,
            version,
            lease,
            sub: self.next_sub(),
            value,
        };
        self.record(view, &p.key, rec)?;
        let old = header.as_ref().map_or(0, |h| h.lease);
        if old != lease {
            self.lease_moves.push(LeaseMove {
                old,
                new: lease,
                key: p.key.clone(),
            });
        }
        Ok(PutResponse { prev_kv: prev })
    }

    fn delete_range(
        &mut self,
        view: &mut WriteView<'_, '_>,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        let end = RangeEnd::decode(&d.range_end);
        let mut victims = Vec::new();
        let mut bytes = 0;
        for_each_visible(view, &d.key, &end, self.rev, |key, mod_rev, rec| {
            let kv = to_key_value(key, mod_rev, rec, d.prev_kv)?;
            // prev_kv values count too: they are held for the response.
            bytes += kv.key.len() + kv.value.len();
            self.reserve(victims.len() + 1, bytes)?;
            victims.push(kv);
            Ok(true)
        })?;
        for kv in &victims {
            let rec = VersionRecord {
                kind: EventKind::Delete,
                create_revision: 0,
                version: 0,
                lease: 0,
                sub: self.next_sub(),
                value: Vec::new(),
            };
            self.record(view, &kv.key, rec)?;
            if kv.lease != 0 {
                self.lease_moves.push(LeaseMove {
                    old: kv.lease,
                    new: 0,
                    key: kv.key.clone(),
                });
            }
        }
        Ok(DeleteRangeResponse {
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { Vec::new() },
        })
    }

    fn txn(
        &mut self,
        view: &mut WriteView<'_, '_>,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        compacted: Revision,
    ) -> Result<TxnResponse> {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                RequestOp::Range(r) => {
                    // Reads inside a transaction see its earlier changes.
                    let current = if self.events.is_empty() {
                        self.rev - 1
                    } else {
                        self.rev
                    };
                    {
                        let resp = range_at(view, r, current, compacted)?;
                        // The whole txn response counts against the request's byte budget.
                        let bytes: usize = resp
                            .kvs
                            .iter()
                            .map(|kv| kv.key.len() + kv.value.len())
                            .sum();
                        self.reserve(0, bytes)?;
                        self.bytes += bytes;
                        ResponseOp::Range(resp)
                    }
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put(view, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(view, d)?),
                RequestOp::Txn(nested) => {
                    ResponseOp::Txn(self.txn(view, nested, path, cursor, compacted)?)
                }
            };
            responses.push(resp);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

/// Checks the fields of a put that do not depend on the store's state.
fn check_put(p: &PutRequest) -> Result<()> {
    check_key("put", &p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "put: value must be empty when ignore_value is set",
        ));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "put: lease must be 0 when ignore_lease is set",
        ));
    }
    Ok(())
}

/// Checks a put against the state it will apply to.
fn check_put_against_state(
    view: &mut WriteView<'_, '_>,
    p: &PutRequest,
    current: Revision,
) -> Result<()> {
    if (p.ignore_value || p.ignore_lease) && latest(view, &p.key, current)?.is_none() {
        return Err(Error::new(
            ErrorCode::KeyNotFound,
            format!(
                "put: key {:?} does not exist (ignore_value / ignore_lease need an existing key)",
                String::from_utf8_lossy(&p.key)
            ),
        ));
    }
    if p.lease != 0 {
        lease::check_exists(view.txn, "put", p.lease)?;
    }
    Ok(())
}

/// Checks a transaction's shape: op counts, nesting depth, fields, and that no key is
/// modified twice on any path (etcd's rule: puts may not repeat or fall inside a delete of
/// the same branch; a nested txn's success and failure may put the same key).
fn check_txn(t: &TxnRequest, limits: &Limits, depth: usize) -> Result<()> {
    if depth >= MAX_TXN_DEPTH {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("txn: nesting deeper than the limit of {MAX_TXN_DEPTH} levels"),
        ));
    }
    for (what, n) in [
        ("compares", t.compare.len()),
        ("success ops", t.success.len()),
        ("failure ops", t.failure.len()),
    ] {
        if n > limits.max_txn_ops {
            return Err(Error::new(
                ErrorCode::TooManyTxnOps,
                format!(
                    "txn: {n} {what} exceed the limit of {} (--max-txn-ops)",
                    limits.max_txn_ops
                ),
            ));
        }
    }
    for c in &t.compare {
        check_key("txn compare", &c.key)?;
    }
    for branch in [&t.success, &t.failure] {
        for op in branch {
            match op {
                RequestOp::Range(r) => check_range_request(r)?,
                RequestOp::Put(p) => check_put(p)?,
                RequestOp::DeleteRange(d) => check_key("txn delete", &d.key)?,
                RequestOp::Txn(nested) => check_txn(nested, limits, depth + 1)?,
            }
        }
        branch_writes(branch)?;
    }
    Ok(())
}

/// A range deleted by a transaction branch: start key and end.
type DeletedRange = (Vec<u8>, RangeEnd);

/// The keys put and the ranges deleted by a branch (and the branches nested in it), or a
/// `DuplicateKey` error.
fn branch_writes(ops: &[RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<DeletedRange>)> {
    let duplicate = |key: &[u8]| {
        Error::new(
            ErrorCode::DuplicateKey,
            format!(
                "txn: key {:?} is modified more than once",
                String::from_utf8_lossy(key)
            ),
        )
    };
    let mut dels: Vec<DeletedRange> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some((d.key.clone(), RangeEnd::decode(&d.range_end))),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[DeletedRange], key: &[u8]| {
        dels.iter().any(|(start, end)| end.contains(start, key))
    };
    let mut puts: Vec<Vec<u8>> = Vec::new();
    // Nested transactions in order: each one's deletes join the set before the next one's
    // puts are checked (etcd's checkIntervals).
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let (puts_then, dels_then) = branch_writes(&nested.success)?;
        let (puts_else, dels_else) = branch_writes(&nested.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(duplicate(k));
            }
        }
        for k in &puts_else {
            // Success and failure are exclusive: the same key in both is fine.
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(duplicate(k));
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(duplicate(&p.key));
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

/// Evaluates the compares of `t` and of every nested txn on the branch taken, in execution
/// order, against the state before the transaction.
fn txn_path(view: &mut impl KvView, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &t.compare {
        if !evaluate_compare(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        if let RequestOp::Txn(nested) = op {
            txn_path(view, nested, path)?;
        }
    }
    Ok(())
}

/// Checks every op on the path against the state before the transaction, so that execution
/// cannot fail half-way.
fn check_txn_path(
    view: &mut WriteView<'_, '_>,
    t: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    current: Revision,
    compacted: Revision,
) -> Result<()> {
    let ops = if path[*cursor] {
        &t.success
    } else {
        &t.failure
    };
    *cursor += 1;
    for op in ops {
        match op {
            RequestOp::Range(r) => {
                resolve_revision(r.revision, current, compacted)?;
            }
            RequestOp::Put(p) => check_put_against_state(view, p, current)?,
            RequestOp::DeleteRange(_) => {}
            RequestOp::Txn(nested) => {
                check_txn_path(view, nested, path, cursor, current, compacted)?
            }
        }
    }
    Ok(())
}
