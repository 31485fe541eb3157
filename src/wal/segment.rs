//! Segment files: preparation (create + preallocate + header), zeroing, the DMA probe.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::format::{self, align_down, align_up, SegmentHeader, BLOCK_SIZE};
use super::{Preallocate, WalError};

/// Size of each zero-fill write while preparing a segment or zeroing a torn tail. Small
/// enough that appends interleave with preparation on the same ring.
pub const ZERO_CHUNK: usize = 256 << 10;

/// Name of the small non-empty file read first on every open (see [`probe_dma`]).
pub const PROBE_FILE_NAME: &str = "io-probe";

/// A prepared segment file: preallocated, header written, durable; first under its `.prep`
/// name, then (after [`publish`]) under its final `.wal` name.
pub struct Prepared {
    /// Open read/write O_DIRECT handle.
    pub file: DmaFile,
    /// Sequence number it was prepared for.
    pub seq: u64,
    /// Its size (bytes).
    pub size: u64,
    /// Current path.
    pub path: PathBuf,
    /// The index in its final name (meaningful after [`publish`]).
    pub first_index: u64,
}

/// Renames a prepared segment to `<seq>-<first_index>.wal` and makes the rename durable
/// (directory fsync). Done in the background, so a rollover only switches files. The file then
/// holds no records until the writer switches to it; recovery deletes such trailing unused
/// segments.
pub async fn publish(
    mut p: Prepared,
    dir: &Path,
    dir_handle: &glommio::io::Directory,
    first_index: u64,
) -> Result<Prepared, WalError> {
    let path = dir.join(format::segment_file_name(p.seq, first_index));
    glommio::io::rename(&p.path, &path)
        .await
        .map_err(|e| WalError::io("rename prepared segment", &p.path, None, e))?;
    dir_handle
        .sync()
        .await
        .map_err(|e| WalError::io("sync dir", dir, None, e))?;
    p.path = path;
    p.first_index = first_index;
    Ok(p)
}

/// Opens a segment file read/write with O_DIRECT.
pub async fn open_rw(path: &Path) -> Result<DmaFile, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| WalError::io("open segment", path, None, e))
}

/// Works around glommio 0.9's polled-I/O probe: the first DMA file opened on a thread is read
/// at offset 0 through the poll ring, and the answer is cached per device for the thread. An
/// empty file "succeeds" without reaching the device, wrongly enabling polled I/O, after which
/// every O_DIRECT read/write on a device without poll queues fails with EOPNOTSUPP. Opening a
/// non-empty, fsynced file first makes the probe read real blocks and get the real answer.
/// (If another DMA file was opened earlier on this thread the cached answer stands; a wrong
/// one then surfaces as an EOPNOTSUPP error that explains this.)
pub async fn probe_dma(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(PROBE_FILE_NAME);
    let ok = std::fs::metadata(&path)
        .map(|m| m.len() == BLOCK_SIZE as u64)
        .unwrap_or(false);
    if !ok {
        let mut f = std::fs::File::create(&path)
            .map_err(|e| WalError::io("create probe file", &path, None, e))?;
        let pattern: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8 | 1).collect();
        f.write_all(&pattern)
            .and_then(|_| f.sync_all())
            .map_err(|e| WalError::io("write probe file", &path, None, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("sync dir", dir, None, e))?;
    }
    let f = DmaFile::open(&path)
        .await
        .map_err(|e| WalError::io("open probe file", &path, None, e))?;
    let r = f
        .read_at_aligned(0, BLOCK_SIZE)
        .await
        .map_err(|e| WalError::io("read probe file", &path, Some(0), e));
    let _ = f.close().await;
    let r = r?;
    if r.len() != BLOCK_SIZE {
        return Err(WalError::io(
            "read probe file",
            &path,
            Some(0),
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read of {} bytes", r.len()),
            ),
        ));
    }
    Ok(())
}

/// Writes zeros over `[from, to)` of `file`, keeping `prefix` (the bytes of the block that
/// holds `from`, from its start up to `from`), then fdatasyncs. `to` is rounded up to a block.
pub async fn zero_range(
    file: &DmaFile,
    path: &Path,
    from: u64,
    to: u64,
    prefix: &[u8],
) -> Result<(), WalError> {
    let start = align_down(from, BLOCK_SIZE as u64);
    debug_assert_eq!(prefix.len() as u64, from - start);
    let end = align_up(to, BLOCK_SIZE as u64);
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(ZERO_CHUNK);
        let mut buf = file.alloc_dma_buffer(n);
        let b = buf.as_bytes_mut();
        b.fill(0);
        if pos == start {
            b[..prefix.len()].copy_from_slice(prefix);
        }
        write_all(file, path, buf, pos).await?;
        pos += n as u64;
    }
    file.fdatasync()
        .await
        .map_err(|e| WalError::io("fdatasync", path, None, e))
}

/// `write_at` that treats a short write as an error naming file and offset.
pub async fn write_all(
    file: &DmaFile,
    path: &Path,
    buf: glommio::io::DmaBuffer,
    pos: u64,
) -> Result<(), WalError> {
    let len = buf.len();
    let n = file
        .write_at(buf, pos)
        .await
        .map_err(|e| WalError::io("write", path, Some(pos), e))?;
    if n != len {
        return Err(WalError::io(
            "write",
            path,
            Some(pos),
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {len} bytes (disk full?)"),
            ),
        ));
    }
    Ok(())
}

/// Creates `<dir>/<seq>.prep`, preallocates it to `size` bytes, writes the segment header and
/// makes it durable. A leftover `.prep` file of the same name (from a crash) is replaced.
pub async fn prepare(
    dir: &Path,
    seq: u64,
    size: u64,
    mode: Preallocate,
) -> Result<Prepared, WalError> {
    let path = dir.join(format::prep_file_name(seq));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io("remove stale prep file", &path, None, e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await
        .map_err(|e| WalError::io("create segment", &path, None, e))?;
    match mode {
        Preallocate::ZeroFill => {
            // One shared zero buffer, written repeatedly; the header block is written last.
            let zeros = Rc::new({
                let mut b = file.alloc_dma_buffer(ZERO_CHUNK);
                b.as_bytes_mut().fill(0);
                b
            });
            let mut pos = BLOCK_SIZE as u64;
            while pos < size {
                let n = ((size - pos) as usize).min(ZERO_CHUNK);
                let w = if n == ZERO_CHUNK {
                    file.write_rc_at(zeros.clone(), pos).await
                } else {
                    let mut b = file.alloc_dma_buffer(n);
                    b.as_bytes_mut().fill(0);
                    file.write_at(b, pos).await
                };
                let w = w.map_err(|e| WalError::io("zero-fill segment", &path, Some(pos), e))?;
                if w != n {
                    return Err(WalError::io(
                        "zero-fill segment",
                        &path,
                        Some(pos),
                        std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!("short write: {w} of {n} bytes (disk full?)"),
                        ),
                    ));
                }
                pos += n as u64;
            }
        }
        Preallocate::Fallocate => {
            file.pre_allocate(size, false)
                .await
                .map_err(|e| WalError::io("fallocate segment", &path, None, e))?;
        }
    }
    let mut hb = file.alloc_dma_buffer(BLOCK_SIZE);
    format::encode_segment_header(&SegmentHeader { seq, size }, hb.as_bytes_mut());
    write_all(&file, &path, hb, 0).await?;
    file.fdatasync()
        .await
        .map_err(|e| WalError::io("fdatasync", &path, None, e))?;
    Ok(Prepared {
        file,
        seq,
        size,
        path,
        first_index: 0,
    })
}
