//! The server: start-up, shard executors, client listeners and the Cap'n Proto services.
//!
//! Start-up order: shard 0 (the raft shard) opens the backend and the WAL, replays the log and
//! becomes leader; then it binds the client addresses (port 0 resolves here) and every other
//! shard binds the same concrete addresses with SO_REUSEPORT, so the kernel spreads
//! connections across shards. A connection stays on the shard that accepted it.

pub mod applier;
pub mod config;
pub mod lease_service;
pub mod service;
pub mod watch_service;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::RpcSystem;
use futures::channel::oneshot;
use futures::{AsyncReadExt, FutureExt};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::backend::Reader;
use crate::generated::rpc_capnp::core_kv;
use crate::mvcc::Limits;
use crate::raft::{Ids, NodeConfig, RaftRequest, RaftShard, SharedState, REQUEST_QUEUE_CAPACITY};
pub use config::Config;
use service::{CoreKvService, ShardContext};

/// Busy-poll this long before an idle shard parks: cuts wake-up latency on a loaded server.
pub const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// Connections a shard serves at once; further connections wait in the listen backlog.
pub const MAX_CONNECTIONS_PER_SHARD: usize = 10_000;
/// Buffer of each connection's reader and writer.
pub const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// A running server; dropping it without [`RunningServer::shutdown`] leaves threads running.
pub struct RunningServer {
    /// The concrete client addresses (ports resolved).
    pub addrs: Vec<SocketAddr>,
    stops: Vec<oneshot::Sender<()>>,
    raft_stop: Option<oneshot::Sender<()>>,
    threads: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
}

struct RaftShardReady {
    reader: Reader,
    shared: Arc<SharedState>,
    addrs: Vec<SocketAddr>,
}

/// Starts every shard and returns once all of them listen.
pub fn start(config: Config) -> Result<RunningServer, String> {
    let ids = Ids::from_name(&config.name);
    let (raft_tx, raft_rx) = flume::bounded::<RaftRequest>(REQUEST_QUEUE_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<RaftShardReady, String>>();
    let (raft_stop_tx, raft_stop_rx) = oneshot::channel::<()>();
    let (stop0_tx, stop0_rx) = oneshot::channel::<()>();
    let cores = config::available_cores();
    let mut threads = Vec::new();
    let (fan_out, inboxes) = crate::watch::fan_out(config.shards);
    let mut inboxes = inboxes.into_iter();
    let progress_interval = config.watch_progress_notify_interval;
    let (lease_inboxes, lease_rxs) = crate::lease::inboxes(config.shards);
    let lease_config = crate::lease::LeaseConfig {
        min_ttl: config.min_lease_ttl,
        checkpoint_interval: config.lease_checkpoint_interval,
    };
    // Shard k takes the k-th receiver, in start order.
    let mut lease_rxs = lease_rxs.into_iter();

    let node_config = NodeConfig {
        data_dir: config.data_dir.clone(),
        ids,
        limits: Limits {
            max_txn_ops: config.max_txn_ops,
        },
        quota_backend_bytes: config.quota_backend_bytes,
        wal: config.wal.clone(),
        backend: crate::backend::Options::default(),
        watch: Some(fan_out),
    };
    let shard0 = {
        let config = config.clone();
        let raft_tx = raft_tx.clone();
        let inbox = inboxes.next().expect("one inbox per shard");
        let lease_rx = lease_rxs.next().expect("shard 0's lease inbox");
        let lease_inboxes = lease_inboxes.clone();
        let lease_config = lease_config.clone();
        LocalExecutorBuilder::new(Placement::Fixed(0))
            .name("corekv-shard-0")
            .spin_before_park(SPIN_BEFORE_PARK)
            .spawn(move || async move {
                let (mut raft, reader) = match RaftShard::open(node_config).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                raft.set_lease_sink(crate::lease::LeaseSink::new(lease_inboxes.clone()));
                let leases = match crate::lease::LeaseShard::open(
                    0,
                    lease_rx,
                    lease_inboxes,
                    lease_config,
                    &reader,
                ) {
                    Ok(l) => Rc::new(l),
                    Err(e) => {
                        let e = format!("load leases: {e}");
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let shared = raft.shared();
                let listeners = match claim_addresses(&config.listen).and_then(|a| bind_all(&a)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let addrs = listeners
                    .iter()
                    .map(|l| l.local_addr().expect("bound listener has an address"))
                    .collect();
                let watch = match crate::watch::hub::spawn(reader.clone(), inbox, progress_interval)
                {
                    Ok(h) => h,
                    Err(e) => {
                        let e = format!("start watch hub of shard 0: {e}");
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let raft_task = glommio::spawn_local(raft.run(raft_rx, raft_stop_rx));
                let lease_task = glommio::spawn_local(leases.clone().run(raft_tx.clone())).detach();
                let ctx = Rc::new(ShardContext {
                    shard: 0,
                    reader: reader.clone(),
                    raft: raft_tx,
                    shared: shared.clone(),
                    ids,
                    max_request_bytes: config.max_request_bytes,
                    watch,
                    leases,
                });
                let _ = ready_tx.send(Ok(RaftShardReady {
                    reader,
                    shared,
                    addrs,
                }));
                serve(listeners, ctx, config.max_request_bytes, stop0_rx).await;
                lease_task.cancel();
                raft_task.await
            })
            .map_err(|e| format!("start shard 0: {e}"))?
    };
    threads.push(shard0);
    let ready = match ready_rx.recv() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = threads.pop().map(|t| t.join());
            return Err(e);
        }
        Err(_) => {
            let e = threads.pop().map(|t| t.join());
            return Err(format!("shard 0 stopped during start-up: {e:?}"));
        }
    };

    let mut stops = vec![stop0_tx];
    for shard in 1..config.shards {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let addrs = ready.addrs.clone();
        let reader = ready.reader.clone();
        let shared = ready.shared.clone();
        let raft_tx = raft_tx.clone();
        let max_request_bytes = config.max_request_bytes;
        let inbox = inboxes.next().expect("one inbox per shard");
        let lease_rx = lease_rxs.next().expect("one lease inbox per shard");
        let lease_inboxes = lease_inboxes.clone();
        let lease_config = lease_config.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(shard % cores))
            .name(&format!("corekv-shard-{shard}"))
            .spin_before_park(SPIN_BEFORE_PARK)
            .spawn(move || async move {
                let listeners = bind_all(&addrs)?;
                let watch = crate::watch::hub::spawn(reader.clone(), inbox, progress_interval)
                    .map_err(|e| format!("start watch hub of shard {shard}: {e}"))?;
                let leases = Rc::new(
                    crate::lease::LeaseShard::open(
                        shard,
                        lease_rx,
                        lease_inboxes,
                        lease_config,
                        &reader,
                    )
                    .map_err(|e| format!("shard {shard}: load leases: {e}"))?,
                );
                let lease_task = glommio::spawn_local(leases.clone().run(raft_tx.clone())).detach();
                let ctx = Rc::new(ShardContext {
                    shard,
                    reader,
                    raft: raft_tx,
                    shared,
                    ids,
                    max_request_bytes,
                    watch,
                    leases,
                });
                serve(listeners, ctx, max_request_bytes, stop_rx).await;
                lease_task.cancel();
                Ok(())
            })
            .map_err(|e| format!("start shard {shard}: {e}"))?;
        threads.push(handle);
    }
    Ok(RunningServer {
        addrs: ready.addrs,
        stops,
        raft_stop: Some(raft_stop_tx),
        threads,
    })
}

impl RunningServer {
    /// Stops accepting, closes connections, lets the raft shard finish applying committed
    /// entries, syncs the backend and closes the WAL. Returns the first shard error.
    pub fn shutdown(mut self) -> Result<(), String> {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        if let Some(stop) = self.raft_stop.take() {
            let _ = stop.send(());
        }
        let mut first_error = None;
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .map_err(|e| format!("shard thread: {e}"))
                .and_then(|r| r);
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Checks that no other process listens on `addrs` and resolves port 0. The shards' listeners
/// use SO_REUSEPORT, which would let a second server run by the same user bind the same port
/// without error and silently take a share of its connections; a probe bound without
/// SO_REUSEPORT fails with "address in use" instead.
fn claim_addresses(addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    addrs
        .iter()
        .map(|a| {
            let probe = std::net::TcpListener::bind(a).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!("listen on {a}: address already in use (is another corekv or etcd listening there?)")
                } else {
                    format!("listen on {a}: {e}")
                }
            })?;
            probe
                .local_addr()
                .map_err(|e| format!("listen on {a}: {e}"))
        })
        .collect()
}

fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, String> {
    addrs
        .iter()
        .map(|a| TcpListener::bind(a).map_err(|e| format!("listen on {a}: {e}")))
        .collect()
}

/// Accepts connections on `listeners` until `stop` fires, then cancels the connections.
async fn serve(
    listeners: Vec<TcpListener>,
    ctx: Rc<ShardContext>,
    max_request_bytes: usize,
    stop: oneshot::Receiver<()>,
) {
    let live = Rc::new(std::cell::Cell::new(0usize));
    // Live connection tasks by id; each removes itself when its connection ends, so
    // shutdown can cancel exactly the ones still running.
    let connections = Rc::new(std::cell::RefCell::new(std::collections::HashMap::new()));
    let next_connection = Rc::new(std::cell::Cell::new(0u64));
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let ctx = ctx.clone();
            let live = live.clone();
            let connections = connections.clone();
            let next_connection = next_connection.clone();
            glommio::spawn_local(async move {
                loop {
                    if live.get() >= MAX_CONNECTIONS_PER_SHARD {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let stream = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            crate::log!(Warn, "shard {}: accept failed: {e}", ctx.shard);
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    live.set(live.get() + 1);
                    // The flusher sends on the descriptor directly (see `net`); the stream,
                    // split in two below, keeps it open for the connection's whole life.
                    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&stream);
                    let (reader, writer) = stream.split();
                    let mut options = capnp::message::ReaderOptions::new();
                    options.nesting_limit(crate::api::MAX_MESSAGE_NESTING);
                    // The transport refuses (and disconnects) only far beyond the request
                    // limit; anything in between gets a clear "request too large" answer.
                    options.traversal_limit_in_words(Some(max_request_bytes / 8 * 2 + (1 << 16)));
                    let (writer, flusher) =
                        crate::net::CoalescingWriter::with_direct_send(writer, fd);
                    glommio::spawn_local(flusher).detach();
                    let network = crate::net::rpc_network(
                        futures::io::BufReader::with_capacity(CONNECTION_BUFFER_BYTES, reader),
                        writer,
                        Side::Server,
                        options,
                    );
                    let bootstrap: core_kv::Client =
                        capnp_rpc::new_client(CoreKvService::new(ctx.clone()));
                    let rpc = RpcSystem::new(network, Some(bootstrap.client));
                    let live = live.clone();
                    let id = next_connection.get();
                    next_connection.set(id + 1);
                    let registry = connections.clone();
                    let task = glommio::spawn_local(async move {
                        let _ = rpc.await;
                        live.set(live.get() - 1);
                        registry.borrow_mut().remove(&id);
                    })
                    .detach();
                    connections.borrow_mut().insert(id, task);
                }
            })
            .detach()
        })
        .collect();
    let _ = stop.fuse().await;
    for a in accept_loops {
        a.cancel();
    }
    let tasks: Vec<_> = connections.borrow_mut().drain().map(|(_, t)| t).collect();
    for t in tasks {
        t.cancel();
    }
}
