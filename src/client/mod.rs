//! The async Rust client.
//!
//! Works on a glommio executor ([`Glommio`]) and on a tokio `LocalSet` ([`Tokio`]): the
//! Cap'n Proto connection is `!Send`, so a client belongs to the thread that made it.
//! A client holds one connection to one of its endpoints; when that connection fails, the
//! failing call returns [`ClientError::Transport`] and the next call reconnects, trying the
//! endpoints in turn. Calls are never retried automatically (a write may have been applied).

/// The `ok` reader of a call's result union, or (returned early) the server's typed error.
macro_rules! ok_reply {
    ($reply:expr, $union:ident) => {{
        use crate::generated::rpc_capnp::$union::Which;
        match $reply
            .get()?
            .get_result()?
            .which()
            .map_err(|e| capnp::Error::failed(e.to_string()))?
        {
            Which::Ok(r) => r?,
            Which::Err(e) => return Err(ClientError::Server(api::read_error(e?)?)),
        }
    }};
}

/// Turns a `result` union (`ok`: a response with a header, or `err`: a typed error) into the
/// client's result, reading the response with `$read`.
macro_rules! answer {
    ($reply:expr, $union:ident, $read:path) => {{
        let r = ok_reply!($reply, $union);
        Ok(($read(r)?, api::read_header(r.get_header()?)))
    }};
}

pub mod lease;
pub mod txn;
pub mod watch;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::RpcSystem;
use futures::{AsyncRead, AsyncWrite, FutureExt};

use crate::api::{self, Header};
use crate::generated::rpc_capnp::{
    core_kv, k_v, lease as lease_capnp, lease_keep_alive_stream, maintenance,
};
use crate::mvcc::{
    DeleteRangeRequest, DeleteRangeResponse, Error, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse,
};
pub use lease::KeepAlive;
pub use txn::Txn;

/// Default per-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connect timeout per endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest response the client accepts, bytes (bounds the client's memory per call).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The server refused the request (typed: branch on `code`).
    Server(Error),
    /// The connection failed or was lost; the call may or may not have been applied.
    Transport(String),
    /// No answer within the timeout; the call may or may not have been applied.
    Timeout(Duration),
    /// The endpoint list is empty or does not resolve.
    BadEndpoint(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(e) => write!(f, "{e}"),
            ClientError::Transport(e) => write!(f, "connection failed: {e}"),
            ClientError::Timeout(d) => write!(f, "request timed out after {d:?}"),
            ClientError::BadEndpoint(e) => write!(f, "bad endpoint: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<capnp::Error> for ClientError {
    fn from(e: capnp::Error) -> ClientError {
        ClientError::Transport(e.to_string())
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
type Stream = (Box<dyn AsyncRead + Unpin>, Box<dyn AsyncWrite + Unpin>);

/// The executor a client runs on: how it connects, spawns its connection task and sleeps.
pub trait Runtime: 'static {
    /// Opens a TCP connection.
    fn connect(&self, addr: SocketAddr) -> LocalFuture<std::io::Result<Stream>>;
    /// Runs `fut` on the current thread in the background.
    fn spawn_local(&self, fut: LocalFuture<()>);
    /// Resolves after `d`.
    fn sleep(&self, d: Duration) -> LocalFuture<()>;
}

/// Run the client on the current glommio executor.
pub struct Glommio;

impl Runtime for Glommio {
    fn connect(&self, addr: SocketAddr) -> LocalFuture<std::io::Result<Stream>> {
        Box::pin(async move {
            let stream = glommio::net::TcpStream::connect(addr)
                .await
                .map_err(std::io::Error::from)?;
            let _ = stream.set_nodelay(true);
            let (r, w) = futures::AsyncReadExt::split(stream);
            Ok((
                Box::new(r) as Box<dyn AsyncRead + Unpin>,
                Box::new(w) as Box<dyn AsyncWrite + Unpin>,
            ))
        })
    }
    fn spawn_local(&self, fut: LocalFuture<()>) {
        glommio::spawn_local(fut).detach();
    }
    fn sleep(&self, d: Duration) -> LocalFuture<()> {
        Box::pin(glommio::timer::sleep(d))
    }
}

/// Run the client inside a tokio `LocalSet` (current-thread runtime).
pub struct Tokio;

impl Runtime for Tokio {
    fn connect(&self, addr: SocketAddr) -> LocalFuture<std::io::Result<Stream>> {
        Box::pin(async move {
            use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            Ok((
                Box::new(r.compat()) as Box<dyn AsyncRead + Unpin>,
                Box::new(w.compat_write()) as Box<dyn AsyncWrite + Unpin>,
            ))
        })
    }
    fn spawn_local(&self, fut: LocalFuture<()>) {
        tokio::task::spawn_local(fut);
    }
    fn sleep(&self, d: Duration) -> LocalFuture<()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of each call.
    pub request_timeout: Duration,
    /// Deadline of each connection attempt.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// What `status` reports about one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Response header.
    pub header: Header,
    /// Server version.
    pub version: String,
    /// Backend file size, bytes.
    pub db_size: i64,
    /// Bytes in use in the backend.
    pub db_size_in_use: i64,
    /// Member id of the leader (0: none).
    pub leader: u64,
    /// Last raft log index.
    pub raft_index: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Last applied index.
    pub raft_applied_index: u64,
    /// Active alarms.
    pub errors: Vec<String>,
}

struct Connection {
    /// The bootstrap capability (hands out further services, e.g. watch).
    bootstrap: core_kv::Client,
    kv: k_v::Client,
    maintenance: maintenance::Client,
    lease: lease_capnp::Client,
    /// The connection's one keep-alive stream (obtained by pipelining, no round trip).
    keep_alive: lease_keep_alive_stream::Client,
    alive: Rc<Cell<bool>>,
}

/// A corekv client bound to the current thread.
pub struct Client {
    endpoints: Vec<SocketAddr>,
    next_endpoint: Cell<usize>,
    options: ClientOptions,
    runtime: Rc<dyn Runtime>,
    connection: RefCell<Option<Rc<Connection>>>,
}

/// Parses "host:port" endpoints (an `http://` prefix is accepted, as etcdctl users type it).
pub fn parse_endpoints(endpoints: &[impl AsRef<str>]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for e in endpoints {
        let e = e.as_ref().trim();
        let hostport = e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()
            .map_err(|err| ClientError::BadEndpoint(format!("{e:?}: {err}")))?
            .next()
            .ok_or_else(|| ClientError::BadEndpoint(format!("{e:?} resolves to no address")))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(ClientError::BadEndpoint("no endpoints given".into()));
    }
    Ok(out)
}

impl Client {
    /// A client for `endpoints` on `runtime`; connects to the first reachable endpoint.
    pub async fn connect(
        endpoints: &[impl AsRef<str>],
        options: ClientOptions,
        runtime: impl Runtime,
    ) -> Result<Client> {
        let client = Client {
            endpoints: parse_endpoints(endpoints)?,
            next_endpoint: Cell::new(0),
            options,
            runtime: Rc::new(runtime),
            connection: RefCell::new(None),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The endpoints this client uses.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    async fn with_timeout<T>(
        &self,
        d: Duration,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        futures::select_biased! {
            r = fut.fuse() => r,
            _ = self.runtime.sleep(d).fuse() => Err(ClientError::Timeout(d)),
        }
    }

    async fn connection(&self) -> Result<Rc<Connection>> {
        if let Some(c) = self.connection.borrow().as_ref() {
            if c.alive.get() {
                return Ok(c.clone());
            }
        }
        let mut last_error = String::new();
        for _ in 0..self.endpoints.len() {
            let i = self.next_endpoint.get() % self.endpoints.len();
            self.next_endpoint.set(i + 1);
            let addr = self.endpoints[i];
            match self.open(addr).await {
                Ok(c) => {
                    let c = Rc::new(c);
                    *self.connection.borrow_mut() = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::Transport(format!(
            "no endpoint reachable; last error: {last_error}"
        )))
    }

    async fn open(&self, addr: SocketAddr) -> Result<Connection> {
        let connect = async {
            self.runtime
                .connect(addr)
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))
        };
        let (reader, writer) = self
            .with_timeout(self.options.connect_timeout, connect)
            .await?;
        let mut options = capnp::message::ReaderOptions::new();
        options.nesting_limit(api::MAX_MESSAGE_NESTING);
        options.traversal_limit_in_words(Some(MAX_RESPONSE_BYTES / 8));
        let (writer, flusher) = crate::net::CoalescingWriter::new(writer);
        self.runtime.spawn_local(flusher);
        let network = crate::net::rpc_network(
            futures::io::BufReader::new(reader),
            writer,
            Side::Client,
            options,
        );
        let mut rpc = RpcSystem::new(network, None);
        let bootstrap: core_kv::Client = rpc.bootstrap(Side::Server);
        let alive = Rc::new(Cell::new(true));
        let flag = alive.clone();
        self.runtime.spawn_local(Box::pin(async move {
            let _ = rpc.await;
            flag.set(false);
        }));
        let setup = async {
            let kv = bootstrap
                .kv_request()
                .send()
                .promise
                .await?
                .get()?
                .get_kv()?;
            let maintenance = bootstrap
                .maintenance_request()
                .send()
                .promise
                .await?
                .get()?
                .get_maintenance()?;
            let lease = bootstrap
                .lease_request()
                .send()
                .promise
                .await?
                .get()?
                .get_lease()?;
            Ok::<_, ClientError>((kv, maintenance, lease))
        };
        let (kv, maintenance, lease) = self
            .with_timeout(self.options.connect_timeout, setup)
            .await?;
        let keep_alive = lease
            .keep_alive_stream_request()
            .send()
            .pipeline
            .get_stream();
        Ok(Connection {
            bootstrap,
            kv,
            maintenance,
            lease,
            keep_alive,
            alive,
        })
    }

    async fn call<T>(&self, f: impl AsyncFnOnce(Rc<Connection>) -> Result<T>) -> Result<T> {
        let conn = self.connection().await?;
        let alive = conn.alive.clone();
        let r = self
            .with_timeout(self.options.request_timeout, f(conn))
            .await;
        if matches!(r, Err(ClientError::Transport(_))) {
            alive.set(false);
        }
        r
    }

    /// A range request.
    pub async fn range(&self, req: RangeRequest) -> Result<(RangeResponse, Header)> {
        self.call(async |c| {
            let mut q = c.kv.range_request();
            api::write_range_request(&req, q.get().init_request());
            let reply = q.send().promise.await?;
            answer!(reply, range_result, api::read_range_response)
        })
        .await
    }

    /// The value of one key (a linearizable single-key range).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<crate::mvcc::KeyValue>> {
        let (resp, _) = self
            .range(RangeRequest {
                key: key.into(),
                ..RangeRequest::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// A put request.
    pub async fn put(&self, req: PutRequest) -> Result<(PutResponse, Header)> {
        self.call(async |c| {
            let mut q = c.kv.put_request();
            api::write_put_request(&req, q.get().init_request());
            let reply = q.send().promise.await?;
            answer!(reply, put_result, api::read_put_response)
        })
        .await
    }

    /// Puts `value` at `key`; returns the revision of the write.
    pub async fn put_kv(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<i64> {
        let (_, header) = self
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })
            .await?;
        Ok(header.revision)
    }

    /// A delete-range request.
    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, Header)> {
        self.call(async |c| {
            let mut q = c.kv.delete_range_request();
            api::write_delete_request(&req, q.get().init_request());
            let reply = q.send().promise.await?;
            answer!(reply, delete_range_result, api::read_delete_response)
        })
        .await
    }

    /// A transaction (see [`Txn`] for a builder).
    pub async fn txn(&self, req: impl Into<TxnRequest>) -> Result<(TxnResponse, Header)> {
        let req = req.into();
        self.call(async |c| {
            let mut q = c.kv.txn_request();
            api::write_txn_request(&req, q.get().init_request());
            let reply = q.send().promise.await?;
            answer!(reply, txn_result, api::read_txn_response)
        })
        .await
    }

    /// Compacts history below `revision`; with `physical`, returns only once it is removed.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<Header> {
        self.call(async |c| {
            let mut q = c.kv.compact_request();
            let mut r = q.get().init_request();
            r.set_revision(revision);
            r.set_physical(physical);
            let reply = q.send().promise.await?;
            let r = ok_reply!(reply, compaction_result);
            Ok(api::read_header(r.get_header()?))
        })
        .await
    }

    /// The status of the member this client is connected to.
    pub async fn status(&self) -> Result<Status> {
        self.call(async |c| {
            let reply = c.maintenance.status_request().send().promise.await?;
            let s = ok_reply!(reply, status_result);
            let mut errors = Vec::new();
            for e in s.get_errors()?.iter() {
                errors.push(
                    e?.to_string()
                        .map_err(|e| ClientError::Transport(e.to_string()))?,
                );
            }
            Ok(Status {
                header: api::read_header(s.get_header()?),
                version: s
                    .get_version()?
                    .to_string()
                    .map_err(|e| ClientError::Transport(e.to_string()))?,
                db_size: s.get_db_size(),
                db_size_in_use: s.get_db_size_in_use(),
                leader: s.get_leader(),
                raft_index: s.get_raft_index(),
                raft_term: s.get_raft_term(),
                raft_applied_index: s.get_raft_applied_index(),
                errors,
            })
        })
        .await
    }
}
