//! A small in-memory reference model of etcd v3's KV semantics, written for clarity, not
//! speed: every key keeps a plain list of its versions. Tests run the same requests against
//! corekv and against this model and require equal answers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use corekv::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, ErrorCode,
    KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    SortOrder, SortTarget, TxnRequest, TxnResponse, WriteRequest, WriteResponse,
};

/// The model's answer: a response or an error code (messages are not compared).
pub type ModelResult<T> = Result<T, ErrorCode>;

/// etcd's store as a map from key to its versions: (revision, Some(kv) for a put or None
/// for a delete), oldest first.
#[derive(Clone, Debug, Default)]
pub struct EtcdModel {
    pub revision: i64,
    pub compacted: i64,
    pub max_txn_ops: usize,
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
}

fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

impl EtcdModel {
    pub fn new(max_txn_ops: usize) -> EtcdModel {
        EtcdModel {
            max_txn_ops,
            ..EtcdModel::default()
        }
    }

    fn visible(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        let versions = self.history.get(key)?;
        versions
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.clone())
    }

    fn visible_range(&self, start: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        self.history
            .keys()
            .filter(|k| in_range(start, end, k))
            .filter_map(|k| self.visible(k, rev))
            .collect()
    }

    pub fn range(&self, r: &RangeRequest) -> ModelResult<RangeResponse> {
        self.range_at(r, self.revision)
    }

    fn range_at(&self, r: &RangeRequest, current: i64) -> ModelResult<RangeResponse> {
        if r.key.is_empty() {
            return Err(ErrorCode::InvalidRange);
        }
        if r.limit < 0 {
            return Err(ErrorCode::InvalidArgument);
        }
        let rev = if r.revision <= 0 { current } else { r.revision };
        if rev > current {
            return Err(ErrorCode::FutureRevision);
        }
        if rev < self.compacted {
            return Err(ErrorCode::Compacted);
        }
        let mut kvs = self.visible_range(&r.key, &r.range_end, rev);
        let count = kvs.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                kvs: vec![],
                more: false,
                count,
            });
        }
        // etcd fetches only limit+1 keys (in key order) unless the request sorts with an
        // explicit order or filters by revision; a non-key target with order NONE then
        // re-sorts just those.
        let default_order = r.sort_order == SortOrder::None
            || (r.sort_target == SortTarget::Key && r.sort_order == SortOrder::Ascend);
        let filters = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if r.limit > 0 && default_order && !filters {
            kvs.truncate(r.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let order = match (r.sort_order, r.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            kvs.sort_by(|a, b| match r.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            });
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    fn holds(&self, c: &Compare) -> bool {
        let kvs = self.visible_range(&c.key, &c.range_end, self.revision);
        let one = |kv: Option<&KeyValue>| {
            let ord = match (&c.target, kv) {
                (CompareTarget::Value(_), None) => return false,
                (CompareTarget::Value(v), Some(kv)) => kv.value.cmp(v),
                (CompareTarget::Version(t), kv) => kv.map_or(0, |k| k.version).cmp(t),
                (CompareTarget::CreateRevision(t), kv) => {
                    kv.map_or(0, |k| k.create_revision).cmp(t)
                }
                (CompareTarget::ModRevision(t), kv) => kv.map_or(0, |k| k.mod_revision).cmp(t),
                (CompareTarget::Lease(t), kv) => kv.map_or(0, |k| k.lease).cmp(t),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => !ord.is_eq(),
            }
        };
        if kvs.is_empty() {
            one(None)
        } else {
            kvs.iter().all(|kv| one(Some(kv)))
        }
    }

    /// Applies a write request; returns the response and the header revision.
    pub fn apply(&mut self, req: &WriteRequest) -> (ModelResult<WriteResponse>, i64) {
        let before = self.clone();
        let result = match req {
            WriteRequest::Put(p) => {
                self.txn_like(|m, rev, changed| m.put(p, rev, changed).map(WriteResponse::Put))
            }
            WriteRequest::DeleteRange(d) => self.txn_like(|m, rev, changed| {
                m.delete(d, rev, changed).map(WriteResponse::DeleteRange)
            }),
            WriteRequest::Txn(t) => self.txn(t).map(WriteResponse::Txn),
            WriteRequest::Compact { revision } => {
                if *revision <= self.compacted {
                    Err(ErrorCode::Compacted)
                } else if *revision > self.revision {
                    Err(ErrorCode::FutureRevision)
                } else {
                    self.compacted = *revision;
                    Ok(WriteResponse::Compact)
                }
            }
            WriteRequest::LeaseGrant(_)
            | WriteRequest::LeaseRevoke { .. }
            | WriteRequest::LeaseCheckpoint(_) => {
                panic!("the etcd model does not cover lease requests (no generator makes them)")
            }
        };
        if result.is_err() {
            *self = before;
        }
        (result, self.revision)
    }

    /// Runs `f` at the next revision; the revision is taken only if `f` changed something.
    fn txn_like<T>(
        &mut self,
        f: impl FnOnce(&mut EtcdModel, i64, &mut bool) -> ModelResult<T>,
    ) -> ModelResult<T> {
        let rev = self.revision + 1;
        let mut changed = false;
        let out = f(self, rev, &mut changed)?;
        if changed {
            self.revision = rev;
        }
        Ok(out)
    }

    fn put(&mut self, p: &PutRequest, rev: i64, changed: &mut bool) -> ModelResult<PutResponse> {
        if p.key.is_empty() {
            return Err(ErrorCode::InvalidRange);
        }
        if (p.ignore_value && !p.value.is_empty()) || (p.ignore_lease && p.lease != 0) {
            return Err(ErrorCode::InvalidArgument);
        }
        let prev = self.visible(&p.key, rev);
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(ErrorCode::KeyNotFound);
        }
        if p.lease != 0 {
            return Err(ErrorCode::LeaseNotFound);
        }
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |k| k.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: match (&prev, p.ignore_value) {
                (Some(k), true) => k.value.clone(),
                _ => p.value.clone(),
            },
            lease: match (&prev, p.ignore_lease) {
                (Some(k), true) => k.lease,
                _ => p.lease,
            },
        };
        self.history
            .entry(p.key.clone())
            .or_default()
            .push((rev, Some(kv)));
        *changed = true;
        Ok(PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(
        &mut self,
        d: &DeleteRangeRequest,
        rev: i64,
        changed: &mut bool,
    ) -> ModelResult<DeleteRangeResponse> {
        if d.key.is_empty() {
            return Err(ErrorCode::InvalidRange);
        }
        let victims = self.visible_range(&d.key, &d.range_end, rev);
        for kv in &victims {
            self.history
                .get_mut(&kv.key)
                .expect("visible key has history")
                .push((rev, None));
            *changed = true;
        }
        Ok(DeleteRangeResponse {
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { vec![] },
        })
    }

    fn check_shape(&self, t: &TxnRequest, depth: usize) -> ModelResult<()> {
        if depth >= corekv::mvcc::store::MAX_TXN_DEPTH {
            return Err(ErrorCode::InvalidArgument);
        }
        if t.compare.len() > self.max_txn_ops
            || t.success.len() > self.max_txn_ops
            || t.failure.len() > self.max_txn_ops
        {
            return Err(ErrorCode::TooManyTxnOps);
        }
        if t.compare.iter().any(|c| c.key.is_empty()) {
            return Err(ErrorCode::InvalidRange);
        }
        for branch in [&t.success, &t.failure] {
            for op in branch.iter() {
                match op {
                    RequestOp::Range(r) if r.key.is_empty() => return Err(ErrorCode::InvalidRange),
                    RequestOp::Range(r) if r.limit < 0 => return Err(ErrorCode::InvalidArgument),
                    RequestOp::Put(p) if p.key.is_empty() => return Err(ErrorCode::InvalidRange),
                    RequestOp::Put(p)
                        if (p.ignore_value && !p.value.is_empty())
                            || (p.ignore_lease && p.lease != 0) =>
                    {
                        return Err(ErrorCode::InvalidArgument)
                    }
                    RequestOp::DeleteRange(d) if d.key.is_empty() => {
                        return Err(ErrorCode::InvalidRange)
                    }
                    RequestOp::Txn(n) => self.check_shape(n, depth + 1)?,
                    _ => {}
                }
            }
            if !branch_is_unique(branch) {
                return Err(ErrorCode::DuplicateKey);
            }
        }
        Ok(())
    }

    fn txn(&mut self, t: &TxnRequest) -> ModelResult<TxnResponse> {
        self.check_shape(t, 0)?;
        // All compares, nested ones too, are decided on the state before the txn.
        let before = self.clone();
        let current = self.revision;
        self.txn_like(|m, rev, changed| m.run_txn(&before, t, rev, current, changed))
    }

    fn run_txn(
        &mut self,
        before: &EtcdModel,
        t: &TxnRequest,
        rev: i64,
        current: i64,
        changed: &mut bool,
    ) -> ModelResult<TxnResponse> {
        let succeeded = t.compare.iter().all(|c| before.holds(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Range revisions are checked against the state before the txn.
                    if r.revision > current {
                        return Err(ErrorCode::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.compacted {
                        return Err(ErrorCode::Compacted);
                    }
                    let now = if *changed { rev } else { current };
                    ResponseOp::Range(self.range_at(r, now)?)
                }
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease)
                        && before.visible(&p.key, current).is_none()
                    {
                        return Err(ErrorCode::KeyNotFound);
                    }
                    ResponseOp::Put(self.put(p, rev, changed)?)
                }
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d, rev, changed)?),
                RequestOp::Txn(n) => {
                    ResponseOp::Txn(self.run_txn(before, n, rev, current, changed)?)
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

/// etcd's duplicate-key rule, stated plainly: collect every (put key | delete range) a branch
/// may perform; a put key may not be put twice on one path nor fall in a deleted range.
fn branch_is_unique(ops: &[RequestOp]) -> bool {
    type Writes = (Vec<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);
    fn writes(ops: &[RequestOp]) -> Option<Writes> {
        let mut dels: Vec<(Vec<u8>, Vec<u8>)> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
                _ => None,
            })
            .collect();
        let hit =
            |dels: &[(Vec<u8>, Vec<u8>)], k: &[u8]| dels.iter().any(|(s, e)| in_range(s, e, k));
        let mut puts: Vec<Vec<u8>> = vec![];
        for op in ops {
            if let RequestOp::Txn(n) = op {
                let (pt, dt) = writes(&n.success)?;
                let (pe, de) = writes(&n.failure)?;
                for k in &pt {
                    if puts.contains(k) || hit(&dels, k) {
                        return None;
                    }
                }
                for k in &pe {
                    if (puts.contains(k) && !pt.contains(k)) || hit(&dels, k) {
                        return None;
                    }
                }
                puts.extend(pt);
                puts.extend(pe);
                // A later nested txn may not put what an earlier one deletes.
                dels.extend(dt);
                dels.extend(de);
            }
        }
        for op in ops {
            if let RequestOp::Put(p) = op {
                if puts.contains(&p.key) || hit(&dels, &p.key) {
                    return None;
                }
                puts.push(p.key.clone());
            }
        }
        Some((puts, dels))
    }
    writes(ops).is_some()
}
