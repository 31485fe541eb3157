//! The WAL's I/O thread: performs a large group's O_DIRECT `pwrite` and `fdatasync` (groups of
//! at least `Options::io_thread_min_records` records) as plain blocking syscalls, one job at a
//! time, off the executor.
//!
//! Why not io_uring from the writer task: glommio submits a file write only when its executor
//! next polls its rings, which a busy shard does once per scheduling round, after every task
//! woken in that round has run. Under 256 concurrent clients a group's write waited ~1.2 ms
//! (mean) for submission on the raft shard and then ~0.1 ms for the disk (measured with
//! io_uring tracepoints against timestamps in the writer, `perf/server.md`), and the fdatasync
//! waited again behind the write's completion. On this thread the write starts as soon as the
//! writer hands it over and the fdatasync follows it directly; the executor is involved once
//! per group, when the thread's completion wakes the writer.
//!
//! Order is what recovery relies on (write, fdatasync, next write): the writer awaits each job
//! before handing over the next, and the channel holds at most [`MAX_QUEUED_JOBS`]. A job owns
//! its buffer and a duplicate of the segment's descriptor, so a writer that is dropped while a
//! job runs leaves neither a dangling buffer nor a descriptor number that could be reused for
//! another file.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::format::BLOCK_SIZE;

/// Jobs the channel to the thread holds (the writer has one in flight at a time).
pub const MAX_QUEUED_JOBS: usize = 1;

/// A zeroed heap buffer aligned to [`BLOCK_SIZE`], as O_DIRECT requires; `Send`, so it can
/// travel to the I/O thread and back.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory (like a `Box<[u8]>`).
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len` a non-zero multiple of [`BLOCK_SIZE`]).
    pub fn zeroed(len: usize) -> AlignedBuf {
        assert!(
            len > 0 && len.is_multiple_of(BLOCK_SIZE),
            "WAL write buffers are whole blocks ({len} bytes)"
        );
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK_SIZE).expect("block-aligned layout of a valid size")
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// How a job failed: the syscall (`"dup"` of the descriptor, `"write"` or `"fdatasync"`) and
/// its error.
pub type JobError = (&'static str, io::Error);

/// What a job measured: time in `pwrite` and in `fdatasync`.
#[derive(Clone, Copy, Debug)]
pub struct JobTimes {
    pub write: Duration,
    pub sync: Duration,
}

struct Job {
    fd: OwnedFd,
    buf: AlignedBuf,
    pos: u64,
    done: oneshot::Sender<Result<JobTimes, JobError>>,
}

/// Handle on the I/O thread; dropping it ends the thread once its current job is done.
pub struct IoThread {
    jobs: flume::Sender<Job>,
}

impl IoThread {
    /// Starts the thread (named `corekv-wal-io`).
    pub fn start() -> io::Result<IoThread> {
        let (jobs, rx) = flume::bounded::<Job>(MAX_QUEUED_JOBS);
        std::thread::Builder::new()
            .name("corekv-wal-io".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let r = run_job(job.fd.as_raw_fd(), &job.buf, job.pos);
                    // The writer may be gone (dropped mid-job): nothing to tell then.
                    let _ = job.done.send(r);
                }
            })?;
        Ok(IoThread { jobs })
    }

    /// Writes `buf` at byte `pos` of the file open as `fd` (a duplicate is made for the job),
    /// then fdatasyncs it. Resolves when both are done, or with the first failure.
    pub async fn write_and_sync(
        &self,
        fd: RawFd,
        buf: AlignedBuf,
        pos: u64,
    ) -> Result<JobTimes, JobError> {
        debug_assert!(pos.is_multiple_of(BLOCK_SIZE as u64));
        // SAFETY: `fd` is open (the caller holds the file); F_DUPFD_CLOEXEC returns a new
        // descriptor that the job then owns.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(("dup", io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let (done, result) = oneshot::channel();
        let lost = || ("write", io::Error::other("the WAL I/O thread has stopped"));
        self.jobs
            .send_async(Job { fd, buf, pos, done })
            .await
            .map_err(|_| lost())?;
        result.await.map_err(|_| lost())?
    }
}

/// `pwrite` the whole buffer (resuming after short writes and EINTR), then `fdatasync`.
fn run_job(fd: RawFd, buf: &AlignedBuf, pos: u64) -> Result<JobTimes, JobError> {
    let start = Instant::now();
    let bytes = buf.as_slice();
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes for the call's duration.
        let n = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (pos + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(("write", e));
        }
        if n == 0 {
            return Err((
                "write",
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {done} of {} bytes (disk full?)", bytes.len()),
                ),
            ));
        }
        done += n as usize;
    }
    let written = Instant::now();
    // SAFETY: plain syscall on a descriptor the job owns.
    while unsafe { libc::fdatasync(fd) } != 0 {
        let e = io::Error::last_os_error();
        // Only an interrupted call is retried: after a real failure the page cache's state is
        // unknown (a retry could report success for data that never reached the disk).
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(("fdatasync", e));
        }
    }
    Ok(JobTimes {
        write: written - start,
        sync: written.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_block_aligned_and_zeroed() {
        for blocks in [1, 3, 64] {
            let mut b = AlignedBuf::zeroed(blocks * BLOCK_SIZE);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % BLOCK_SIZE, 0);
            assert!(b.as_mut_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[blocks * BLOCK_SIZE - 1] = 7;
        }
    }

    #[test]
    fn a_job_writes_and_a_failure_names_its_syscall() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4 * BLOCK_SIZE]).unwrap();
        let io = IoThread::start().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut buf = AlignedBuf::zeroed(2 * BLOCK_SIZE);
        buf.as_mut_slice().fill(0xab);
        let r = futures::executor::block_on(io.write_and_sync(
            file.as_raw_fd(),
            buf,
            BLOCK_SIZE as u64,
        ));
        assert!(r.is_ok(), "{r:?}");
        let back = std::fs::read(&path).unwrap();
        assert!(back[..BLOCK_SIZE].iter().all(|&x| x == 0));
        assert!(back[BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&x| x == 0xab));
        assert!(back[3 * BLOCK_SIZE..].iter().all(|&x| x == 0));
        // A read-only descriptor: the write fails with EBADF and says so.
        let ro = std::fs::File::open(&path).unwrap();
        let r = futures::executor::block_on(io.write_and_sync(
            ro.as_raw_fd(),
            AlignedBuf::zeroed(BLOCK_SIZE),
            0,
        ));
        let (op, e) = r.expect_err("write through a read-only descriptor");
        assert_eq!(op, "write");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
