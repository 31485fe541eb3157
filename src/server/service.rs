//! The Cap'n Proto services a shard serves on its connections.
//!
//! Reads are answered on the receiving shard from the published backend snapshot
//! (linearizable reads first pass the raft shard's read barrier); writes are proposed to
//! the raft shard and answered once applied. Every request error is a typed `Error` in the
//! result union; only transport failures surface as Cap'n Proto exceptions.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::channel::oneshot;

use crate::api::{self, Header};
use crate::backend::Reader;
use crate::generated::rpc_capnp::{core_kv, k_v, maintenance};
use crate::mvcc::{
    self, Error, ErrorCode, RangeRequest, Revision, SnapshotView, WriteRequest, WriteResponse,
};
use crate::raft::{Ids, NodeStatus, ProposeResult, RaftRequest, SharedState};

/// Everything a shard's services need; one per shard, shared by its connections.
pub struct ShardContext {
    /// Index of this shard.
    pub shard: usize,
    /// Read transactions on the published backend state.
    pub reader: Reader,
    /// Queue to the raft shard.
    pub raft: flume::Sender<RaftRequest>,
    /// Term and leader, published by the raft shard.
    pub shared: Arc<SharedState>,
    /// Member identity.
    pub ids: Ids,
    /// Largest request accepted, bytes.
    pub max_request_bytes: usize,
    /// This shard's watch hub.
    pub watch: crate::watch::hub::SharedHub,
    /// This shard's lease table and the inboxes of every shard's (see [`crate::lease`]).
    pub leases: Rc<crate::lease::LeaseShard>,
}

fn unavailable() -> Error {
    Error::new(
        ErrorCode::Unavailable,
        "the raft shard is not running (server shutting down)",
    )
}

impl ShardContext {
    /// A response header at `revision` with this member's ids and term.
    pub fn header(&self, revision: Revision) -> Header {
        Header {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            revision,
            raft_term: self.shared.term.load(Ordering::Relaxed),
        }
    }

    /// Refuses a request whose encoding is larger than `--max-request-bytes`.
    pub fn check_size(&self, words: capnp::Result<capnp::MessageSize>) -> mvcc::Result<()> {
        let words = words.map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("malformed request: {e}"),
            )
        })?;
        let bytes = words.word_count as usize * 8;
        if bytes > self.max_request_bytes {
            return Err(Error::new(
                ErrorCode::RequestTooLarge,
                format!(
                    "request of {bytes} bytes exceeds --max-request-bytes ({})",
                    self.max_request_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Serves a range: serializable from the current snapshot; linearizable after the read
    /// barrier (every write committed before the request arrived is then visible).
    pub async fn range(&self, req: RangeRequest) -> mvcc::Result<(mvcc::RangeResponse, Header)> {
        mvcc::read::check_range_request(&req)?;
        if !req.serializable {
            self.read_barrier().await?;
        }
        let rtxn = self.reader.begin_read()?;
        let mut view = SnapshotView::new(&rtxn)?;
        let (current, compacted) = mvcc::read::revisions(&mut view)?;
        let resp = mvcc::read::range_at(&mut view, &req, current, compacted)?;
        Ok((resp, self.header(current)))
    }

    /// Waits until every write committed before the call is applied and visible in the
    /// published snapshot (and its lease events are in the owner shards' inboxes).
    pub async fn read_barrier(&self) -> mvcc::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.raft
            .send_async(RaftRequest::ReadBarrier { reply: tx })
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())??;
        Ok(())
    }

    /// Proposes a write and waits until it is applied.
    pub async fn write(
        &self,
        request: WriteRequest,
        wait_compaction: bool,
    ) -> (mvcc::Result<WriteResponse>, Header) {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .raft
            .send_async(RaftRequest::Propose {
                request,
                wait_compaction,
                reply: tx,
            })
            .await;
        let outcome = match sent {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match outcome {
            Some(ProposeResult {
                result,
                revision,
                term,
            }) => {
                let mut header = self.header(revision);
                header.raft_term = term;
                (result, header)
            }
            None => (Err(unavailable()), self.header(0)),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> mvcc::Result<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        self.raft
            .send_async(RaftRequest::Status { reply: tx })
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }
}

/// The bootstrap capability: hands out the services.
pub struct CoreKvService {
    ctx: Rc<ShardContext>,
}

impl CoreKvService {
    /// The bootstrap service of a connection on the shard of `ctx`.
    pub fn new(ctx: Rc<ShardContext>) -> CoreKvService {
        CoreKvService { ctx }
    }
}

impl core_kv::Server for CoreKvService {
    fn kv(
        self: Rc<Self>,
        _: core_kv::KvParams,
        mut results: core_kv::KvResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_kv(capnp_rpc::new_client(KvService {
            ctx: self.ctx.clone(),
        }));
        std::future::ready(Ok(()))
    }

    fn watch(
        self: Rc<Self>,
        _: core_kv::WatchParams,
        mut results: core_kv::WatchResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_watch(capnp_rpc::new_client(
            super::watch_service::WatchService::new(self.ctx.clone()),
        ));
        std::future::ready(Ok(()))
    }

    fn maintenance(
        self: Rc<Self>,
        _: core_kv::MaintenanceParams,
        mut results: core_kv::MaintenanceResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results
            .get()
            .set_maintenance(capnp_rpc::new_client(MaintenanceService {
                ctx: self.ctx.clone(),
            }));
        std::future::ready(Ok(()))
    }

    fn lease(
        self: Rc<Self>,
        _: core_kv::LeaseParams,
        mut results: core_kv::LeaseResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_lease(capnp_rpc::new_client(
            super::lease_service::LeaseService::new(self.ctx.clone()),
        ));
        std::future::ready(Ok(()))
    }
}

/// The KV service.
struct KvService {
    ctx: Rc<ShardContext>,
}

/// A request that does not decode.
pub fn malformed(e: capnp::Error) -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        format!("malformed request: {e}"),
    )
}

impl k_v::Server for KvService {
    async fn range(
        self: Rc<Self>,
        params: k_v::RangeParams,
        mut results: k_v::RangeResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            self.ctx.check_size(p.total_size())?;
            let req =
                api::read_range_request(p.get_request().map_err(malformed)?).map_err(malformed)?;
            self.ctx.range(req).await
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((resp, header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                api::write_range_response(&resp, ok);
            }
            Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn put(
        self: Rc<Self>,
        params: k_v::PutParams,
        mut results: k_v::PutResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            self.ctx.check_size(p.total_size())?;
            let req =
                api::read_put_request(p.get_request().map_err(malformed)?).map_err(malformed)?;
            Ok::<_, Error>(self.ctx.write(WriteRequest::Put(req), false).await)
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::Put(resp)), header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                api::write_put_response(&resp, ok);
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn delete_range(
        self: Rc<Self>,
        params: k_v::DeleteRangeParams,
        mut results: k_v::DeleteRangeResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            self.ctx.check_size(p.total_size())?;
            let req =
                api::read_delete_request(p.get_request().map_err(malformed)?).map_err(malformed)?;
            Ok::<_, Error>(self.ctx.write(WriteRequest::DeleteRange(req), false).await)
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::DeleteRange(resp)), header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                api::write_delete_response(&resp, ok);
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn txn(
        self: Rc<Self>,
        params: k_v::TxnParams,
        mut results: k_v::TxnResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            self.ctx.check_size(p.total_size())?;
            let req =
                api::read_txn_request(p.get_request().map_err(malformed)?).map_err(malformed)?;
            Ok::<_, Error>(self.ctx.write(WriteRequest::Txn(req), false).await)
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::Txn(resp)), header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                api::write_txn_response(&resp, &header, ok);
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn compact(
        self: Rc<Self>,
        params: k_v::CompactParams,
        mut results: k_v::CompactResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            let req = p.get_request().map_err(malformed)?;
            let write = WriteRequest::Compact {
                revision: req.get_revision(),
            };
            Ok::<_, Error>(self.ctx.write(write, req.get_physical()).await)
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::Compact), header)) => {
                api::write_header(&header, r.init_ok().init_header());
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }
}

/// The applier answered a request with another request's kind of response (a bug).
pub fn mismatched(resp: &WriteResponse) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("applier answered with the wrong kind of response: {resp:?}"),
    )
}

/// The Maintenance service.
struct MaintenanceService {
    ctx: Rc<ShardContext>,
}

impl maintenance::Server for MaintenanceService {
    async fn status(
        self: Rc<Self>,
        _: maintenance::StatusParams,
        mut results: maintenance::StatusResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self.ctx.status().await;
        let r = results.get().init_result();
        match outcome {
            Ok(s) => {
                let mut ok = r.init_ok();
                let mut header = self.ctx.header(s.revision);
                header.raft_term = s.raft_term;
                api::write_header(&header, ok.reborrow().init_header());
                ok.set_version(env!("CARGO_PKG_VERSION"));
                ok.set_db_size(s.db_size as i64);
                ok.set_db_size_in_use(s.db_size_in_use as i64);
                ok.set_leader(s.leader);
                ok.set_raft_index(s.raft_index);
                ok.set_raft_term(s.raft_term);
                ok.set_raft_applied_index(s.applied_index);
                ok.set_is_learner(false);
            }
            Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }
}
