//! Watching: a [`WatchStream`] per call to [`Client::watch_stream`], carrying many watchers.
//!
//! The server pushes responses into a sink this client exports; the sink appends each call's
//! responses to a bounded queue shared with the [`WatchStream`] and completes the server's
//! streaming call only once the queue is below [`WATCH_CLIENT_QUEUE`], so a consumer that
//! stops reading makes the server stop sending (and its watchers fall back to catch-up on the
//! server) instead of growing this client's memory.
//!
//! The queue is a plain single-threaded one (the sink and the stream live on the connection's
//! thread): a call's responses are appended together and wake the consumer once, instead of
//! one channel send and one wake-up per response (1,000 watchers over 100 streams make every
//! put deliver 10 copies per call on each of 100 connections, all on the client's threads).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{Client, ClientError, Result};
pub use crate::api::watch::{WatchEvent, WatchResponse};
use crate::api::{self, watch as wire_watch};
use crate::generated::rpc_capnp::{
    watch_cancel_result, watch_create_result, watch_sink, watch_stream,
};
pub use crate::watch::hub::CreateRequest as WatchRequest;

/// Responses buffered between the connection and the consumer of a [`WatchStream`]: the sink
/// takes a call's responses only while fewer than this are queued, so the queue holds at most
/// this many plus one call's worth (the server bounds a call at
/// `server::watch_service::MAX_SINK_BATCH_RESPONSES` copies plus one shared response).
pub const WATCH_CLIENT_QUEUE: usize = 64;

/// The queue between a stream's sink and its consumer.
#[derive(Default)]
struct Shared {
    items: VecDeque<Result<WatchResponse>>,
    /// The consumer waiting for a response.
    consumer: Option<Waker>,
    /// Sink calls waiting for room (streaming calls are delivered one at a time, so normally
    /// at most one).
    producers: Vec<Waker>,
    /// The sink is gone (the server released it or the connection ended): after the queued
    /// responses (and those of sink calls still delivering) the stream ends.
    ended: bool,
    /// Sink calls whose responses are not queued yet (see [`Delivering`]).
    delivering: usize,
    /// The consumer dropped the stream: responses are discarded.
    closed: bool,
}

impl Shared {
    /// The consumer is gone: discard what is queued and let every waiting sink call finish
    /// (later calls are discarded at once), so the server is never held back by nobody.
    fn close(&mut self) {
        self.closed = true;
        self.items.clear();
        for w in self.producers.drain(..) {
            w.wake();
        }
    }

    fn wake_consumer(&mut self) {
        if let Some(w) = self.consumer.take() {
            w.wake();
        }
    }
}

/// The client-side sink the server streams into.
struct Sink {
    queue: Rc<RefCell<Shared>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let mut q = self.queue.borrow_mut();
        q.ended = true;
        q.wake_consumer();
    }
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

    /// Hands `decoded` to the consumer in order, all at once when the queue has room; waiting
    /// here is the backpressure: the server's next streaming call is held back until the
    /// consumer has taken enough.
    fn deliver(
        &self,
        decoded: Vec<Result<WatchResponse>>,
    ) -> impl Future<Output = std::result::Result<(), capnp::Error>> + 'static {
        let mut guard = Delivering::new(self.queue.clone());
        let mut decoded = Some(decoded);
        std::future::poll_fn(move |cx| {
            let queue = guard.queue.clone();
            let mut q = queue.borrow_mut();
            if q.closed {
                drop(q);
                guard.finish();
                return Poll::Ready(Ok(())); // the consumer dropped the stream
            }
            if q.items.len() >= WATCH_CLIENT_QUEUE {
                if !q.producers.iter().any(|w| w.will_wake(cx.waker())) {
                    q.producers.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let items = decoded.take().unwrap_or_default();
            if !items.is_empty() {
                q.items.extend(items);
                q.wake_consumer();
            }
            drop(q);
            guard.finish();
            Poll::Ready(Ok(()))
        })
    }
}

/// Counts a sink call whose responses are not yet queued: the stream does not end (even if
/// the sink itself is already released) while one is pending, so no response is lost. It
/// stops counting when the call has queued its responses or is dropped unfinished.
struct Delivering {
    queue: Rc<RefCell<Shared>>,
    counted: bool,
}

impl Delivering {
    fn new(queue: Rc<RefCell<Shared>>) -> Delivering {
        queue.borrow_mut().delivering += 1;
        Delivering {
            queue,
            counted: true,
        }
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.counted, false) {
            let mut q = self.queue.borrow_mut();
            debug_assert!(q.delivering > 0);
            q.delivering -= 1;
            if q.delivering == 0 && q.ended {
                q.wake_consumer();
            }
        }
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        self.finish();
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
    queue: Rc<RefCell<Shared>>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.queue.borrow_mut().close();
    }
}

impl Client {
    /// Opens a watch stream on this client's connection.
    pub async fn watch_stream(&self) -> Result<WatchStream> {
        let queue = Rc::new(RefCell::new(Shared::default()));
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
                open.get().set_sink(capnp_rpc::new_client(Sink {
                    queue: queue.clone(),
                }));
                Ok(open.send().promise.await?.get()?.get_stream()?)
            })
            .await?;
        Ok(WatchStream {
            runtime: self.runtime.clone(),
            timeout: self.options.request_timeout,
            stream,
            queue,
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
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchResponse>>> {
        poll_take(&self.queue, cx)
    }
}

/// Takes the next queued response, waking a sink call waiting for room once there is some;
/// `None` once the sink is gone and everything it delivered has been taken.
fn poll_take(queue: &RefCell<Shared>, cx: &mut Context<'_>) -> Poll<Option<Result<WatchResponse>>> {
    let mut q = queue.borrow_mut();
    match q.items.pop_front() {
        Some(r) => {
            if q.items.len() < WATCH_CLIENT_QUEUE {
                for w in q.producers.drain(..) {
                    w.wake();
                }
            }
            Poll::Ready(Some(r))
        }
        None if q.ended && q.delivering == 0 => Poll::Ready(None),
        None => {
            q.consumer = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchResponse>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_take(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(watch_id: i64) -> Result<WatchResponse> {
        Ok(WatchResponse {
            watch_id,
            ..WatchResponse::default()
        })
    }

    fn ids(n: std::ops::Range<i64>) -> Vec<Result<WatchResponse>> {
        n.map(response).collect()
    }

    /// A sink and its queue, the queue already holding `WATCH_CLIENT_QUEUE` responses with
    /// ids `0..WATCH_CLIENT_QUEUE` (delivered by one call that found room at once).
    fn full_queue(cx: &mut Context<'_>) -> (Rc<RefCell<Shared>>, Sink) {
        let queue = Rc::new(RefCell::new(Shared::default()));
        let sink = Sink {
            queue: queue.clone(),
        };
        let full = WATCH_CLIENT_QUEUE as i64;
        assert!(
            std::pin::pin!(sink.deliver(ids(0..full)))
                .poll(cx)
                .is_ready(),
            "room: taken at once"
        );
        (queue, sink)
    }

    #[test]
    fn a_call_waits_for_room_and_then_arrives_whole_and_in_order() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (queue, sink) = full_queue(&mut cx);
        let first = WATCH_CLIENT_QUEUE as i64;
        let mut call = std::pin::pin!(sink.deliver(ids(first..first + 10)));
        assert!(
            call.as_mut().poll(&mut cx).is_pending(),
            "full: the call waits"
        );
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            queue.borrow().producers.len(),
            1,
            "one waker per waiting call"
        );
        let mut seen = Vec::new();
        for _ in 0..2 {
            match poll_take(&queue, &mut cx) {
                Poll::Ready(Some(Ok(r))) => seen.push(r.watch_id),
                other => panic!("expected a response, got {other:?}"),
            }
        }
        assert!(
            call.as_mut().poll(&mut cx).is_ready(),
            "room again: delivered"
        );
        assert!(queue.borrow().items.len() <= WATCH_CLIENT_QUEUE + 10);
        while let Poll::Ready(Some(Ok(r))) = poll_take(&queue, &mut cx) {
            seen.push(r.watch_id);
        }
        assert_eq!(seen, (0..first + 10).collect::<Vec<_>>());
        assert!(
            poll_take(&queue, &mut cx).is_pending(),
            "sink alive: no end"
        );
    }

    #[test]
    fn the_stream_ends_only_after_a_released_sinks_pending_call_delivered() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (queue, sink) = full_queue(&mut cx);
        let full = WATCH_CLIENT_QUEUE as i64;
        let mut late = std::pin::pin!(sink.deliver(ids(full..full + 3)));
        assert!(late.as_mut().poll(&mut cx).is_pending());
        drop(sink); // released by the server while its last call still waits for room
        let mut n = 0;
        loop {
            match poll_take(&queue, &mut cx) {
                Poll::Ready(Some(Ok(r))) => {
                    assert_eq!(r.watch_id, n);
                    n += 1;
                }
                Poll::Ready(None) => panic!("ended after {n} with a call still pending"),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Pending => {
                    assert!(late.as_mut().poll(&mut cx).is_ready());
                }
            }
            if n == full + 3 {
                break;
            }
        }
        assert!(matches!(poll_take(&queue, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_dropped_consumer_discards_and_never_blocks_the_sink() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (queue, sink) = full_queue(&mut cx);
        let full = WATCH_CLIENT_QUEUE as i64;
        let mut waiting = std::pin::pin!(sink.deliver(ids(full..full + 1)));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        queue.borrow_mut().close(); // what `WatchStream`'s Drop does
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        let mut more = std::pin::pin!(sink.deliver(ids(0..1000)));
        assert!(more.as_mut().poll(&mut cx).is_ready());
        assert!(queue.borrow().items.is_empty(), "nothing kept for nobody");
    }
}
