//! The read path: ranges and compares over one consistent state of the store.
//!
//! [`KvView`] abstracts the two places reads happen: a published snapshot (serializable
//! reads on any shard) and the write transaction (reads inside txns, put's prev_kv).

use super::encoding::{
    decode_counter, split_kv_key, RecordHeader, KV_TREE, META_COMPACT_REVISION, META_REVISION,
    META_TREE, REVISION_SUFFIX_LEN,
};
use super::types::{
    Compare, CompareResult, CompareTarget, Error, ErrorCode, EventKind, KeyValue, RangeRequest,
    RangeResponse, Result, Revision, SortOrder, SortTarget,
};
use crate::backend::{self, ReadTxn, MAX_KEY_SIZE};

/// Largest range response, in key and value bytes: a larger result is refused (use `limit`
/// and continue from the last key) rather than built in memory.
pub const MAX_RANGE_RESPONSE_BYTES: usize = 64 << 20;

/// Longest user key: the backend's key limit less the revision suffix.
pub const MAX_USER_KEY_SIZE: usize = MAX_KEY_SIZE - REVISION_SUFFIX_LEN;

/// An owned `kv` tree entry: (tree key, encoded record).
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Ordered access to the `kv` and `meta` trees of one state of the store.
pub trait KvView {
    /// The first `kv` entry with tree key >= `k`.
    fn seek(&mut self, k: &[u8]) -> Result<Option<RawEntry>>;
    /// The last `kv` entry with tree key <= `k`.
    fn seek_for_prev(&mut self, k: &[u8]) -> Result<Option<RawEntry>>;
    /// Calls `f(key, value, next key)` on each `kv` entry with tree key >= `from`, in key
    /// order, until `f` returns false or the tree ends; the next entry's key is `None` at the
    /// end of the tree. Entries are borrowed for the call only.
    fn scan_from<F>(&mut self, from: &[u8], f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8], Option<&[u8]>) -> Result<bool>;
    /// A `meta` counter, 0 if never written.
    fn counter(&mut self, name: &[u8]) -> Result<i64>;
}

/// A [`KvView`] over a published snapshot.
pub struct SnapshotView<'t> {
    kv: Option<backend::Tree<'t>>,
    meta: Option<backend::Tree<'t>>,
}

impl<'t> SnapshotView<'t> {
    /// A view of the MVCC trees in `txn` (an empty store if they do not exist yet).
    pub fn new(txn: &'t ReadTxn) -> Result<SnapshotView<'t>> {
        Ok(SnapshotView {
            kv: txn.tree(KV_TREE)?,
            meta: txn.tree(META_TREE)?,
        })
    }
}

fn owned(e: Option<(&[u8], &[u8])>) -> Option<RawEntry> {
    e.map(|(k, v)| (k.to_vec(), v.to_vec()))
}

impl KvView for SnapshotView<'_> {
    fn seek(&mut self, k: &[u8]) -> Result<Option<RawEntry>> {
        match &self.kv {
            None => Ok(None),
            Some(t) => Ok(owned(t.cursor().seek(k)?)),
        }
    }

    fn seek_for_prev(&mut self, k: &[u8]) -> Result<Option<RawEntry>> {
        match &self.kv {
            None => Ok(None),
            Some(t) => Ok(owned(t.cursor().seek_for_prev(k)?)),
        }
    }

    fn scan_from<F>(&mut self, from: &[u8], mut f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8], Option<&[u8]>) -> Result<bool>,
    {
        let Some(t) = &self.kv else {
            return Ok(());
        };
        let mut cursor = t.cursor();
        let mut entry = cursor.seek(from)?;
        // Entries borrow from the snapshot, not the cursor: the cursor can step ahead.
        while let Some((k, v)) = entry {
            let next = cursor.next()?;
            if !f(k, v, next.map(|(nk, _)| nk))? {
                break;
            }
            entry = next;
        }
        Ok(())
    }

    fn counter(&mut self, name: &[u8]) -> Result<i64> {
        match &self.meta {
            None => Ok(0),
            Some(t) => match t.get(name)? {
                None => Ok(0),
                Some(v) => decode_counter(name, v),
            },
        }
    }
}

/// Where a range ends, after etcd's conventions are decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only the start key.
    Single,
    /// Every key >= the start key (`range_end` = "\0").
    Unbounded,
    /// Keys < this bound.
    Before(Vec<u8>),
}

impl RangeEnd {
    /// Decodes `range_end` as etcd does.
    pub fn decode(range_end: &[u8]) -> RangeEnd {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    /// Whether `key` lies in the range that starts at `start`.
    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end.as_slice(),
        }
    }
}

/// Checks a key used as a range start or put key: not empty, not over the limit.
pub fn check_key(field: &str, key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidRange,
            format!("{field}: key must not be empty"),
        ));
    }
    if key.len() > MAX_USER_KEY_SIZE {
        return Err(Error::new(
            ErrorCode::RequestTooLarge,
            format!(
                "{field}: key of {} bytes exceeds the key size limit of {MAX_USER_KEY_SIZE} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// The raft (index, term) of the last entry applied to the state in `view`.
pub fn applied(view: &mut impl KvView) -> Result<(u64, u64)> {
    Ok((
        view.counter(super::encoding::META_APPLIED_INDEX)? as u64,
        view.counter(super::encoding::META_APPLIED_TERM)? as u64,
    ))
}

/// The store revision and compacted revision visible in `view`.
pub fn revisions(view: &mut impl KvView) -> Result<(Revision, Revision)> {
    Ok((
        view.counter(META_REVISION)?,
        view.counter(META_COMPACT_REVISION)?,
    ))
}

/// Resolves a requested read revision (<= 0: current) against the view's revisions.
pub fn resolve_revision(
    requested: Revision,
    current: Revision,
    compacted: Revision,
) -> Result<Revision> {
    if requested <= 0 {
        return Ok(current);
    }
    if requested > current {
        return Err(Error::new(
            ErrorCode::FutureRevision,
            format!("revision {requested} is above the current revision {current}"),
        ));
    }
    if requested < compacted {
        return Err(Error::new(
            ErrorCode::Compacted,
            format!("revision {requested} has been compacted (compacted revision {compacted})"),
        ));
    }
    Ok(requested)
}

fn raw_kv_key(key: &[u8], rev: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + REVISION_SUFFIX_LEN);
    k.extend_from_slice(key);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// The version of `key` visible at `rev` (None if absent or deleted), with its encoded record.
pub fn latest(
    view: &mut impl KvView,
    key: &[u8],
    rev: Revision,
) -> Result<Option<(Revision, Vec<u8>)>> {
    debug_assert!(rev >= 0);
    let Some((k, v)) = view.seek_for_prev(&raw_kv_key(key, rev as u64))? else {
        return Ok(None);
    };
    let (user, mod_rev) = split_kv_key(&k)?;
    if user != key {
        return Ok(None);
    }
    debug_assert!(mod_rev <= rev);
    match RecordHeader::decode(&v)?.kind {
        EventKind::Delete => Ok(None),
        EventKind::Put => Ok(Some((mod_rev, v))),
    }
}

/// Decodes a visible record into a [`KeyValue`].
pub fn to_key_value(
    key: &[u8],
    mod_rev: Revision,
    record: &[u8],
    with_value: bool,
) -> Result<KeyValue> {
    let h = RecordHeader::decode(record)?;
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: h.create_revision,
        mod_revision: mod_rev,
        version: h.version,
        value: if with_value {
            RecordHeader::value_of(record).to_vec()
        } else {
            Vec::new()
        },
        lease: h.lease,
    })
}

/// Versions of one key a range steps over before it seeks to the version it needs instead:
/// a key with a long uncompacted history costs one seek, not a walk over it.
const MAX_VERSION_STEPS: usize = 8;

/// What [`for_each_visible`]'s walk does after a scan stops for a reason other than `f`.
enum Resume {
    /// Continue at the first entry >= this tree key (skipping a key's remaining versions).
    At(Vec<u8>),
    /// This key has many versions at or below the read revision: seek to the newest of
    /// them, then continue with the next key.
    SeekVisible(Vec<u8>),
}

/// Visits every key visible at `rev` in `[start, end)` in key order, with its record, until
/// `f` returns false.
///
/// One forward walk over the `kv` tree: a key's versions are adjacent and ordered by
/// revision, so a version is the one visible at `rev` when it is at or below `rev` and the
/// next entry is another key or a version above `rev`. Nothing is copied; deleted keys and
/// old versions cost a step each rather than a seek from the root.
pub fn for_each_visible(
    view: &mut impl KvView,
    start: &[u8],
    end: &RangeEnd,
    rev: Revision,
    mut f: impl FnMut(&[u8], Revision, &[u8]) -> Result<bool>,
) -> Result<()> {
    debug_assert!(rev >= 0);
    if *end == RangeEnd::Single {
        if let Some((mod_rev, record)) = latest(view, start, rev)? {
            f(start, mod_rev, &record)?;
        }
        return Ok(());
    }
    // Versions of the current key stepped over so far (0: the next entry starts a key).
    let mut steps = 0usize;
    // The oldest version of the first key >= start.
    let mut from = raw_kv_key(start, 0);
    loop {
        let mut done = false;
        let mut resume = None;
        view.scan_from(&from, |k, v, next| {
            let (user, mod_rev) = split_kv_key(k)?;
            if steps == 0 && !end.contains(start, user) {
                done = true;
                return Ok(false);
            }
            if mod_rev > rev {
                // Only a key's first entry gets here: no version of it is visible.
                resume = Some(Resume::At(raw_kv_key(user, u64::MAX)));
                return Ok(false);
            }
            let next_version = match next {
                Some(nk) => match split_kv_key(nk)? {
                    (next_user, next_rev) if next_user == user => Some(next_rev),
                    _ => None,
                },
                None => None,
            };
            if next_version.is_some_and(|r| r <= rev) {
                // A newer version is visible too.
                steps += 1;
                if steps >= MAX_VERSION_STEPS {
                    resume = Some(Resume::SeekVisible(user.to_vec()));
                    return Ok(false);
                }
                return Ok(true);
            }
            steps = 0;
            if RecordHeader::decode(v)?.kind == EventKind::Put && !f(user, mod_rev, v)? {
                done = true;
                return Ok(false);
            }
            if next_version.is_some() {
                // The key's remaining versions are all above `rev`.
                resume = Some(Resume::At(raw_kv_key(user, u64::MAX)));
                return Ok(false);
            }
            Ok(true)
        })?;
        if done {
            return Ok(());
        }
        steps = 0;
        match resume {
            // The tree ended.
            None => return Ok(()),
            Some(Resume::At(k)) => from = k,
            Some(Resume::SeekVisible(user)) => {
                if let Some((mod_rev, record)) = latest(view, &user, rev)? {
                    if !f(&user, mod_rev, &record)? {
                        return Ok(());
                    }
                }
                // No revision is u64::MAX, so this lands on the next user key.
                from = raw_kv_key(&user, u64::MAX);
            }
        }
    }
}

/// Serves a range request at the view's state, with etcd's semantics for limit, count,
/// sort, filters, keys_only and count_only.
pub fn range(view: &mut impl KvView, req: &RangeRequest) -> Result<RangeResponse> {
    let (current, compacted) = revisions(view)?;
    range_at(view, req, current, compacted)
}

/// Checks the fields of a range request that do not depend on the store's state.
pub fn check_range_request(req: &RangeRequest) -> Result<()> {
    check_key("range", &req.key)?;
    if req.limit < 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("range: limit {} is negative", req.limit),
        ));
    }
    Ok(())
}

/// [`range`] with the current and compacted revisions given by the caller (inside a write
/// transaction the current revision includes the transaction's own changes).
pub fn range_at(
    view: &mut impl KvView,
    req: &RangeRequest,
    current: Revision,
    compacted: Revision,
) -> Result<RangeResponse> {
    check_range_request(req)?;
    let rev = resolve_revision(req.revision, current, compacted)?;
    let end = RangeEnd::decode(&req.range_end);

    let default_order = req.sort_order == SortOrder::None
        || (req.sort_target == SortTarget::Key && req.sort_order == SortOrder::Ascend);
    let has_filters = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Fetch one more than the limit to learn `more`, unless sorting or filtering needs all.
    let fetch_limit = if req.limit > 0 && default_order && !has_filters {
        (req.limit as usize).saturating_add(1)
    } else {
        usize::MAX
    };
    // Sorting by value needs the values even for keys_only (etcd strips them after sorting).
    let want_values = !req.keys_only || req.sort_target == SortTarget::Value;

    let mut count: i64 = 0;
    let mut kvs = Vec::new();
    let mut bytes = 0usize;
    for_each_visible(view, &req.key, &end, rev, |key, mod_rev, record| {
        count += 1;
        if !req.count_only && kvs.len() < fetch_limit {
            let kv = to_key_value(key, mod_rev, record, want_values)?;
            bytes += kv.key.len() + kv.value.len();
            if bytes > MAX_RANGE_RESPONSE_BYTES {
                return Err(Error::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "range: the result exceeds {MAX_RANGE_RESPONSE_BYTES} bytes; set a limit and page through the range"
                    ),
                ));
            }
            kvs.push(kv);
        }
        Ok(true)
    })?;
    if req.count_only {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }

    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });

    let mut order = req.sort_order;
    if req.sort_target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if !(order == SortOrder::None
        || (req.sort_target == SortTarget::Key && order == SortOrder::Ascend))
    {
        // A stable sort keeps key order among equal targets, as etcd's result does.
        match req.sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }

    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse { kvs, more, count })
}

/// Evaluates one compare at the view's current state.
pub fn evaluate_compare(view: &mut impl KvView, c: &Compare) -> Result<bool> {
    check_key("compare", &c.key)?;
    let (current, _) = revisions(view)?;
    let end = RangeEnd::decode(&c.range_end);
    let mut seen_any = false;
    let mut all_hold = true;
    for_each_visible(view, &c.key, &end, current, |key, mod_rev, record| {
        seen_any = true;
        let kv = to_key_value(
            key,
            mod_rev,
            record,
            matches!(c.target, CompareTarget::Value(_)),
        )?;
        if !compare_holds(c, Some(&kv)) {
            all_hold = false;
            return Ok(false);
        }
        Ok(true)
    })?;
    if !seen_any {
        return Ok(compare_holds(c, None));
    }
    Ok(all_hold)
}

/// Whether compare `c` holds for `kv` (`None`: the key does not exist).
pub fn compare_holds(c: &Compare, kv: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let ordering = match (&c.target, kv) {
        // A missing key has no value to compare: etcd fails every value compare on it.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(t), kv) => kv.map_or(0, |kv| kv.version).cmp(t),
        (CompareTarget::CreateRevision(t), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(t),
        (CompareTarget::ModRevision(t), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(t),
        (CompareTarget::Lease(t), kv) => kv.map_or(0, |kv| kv.lease).cmp(t),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_follows_etcd_conventions() {
        assert_eq!(RangeEnd::decode(b""), RangeEnd::Single);
        assert_eq!(RangeEnd::decode(b"\0"), RangeEnd::Unbounded);
        let prefix = RangeEnd::decode(b"b");
        assert!(prefix.contains(b"a", b"a"));
        assert!(prefix.contains(b"a", b"azzz"));
        assert!(!prefix.contains(b"a", b"b"));
        // An end at or below the start is an empty range, as in etcd.
        assert!(!RangeEnd::decode(b"a").contains(b"b", b"b"));
        assert!(RangeEnd::Unbounded.contains(b"\0", b"\x01"));
    }

    #[test]
    fn resolve_revision_rejects_future_and_compacted() {
        assert_eq!(resolve_revision(0, 10, 3).unwrap(), 10);
        assert_eq!(resolve_revision(3, 10, 3).unwrap(), 3);
        assert_eq!(
            resolve_revision(11, 10, 3).unwrap_err().code,
            ErrorCode::FutureRevision
        );
        assert_eq!(
            resolve_revision(2, 10, 3).unwrap_err().code,
            ErrorCode::Compacted
        );
    }

    #[test]
    fn value_compare_on_missing_key_always_fails() {
        let mut c = Compare {
            result: CompareResult::NotEqual,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            target: CompareTarget::Value(b"x".to_vec()),
        };
        assert!(!compare_holds(&c, None));
        c.target = CompareTarget::Version(0);
        c.result = CompareResult::Equal;
        assert!(compare_holds(&c, None));
    }

    #[test]
    fn check_key_names_the_limit() {
        assert_eq!(
            check_key("put", b"").unwrap_err().code,
            ErrorCode::InvalidRange
        );
        let e = check_key("put", &vec![b'k'; MAX_USER_KEY_SIZE + 1]).unwrap_err();
        assert_eq!(e.code, ErrorCode::RequestTooLarge);
        assert!(e.message.contains(&MAX_USER_KEY_SIZE.to_string()));
    }
}
