//! Request, response and error types of the MVCC layer, mirroring etcd v3's KV API.
//!
//! These are plain Rust values: the RPC layer converts them to and from `schema/rpc.capnp`,
//! and the raft layer serializes write requests into log entries.

use std::fmt;

/// A store revision (etcd's "main revision"). Positive once anything was written; 0 means
/// "current" in requests.
pub type Revision = i64;

/// One version of a key, as returned by reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The user key.
    pub key: Vec<u8>,
    /// Revision of the put that created this generation of the key.
    pub create_revision: Revision,
    /// Revision of the last modification.
    pub mod_revision: Revision,
    /// 1 at creation, +1 per modification; a delete ends the generation.
    pub version: i64,
    /// The value (empty for keys-only reads).
    pub value: Vec<u8>,
    /// Attached lease id, 0 for none.
    pub lease: i64,
}

/// How to order a range result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order, ascending (the storage order).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What a range result is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key bytes.
    #[default]
    Key,
    /// The key's version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value bytes.
    Value,
}

/// etcd's RangeRequest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key (must not be empty).
    pub key: Vec<u8>,
    /// Empty: only `key`. `[0]`: every key >= `key`. Otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Most keys returned; 0 = no limit.
    pub limit: i64,
    /// Revision to read at; <= 0 = current.
    pub revision: Revision,
    /// Result order.
    pub sort_order: SortOrder,
    /// Result sort key.
    pub sort_target: SortTarget,
    /// Serve from local state without a quorum round (decided by the server layer).
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop keys whose mod revision is below this (0 = no filter).
    pub min_mod_revision: Revision,
    /// Drop keys whose mod revision is above this (0 = no filter).
    pub max_mod_revision: Revision,
    /// Drop keys whose create revision is below this (0 = no filter).
    pub min_create_revision: Revision,
    /// Drop keys whose create revision is above this (0 = no filter).
    pub max_create_revision: Revision,
}

/// etcd's RangeResponse (the header revision is carried beside it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The matching keys, sorted and limited as requested.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// Keys in the range at the revision (before limit and revision filters, as in etcd).
    pub count: i64,
}

/// etcd's PutRequest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key (must not be empty).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value (key must exist; `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (key must exist; `lease` must be 0).
    pub ignore_lease: bool,
}

/// etcd's PutResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The previous version, if requested and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's DeleteRangeRequest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// First key (must not be empty).
    pub key: Vec<u8>,
    /// Same conventions as [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

/// etcd's DeleteRangeResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted versions, if requested.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the key's field to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// field == target
    Equal,
    /// field > target
    Greater,
    /// field < target
    Less,
    /// field != target
    NotEqual,
}

/// The field a compare reads, with the value it is compared to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 if absent).
    Version(i64),
    /// The key's create revision (0 if absent).
    CreateRevision(Revision),
    /// The key's mod revision (0 if absent).
    ModRevision(Revision),
    /// The key's value (a compare on an absent key's value is always false).
    Value(Vec<u8>),
    /// The key's lease (0 if absent or none).
    Lease(i64),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The key (must not be empty).
    pub key: Vec<u8>,
    /// If not empty, every key in `[key, range_end)` must satisfy the compare.
    pub range_end: Vec<u8>,
    /// Field and target.
    pub target: CompareTarget,
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read at the transaction's current state.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// Result of a range.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

/// etcd's TxnRequest: if every compare holds, run `success`, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// Guards, evaluated against the state before the transaction.
    pub compare: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops run otherwise.
    pub failure: Vec<RequestOp>,
}

/// etcd's TxnResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One response per op of the branch taken.
    pub responses: Vec<ResponseOp>,
}

/// A request that changes (or may change) the store; these go through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRequest {
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact history below `revision`.
    Compact {
        /// The revision to compact at.
        revision: Revision,
    },
    /// Grant a lease (see [`super::lease`]).
    LeaseGrant(super::lease::LeaseGrant),
    /// Revoke a lease, deleting its keys in one revision.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// Record the remaining TTLs of leases, so a restart resumes from them.
    LeaseCheckpoint(Vec<super::lease::LeaseCheckpoint>),
}

/// The result of a [`WriteRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResponse {
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a transaction.
    Txn(TxnResponse),
    /// Compaction was recorded (logical); physical removal proceeds in steps.
    Compact,
    /// The lease granted: its id and TTL.
    LeaseGrant {
        /// The lease id (chosen by the applier if the request had 0).
        id: i64,
        /// The TTL granted, seconds.
        ttl: i64,
    },
    /// The lease was revoked.
    LeaseRevoke,
    /// The checkpoint was recorded.
    LeaseCheckpoint,
}

/// What happened to a key at a revision: the unit of history and of watch events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the event (for a delete: key, mod revision = the delete's revision,
    /// everything else zero).
    pub kv: KeyValue,
}

/// Kind of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or modified.
    Put,
    /// The key was deleted.
    Delete,
}

/// Why a request failed. Mirrors `ErrorCode` in `schema/rpc.capnp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The requested revision has been compacted.
    Compacted,
    /// The requested revision is above the current revision.
    FutureRevision,
    /// A key, value or request exceeds its size limit.
    RequestTooLarge,
    /// A transaction branch has more ops than allowed.
    TooManyTxnOps,
    /// A transaction modifies the same key twice.
    DuplicateKey,
    /// ignore_value / ignore_lease on a key that does not exist.
    KeyNotFound,
    /// A malformed key range (for example an empty key).
    InvalidRange,
    /// Any other invalid field.
    InvalidArgument,
    /// The lease does not exist.
    LeaseNotFound,
    /// The backend quota (--quota-backend-bytes) is exhausted.
    NoSpace,
    /// The request did not complete within its deadline.
    Timeout,
    /// No leader, or the server is shutting down; the request may be retried.
    Unavailable,
    /// A lease with the requested id already exists.
    LeaseExists,
    /// The requested lease TTL is above the maximum.
    LeaseTtlTooLarge,
    /// A watcher with the requested id already exists on the stream.
    WatchIdExists,
    /// The backend failed (I/O, corruption); the message says what.
    Internal,
}

/// A request error: a code a program can branch on and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Which field, which limit, which value.
    pub message: String,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::backend::Error> for Error {
    fn from(e: crate::backend::Error) -> Error {
        Error::new(ErrorCode::Internal, format!("backend: {e}"))
    }
}

/// Result alias for MVCC operations.
pub type Result<T> = std::result::Result<T, Error>;
