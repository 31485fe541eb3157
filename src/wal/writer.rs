//! The append queue and the single writer task (group commit, rollover), and release.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use std::os::fd::AsRawFd;

use glommio::io::{Directory, DmaFile};
use glommio::sync::Semaphore;
use glommio::Task;

use super::format::{
    self, align_down, align_up, BLOCK_SIZE, FLAG_FIRST_IN_WRITE, FLAG_LAST_IN_BATCH,
    SEGMENT_HEADER_SIZE,
};
use super::io_thread::{AlignedBuf, IoThread};
use super::segment::{self, Prepared};
use super::{Options, Record, SegmentList, SegmentSummary, WalError, WalStats};

/// Completion slot shared by an [`super::AppendFuture`] and the writer.
#[derive(Default)]
pub struct Completion {
    result: RefCell<Option<Result<(), WalError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Completion {
    fn complete(&self, r: Result<(), WalError>) {
        debug_assert!(self.result.borrow().is_none(), "batch completed twice");
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), WalError>> {
        if let Some(r) = self.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A batch waiting to be written.
pub struct Pending {
    records: Vec<Record>,
    bytes: usize,
    done: Rc<Completion>,
}

impl Pending {
    pub(crate) fn new(records: Vec<Record>, bytes: usize) -> Self {
        debug_assert_eq!(
            bytes,
            records.iter().map(format::encoded_len).sum::<usize>()
        );
        Self {
            records,
            bytes,
            done: Rc::new(Completion::default()),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Batches the writer will take next; `ready_bytes <= max_queued_bytes`.
    ready: VecDeque<Pending>,
    ready_bytes: usize,
    /// Appenders waiting for room (backpressure), FIFO.
    blocked: VecDeque<Pending>,
    failed: Option<String>,
    closing: bool,
    writer_waker: Option<Waker>,
}

/// State shared by the `Wal` handle, the writer task and release.
pub struct Inner {
    /// `<data-dir>/wal`.
    pub(crate) dir: PathBuf,
    /// Open handle on `dir`, for fsyncs after renames and deletions.
    pub(crate) dir_handle: Directory,
    /// Validated options.
    pub(crate) opts: Options,
    queue: RefCell<Queue>,
    /// Counters since open.
    pub(crate) stats: RefCell<WalStats>,
    /// Live segments, oldest first; the last is active.
    pub(crate) segments: SegmentList,
    /// Highest entry/snapshot index made durable (mirrors the writer's), read by the
    /// background preparation to name the next segment.
    highest_index: Cell<Option<u64>>,
    /// Largest `first_index` used in a segment name so far: names never go backwards.
    name_floor: Cell<u64>,
    /// Serializes releases, so each deletion is durable before the next one starts.
    releasing: Semaphore,
    /// Writes and fdatasyncs the groups of at least `opts.io_thread_min_records` records (see
    /// `io_thread.rs` for why not io_uring).
    io: IoThread,
}

impl Inner {
    pub(crate) fn new(
        dir: PathBuf,
        dir_handle: Directory,
        opts: Options,
        segments: VecDeque<SegmentSummary>,
        io: IoThread,
    ) -> Self {
        Self {
            dir,
            dir_handle,
            opts,
            queue: RefCell::new(Queue::default()),
            stats: RefCell::new(WalStats::default()),
            segments: RefCell::new(segments),
            highest_index: Cell::new(None),
            name_floor: Cell::new(0),
            releasing: Semaphore::new(1),
            io,
        }
    }

    pub(crate) fn enqueue(&self, p: Pending) -> Result<Rc<Completion>, WalError> {
        let mut q = self.queue.borrow_mut();
        if let Some(m) = &q.failed {
            return Err(WalError::Failed(m.clone()));
        }
        if q.closing {
            return Err(WalError::Closed);
        }
        debug_assert!(p.bytes <= self.opts.max_queued_bytes);
        let done = p.done.clone();
        if q.blocked.is_empty() && q.ready_bytes + p.bytes <= self.opts.max_queued_bytes {
            q.ready_bytes += p.bytes;
            q.ready.push_back(p);
            if let Some(w) = q.writer_waker.take() {
                w.wake();
            }
        } else {
            q.blocked.push_back(p);
        }
        Ok(done)
    }

    pub(crate) fn begin_close(&self) {
        let mut q = self.queue.borrow_mut();
        q.closing = true;
        if let Some(w) = q.writer_waker.take() {
            w.wake();
        }
    }

    /// Marks the WAL failed and fails every queued batch.
    fn fail(&self, msg: String) {
        let drained: Vec<Pending> = {
            let mut q = self.queue.borrow_mut();
            q.failed = Some(msg.clone());
            q.ready_bytes = 0;
            let q = &mut *q;
            q.ready.drain(..).chain(q.blocked.drain(..)).collect()
        };
        for p in drained {
            p.done.complete(Err(WalError::Failed(msg.clone())));
        }
    }

    /// Waits for work; `None` once closing and nothing is left.
    async fn wait_for_work(&self) -> Option<usize> {
        poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            // Invariant: an appender only waits for room while something is ready to write.
            debug_assert!(q.blocked.is_empty() || !q.ready.is_empty());
            if let Some(p) = q.ready.front() {
                Poll::Ready(Some(p.bytes))
            } else if q.closing || q.failed.is_some() {
                Poll::Ready(None)
            } else {
                q.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Takes queued batches in order while they fit in `room` bytes, then lets blocked
    /// appenders in.
    fn take_group(&self, room: u64) -> Vec<Pending> {
        let mut q = self.queue.borrow_mut();
        let mut group = Vec::new();
        let mut used = 0u64;
        while let Some(p) = q.ready.front() {
            if used + p.bytes as u64 > room {
                break;
            }
            used += p.bytes as u64;
            let p = q.ready.pop_front().expect("front exists");
            q.ready_bytes -= p.bytes;
            group.push(p);
        }
        while let Some(p) = q.blocked.front() {
            if q.ready_bytes + p.bytes > self.opts.max_queued_bytes {
                break;
            }
            let p = q.blocked.pop_front().expect("front exists");
            q.ready_bytes += p.bytes;
            q.ready.push_back(p);
        }
        group
    }

    pub(crate) async fn release(&self, index: u64) -> Result<usize, WalError> {
        let _permit = self
            .releasing
            .acquire_permit(1)
            .await
            .map_err(|_| WalError::Closed)?;
        self.release_inner(index).await
    }

    async fn release_inner(&self, index: u64) -> Result<usize, WalError> {
        let mut deleted = 0;
        loop {
            let path = {
                let segs = self.segments.borrow();
                match segs.front() {
                    // Never the active (last) segment.
                    Some(s) if segs.len() > 1 && s.max_index.is_none_or(|m| m < index) => {
                        s.path.clone()
                    }
                    _ => break,
                }
            };
            std::fs::remove_file(&path)
                .map_err(|e| WalError::io("delete released segment", &path, None, e))?;
            self.segments.borrow_mut().pop_front();
            self.dir_handle
                .sync()
                .await
                .map_err(|e| WalError::io("sync dir", &self.dir, None, e))?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// The segment being appended to.
pub struct Active {
    /// Open O_DIRECT read/write handle.
    pub file: DmaFile,
    /// Its path (for error messages).
    pub path: PathBuf,
    /// Its sequence number (salts every record's crcs).
    pub seq: u64,
    /// Its size from the segment header: records must end at or before it.
    pub size: u64,
    /// Next record offset (8-aligned).
    pub pos: u64,
    /// Bytes of the block holding `pos`, from the block start to `pos`.
    pub tail: Vec<u8>,
}

/// Latest state records, repeated at the start of every new segment.
#[derive(Default, Clone)]
pub struct Carry {
    /// Latest durable hard state.
    pub hard_state: Option<Record>,
    /// Latest durable snapshot marker.
    pub snapshot: Option<Record>,
    /// Latest durable metadata.
    pub metadata: Option<Record>,
}

impl Carry {
    /// Remembers `r` if it is a state record (called in log order, for durable records only).
    pub fn observe(&mut self, r: &Record) {
        match r {
            Record::HardState { .. } => self.hard_state = Some(r.clone()),
            Record::Snapshot { .. } => self.snapshot = Some(r.clone()),
            Record::Metadata { .. } => self.metadata = Some(r.clone()),
            Record::Entry { .. } => {}
        }
    }

    fn records(&self) -> Vec<Record> {
        [&self.metadata, &self.snapshot, &self.hard_state]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Everything the writer needs from recovery.
pub struct WriterState {
    /// The segment being appended to.
    pub active: Active,
    /// State records to repeat at the start of the next segment.
    pub carry: Carry,
    /// Highest entry/snapshot index written so far.
    pub highest_index: Option<u64>,
    /// `first_index` of the active segment (names of later segments are never below it).
    pub active_first_index: u64,
    /// `(seq, end)` of the previous segment, written as the segment-start record when the
    /// active segment receives its first write (`None` for the first segment of a log).
    pub seal: Option<(u64, u64)>,
}

impl WriterState {
    /// Bytes that open the active segment before the first appended batch (0 unless fresh).
    fn opening_bytes(&self) -> u64 {
        if self.active.pos != SEGMENT_HEADER_SIZE {
            return 0;
        }
        let seal = if self.seal.is_some() {
            format::SEGMENT_START_LEN
        } else {
            0
        };
        let carry: usize = self.carry.records().iter().map(format::encoded_len).sum();
        (seal + carry) as u64
    }
}

/// The writer task: takes every queued batch, writes them with one O_DIRECT write and one
/// fdatasync, resolves them; rolls over to the prepared segment when the next batch does not
/// fit. Exits when closing and drained, or after a failure (failing everything queued).
pub async fn run(inner: Rc<Inner>, mut st: WriterState) {
    inner.highest_index.set(st.highest_index);
    inner.name_floor.set(st.active_first_index);
    let mut next = Some(spawn_prepare(&inner, st.active.seq + 1));
    while let Some(first_bytes) = inner.wait_for_work().await {
        let opening = st.opening_bytes();
        if st.active.pos + opening + first_bytes as u64 > st.active.size {
            if let Err(e) = rollover(&inner, &mut st, &mut next).await {
                inner.fail(e.to_string());
                break;
            }
            continue;
        }
        let room = st.active.size - st.active.pos - opening;
        let group = inner.take_group(room);
        debug_assert!(!group.is_empty());
        match write_group(&inner, &mut st, &group).await {
            Ok(()) => {
                for p in group {
                    p.done.complete(Ok(()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for p in group {
                    p.done.complete(Err(WalError::Failed(msg.clone())));
                }
                inner.fail(msg);
                break;
            }
        }
    }
    // Dropping the task cancels an unfinished preparation; its `.prep` file is removed on the
    // next open.
    drop(next);
}

fn spawn_prepare(inner: &Rc<Inner>, seq: u64) -> Task<Result<Prepared, WalError>> {
    let inner = inner.clone();
    glommio::spawn_local(async move {
        let opts = &inner.opts;
        let p = segment::prepare(&inner.dir, seq, opts.segment_size, opts.preallocate).await?;
        // Lower bound of the indexes the segment will hold (raft indexes only grow, except
        // for overwrites after a leader change, which the name does not promise to cover).
        let first_index = inner
            .highest_index
            .get()
            .map_or(0, |h| h.saturating_add(1))
            .max(inner.name_floor.get());
        inner.name_floor.set(first_index);
        let p = segment::publish(p, &inner.dir, &inner.dir_handle, first_index).await?;
        inner.stats.borrow_mut().segments_prepared += 1;
        Ok(p)
    })
}

async fn rollover(
    inner: &Rc<Inner>,
    st: &mut WriterState,
    next: &mut Option<Task<Result<Prepared, WalError>>>,
) -> Result<(), WalError> {
    let t0 = Instant::now();
    {
        // Every rollover consumes one prepared segment.
        let mut s = inner.stats.borrow_mut();
        if s.segments_prepared <= s.rollovers {
            s.rollovers_waited_for_prepare += 1;
        }
    }
    let seq = st.active.seq + 1;
    let prepared = match next.take() {
        Some(task) => task.await?,
        // Only after a cancelled preparation; prepare in line.
        None => spawn_prepare(inner, seq).await?,
    };
    debug_assert_eq!(prepared.seq, seq);
    let (path, first_index) = (prepared.path.clone(), prepared.first_index);
    st.seal = Some((st.active.seq, st.active.pos));
    let old = std::mem::replace(
        &mut st.active,
        Active {
            file: prepared.file,
            path: path.clone(),
            seq,
            size: prepared.size,
            pos: SEGMENT_HEADER_SIZE,
            tail: Vec::new(),
        },
    );
    // Closing is not needed before the next write; do not hold appends for it.
    glommio::spawn_local(async move {
        let _ = old.file.close().await;
    })
    .detach();
    st.active_first_index = first_index;
    inner.segments.borrow_mut().push_back(SegmentSummary {
        seq,
        first_index,
        max_index: None,
        path,
    });
    {
        let mut s = inner.stats.borrow_mut();
        s.rollovers += 1;
        s.rollover_latency_us
            .record(t0.elapsed().as_micros() as u64);
    }
    *next = Some(spawn_prepare(inner, seq + 1));
    Ok(())
}

/// A group's write buffer: for the I/O thread, or for glommio's io_uring write.
enum GroupBuf {
    Thread(AlignedBuf),
    Ring(glommio::io::DmaBuffer),
}

async fn write_group(
    inner: &Inner,
    st: &mut WriterState,
    group: &[Pending],
) -> Result<(), WalError> {
    let fresh = st.active.pos == SEGMENT_HEADER_SIZE;
    let opening = st.opening_bytes() as usize;
    let carry = if fresh {
        st.carry.records()
    } else {
        Vec::new()
    };
    let seal = if fresh { st.seal } else { None };
    let a = &mut st.active;
    let start = align_down(a.pos, BLOCK_SIZE as u64);
    let tail_len = a.tail.len();
    debug_assert_eq!(start + tail_len as u64, a.pos);
    let new_bytes = opening + group.iter().map(|p| p.bytes).sum::<usize>();
    let end = a.pos + new_bytes as u64;
    assert!(end <= a.size, "writer: group overruns the segment");
    let len = (align_up(end, BLOCK_SIZE as u64) - start) as usize;
    // Decided before encoding, so the records are encoded straight into the buffer of the path
    // that writes them.
    let planned = carry.len() + group.iter().map(|p| p.records.len()).sum::<usize>();
    let mut buf = if planned >= inner.opts.io_thread_min_records {
        GroupBuf::Thread(AlignedBuf::zeroed(len))
    } else {
        GroupBuf::Ring(a.file.alloc_dma_buffer(len))
    };
    let b = match &mut buf {
        GroupBuf::Thread(t) => t.as_mut_slice(),
        GroupBuf::Ring(d) => d.as_bytes_mut(),
    };
    b[..tail_len].copy_from_slice(&a.tail);
    let mut off = tail_len;
    let mut first = true;
    let mut records = 0u64;
    if let Some((prev_seq, prev_end)) = seal {
        // Opens the segment's first write; ends the opening batch unless state records follow.
        let mut flags = FLAG_FIRST_IN_WRITE;
        if carry.is_empty() {
            flags |= FLAG_LAST_IN_BATCH;
        }
        let n = format::SEGMENT_START_LEN;
        format::encode_segment_start(prev_seq, prev_end, a.seq, flags, &mut b[off..off + n]);
        off += n;
        first = false;
    }
    let mut emit = |batch: &[Record], b: &mut [u8], off: &mut usize| {
        for (i, r) in batch.iter().enumerate() {
            let n = format::encoded_len(r);
            let mut flags = 0;
            if first {
                flags |= FLAG_FIRST_IN_WRITE;
                first = false;
            }
            if i + 1 == batch.len() {
                flags |= FLAG_LAST_IN_BATCH;
            }
            format::encode_record(r, a.seq, flags, &mut b[*off..*off + n]);
            *off += n;
            records += 1;
        }
    };
    if !carry.is_empty() {
        emit(&carry, b, &mut off);
    }
    for p in group {
        emit(&p.records, b, &mut off);
    }
    debug_assert_eq!(start + off as u64, end);
    b[off..].fill(0);
    let new_tail_start = align_down(off as u64, BLOCK_SIZE as u64) as usize;
    let new_tail = b[new_tail_start..off].to_vec();

    debug_assert_eq!(records as usize, planned);
    let (write_time, sync_time) = match buf {
        GroupBuf::Thread(buf) => {
            let times = inner
                .io
                .write_and_sync(a.file.as_raw_fd(), buf, start)
                .await
                .map_err(|(op, e)| {
                    WalError::io(op, &a.path, (op == "write").then_some(start), e)
                })?;
            (times.write, times.sync)
        }
        GroupBuf::Ring(dma) => {
            let t0 = Instant::now();
            segment::write_all(&a.file, &a.path, dma, start).await?;
            let t1 = Instant::now();
            a.file
                .fdatasync()
                .await
                .map_err(|e| WalError::io("fdatasync", &a.path, None, e))?;
            (t1 - t0, t1.elapsed())
        }
    };

    a.pos = end;
    a.tail = new_tail;
    // Bookkeeping only after the data is durable.
    let mut max_index = None::<u64>;
    for r in carry
        .iter()
        .chain(group.iter().flat_map(|p| p.records.iter()))
    {
        st.carry.observe(r);
        if let Some(i) = r.index() {
            max_index = Some(max_index.map_or(i, |m| m.max(i)));
        }
    }
    if let Some(m) = max_index {
        st.highest_index = Some(st.highest_index.map_or(m, |h| h.max(m)));
        inner.highest_index.set(st.highest_index);
        if let Some(s) = inner.segments.borrow_mut().back_mut() {
            debug_assert_eq!(s.seq, st.active.seq);
            s.max_index = Some(s.max_index.map_or(m, |x| x.max(m)));
        }
    }
    let mut s = inner.stats.borrow_mut();
    s.records += records;
    s.batches += group.len() as u64 + u64::from(opening > 0);
    s.bytes += new_bytes as u64;
    s.bytes_written += len as u64;
    s.syncs += 1;
    s.records_per_sync.record(records);
    s.write_latency_us.record(write_time.as_micros() as u64);
    s.sync_latency_us.record(sync_time.as_micros() as u64);
    Ok(())
}
