//! Watching: a [`WatchStream`] per call to [`Client::watch_stream`], carrying many watchers.
//!
//! The server pushes responses into a sink this client exports; the sink hands them to a
//! bounded queue ([`WATCH_CLIENT_QUEUE`]) and completes the server's streaming call only once
//! there is room, so a consumer that stops reading makes the server stop sending (and its
//! watchers fall back to catch-up on the server) instead of growing this client's memory.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::{Client, ClientError, Result};
pub use crate::api::watch::{WatchEvent, WatchResponse};
use crate::api::{self, watch as wire_watch};
use crate::generated::rpc_capnp::{
    watch_cancel_result, watch_create_result, watch_sink, watch_stream,
};
pub use crate::watch::hub::CreateRequest as WatchRequest;

/// Responses buffered between the connection and the consumer of a [`WatchStream`].
pub const WATCH_CLIENT_QUEUE: usize = 64;

/// The client-side sink the server streams into.
struct Sink {
    tx: mpsc::Sender<Result<WatchResponse>>,
}

impl Sink {
    /// Decodes one wire response into the copies its watchers get (one per watch id it
    /// carries), or the error that it was malformed.
    fn decode(
        r: capnp::Result<crate::generated::rpc_capnp::watch_response::Reader<'_>>,
        out: &mut Vec<Result<WatchResponse>>,
    ) {
        if let Err(e) =
            r.and_then(|r| wire_watch::read_watch_response_copies(r, |x| out.push(Ok(x))))
        {
            out.push(Err(ClientError::Transport(format!(
                "malformed watch response: {e}"
            ))));
        }
    }

    /// Hands `decoded` to the consumer in order; waiting here is the backpressure: the
    /// server's next streaming call is held back until the consumer has taken something.
    fn deliver(
        &self,
        decoded: Vec<Result<WatchResponse>>,
    ) -> impl Future<Output = std::result::Result<(), capnp::Error>> + 'static {
        let mut tx = self.tx.clone();
        async move {
            for r in decoded {
                if tx.send(r).await.is_err() {
                    break; // the consumer dropped the stream
                }
            }
            Ok(())
        }
    }
}

impl watch_sink::Server for Sink {
    fn send(
        self: Rc<Self>,
        params: watch_sink::SendParams,
    ) -> impl Future<Output = std::result::Result<(), capnp::Error>> + 'static {
        let mut decoded = Vec::new();
        Sink::decode(params.get().and_then(|p| p.get_response()), &mut decoded);
        self.deliver(decoded)
    }

    fn send_batch(
        self: Rc<Self>,
        params: watch_sink::SendBatchParams,
    ) -> impl Future<Output = std::result::Result<(), capnp::Error>> + 'static {
        let mut decoded = Vec::new();
        match params.get().and_then(|p| p.get_responses()) {
            Ok(list) => {
                for r in list.iter() {
                    Sink::decode(Ok(r), &mut decoded);
                }
            }
            Err(e) => decoded.push(Err(ClientError::Transport(format!(
                "malformed watch response batch: {e}"
            )))),
        }
        self.deliver(decoded)
    }
}

/// A watch stream: create and cancel watchers, and read their responses in order.
pub struct WatchStream {
    runtime: Rc<dyn super::Runtime>,
    timeout: std::time::Duration,
    stream: watch_stream::Client,
    rx: mpsc::Receiver<Result<WatchResponse>>,
}

impl Client {
    /// Opens a watch stream on this client's connection.
    pub async fn watch_stream(&self) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(WATCH_CLIENT_QUEUE);
        let stream = self
            .call(async |c| {
                let watch = c
                    .bootstrap
                    .watch_request()
                    .send()
                    .promise
                    .await?
                    .get()?
                    .get_watch()?;
                let mut open = watch.open_request();
                open.get()
                    .set_sink(capnp_rpc::new_client(Sink { tx: tx.clone() }));
                Ok(open.send().promise.await?.get()?.get_stream()?)
            })
            .await?;
        Ok(WatchStream {
            runtime: self.runtime.clone(),
            timeout: self.options.request_timeout,
            stream,
            rx,
        })
    }
}

impl WatchStream {
    async fn with_timeout<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        use futures::FutureExt;
        futures::select_biased! {
            r = fut.fuse() => r,
            _ = self.runtime.sleep(self.timeout).fuse() => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Creates a watcher; returns its id. Its `created` response arrives on the stream before
    /// any of its events.
    pub async fn create(&self, req: WatchRequest) -> Result<i64> {
        let fut = async {
            let mut q = self.stream.create_request();
            api::watch::write_create_request(&req, q.get().init_request());
            let reply = q.send().promise.await?;
            match reply
                .get()?
                .get_result()?
                .which()
                .map_err(|e| capnp::Error::failed(e.to_string()))?
            {
                watch_create_result::Which::Ok(id) => Ok(id),
                watch_create_result::Which::Err(e) => {
                    Err(ClientError::Server(api::read_error(e?)?))
                }
            }
        };
        self.with_timeout(fut).await
    }

    /// Watches `key` (with etcd's `range_end` conventions) from `start_revision` (0: now).
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
        start_revision: i64,
    ) -> Result<i64> {
        self.create(WatchRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            ..WatchRequest::default()
        })
        .await
    }

    /// Cancels a watcher; its `canceled` response follows its last event.
    pub async fn cancel(&self, watch_id: i64) -> Result<()> {
        let fut = async {
            let mut q = self.stream.cancel_request();
            q.get().set_watch_id(watch_id);
            let reply = q.send().promise.await?;
            match reply
                .get()?
                .get_result()?
                .which()
                .map_err(|e| capnp::Error::failed(e.to_string()))?
            {
                watch_cancel_result::Which::Ok(()) => Ok(()),
                watch_cancel_result::Which::Err(e) => {
                    Err(ClientError::Server(api::read_error(e?)?))
                }
            }
        };
        self.with_timeout(fut).await
    }

    /// Asks for a progress response (watch id -1), sent once every watcher of the stream is
    /// synced: every event up to its revision has then been delivered.
    pub async fn request_progress(&self) -> Result<()> {
        let fut = async {
            self.stream
                .request_progress_request()
                .send()
                .promise
                .await?;
            Ok(())
        };
        self.with_timeout(fut).await
    }

    /// The next response; None once the stream has ended (connection lost or closed).
    pub async fn next(&mut self) -> Option<Result<WatchResponse>> {
        self.rx.next().await
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchResponse>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx)
    }
}
