//! How MVCC state is laid out in the backend's named trees.
//!
//! - `kv` (order [`KeyOrder::PrefixThenU64`]): key = user key ++ revision (u64 big-endian);
//!   value = [`VersionRecord`]. All versions of a key are adjacent and ordered by revision,
//!   so "the version of k at revision r" is one `seek_for_prev(k ++ r)`.
//! - `history` (bytewise): key = revision (u64 BE) ++ sub-revision (u32 BE); value =
//!   event kind (1 byte) ++ user key. Revision order: watch catch-up and compaction walk it.
//! - `meta` (bytewise): named u64/i64 counters (current revision, compacted revision, ...).

use super::types::{Error, ErrorCode, EventKind, KeyValue, Result, Revision};
use crate::backend::KeyOrder;

/// Name of the tree holding every key version.
pub const KV_TREE: &[u8] = b"kv";
/// Key order of [`KV_TREE`].
pub const KV_ORDER: KeyOrder = KeyOrder::PrefixThenU64;
/// Name of the revision-ordered event tree.
pub const HISTORY_TREE: &[u8] = b"history";
/// Name of the tree holding the store's counters.
pub const META_TREE: &[u8] = b"meta";

/// Meta key: the current store revision.
pub const META_REVISION: &[u8] = b"revision";
/// Meta key: the compacted revision (reads below it fail).
pub const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// Meta key: physical compaction has removed everything not needed at this revision.
pub const META_COMPACT_DONE: &[u8] = b"compact_done";
/// Meta key: index of the last raft log entry applied to this state.
pub const META_APPLIED_INDEX: &[u8] = b"applied_index";
/// Meta key: term of the last raft log entry applied to this state.
pub const META_APPLIED_TERM: &[u8] = b"applied_term";

/// Bytes added to a user key to form a `kv` tree key.
pub const REVISION_SUFFIX_LEN: usize = 8;
/// Bytes of a [`VersionRecord`] before the value.
const RECORD_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 4;

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// The `kv` tree key of `key` at `rev`.
pub fn kv_key(key: &[u8], rev: Revision) -> Vec<u8> {
    debug_assert!(rev >= 0, "revisions are never negative");
    let mut k = Vec::with_capacity(key.len() + REVISION_SUFFIX_LEN);
    k.extend_from_slice(key);
    k.extend_from_slice(&(rev as u64).to_be_bytes());
    k
}

/// Splits a `kv` tree key into user key and revision.
pub fn split_kv_key(k: &[u8]) -> Result<(&[u8], Revision)> {
    if k.len() < REVISION_SUFFIX_LEN {
        return Err(corrupt(format!("kv tree key of {} bytes", k.len())));
    }
    let (user, rev) = k.split_at(k.len() - REVISION_SUFFIX_LEN);
    let rev = u64::from_be_bytes(rev.try_into().expect("split at 8 bytes"));
    if rev > i64::MAX as u64 {
        return Err(corrupt(format!("kv tree key with revision {rev}")));
    }
    Ok((user, rev as Revision))
}

/// One stored version of a key: a put or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// Put or delete.
    pub kind: EventKind,
    /// Create revision of the generation (0 for a tombstone).
    pub create_revision: Revision,
    /// Version within the generation (0 for a tombstone).
    pub version: i64,
    /// Lease id (0 for none or a tombstone).
    pub lease: i64,
    /// Position of this change among the changes of its revision.
    pub sub: u32,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
}

impl VersionRecord {
    /// Encodes the record as a `kv` tree value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(RECORD_HEADER_LEN + self.value.len());
        v.push(match self.kind {
            EventKind::Put => KIND_PUT,
            EventKind::Delete => KIND_TOMBSTONE,
        });
        v.extend_from_slice(&self.create_revision.to_be_bytes());
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.lease.to_be_bytes());
        v.extend_from_slice(&self.sub.to_be_bytes());
        v.extend_from_slice(&self.value);
        v
    }

    /// Decodes a `kv` tree value; a malformed one is an `Internal` error, never a panic.
    pub fn decode(v: &[u8]) -> Result<VersionRecord> {
        let header = RecordHeader::decode(v)?;
        Ok(VersionRecord {
            kind: header.kind,
            create_revision: header.create_revision,
            version: header.version,
            lease: header.lease,
            sub: header.sub,
            value: v[RECORD_HEADER_LEN..].to_vec(),
        })
    }

    /// The user-visible key-value of this record (a put) at `mod_revision`; the value is
    /// moved out, not copied.
    pub fn into_key_value(self, key: &[u8], mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }

    /// The user-visible key-value of this record (a put) at `mod_revision`, copied.
    pub fn to_key_value(&self, key: &[u8], mod_revision: Revision, with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: if with_value {
                self.value.clone()
            } else {
                Vec::new()
            },
            lease: self.lease,
        }
    }
}

/// The fixed part of a [`VersionRecord`], decoded without copying the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Put or delete.
    pub kind: EventKind,
    /// Create revision of the generation.
    pub create_revision: Revision,
    /// Version within the generation.
    pub version: i64,
    /// Lease id.
    pub lease: i64,
    /// Position within the revision.
    pub sub: u32,
}

impl RecordHeader {
    /// Decodes the header of a `kv` tree value.
    pub fn decode(v: &[u8]) -> Result<RecordHeader> {
        if v.len() < RECORD_HEADER_LEN {
            return Err(corrupt(format!("kv record of {} bytes", v.len())));
        }
        let kind = match v[0] {
            KIND_PUT => EventKind::Put,
            KIND_TOMBSTONE => EventKind::Delete,
            other => return Err(corrupt(format!("kv record kind {other}"))),
        };
        let i64_at = |at: usize| i64::from_be_bytes(v[at..at + 8].try_into().expect("8 bytes"));
        Ok(RecordHeader {
            kind,
            create_revision: i64_at(1),
            version: i64_at(9),
            lease: i64_at(17),
            sub: u32::from_be_bytes(v[25..29].try_into().expect("4 bytes")),
        })
    }

    /// The value bytes of an encoded record whose header decoded.
    pub fn value_of(v: &[u8]) -> &[u8] {
        &v[RECORD_HEADER_LEN..]
    }
}

/// The `history` tree key of the change `sub` of revision `rev`.
pub fn history_key(rev: Revision, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&(rev as u64).to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// Decodes a `history` tree key.
pub fn split_history_key(k: &[u8]) -> Result<(Revision, u32)> {
    if k.len() != 12 {
        return Err(corrupt(format!("history key of {} bytes", k.len())));
    }
    let rev = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let sub = u32::from_be_bytes(k[8..].try_into().expect("4 bytes"));
    Ok((rev as Revision, sub))
}

/// The `history` tree value of an event on `key`.
pub fn history_value(kind: EventKind, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + key.len());
    v.push(match kind {
        EventKind::Put => KIND_PUT,
        EventKind::Delete => KIND_TOMBSTONE,
    });
    v.extend_from_slice(key);
    v
}

/// Decodes a `history` tree value into event kind and user key.
pub fn split_history_value(v: &[u8]) -> Result<(EventKind, &[u8])> {
    match v.split_first() {
        Some((&KIND_PUT, key)) => Ok((EventKind::Put, key)),
        Some((&KIND_TOMBSTONE, key)) => Ok((EventKind::Delete, key)),
        _ => Err(corrupt("history value".to_string())),
    }
}

/// Encodes a meta counter.
pub fn encode_counter(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes a meta counter.
pub fn decode_counter(name: &[u8], v: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| {
        corrupt(format!(
            "meta counter {:?} of {} bytes",
            String::from_utf8_lossy(name),
            v.len()
        ))
    })?;
    Ok(i64::from_be_bytes(bytes))
}

fn corrupt(what: String) -> Error {
    Error::new(ErrorCode::Internal, format!("corrupt MVCC data: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_key_round_trips_and_orders_by_key_then_revision() {
        let a1 = kv_key(b"a", 1);
        let a2 = kv_key(b"a", 300);
        let ab = kv_key(b"ab", 0);
        assert_eq!(split_kv_key(&a2).unwrap(), (&b"a"[..], 300));
        assert_eq!(KV_ORDER.compare(&a1, &a2), std::cmp::Ordering::Less);
        assert_eq!(KV_ORDER.compare(&a2, &ab), std::cmp::Ordering::Less);
        assert!(split_kv_key(b"short").is_err());
    }

    #[test]
    fn version_record_round_trips_and_rejects_garbage() {
        let r = VersionRecord {
            kind: EventKind::Put,
            create_revision: 7,
            version: 3,
            lease: -5,
            sub: 2,
            value: b"hello".to_vec(),
        };
        assert_eq!(VersionRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(
            VersionRecord::decode(&[1, 2, 3]).unwrap_err().code,
            ErrorCode::Internal
        );
        let mut bad = r.encode();
        bad[0] = 9;
        assert!(VersionRecord::decode(&bad).is_err());
    }

    #[test]
    fn history_encoding_orders_by_revision_then_sub() {
        assert!(history_key(1, 5) < history_key(2, 0));
        assert!(history_key(2, 0) < history_key(2, 1));
        assert_eq!(split_history_key(&history_key(9, 4)).unwrap(), (9, 4));
        let v = history_value(EventKind::Delete, b"k");
        assert_eq!(
            split_history_value(&v).unwrap(),
            (EventKind::Delete, &b"k"[..])
        );
        assert!(split_history_value(&[]).is_err());
    }
}
