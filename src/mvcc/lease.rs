//! Leases in the backend: the `lease` and `lease_keys` trees, grant / checkpoint / attach /
//! detach inside the applier's write transaction, and the reads the lease service serves.
//!
//! Layout (both trees bytewise):
//! - `lease`: key = lease id (u64 big-endian; ids are positive, so this is numeric order);
//!   value = [`LeaseRecord`] (granted TTL, remaining TTL at the last checkpoint, number and
//!   bytes of attached keys).
//! - `lease_keys`: key = lease id (u64 BE) ++ user key; value empty. Revoke walks the id's
//!   prefix, so it never scans the `kv` tree.
//! - `meta`: `lease_next_id` (the next id the server hands out; only ever grows, so a
//!   server-chosen id is never reused within the store's life, even after a revoke) and
//!   `lease_count` (leases in the store, bounded by [`MAX_LEASES`]).
//!
//! The `kv` tree's records already carry the lease of every version; `lease_keys` is the
//! index from a lease to the keys whose *current* version carries it. It is maintained by
//! [`apply_moves`] for every put / delete the write path commits, in the same backend
//! transaction, so it is always exact. Revoke (in `store.rs`) deletes every attached key
//! through the normal delete path at one revision, then removes the lease.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::encoding::{decode_counter, encode_counter, META_TREE};
use super::store::{MAX_CHANGES_PER_REQUEST, MAX_CHANGE_BYTES_PER_REQUEST};
use super::types::{Error, ErrorCode, Result};
use crate::backend::{KeyOrder, ReadTxn, WriteTxn};

/// Name of the tree of leases.
pub const LEASE_TREE: &[u8] = b"lease";
/// Name of the tree of (lease id, attached key) pairs.
pub const LEASE_KEYS_TREE: &[u8] = b"lease_keys";
/// Meta key: the next server-chosen lease id.
pub const META_LEASE_NEXT_ID: &[u8] = b"lease_next_id";
/// Meta key: the number of leases in the store.
pub const META_LEASE_COUNT: &[u8] = b"lease_count";

/// Largest TTL a lease may have, seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Most leases a store holds: bounds every shard's lease table and the `leases` response.
pub const MAX_LEASES: i64 = 1_000_000;
/// Most keys attached to one lease. Equal to the per-request change limit, so revoking the
/// lease (one revision deleting every attached key) always fits in one request.
pub const MAX_KEYS_PER_LEASE: u64 = MAX_CHANGES_PER_REQUEST as u64;
/// Most key bytes attached to one lease, for the same reason as [`MAX_KEYS_PER_LEASE`].
pub const MAX_KEY_BYTES_PER_LEASE: u64 = MAX_CHANGE_BYTES_PER_REQUEST as u64;
/// Most leases one checkpoint request carries (the owner shards split larger checkpoints).
pub const MAX_CHECKPOINTS_PER_REQUEST: usize = 10_000;
/// Most keys a `timeToLive(keys = true)` answer lists (`moreKeys` says when it was cut).
pub const MAX_TIME_TO_LIVE_KEYS: usize = 10_000;
/// Most key bytes a `timeToLive(keys = true)` answer lists.
pub const MAX_TIME_TO_LIVE_KEY_BYTES: usize = 4 << 20;

const RECORD_LEN: usize = 32;

/// A grant request as it travels through the log (TTL already raised to the minimum).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease id; 0 = the applier picks a fresh one.
    pub id: i64,
    /// TTL, seconds.
    pub ttl: i64,
}

/// One lease's remaining TTL, as its owner shard saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    /// The lease id.
    pub id: i64,
    /// Remaining TTL, seconds.
    pub remaining_ttl: i64,
}

/// What the `lease` tree stores per lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The granted TTL, seconds.
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint (the granted TTL until one happens); a restart
    /// resumes the lease with this much time left.
    pub remaining_ttl: i64,
    /// Keys whose current version is attached to the lease.
    pub key_count: u64,
    /// Sum of those keys' lengths.
    pub key_bytes: u64,
}

impl LeaseRecord {
    /// Encodes the record as a `lease` tree value.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut v = [0u8; RECORD_LEN];
        v[0..8].copy_from_slice(&self.ttl.to_be_bytes());
        v[8..16].copy_from_slice(&self.remaining_ttl.to_be_bytes());
        v[16..24].copy_from_slice(&self.key_count.to_be_bytes());
        v[24..32].copy_from_slice(&self.key_bytes.to_be_bytes());
        v
    }

    /// Decodes a `lease` tree value; a malformed one is an `Internal` error naming the lease.
    pub fn decode(id: i64, v: &[u8]) -> Result<LeaseRecord> {
        if v.len() != RECORD_LEN {
            return Err(corrupt(format!(
                "lease {id:x} record of {} bytes (expected {RECORD_LEN})",
                v.len()
            )));
        }
        let word = |i: usize| -> [u8; 8] { v[i..i + 8].try_into().expect("8-byte slice") };
        Ok(LeaseRecord {
            ttl: i64::from_be_bytes(word(0)),
            remaining_ttl: i64::from_be_bytes(word(8)),
            key_count: u64::from_be_bytes(word(16)),
            key_bytes: u64::from_be_bytes(word(24)),
        })
    }
}

/// What the applier tells a lease's owner shard after a batch is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease was granted (or, at start-up replay, exists).
    Granted {
        /// The lease id.
        id: i64,
        /// Granted TTL, seconds.
        ttl: i64,
        /// TTL to start from, seconds.
        remaining_ttl: i64,
    },
    /// A lease was revoked (by a client or by expiry).
    Revoked {
        /// The lease id.
        id: i64,
    },
}

impl LeaseEvent {
    /// The lease the event is about.
    pub fn id(&self) -> i64 {
        match *self {
            LeaseEvent::Granted { id, .. } | LeaseEvent::Revoked { id } => id,
        }
    }
}

/// The `lease` tree key of `id`.
pub fn lease_key(id: i64) -> [u8; 8] {
    debug_assert!(id > 0, "lease ids are positive");
    (id as u64).to_be_bytes()
}

/// The `lease_keys` tree key of (`id`, `key`).
pub fn lease_keys_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&lease_key(id));
    k.extend_from_slice(key);
    k
}

fn split_lease_key(k: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = k
        .try_into()
        .map_err(|_| corrupt(format!("lease tree key of {} bytes", k.len())))?;
    let id = u64::from_be_bytes(bytes);
    if id == 0 || id > i64::MAX as u64 {
        return Err(corrupt(format!("lease tree key with id {id:x}")));
    }
    Ok(id as i64)
}

/// Checks a lease id given by a client.
pub fn check_id(what: &str, id: i64) -> Result<()> {
    if id <= 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{what}: lease id {id} is not positive"),
        ));
    }
    Ok(())
}

/// Checks a TTL given by a client (after the server raised it to its minimum).
pub fn check_ttl(ttl: i64) -> Result<()> {
    if ttl > MAX_LEASE_TTL {
        return Err(Error::new(
            ErrorCode::LeaseTtlTooLarge,
            format!("lease grant: TTL {ttl} s exceeds the maximum of {MAX_LEASE_TTL} s"),
        ));
    }
    if ttl <= 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("lease grant: TTL {ttl} s is not positive"),
        ));
    }
    Ok(())
}

fn not_found(what: &str, id: i64) -> Error {
    Error::new(
        ErrorCode::LeaseNotFound,
        format!("{what}: lease {id:x} not found"),
    )
}

/// The record of lease `id` inside the write transaction.
pub fn get(txn: &mut WriteTxn<'_>, id: i64) -> Result<Option<LeaseRecord>> {
    if id <= 0 {
        return Ok(None);
    }
    let tree = txn.open_tree(LEASE_TREE, KeyOrder::Bytewise)?;
    match tree.get(&lease_key(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(LeaseRecord::decode(id, &v)?)),
    }
}

/// Fails with `LeaseNotFound` unless lease `id` exists (the check of a put with a lease).
pub fn check_exists(txn: &mut WriteTxn<'_>, what: &str, id: i64) -> Result<()> {
    match get(txn, id)? {
        Some(_) => Ok(()),
        None => Err(not_found(what, id)),
    }
}

fn meta_counter(txn: &mut WriteTxn<'_>, name: &[u8]) -> Result<i64> {
    let meta = txn.open_tree(META_TREE, KeyOrder::Bytewise)?;
    match meta.get(name)? {
        None => Ok(0),
        Some(v) => decode_counter(name, &v),
    }
}

fn set_meta_counter(txn: &mut WriteTxn<'_>, name: &[u8], v: i64) -> Result<()> {
    txn.open_tree(META_TREE, KeyOrder::Bytewise)?
        .put(name, &encode_counter(v))?;
    Ok(())
}

/// Grants a lease: checks the TTL, the id (an existing id is `LeaseExists`) and the store's
/// lease limit, picks a fresh id if `g.id` is 0, and stores the lease with its full TTL
/// remaining. Returns the event for the owner shard.
pub fn grant(txn: &mut WriteTxn<'_>, g: &LeaseGrant) -> Result<LeaseEvent> {
    check_ttl(g.ttl)?;
    if g.id < 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("lease grant: lease id {} is negative", g.id),
        ));
    }
    let count = meta_counter(txn, META_LEASE_COUNT)?;
    if count >= MAX_LEASES {
        return Err(Error::new(
            ErrorCode::NoSpace,
            format!("lease grant: the store already holds {count} leases (MAX_LEASES = {MAX_LEASES}); revoke some first"),
        ));
    }
    let id = if g.id == 0 {
        // Server-chosen ids come from a persisted counter that only grows; ids a client
        // chose are skipped. So a server-chosen id is never handed out twice.
        let mut next = meta_counter(txn, META_LEASE_NEXT_ID)?.max(1);
        while get(txn, next)?.is_some() {
            next = next.checked_add(1).ok_or_else(|| {
                Error::new(ErrorCode::Internal, "lease grant: lease ids exhausted")
            })?;
        }
        set_meta_counter(txn, META_LEASE_NEXT_ID, next + 1)?;
        next
    } else {
        if get(txn, g.id)?.is_some() {
            return Err(Error::new(
                ErrorCode::LeaseExists,
                format!("lease grant: lease {:x} already exists", g.id),
            ));
        }
        g.id
    };
    let rec = LeaseRecord {
        ttl: g.ttl,
        remaining_ttl: g.ttl,
        key_count: 0,
        key_bytes: 0,
    };
    txn.open_tree(LEASE_TREE, KeyOrder::Bytewise)?
        .put(&lease_key(id), &rec.encode())?;
    set_meta_counter(txn, META_LEASE_COUNT, count + 1)?;
    Ok(LeaseEvent::Granted {
        id,
        ttl: g.ttl,
        remaining_ttl: g.ttl,
    })
}

/// Removes lease `id` (whose keys were already detached by deleting them). Returns the event
/// for the owner shard.
pub fn remove(txn: &mut WriteTxn<'_>, id: i64) -> Result<LeaseEvent> {
    let Some(rec) = get(txn, id)? else {
        return Err(not_found("lease revoke", id));
    };
    if rec.key_count != 0 {
        return Err(corrupt(format!(
            "lease {id:x} still has {} keys attached after its keys were deleted",
            rec.key_count
        )));
    }
    txn.open_tree(LEASE_TREE, KeyOrder::Bytewise)?
        .delete(&lease_key(id))?;
    let count = meta_counter(txn, META_LEASE_COUNT)?;
    set_meta_counter(txn, META_LEASE_COUNT, (count - 1).max(0))?;
    Ok(LeaseEvent::Revoked { id })
}

/// The keys attached to lease `id`, in key order, inside the write transaction. At most
/// [`MAX_KEYS_PER_LEASE`] exist by construction.
pub fn attached_keys(txn: &mut WriteTxn<'_>, id: i64) -> Result<Vec<Vec<u8>>> {
    let start = lease_key(id);
    let end = lease_key_end(id);
    let entries = txn.open_tree(LEASE_KEYS_TREE, KeyOrder::Bytewise)?.scan(
        (Bound::Included(&start[..]), Bound::Excluded(&end[..])),
        MAX_KEYS_PER_LEASE as usize + 1,
    )?;
    Ok(entries.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
}

/// The first `lease_keys` key after every key of lease `id`.
fn lease_key_end(id: i64) -> [u8; 8] {
    // ids are at most i64::MAX, so id + 1 fits in u64.
    (id as u64 + 1).to_be_bytes()
}

/// Records checkpointed remaining TTLs; ids that no longer exist are skipped (the lease was
/// revoked after the owner read its table).
pub fn checkpoint(txn: &mut WriteTxn<'_>, checkpoints: &[LeaseCheckpoint]) -> Result<()> {
    if checkpoints.len() > MAX_CHECKPOINTS_PER_REQUEST {
        return Err(Error::new(
            ErrorCode::RequestTooLarge,
            format!(
                "lease checkpoint: {} leases exceed MAX_CHECKPOINTS_PER_REQUEST ({MAX_CHECKPOINTS_PER_REQUEST})",
                checkpoints.len()
            ),
        ));
    }
    for c in checkpoints {
        let Some(mut rec) = get(txn, c.id)? else {
            continue;
        };
        // Never 0: a resumed lease gets at least a second for its client to reconnect.
        rec.remaining_ttl = c.remaining_ttl.clamp(1, rec.ttl);
        txn.open_tree(LEASE_TREE, KeyOrder::Bytewise)?
            .put(&lease_key(c.id), &rec.encode())?;
    }
    Ok(())
}

/// A key's lease changed from `old` to `new` (0 = none) by a committed put or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseMove {
    /// Lease of the key's previous version (0: none or no previous version).
    pub old: i64,
    /// Lease of the key's new version (0: none, or a delete).
    pub new: i64,
    /// The user key.
    pub key: Vec<u8>,
}

/// Applies the lease moves of one request: detaches keys from their old lease and attaches
/// them to the new one, keeping the per-lease counts. Checks every limit before writing, so
/// an error (a lease over [`MAX_KEYS_PER_LEASE`] / [`MAX_KEY_BYTES_PER_LEASE`]) leaves the
/// trees unchanged; the caller then undoes the request's other writes.
pub fn apply_moves(txn: &mut WriteTxn<'_>, moves: &[LeaseMove]) -> Result<()> {
    if moves.is_empty() {
        return Ok(());
    }
    let mut deltas: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for m in moves {
        debug_assert_ne!(m.old, m.new, "only real changes are moves");
        let len = m.key.len() as i64;
        if m.old != 0 {
            let d = deltas.entry(m.old).or_default();
            d.0 -= 1;
            d.1 -= len;
        }
        if m.new != 0 {
            let d = deltas.entry(m.new).or_default();
            d.0 += 1;
            d.1 += len;
        }
    }
    let mut updated = Vec::with_capacity(deltas.len());
    for (&id, &(dcount, dbytes)) in &deltas {
        let Some(mut rec) = get(txn, id)? else {
            if dcount > 0 {
                return Err(not_found("put", id));
            }
            // A key attached to a lease that no longer exists: revoke deletes every
            // attached key first, so this is damage, not a race.
            return Err(corrupt(format!(
                "a key is attached to lease {id:x}, which does not exist"
            )));
        };
        let count = rec.key_count as i64 + dcount;
        let bytes = rec.key_bytes as i64 + dbytes;
        if count < 0 || bytes < 0 {
            return Err(corrupt(format!(
                "lease {id:x} would have {count} keys / {bytes} key bytes attached"
            )));
        }
        if dcount > 0 && count as u64 > MAX_KEYS_PER_LEASE {
            return Err(Error::new(
                ErrorCode::RequestTooLarge,
                format!("put: lease {id:x} would have {count} keys attached, over MAX_KEYS_PER_LEASE ({MAX_KEYS_PER_LEASE}: revoking it must fit one request)"),
            ));
        }
        if dbytes > 0 && bytes as u64 > MAX_KEY_BYTES_PER_LEASE {
            return Err(Error::new(
                ErrorCode::RequestTooLarge,
                format!("put: lease {id:x} would have {bytes} key bytes attached, over MAX_KEY_BYTES_PER_LEASE ({MAX_KEY_BYTES_PER_LEASE})"),
            ));
        }
        rec.key_count = count as u64;
        rec.key_bytes = bytes as u64;
        updated.push((id, rec));
    }
    {
        let mut tree = txn.open_tree(LEASE_KEYS_TREE, KeyOrder::Bytewise)?;
        for m in moves {
            if m.old != 0 {
                let existed = tree.delete(&lease_keys_key(m.old, &m.key))?;
                debug_assert!(existed, "a key with a lease is in lease_keys");
            }
            if m.new != 0 {
                tree.put(&lease_keys_key(m.new, &m.key), &[])?;
            }
        }
    }
    let mut tree = txn.open_tree(LEASE_TREE, KeyOrder::Bytewise)?;
    for (id, rec) in updated {
        tree.put(&lease_key(id), &rec.encode())?;
    }
    Ok(())
}

/// Lease `id` in a published snapshot.
pub fn read(txn: &ReadTxn, id: i64) -> Result<Option<LeaseRecord>> {
    if id <= 0 {
        return Ok(None);
    }
    let Some(tree) = txn.tree(LEASE_TREE)? else {
        return Ok(None);
    };
    match tree.get(&lease_key(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(LeaseRecord::decode(id, v)?)),
    }
}

/// Every lease in a published snapshot, ascending by id (at most [`MAX_LEASES`]).
pub fn read_all(txn: &ReadTxn) -> Result<Vec<(i64, LeaseRecord)>> {
    let Some(tree) = txn.tree(LEASE_TREE)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in tree.range::<std::ops::RangeFull>(..)? {
        let (k, v) = entry?;
        let id = split_lease_key(k)?;
        out.push((id, LeaseRecord::decode(id, v)?));
        if out.len() as i64 > MAX_LEASES {
            return Err(corrupt(format!(
                "more than MAX_LEASES ({MAX_LEASES}) leases"
            )));
        }
    }
    Ok(out)
}

/// The keys attached to lease `id` in a published snapshot, in key order, cut at
/// [`MAX_TIME_TO_LIVE_KEYS`] keys or [`MAX_TIME_TO_LIVE_KEY_BYTES`] bytes; the flag says
/// whether it was cut.
pub fn read_keys(txn: &ReadTxn, id: i64) -> Result<(Vec<Vec<u8>>, bool)> {
    let Some(tree) = txn.tree(LEASE_KEYS_TREE)? else {
        return Ok((Vec::new(), false));
    };
    let start = lease_key(id);
    let end = lease_key_end(id);
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    for entry in tree.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
        let (k, _) = entry?;
        let key = &k[8..];
        if keys.len() == MAX_TIME_TO_LIVE_KEYS || bytes + key.len() > MAX_TIME_TO_LIVE_KEY_BYTES {
            return Ok((keys, true));
        }
        bytes += key.len();
        keys.push(key.to_vec());
    }
    Ok((keys, false))
}

fn corrupt(what: String) -> Error {
    Error::new(ErrorCode::Internal, format!("corrupt lease data: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_bad_lengths() {
        let rec = LeaseRecord {
            ttl: 60,
            remaining_ttl: 17,
            key_count: 3,
            key_bytes: 99,
        };
        assert_eq!(LeaseRecord::decode(5, &rec.encode()).unwrap(), rec);
        let e = LeaseRecord::decode(5, &[0; 31]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("lease 5"), "{e}");
    }

    #[test]
    fn key_layout_orders_by_id_then_key() {
        assert!(lease_keys_key(1, b"zzz") < lease_keys_key(2, b""));
        assert!(lease_keys_key(2, b"a") < lease_key_end(2).to_vec());
        assert!(split_lease_key(&[0; 8]).is_err());
        assert_eq!(split_lease_key(&lease_key(0x1234)).unwrap(), 0x1234);
    }

    #[test]
    fn ttl_limits() {
        assert!(check_ttl(MAX_LEASE_TTL).is_ok());
        assert_eq!(
            check_ttl(MAX_LEASE_TTL + 1).unwrap_err().code,
            ErrorCode::LeaseTtlTooLarge
        );
        assert_eq!(check_ttl(0).unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
