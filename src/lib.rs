//! corekv: an etcd-class coordination store built for modern Linux.
//!
//! Layers (see `ARCHITECTURE.md`): [`backend`] is the single-file mmap copy-on-write
//! B+tree that holds the state machine; [`wal`] is the O_DIRECT write-ahead log with
//! group commit that makes every change durable.

pub mod api;
pub mod backend;
pub mod client;
pub mod lease;
pub mod log;
pub mod maintenance;
pub mod mvcc;
pub mod net;
pub mod raft;
pub mod server;
pub mod wal;
pub mod watch;

/// Code generated from `schema/` by `cargo run -p corekv-xtask -- capnp` (checked in, so
/// the build needs no `capnp` compiler; CI verifies it is fresh).
pub mod generated {
    /// The client API: `schema/rpc.capnp`.
    #[rustfmt::skip]
    #[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
    pub mod rpc_capnp; /// Raft log entries: `schema/proposal.capnp`.
    #[rustfmt::skip]
    #[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
    pub mod proposal_capnp;
}
