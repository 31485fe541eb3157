//! MVCC: etcd v3's revisioned key-value semantics over the backend's trees.
//!
//! Every write request that changes something gets the next store revision; each key keeps
//! every version (create revision, mod revision, version, lease, value) until compaction.
//! Reads at any revision at or above the compacted revision see exactly the state after that
//! revision. Layout in the backend: see [`encoding`]. There is no in-memory index of keys:
//! reads are cursor seeks on the `kv` tree, so memory does not grow with the key count and
//! a restart does not scan anything.
//!
//! - [`read`]: ranges and compares over a [`read::KvView`] (a published snapshot or the
//!   write transaction).
//! - [`lease`]: the lease trees (leases, attached keys), grant/revoke/checkpoint, reads.
//! - [`store`]: the applier's [`store::WriteBatch`], which applies write requests in one
//!   backend write transaction and collects their events.

pub mod encoding;
pub mod history;
pub mod lease;
pub mod read;
pub mod store;
pub mod types;

pub use read::{range, SnapshotView};
pub use store::{Limits, WriteBatch};
pub use types::*;
