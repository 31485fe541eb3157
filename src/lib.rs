//! corekv: an etcd-class coordination store built for modern Linux.
//!
//! Layers (see `ARCHITECTURE.md`): [`backend`] is the single-file mmap copy-on-write
//! B+tree that holds the state machine; [`wal`] is the O_DIRECT write-ahead log with
//! group commit that makes every change durable.

pub mod backend;
pub mod wal;
