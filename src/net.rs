//! Transport helpers shared by the server and the client.
//!
//! Cap'n Proto's write queue flushes after every message, so with many calls in flight on one
//! connection each response (or request) would cost its own `send` system call; a profile of
//! the server under concurrent reads showed the send path as the largest single cost.
//! [`CoalescingWriter`] makes that flush cheap: it hands the bytes to a per-connection flusher
//! task that first yields to the executor, so every message produced in the same executor
//! pass goes out in one `send`.
//!
//! On the server the flusher also sends each batch with a plain non-blocking `send` on the
//! socket's descriptor first ([`CoalescingWriter::with_direct_send`]) and hands only what the
//! socket does not take at once to the async writer: an io_uring send costs glommio a
//! submission, a completion and a task wake-up per batch on top of the same kernel work, and
//! a watch fan-out makes one batch per connection per put.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use capnp::capability::Promise;
use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::io::{AsyncWrite, AsyncWriteExt};

/// Bytes a [`CoalescingWriter`] buffers before writers wait for the flusher; bounds the memory
/// of one connection's outgoing side (plus the batch being sent).
pub const MAX_COALESCED_BYTES: usize = 256 << 10;

/// A future the caller runs in the background on the connection's thread (the flusher).
pub type FlusherTask = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct State {
    /// Bytes accepted but not yet handed to the socket.
    pending: Vec<u8>,
    /// The first write error; every later call reports it.
    error: Option<(io::ErrorKind, String)>,
    /// The flusher, when it waits for bytes.
    flusher: Option<Waker>,
    /// Writers (and `close`) waiting for room or for the flusher to finish.
    writers: Vec<Waker>,
    /// `poll_close` was called: the flusher sends what is left, closes and ends.
    closing: bool,
    /// The flusher has ended (closed or failed).
    finished: bool,
}

impl State {
    fn wake_flusher(&mut self) {
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    fn wake_writers(&mut self) {
        for w in self.writers.drain(..) {
            w.wake();
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }
}

/// An [`AsyncWrite`] whose `flush` returns at once and whose bytes are sent by a flusher task
/// after the executor has run every other ready task, so concurrent messages share one
/// `send`. Bytes are always sent in the order written; `close` sends everything left first.
/// Buffering is bounded by [`MAX_COALESCED_BYTES`]: writers wait when it is full.
pub struct CoalescingWriter {
    state: Rc<RefCell<State>>,
}

impl CoalescingWriter {
    /// Wraps `inner`; the returned task must be spawned on the current thread (it owns
    /// `inner` and ends when the writer is closed or a write fails).
    pub fn new<W: AsyncWrite + Unpin + 'static>(inner: W) -> (CoalescingWriter, FlusherTask) {
        let state = Rc::new(RefCell::new(State::default()));
        let task = Box::pin(run_flusher(inner, None, state.clone()));
        (CoalescingWriter { state }, task)
    }

    /// Like [`Self::new`] for a socket whose descriptor is `fd` (the one `inner` writes to):
    /// each batch is first offered to a non-blocking `send` on `fd`, and only what the socket
    /// does not take at once goes through `inner`. Bytes stay in order because the flusher is
    /// the only writer and never starts a `send` while a write through `inner` is unfinished.
    /// `fd` must stay open as long as the flusher runs (the owner of `inner` keeps it).
    pub fn with_direct_send<W: AsyncWrite + Unpin + 'static>(
        inner: W,
        fd: std::os::unix::io::RawFd,
    ) -> (CoalescingWriter, FlusherTask) {
        let state = Rc::new(RefCell::new(State::default()));
        let task = Box::pin(run_flusher(inner, Some(fd), state.clone()));
        (CoalescingWriter { state }, task)
    }
}

/// Sends as much of `buf` as the socket `fd` takes without blocking; returns the bytes sent
/// (0 when it would block). Errors other than "would block" and EINTR are returned.
fn send_now(fd: std::os::unix::io::RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        // SAFETY: the pointer and length describe the live slice `buf[sent..]`; send only
        // reads from it.
        let n = unsafe {
            libc::send(
                fd,
                buf[sent..].as_ptr() as *const libc::c_void,
                buf.len() - sent,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

async fn run_flusher<W: AsyncWrite + Unpin>(
    mut inner: W,
    direct: Option<std::os::unix::io::RawFd>,
    state: Rc<RefCell<State>>,
) {
    let mut sending = Vec::new();
    let result: io::Result<()> = async {
        loop {
            // Wait for bytes (or close).
            futures::future::poll_fn(|cx| {
                let mut st = state.borrow_mut();
                if !st.pending.is_empty() || st.closing {
                    Poll::Ready(())
                } else {
                    st.flusher = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            // Let every other ready task write first: that is the whole point.
            yield_once().await;
            {
                let mut st = state.borrow_mut();
                std::mem::swap(&mut sending, &mut st.pending);
                st.wake_writers();
            }
            if sending.is_empty() {
                // Woken by close with nothing left.
                inner.close().await?;
                return Ok(());
            }
            let sent = match direct {
                Some(fd) => send_now(fd, &sending)?,
                None => 0,
            };
            if sent < sending.len() {
                inner.write_all(&sending[sent..]).await?;
                inner.flush().await?;
            }
            sending.clear();
        }
    }
    .await;
    let mut st = state.borrow_mut();
    if let Err(e) = result {
        st.error = Some((e.kind(), e.to_string()));
    }
    st.finished = true;
    st.pending = Vec::new();
    st.wake_writers();
}

/// Returns `Pending` once (after scheduling itself again), so the executor runs the other
/// ready tasks before this one continues.
async fn yield_once() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

impl AsyncWrite for CoalescingWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.state.borrow_mut();
        st.check()?;
        if st.finished || st.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after close",
            )));
        }
        let room = MAX_COALESCED_BYTES.saturating_sub(st.pending.len());
        if room == 0 {
            st.writers.push(cx.waker().clone());
            st.wake_flusher();
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        st.pending.extend_from_slice(&buf[..n]);
        st.wake_flusher();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The flusher sends the bytes once the current executor pass ends.
        let st = self.state.borrow();
        st.check()?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.state.borrow_mut();
        if st.finished {
            return Poll::Ready(st.check());
        }
        st.closing = true;
        st.writers.push(cx.waker().clone());
        st.wake_flusher();
        Poll::Pending
    }
}

impl Drop for CoalescingWriter {
    fn drop(&mut self) {
        // Let the flusher send what is left and end instead of waiting forever.
        let mut st = self.state.borrow_mut();
        st.closing = true;
        st.wake_flusher();
    }
}

/// Largest first segment, in words, of an outgoing Cap'n Proto RPC message (2 KiB).
///
/// capnp-rpc asks for a 1,024-word (8 KiB) first segment for every call it sends (a put from
/// the client, a watch-event batch from the server), and segments are allocated zeroed: on
/// this machine ~113 ns per message against ~49 ns for 2 KiB, and 8 KiB of cache touched per
/// message and of memory held per call in flight, for calls that are mostly a few hundred
/// bytes. The hint is the connection's to adjust (`capnp_rpc::Connection::
/// new_outgoing_message`); a larger message grows into further segments as before.
pub const MAX_FIRST_SEGMENT_WORDS: u32 = 256;

/// The two-party RPC network over `reader`/`writer` (as `capnp_rpc::twoparty::VatNetwork`),
/// with the first segment of every outgoing message capped at [`MAX_FIRST_SEGMENT_WORDS`].
pub fn rpc_network<R>(
    reader: R,
    writer: impl futures::io::AsyncWrite + Unpin + 'static,
    side: Side,
    options: capnp::message::ReaderOptions,
) -> Box<dyn capnp_rpc::VatNetwork<Side>>
where
    R: futures::io::AsyncRead + Unpin + 'static,
{
    Box::new(SmallFirstSegments(capnp_rpc::twoparty::VatNetwork::new(
        reader, writer, side, options,
    )))
}

/// A `VatNetwork` whose connections cap the first-segment hint (see [`rpc_network`]).
struct SmallFirstSegments<N>(N);

impl<N: capnp_rpc::VatNetwork<Side>> capnp_rpc::VatNetwork<Side> for SmallFirstSegments<N> {
    fn connect(&mut self, host_id: Side) -> Option<Box<dyn capnp_rpc::Connection<Side>>> {
        let c = self.0.connect(host_id)?;
        Some(Box::new(SmallFirstSegmentConnection(c)))
    }

    fn accept(&mut self) -> Promise<Box<dyn capnp_rpc::Connection<Side>>, capnp::Error> {
        let accepted = self.0.accept();
        Promise::from_future(async move {
            let c = accepted.await?;
            Ok(Box::new(SmallFirstSegmentConnection(c)) as Box<dyn capnp_rpc::Connection<Side>>)
        })
    }

    fn drive_until_shutdown(&mut self) -> Promise<(), capnp::Error> {
        self.0.drive_until_shutdown()
    }
}

struct SmallFirstSegmentConnection(Box<dyn capnp_rpc::Connection<Side>>);

impl capnp_rpc::Connection<Side> for SmallFirstSegmentConnection {
    fn get_peer_vat_id(&self) -> Side {
        self.0.get_peer_vat_id()
    }

    fn new_outgoing_message(
        &mut self,
        first_segment_word_size: u32,
    ) -> Box<dyn capnp_rpc::OutgoingMessage> {
        // 0 means "connection's choice": choose the cap rather than the library's 8 KiB.
        let words = match first_segment_word_size {
            0 => MAX_FIRST_SEGMENT_WORDS,
            n => n.min(MAX_FIRST_SEGMENT_WORDS),
        };
        self.0.new_outgoing_message(words)
    }

    fn receive_incoming_message(
        &mut self,
    ) -> Promise<Option<Box<dyn capnp_rpc::IncomingMessage>>, capnp::Error> {
        self.0.receive_incoming_message()
    }

    fn new_stream(
        &mut self,
    ) -> (
        Box<dyn capnp_rpc::FlowController>,
        Promise<(), capnp::Error>,
    ) {
        self.0.new_stream()
    }

    fn shutdown(&mut self, result: capnp::Result<()>) -> Promise<(), capnp::Error> {
        self.0.shutdown(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A socket stand-in that records every write call.
    struct Recorder {
        data: Rc<RefCell<Vec<u8>>>,
        writes: Rc<Cell<usize>>,
        fail_after: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail_after.is_some_and(|n| self.writes.get() >= n) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")));
            }
            self.writes.set(self.writes.get() + 1);
            self.data.borrow_mut().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn run<F: Future<Output = ()> + 'static>(f: F) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap()
            .run(f);
    }

    #[test]
    fn messages_flushed_in_one_pass_share_one_send_and_keep_their_order() {
        run(async {
            let data = Rc::new(RefCell::new(Vec::new()));
            let writes = Rc::new(Cell::new(0));
            let recorder = Recorder {
                data: data.clone(),
                writes: writes.clone(),
                fail_after: None,
            };
            let (writer, flusher) = CoalescingWriter::new(recorder);
            let flusher = glommio::spawn_local(flusher);
            let mut writer = writer;
            // 100 flushed "messages" written in one executor pass, as Cap'n Proto's write
            // queue does when many calls complete together.
            for i in 0..100u8 {
                writer.write_all(&[i; 10]).await.unwrap();
                writer.flush().await.unwrap();
            }
            writer.close().await.unwrap();
            flusher.await;
            let expected: Vec<u8> = (0..100u8).flat_map(|i| [i; 10]).collect();
            assert_eq!(*data.borrow(), expected);
            assert!(
                writes.get() <= 2,
                "100 flushed messages took {} sends",
                writes.get()
            );
        });
    }

    #[test]
    fn buffering_is_bounded_and_large_writes_arrive_whole() {
        run(async {
            let data = Rc::new(RefCell::new(Vec::new()));
            let writes = Rc::new(Cell::new(0));
            let (mut writer, flusher) = CoalescingWriter::new(Recorder {
                data: data.clone(),
                writes,
                fail_after: None,
            });
            let flusher = glommio::spawn_local(flusher);
            let big: Vec<u8> = (0..3 * MAX_COALESCED_BYTES + 17).map(|i| i as u8).collect();
            writer.write_all(&big).await.unwrap();
            assert!(writer.state.borrow().pending.len() <= MAX_COALESCED_BYTES);
            writer.close().await.unwrap();
            flusher.await;
            assert_eq!(*data.borrow(), big);
        });
    }

    #[test]
    fn a_failed_send_is_reported_to_later_writes_and_close() {
        run(async {
            let (mut writer, flusher) = CoalescingWriter::new(Recorder {
                data: Rc::new(RefCell::new(Vec::new())),
                writes: Rc::new(Cell::new(0)),
                fail_after: Some(0),
            });
            let flusher = glommio::spawn_local(flusher);
            writer.write_all(b"hello").await.unwrap();
            flusher.await;
            let err = writer.write_all(b"again").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(
                writer.close().await.unwrap_err().kind(),
                io::ErrorKind::ConnectionReset
            );
        });
    }

    /// Everything the peer of a socket pair has received so far (non-blocking).
    fn drain(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    }

    #[test]
    fn direct_send_takes_what_the_socket_accepts_and_the_writer_gets_the_rest_in_order() {
        use std::os::unix::io::AsRawFd;
        run(async {
            let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let data = Rc::new(RefCell::new(Vec::new()));
            let writes = Rc::new(Cell::new(0));
            let (mut writer, flusher) = CoalescingWriter::with_direct_send(
                Recorder {
                    data: data.clone(),
                    writes: writes.clone(),
                    fail_after: None,
                },
                ours.as_raw_fd(),
            );
            let flusher = glommio::spawn_local(flusher);
            // Small: the socket takes all of it, the async writer is not used.
            writer.write_all(b"small message").await.unwrap();
            writer.flush().await.unwrap();
            yield_once().await;
            yield_once().await;
            assert_eq!(drain(&mut peer), b"small message");
            assert_eq!(writes.get(), 0);
            // Far more than the socket buffers hold while nobody reads: the socket takes a
            // prefix, the async writer the rest, and together they are the bytes in order.
            let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
            writer.write_all(&big).await.unwrap();
            writer.close().await.unwrap();
            flusher.await;
            let direct = drain(&mut peer);
            assert!(!direct.is_empty() && direct.len() < big.len());
            assert!(writes.get() > 0);
            let mut all = direct;
            all.extend_from_slice(&data.borrow());
            assert!(all == big, "bytes lost or reordered");
            drop(ours);
        });
    }

    #[test]
    fn direct_send_errors_are_reported_like_write_errors() {
        use std::os::unix::io::AsRawFd;
        run(async {
            let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            drop(peer);
            let (mut writer, flusher) = CoalescingWriter::with_direct_send(
                Recorder {
                    data: Rc::new(RefCell::new(Vec::new())),
                    writes: Rc::new(Cell::new(0)),
                    fail_after: None,
                },
                ours.as_raw_fd(),
            );
            let flusher = glommio::spawn_local(flusher);
            writer.write_all(b"to nobody").await.unwrap();
            flusher.await;
            let err = writer.write_all(b"again").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            drop(ours);
        });
    }
}
