//! The Watch service: one watch stream per `open`, many watchers per stream, responses
//! pushed to the client's `WatchSink` with Cap'n Proto streaming.
//!
//! Each stream has a sender task that pops the stream's queue in the hub and sends one
//! streaming call per response. Streaming calls are flow-controlled by the connection's
//! window, so a client that reads slowly makes the sender wait, the stream's queue fill up
//! to `watch::MAX_STREAM_QUEUE_BYTES`, and its watchers fall back to catch-up: the server
//! never buffers without bound, and writers (the applier) never wait for a watcher.

use std::future::Future;
use std::rc::Rc;

use crate::api;
use crate::generated::rpc_capnp::{watch, watch_sink, watch_stream};
use crate::mvcc::{Error, ErrorCode};
use crate::watch::hub::{Doorbell, SharedHub};

use super::service::ShardContext;

/// The Watch service of a connection.
pub struct WatchService {
    ctx: Rc<ShardContext>,
}

impl WatchService {
    /// The Watch service on the shard of `ctx`.
    pub fn new(ctx: Rc<ShardContext>) -> WatchService {
        WatchService { ctx }
    }
}

fn malformed(e: capnp::Error) -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        format!("malformed request: {e}"),
    )
}

impl watch::Server for WatchService {
    fn open(
        self: Rc<Self>,
        params: watch::OpenParams,
        mut results: watch::OpenResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let opened = (|| {
            let sink = params.get()?.get_sink()?;
            let bell = Rc::new(Doorbell::default());
            let sid = self.ctx.watch.borrow_mut().open_stream(bell.clone());
            glommio::spawn_local(send_loop(self.ctx.clone(), sid, bell, sink)).detach();
            results
                .get()
                .set_stream(capnp_rpc::new_client(WatchStreamService {
                    hub: self.ctx.watch.clone(),
                    sid,
                }));
            Ok(())
        })();
        std::future::ready(opened)
    }
}

/// Most responses sent to a sink in one call, counting a shared response once per watcher it
/// is for (what the client materializes).
pub const MAX_SINK_BATCH_RESPONSES: usize = 256;
/// Estimated bytes of responses gathered into one sink call, shared responses counted once
/// per copy (one more response may follow the last that fit, so a call is at most this plus
/// one response of at most `watch::MAX_SHARED_RESPONSE_BYTES` of copies).
pub const MAX_SINK_BATCH_BYTES: usize = 256 << 10;

/// Sends the stream's responses in order until the stream closes or the sink fails; what is
/// queued goes out in one `sendBatch` call (bounded by the limits above).
async fn send_loop(ctx: Rc<ShardContext>, sid: u64, bell: Rc<Doorbell>, sink: watch_sink::Client) {
    loop {
        let batch = {
            let mut hub = ctx.watch.borrow_mut();
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut copies = 0;
            while copies < MAX_SINK_BATCH_RESPONSES && bytes < MAX_SINK_BATCH_BYTES {
                match hub.pop(sid) {
                    Some(out) => {
                        bytes += out.bytes();
                        copies += out.copies();
                        batch.push(out);
                    }
                    None => break,
                }
            }
            batch
        };
        if batch.is_empty() {
            if !ctx.watch.borrow().is_open(sid) {
                return;
            }
            bell.wait().await;
            continue;
        }
        let sent = if let [out] = &batch[..] {
            let mut req = sink.send_request();
            api::watch::write_outgoing(out, ctx.header(0), req.get().init_response());
            drop(batch);
            req.send().await
        } else {
            let mut req = sink.send_batch_request();
            {
                let mut list = req.get().init_responses(batch.len() as u32);
                for (i, out) in batch.iter().enumerate() {
                    api::watch::write_outgoing(out, ctx.header(0), list.reborrow().get(i as u32));
                }
            }
            drop(batch);
            req.send().await
        };
        if let Err(e) = sent {
            crate::log!(Debug, "watch stream {sid}: sink failed: {e}");
            ctx.watch.borrow_mut().close_stream(sid);
            return;
        }
    }
}

/// One watch stream; dropping it (the client released it or disconnected) cancels its
/// watchers.
struct WatchStreamService {
    hub: SharedHub,
    sid: u64,
}

impl Drop for WatchStreamService {
    fn drop(&mut self) {
        self.hub.borrow_mut().close_stream(self.sid);
    }
}

impl watch_stream::Server for WatchStreamService {
    fn create(
        self: Rc<Self>,
        params: watch_stream::CreateParams,
        mut results: watch_stream::CreateResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let outcome = params
            .get()
            .and_then(|p| p.get_request())
            .and_then(api::watch::read_create_request)
            .map_err(malformed)
            .and_then(|req| {
                let mut hub = self.hub.borrow_mut();
                if !hub.is_open(self.sid) {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        "watch stream is closed (its sink failed)",
                    ));
                }
                hub.create(self.sid, req)
            });
        let mut r = results.get().init_result();
        match outcome {
            Ok(id) => r.set_ok(id),
            Err(e) => api::write_error(&e, r.init_err()),
        }
        std::future::ready(Ok(()))
    }

    fn cancel(
        self: Rc<Self>,
        params: watch_stream::CancelParams,
        mut results: watch_stream::CancelResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let outcome = params.get().map_err(malformed).and_then(|p| {
            let mut hub = self.hub.borrow_mut();
            if !hub.is_open(self.sid) {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "watch stream is closed (its sink failed)",
                ));
            }
            hub.cancel(self.sid, p.get_watch_id())
        });
        let mut r = results.get().init_result();
        match outcome {
            Ok(()) => r.set_ok(()),
            Err(e) => api::write_error(&e, r.init_err()),
        }
        std::future::ready(Ok(()))
    }

    fn request_progress(
        self: Rc<Self>,
        _: watch_stream::RequestProgressParams,
        _: watch_stream::RequestProgressResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let mut hub = self.hub.borrow_mut();
        if hub.is_open(self.sid) {
            hub.request_progress(self.sid);
        }
        std::future::ready(Ok(()))
    }
}
