//! The watch and lease streams of both targets behind one interface, for `watch`,
//! `watch-latency` and `lease-keepalive`.
//!
//! Like `target.rs`, everything runs on a tokio current-thread runtime with a `LocalSet`:
//! corekv through its own client (`Tokio` runtime), etcd through `etcd-client`. A
//! [`StreamConn`] is one connection; watch streams and lease keep-alive streams are opened on
//! it, so several streams share one connection as they do in etcd's benchmark tool.
//!
//! Where the two protocols differ, the difference is kept visible instead of hidden:
//! - Watch creation: corekv acknowledges a create with the reply to its `create` call; etcd
//!   has no reply, only the `created` response on the stream. [`WatchSender::create`] resolves
//!   on corekv's reply; for etcd it resolves once the request is handed to the stream, and the
//!   caller takes the acknowledgement from [`WatchMsg::Created`].
//! - Keep-alive: a corekv message carries up to `MAX_KEEPALIVE_IDS` ids; etcd's
//!   `LeaseKeepAlive` request carries one id, and `etcd-client` opens one keep-alive stream
//!   per lease. A keep-alive "round" of N ids is one corekv message, or N etcd messages sent
//!   back to back (pipelined) and awaited together.

use std::rc::Rc;
use std::time::Duration;

use corekv::client::watch::{WatchRequest, WatchStream};
use corekv::client::Client;

use crate::target::{connect_any, AnyClient, ErrorKind, Target};

/// One connection for watch and lease streams.
#[derive(Clone)]
pub enum StreamConn {
    /// A corekv client.
    Corekv(Rc<Client>),
    /// An etcd client (one HTTP/2 connection; clones share it).
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

/// Connects a watch/lease connection (see [`crate::target::connect_any`]).
pub async fn connect(
    target: Target,
    endpoints: &[String],
    timeout: Duration,
) -> Result<StreamConn, String> {
    Ok(match connect_any(target, endpoints, timeout).await? {
        AnyClient::Corekv(client) => StreamConn::Corekv(Rc::new(client)),
        #[cfg(feature = "etcd")]
        AnyClient::Etcd(client) => StreamConn::Etcd(client),
    })
}

/// The watch id of the watcher that opens an etcd stream (etcd-client opens a stream only
/// with a first create); it is canceled at once and never counted. Benchmark watchers use ids
/// from 1 up, far below it.
pub const OPENING_WATCH_ID: i64 = i64::MAX - 1;
/// The key the opening watcher watches (never written).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub const OPENING_KEY: &[u8] = b"corekv-bench/watch-open";

/// What a benchmark needs from one watch response.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchMsg {
    /// Watcher `id` exists (its events follow).
    Created(i64),
    /// The values of the put events in the response (deletes are not expected).
    Events(Vec<Vec<u8>>),
    /// Watcher `id` was canceled, with the server's reason.
    Canceled(i64, String),
    /// Anything else (progress notifications).
    Other,
}

/// The creating half of a watch stream.
pub enum WatchSender {
    /// corekv: creates are calls on the stream; shared with in-flight creates.
    Corekv(Rc<WatchStream>),
    /// etcd: creates are messages on the stream's request half.
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::WatchRequestSender),
}

/// The receiving half of a watch stream.
pub enum WatchReceiver {
    /// corekv: the stream itself (see [`WatchSender::into_receiver`]).
    Corekv(WatchStream),
    /// etcd: the response half.
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::WatchResponseStream),
}

/// Opens a watch stream on `conn`. For etcd the receiving half is returned at once (the
/// `created` responses are the acknowledgements of creates, so it must be read while
/// creating); for corekv it is `None` until [`WatchSender::into_receiver`].
pub async fn open_watch(
    conn: &StreamConn,
) -> Result<(WatchSender, Option<WatchReceiver>), ErrorKind> {
    match conn {
        StreamConn::Corekv(c) => {
            let w = c.watch_stream().await?;
            Ok((WatchSender::Corekv(Rc::new(w)), None))
        }
        #[cfg(feature = "etcd")]
        StreamConn::Etcd(c) => {
            let options = etcd_client::WatchOptions::new().with_watch_id(OPENING_WATCH_ID);
            let stream = c.watch_client().watch(OPENING_KEY, Some(options)).await?;
            let (mut tx, mut rx) = stream.split();
            // Wait for the opening watcher, then cancel it: the stream then holds only the
            // benchmark's watchers, like a corekv stream.
            loop {
                match rx.message().await? {
                    Some(r) if r.created() && r.watch_id() == OPENING_WATCH_ID => break,
                    Some(_) => continue,
                    None => return Err(ErrorKind("transport".into())),
                }
            }
            tx.cancel(OPENING_WATCH_ID).await?;
            Ok((WatchSender::Etcd(tx), Some(WatchReceiver::Etcd(rx))))
        }
    }
}

impl WatchSender {
    /// Creates watcher `watch_id` (≥ 1, unique on the stream) on `key`; see [`Create`].
    pub fn create(&mut self, key: Vec<u8>, watch_id: i64) -> Create<'_> {
        debug_assert!((1..OPENING_WATCH_ID).contains(&watch_id));
        match self {
            WatchSender::Corekv(w) => {
                let w = w.clone();
                Create::Acked(Box::pin(async move {
                    w.create(WatchRequest {
                        key,
                        watch_id,
                        ..WatchRequest::default()
                    })
                    .await?;
                    Ok(())
                }))
            }
            #[cfg(feature = "etcd")]
            WatchSender::Etcd(tx) => {
                let options = etcd_client::WatchOptions::new().with_watch_id(watch_id);
                Create::Sent(Box::pin(async move {
                    tx.watch(key, Some(options)).await.map_err(ErrorKind::from)
                }))
            }
        }
    }

    /// Whether acknowledgements arrive as [`WatchMsg::Created`] (etcd) rather than as the
    /// reply of [`WatchSender::create`] (corekv).
    pub fn acks_on_stream(&self) -> bool {
        !matches!(self, WatchSender::Corekv(_))
    }

    /// Ends the creating phase. corekv: the stream for reading, once no create is in flight
    /// any more (in-flight creates hold the stream until their replies). etcd: the request
    /// half, which the caller keeps until it stops reading (its receiving half came with
    /// [`open_watch`]; dropping the request half would end the client's request stream, and
    /// etcd closes a watch stream whose requests ended).
    pub fn finish(self) -> Result<Finished, String> {
        match self {
            WatchSender::Corekv(w) => match Rc::try_unwrap(w) {
                Ok(w) => Ok(Finished::Read(Box::new(WatchReceiver::Corekv(w)))),
                Err(_) => Err("a watch create is still in flight".into()),
            },
            #[cfg(feature = "etcd")]
            s @ WatchSender::Etcd(_) => Ok(Finished::Keep(s)),
        }
    }
}

/// A create in progress.
pub enum Create<'a> {
    /// corekv: resolves when the server acknowledged the watcher (it can be spawned: it
    /// holds the stream, not a borrow).
    Acked(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ErrorKind>>>>),
    /// etcd: resolves when the request was handed to the stream; the acknowledgement is
    /// [`WatchMsg::Created`] on the receiving half.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Sent(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ErrorKind>> + 'a>>),
}

/// What [`WatchSender::finish`] leaves.
pub enum Finished {
    /// Read the stream from here on.
    Read(Box<WatchReceiver>),
    /// Keep this alive while reading the receiver from [`open_watch`].
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Keep(WatchSender),
}

impl WatchReceiver {
    /// The next response, reduced to [`WatchMsg`]; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<WatchMsg, ErrorKind>> {
        match self {
            WatchReceiver::Corekv(w) => {
                let r = match w.next().await? {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e.into())),
                };
                Some(Ok(if r.created {
                    WatchMsg::Created(r.watch_id)
                } else if r.canceled {
                    WatchMsg::Canceled(r.watch_id, r.cancel_reason)
                } else if !r.events.is_empty() {
                    WatchMsg::Events(r.events.into_iter().map(|e| e.kv.value).collect())
                } else {
                    WatchMsg::Other
                }))
            }
            #[cfg(feature = "etcd")]
            WatchReceiver::Etcd(rx) => {
                let r = match rx.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e.into())),
                };
                Some(Ok(if r.created() {
                    WatchMsg::Created(r.watch_id())
                } else if r.canceled() {
                    if r.watch_id() == OPENING_WATCH_ID {
                        WatchMsg::Other
                    } else {
                        WatchMsg::Canceled(r.watch_id(), r.cancel_reason().to_string())
                    }
                } else if !r.events().is_empty() {
                    WatchMsg::Events(
                        r.events()
                            .iter()
                            .map(|e| e.kv().map(|kv| kv.value().to_vec()).unwrap_or_default())
                            .collect(),
                    )
                } else {
                    WatchMsg::Other
                }))
            }
        }
    }
}

impl StreamConn {
    /// Writes `key` = `value`.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), ErrorKind> {
        match self {
            StreamConn::Corekv(c) => {
                c.put(corekv::mvcc::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await?;
            }
            #[cfg(feature = "etcd")]
            StreamConn::Etcd(c) => {
                c.kv_client().put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, ErrorKind> {
        match self {
            StreamConn::Corekv(c) => Ok(c.lease_grant(ttl, 0).await?.0),
            #[cfg(feature = "etcd")]
            StreamConn::Etcd(c) => Ok(c.lease_client().grant(ttl, None).await?.id()),
        }
    }

    /// Revokes lease `id`.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), ErrorKind> {
        match self {
            StreamConn::Corekv(c) => {
                c.lease_revoke(id).await?;
            }
            #[cfg(feature = "etcd")]
            StreamConn::Etcd(c) => {
                c.lease_client().revoke(id).await?;
            }
        }
        Ok(())
    }

    /// Sets up keep-alives of `ids` on this connection (etcd: opens one keep-alive stream
    /// per id, which sends its first keep-alive; not part of a measurement).
    pub async fn keep_aliver(&self, ids: Vec<i64>) -> Result<KeepAliver, ErrorKind> {
        match self {
            StreamConn::Corekv(c) => Ok(KeepAliver::Corekv {
                client: c.clone(),
                ids,
            }),
            #[cfg(feature = "etcd")]
            StreamConn::Etcd(c) => {
                let mut lc = c.lease_client();
                let mut streams = Vec::with_capacity(ids.len());
                for &id in &ids {
                    streams.push(lc.keep_alive(id).await?);
                }
                Ok(KeepAliver::Etcd { ids, streams })
            }
        }
    }
}

/// What one keep-alive round refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundResult {
    /// Ids answered with a TTL > 0.
    pub refreshed: u64,
    /// Ids answered "not found" (TTL ≤ 0).
    pub lost: u64,
    /// Ids the server forwarded to another shard (corekv only).
    pub forwarded: u64,
}

/// Keep-alives of a fixed set of leases on one connection.
pub enum KeepAliver {
    /// corekv: one message carries a whole round.
    Corekv {
        /// The connection.
        client: Rc<Client>,
        /// The leases, in round order.
        ids: Vec<i64>,
    },
    /// etcd: one stream per lease, one id per message.
    #[cfg(feature = "etcd")]
    Etcd {
        /// The leases, in round order.
        ids: Vec<i64>,
        /// The keep-alive stream of `ids[i]`.
        streams: Vec<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    },
}

impl KeepAliver {
    /// Leases this keeps alive.
    pub fn len(&self) -> usize {
        match self {
            KeepAliver::Corekv { ids, .. } => ids.len(),
            #[cfg(feature = "etcd")]
            KeepAliver::Etcd { ids, .. } => ids.len(),
        }
    }

    /// Ids one message carries (etcd: always 1).
    pub fn ids_per_message(&self, round: usize) -> usize {
        match self {
            KeepAliver::Corekv { .. } => round,
            #[cfg(feature = "etcd")]
            KeepAliver::Etcd { .. } => 1,
        }
    }

    /// One keep-alive for each lease at positions `from..from + n` (wrapping around): one
    /// corekv message, or n etcd messages sent back to back and then awaited together.
    pub async fn round(&mut self, from: usize, n: usize) -> Result<RoundResult, ErrorKind> {
        let len = self.len();
        debug_assert!(len > 0 && n >= 1 && n <= len);
        match self {
            KeepAliver::Corekv { client, ids } => {
                let msg: Vec<i64> = (0..n).map(|i| ids[(from + i) % len]).collect();
                let r = client.lease_keep_alive_report(&msg, n).await?;
                let refreshed = r.ttls.iter().filter(|&&t| t > 0).count() as u64;
                Ok(RoundResult {
                    refreshed,
                    lost: msg.len() as u64 - refreshed,
                    forwarded: r.forwarded as u64,
                })
            }
            #[cfg(feature = "etcd")]
            KeepAliver::Etcd { streams, .. } => {
                for i in 0..n {
                    streams[(from + i) % len].0.keep_alive().await?;
                }
                let mut out = RoundResult::default();
                for i in 0..n {
                    match streams[(from + i) % len].1.message().await? {
                        Some(r) if r.ttl() > 0 => out.refreshed += 1,
                        Some(_) => out.lost += 1,
                        None => return Err(ErrorKind("transport".into())),
                    }
                }
                Ok(out)
            }
        }
    }
}
