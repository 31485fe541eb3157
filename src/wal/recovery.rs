//! Recovery: read and verify every segment, replay complete batches, cut a torn tail, refuse
//! (or, with the repair option, cut) corruption.
//!
//! Torn tail versus corruption: the writer issues one write per group and the next write only
//! after the previous one's fdatasync, and every write's first record carries
//! `FLAG_FIRST_IN_WRITE`. Damage that is followed (in this or a later segment) by a valid
//! record with that flag was therefore acknowledged before it was damaged: corruption. Damage
//! with nothing valid-and-later after it is the unacknowledged last write: a torn tail, cut.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use glommio::io::{Directory, DmaFile};

use super::format::{
    self, align_down, align_up, decode_header, HeaderCheck, BLOCK_SIZE, FLAG_FIRST_IN_WRITE,
    FLAG_LAST_IN_BATCH, KIND_SEGMENT_START, RECORD_ALIGN, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use super::segment::{self, open_rw};
use super::writer::{Active, Carry, WriterState};
use super::{Options, Record, RecoveryInfo, SegmentSummary, WalError};

/// Bytes read per O_DIRECT read during recovery; with the largest record this bounds the
/// read window.
pub const READ_CHUNK: usize = 1 << 20;

/// Everything recovery hands to the writer and the `Wal`.
pub struct Recovered {
    /// Live segments, oldest first.
    pub segments: VecDeque<SegmentSummary>,
    /// Where and how appends continue.
    pub writer: WriterState,
    /// What recovery found and did.
    pub info: RecoveryInfo,
}

/// A forward-only window over a segment. Bytes past the end of the file (a truncated
/// segment) read as zeros up to the segment size recorded in the header.
struct Reader<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    file_len: u64,
    logical_len: u64,
    win_off: u64,
    win: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn new(file: &'a DmaFile, path: &'a Path, file_len: u64, logical_len: u64) -> Self {
        Self {
            file,
            path,
            file_len,
            logical_len,
            win_off: 0,
            win: Vec::new(),
        }
    }

    /// Returns bytes `[off, off + len)`; `off` must not go backwards past the window start.
    async fn get(&mut self, off: u64, len: usize) -> Result<&[u8], WalError> {
        assert!(off >= self.win_off, "recovery reader moved backwards");
        let need_end = off + len as u64;
        assert!(
            need_end <= self.logical_len,
            "recovery reader past segment end"
        );
        if need_end > self.win_off + self.win.len() as u64 {
            let drop = ((off - self.win_off) as usize).min(self.win.len());
            self.win.drain(..drop);
            self.win_off += drop as u64;
            if self.win.is_empty() {
                self.win_off = align_down(off, BLOCK_SIZE as u64);
            }
            while self.win_off + (self.win.len() as u64) < need_end {
                let pos = self.win_off + self.win.len() as u64;
                let left = self.logical_len - pos;
                if pos >= self.file_len {
                    // Past EOF (a segment cut short): zeros up to the segment size.
                    let n = left.min(READ_CHUNK as u64) as usize;
                    self.win.resize(self.win.len() + n, 0);
                    continue;
                }
                debug_assert_eq!(pos % BLOCK_SIZE as u64, 0);
                let want = align_up(left.min(READ_CHUNK as u64), BLOCK_SIZE as u64) as usize;
                let r = self
                    .file
                    .read_at_aligned(pos, want)
                    .await
                    .map_err(|e| WalError::io("read segment", self.path, Some(pos), e))?;
                let got = (r.len() as u64).min(left) as usize;
                if got < want.min(left as usize) {
                    self.file_len = pos + got as u64;
                }
                self.win.extend_from_slice(&r[..got]);
            }
        }
        let s = (off - self.win_off) as usize;
        Ok(&self.win[s..s + len])
    }
}

/// Reads `len` bytes at block-aligned `start` (zeros past EOF).
async fn read_prefix(
    file: &DmaFile,
    path: &Path,
    start: u64,
    len: usize,
) -> Result<Vec<u8>, WalError> {
    debug_assert_eq!(start % BLOCK_SIZE as u64, 0);
    let mut out = vec![0u8; len];
    if len > 0 {
        let r = file
            .read_at_aligned(start, BLOCK_SIZE)
            .await
            .map_err(|e| WalError::io("read segment", path, Some(start), e))?;
        let n = r.len().min(len);
        out[..n].copy_from_slice(&r[..n]);
    }
    Ok(out)
}

/// Why scanning a segment stopped short of a clean end.
struct Problem {
    offset: u64,
    reason: String,
}

/// Result of scanning one segment.
struct Scan {
    /// End of the last complete batch.
    committed: u64,
    /// First damaged/unfinished place, if any.
    problem: Option<Problem>,
    /// Offset of the first valid record that begins a write after the problem.
    later_write: Option<u64>,
    /// End of the last non-zero byte after the scanned records (0 if none).
    dirty_end: u64,
    max_index: Option<u64>,
}

struct SegmentFile {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut segs = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::io("list dir", dir, None, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| WalError::io("list dir", dir, None, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, first_index)) = format::parse_segment_file_name(name) {
            segs.push(SegmentFile {
                seq,
                first_index,
                path: ent.path(),
            });
        } else if format::parse_prep_file_name(name).is_some() {
            // Never held records (renamed only once durable); stale from a crash.
            std::fs::remove_file(ent.path())
                .map_err(|e| WalError::io("remove stale prep file", &ent.path(), None, e))?;
        }
    }
    segs.sort_by_key(|s| s.seq);
    for w in segs.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            let reason = if w[1].seq == w[0].seq {
                format!("two segment files with sequence {}", w[0].seq)
            } else {
                format!(
                    "segment sequence jumps from {} to {}: segment(s) missing",
                    w[0].seq, w[1].seq
                )
            };
            return Err(WalError::Corrupt {
                path: w[1].path.clone(),
                offset: 0,
                reason,
            });
        }
    }
    Ok(segs)
}

/// A verified segment whose fate (closed, or the active segment) is decided once the next
/// segment's segment-start record has been checked against it.
struct Verified {
    file: DmaFile,
    path: PathBuf,
    seq: u64,
    first_index: u64,
    size: u64,
    file_len: u64,
    scan: Scan,
    dirty: bool,
}

/// Reads, verifies and replays every segment in `dir`, repairs a torn tail, and returns the
/// state appends continue from (creating the first segment of a new log).
pub async fn recover(
    dir: &Path,
    dir_handle: &Directory,
    opts: &Options,
    replay: &mut dyn FnMut(Record),
) -> Result<Recovered, WalError> {
    let mut files = list_segments(dir)?;
    // Segments published ahead by the background preparation that never received a record
    // are not part of the log; drop them so the real last segment is treated as the last.
    let mut dropped_unused = false;
    while files.len() > 1 {
        let last = files.last().expect("len > 1");
        if !is_unused(&last.path, last.seq).await? {
            break;
        }
        std::fs::remove_file(&last.path)
            .map_err(|e| WalError::io("remove unused segment", &last.path, None, e))?;
        files.pop();
        dropped_unused = true;
    }
    if dropped_unused {
        dir_handle
            .sync()
            .await
            .map_err(|e| WalError::io("sync dir", dir, None, e))?;
    }
    let mut info = RecoveryInfo::default();
    let mut carry = Carry::default();
    let mut highest_index: Option<u64> = None;
    let mut summaries = VecDeque::new();
    let mut prev: Option<Verified> = None;
    // (seq, committed end) of the segment before `prev`.
    let mut prev_end: Option<(u64, u64)> = None;

    let mut i = 0;
    while i < files.len() {
        let is_last = i + 1 == files.len();
        let (seq, first_index, path) = (files[i].seq, files[i].first_index, files[i].path.clone());
        let file = open_rw(&path).await?;
        let file_len = file
            .file_size()
            .await
            .map_err(|e| WalError::io("stat segment", &path, None, e))?;
        if file_len < SEGMENT_HEADER_SIZE {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: format!("file is {file_len} bytes, shorter than the segment header"),
            });
        }
        let hdr = {
            let mut r = Reader::new(&file, &path, file_len, SEGMENT_HEADER_SIZE);
            let b = r.get(0, BLOCK_SIZE).await?;
            format::decode_segment_header(b).map_err(|reason| WalError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason,
            })?
        };
        if hdr.seq != seq {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: format!("header says sequence {} but the name says {seq}", hdr.seq),
            });
        }
        if file_len > hdr.size || (!is_last && file_len < hdr.size) {
            return Err(WalError::Corrupt {
                path,
                offset: file_len.min(hdr.size),
                reason: format!(
                    "file is {file_len} bytes but its header says the segment is {} bytes",
                    hdr.size
                ),
            });
        }
        // The previous segment must end exactly where this one says it did.
        if let Some(p) = &prev {
            let mut r = Reader::new(&file, &path, file_len, hdr.size);
            if let Some(reason) = check_segment_start(&mut r, seq, p.seq, p.scan.committed).await? {
                if !opts.repair_truncate_corrupt_tail {
                    return Err(WalError::Corrupt {
                        path: p.path.clone(),
                        offset: p.scan.committed,
                        reason,
                    });
                }
                let later: Vec<SegmentFile> = files.drain(i..).collect();
                info.repaired = Some((p.path.clone(), p.scan.committed, later.len()));
                delete_segments(dir, dir_handle, &later).await?;
                break;
            }
        }
        let scan = {
            let mut reader = Reader::new(&file, &path, file_len, hdr.size);
            scan_segment(&mut reader, seq, replay, &mut info, &mut carry).await?
        };
        info.segments += 1;

        let dirty = scan.problem.is_some() || scan.dirty_end > scan.committed;
        if dirty {
            let (offset, reason) = match &scan.problem {
                Some(p) => (p.offset, p.reason.clone()),
                None => (
                    scan.committed,
                    "non-zero bytes after the last record".to_string(),
                ),
            };
            let corrupt_reason = if let Some(at) = scan.later_write {
                Some(format!(
                    "{reason}; a valid record written later follows at offset {at}"
                ))
            } else if !is_last {
                Some(format!(
                    "{reason}; a later segment {} exists",
                    files[i + 1].path.display()
                ))
            } else {
                None
            };
            if let Some(reason) = corrupt_reason {
                if !opts.repair_truncate_corrupt_tail {
                    return Err(WalError::Corrupt {
                        path,
                        offset,
                        reason,
                    });
                }
                let later: Vec<SegmentFile> = files.drain(i + 1..).collect();
                info.repaired = Some((path.clone(), offset, later.len()));
                delete_segments(dir, dir_handle, &later).await?;
            }
        }
        if let Some(m) = scan.max_index {
            highest_index = Some(highest_index.map_or(m, |h| h.max(m)));
        }
        summaries.push_back(SegmentSummary {
            seq,
            first_index,
            max_index: scan.max_index,
            path: path.clone(),
        });
        if let Some(p) = prev.take() {
            prev_end = Some((p.seq, p.scan.committed));
            let _ = p.file.close().await;
        }
        prev = Some(Verified {
            file,
            path,
            seq,
            first_index,
            size: hdr.size,
            file_len,
            scan,
            dirty,
        });
        i += 1;
    }

    let (active, active_first_index, seal) = match prev {
        Some(v) => {
            // The last segment becomes the active one: zero everything after the committed end
            // that is not zero (or is missing, if the file was cut short).
            let committed = v.scan.committed;
            let start = align_down(committed, BLOCK_SIZE as u64);
            let prefix = read_prefix(&v.file, &v.path, start, (committed - start) as usize).await?;
            let mut zero_to = committed;
            if v.dirty {
                zero_to = zero_to.max(v.scan.dirty_end);
            }
            if v.file_len < v.size {
                zero_to = v.size;
            }
            let zero_to = align_up(zero_to, BLOCK_SIZE as u64).min(v.size);
            if zero_to > committed {
                if v.dirty {
                    info.tail_bytes_zeroed += v.scan.dirty_end.max(committed) - committed;
                }
                segment::zero_range(&v.file, &v.path, committed, zero_to, &prefix).await?;
            }
            // A fresh active segment gets its segment-start record from the previous segment,
            // if that one is still here.
            let seal = if committed == SEGMENT_HEADER_SIZE {
                prev_end
            } else {
                None
            };
            (
                Active {
                    file: v.file,
                    path: v.path,
                    seq: v.seq,
                    size: v.size,
                    pos: committed,
                    tail: prefix,
                },
                v.first_index,
                seal,
            )
        }
        None => {
            // New log: the first segment, prepared synchronously.
            let p = segment::prepare(dir, 1, opts.segment_size, opts.preallocate).await?;
            let p = segment::publish(p, dir, dir_handle, 0).await?;
            let path = p.path.clone();
            summaries.push_back(SegmentSummary {
                seq: 1,
                first_index: 0,
                max_index: None,
                path: path.clone(),
            });
            (
                Active {
                    file: p.file,
                    path,
                    seq: 1,
                    size: p.size,
                    pos: SEGMENT_HEADER_SIZE,
                    tail: Vec::new(),
                },
                0,
                None,
            )
        }
    };
    Ok(Recovered {
        segments: summaries,
        writer: WriterState {
            active,
            carry,
            highest_index,
            active_first_index,
            seal,
        },
        info,
    })
}

async fn delete_segments(
    dir: &Path,
    dir_handle: &Directory,
    segs: &[SegmentFile],
) -> Result<(), WalError> {
    for l in segs {
        std::fs::remove_file(&l.path).map_err(|e| {
            WalError::io("delete segment after repaired corruption", &l.path, None, e)
        })?;
    }
    dir_handle
        .sync()
        .await
        .map_err(|e| WalError::io("sync dir", dir, None, e))
}

/// Whether a segment holds nothing but a valid header and zeros, at its full size: published
/// ahead of need and never written to. Anything else is left to full verification.
async fn is_unused(path: &Path, seq: u64) -> Result<bool, WalError> {
    let file = open_rw(path).await?;
    let r = is_unused_file(&file, path, seq).await;
    let _ = file.close().await;
    r
}

async fn is_unused_file(file: &DmaFile, path: &Path, seq: u64) -> Result<bool, WalError> {
    let file_len = file
        .file_size()
        .await
        .map_err(|e| WalError::io("stat segment", path, None, e))?;
    if file_len < SEGMENT_HEADER_SIZE {
        return Ok(false);
    }
    let hdr = {
        let mut r = Reader::new(file, path, file_len, SEGMENT_HEADER_SIZE);
        match format::decode_segment_header(r.get(0, BLOCK_SIZE).await?) {
            Ok(h) => h,
            Err(_) => return Ok(false),
        }
    };
    if hdr.seq != seq || file_len != hdr.size {
        return Ok(false);
    }
    let mut r = Reader::new(file, path, file_len, hdr.size);
    let (_, dirty_end) = scan_rest(&mut r, seq, SEGMENT_HEADER_SIZE).await?;
    Ok(dirty_end == 0)
}

/// Checks the first record of segment `seq` against the previous segment `(prev_seq,
/// prev_end)`. Returns a reason when they disagree. A segment with no valid first record is
/// left to the scan (empty, or a torn first write).
async fn check_segment_start(
    r: &mut Reader<'_>,
    seq: u64,
    prev_seq: u64,
    prev_end: u64,
) -> Result<Option<String>, WalError> {
    let Ok(h) = decode_header(seq, r.get(SEGMENT_HEADER_SIZE, RECORD_HEADER_SIZE).await?) else {
        return Ok(None);
    };
    let total = h.total_len() as u64;
    if SEGMENT_HEADER_SIZE + total > r.logical_len {
        return Ok(None);
    }
    let rec = r.get(SEGMENT_HEADER_SIZE, total as usize).await?;
    let payload = &rec[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + h.len];
    if !format::payload_ok(seq, &h, payload, &rec[RECORD_HEADER_SIZE + h.len..]) {
        return Ok(None);
    }
    if h.kind != KIND_SEGMENT_START {
        return Ok(Some(format!(
            "the next segment (sequence {seq}) does not begin with a segment-start record"
        )));
    }
    match format::decode_segment_start(payload) {
        Ok((s, e)) if s == prev_seq && e == prev_end => Ok(None),
        Ok((s, e)) => Ok(Some(format!(
            "records end at offset {prev_end}, but the next segment (sequence {seq}) says \
             segment {s} ended at offset {e}: acknowledged records are missing"
        ))),
        Err(reason) => Ok(Some(reason)),
    }
}

/// Reads the records of one segment, replaying each complete batch, and examines what follows
/// the last one.
async fn scan_segment(
    r: &mut Reader<'_>,
    seq: u64,
    replay: &mut dyn FnMut(Record),
    info: &mut RecoveryInfo,
    carry: &mut Carry,
) -> Result<Scan, WalError> {
    let size = r.logical_len;
    let seg_path = r.path;
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut committed = pos;
    let mut batch: Vec<Record> = Vec::new();
    // Records in the unfinished batch, including a segment-start record (never replayed).
    let mut in_batch = 0usize;
    let mut batch_index: Option<u64> = None;
    let mut max_index: Option<u64> = None;
    let mut problem: Option<Problem> = None;
    loop {
        if pos + RECORD_HEADER_SIZE as u64 > size {
            break;
        }
        let h = match decode_header(seq, r.get(pos, RECORD_HEADER_SIZE).await?) {
            Ok(h) => h,
            Err(HeaderCheck::Zero) => break,
            Err(HeaderCheck::BadCrc) => {
                problem = Some(Problem {
                    offset: pos,
                    reason: "record header checksum mismatch".into(),
                });
                break;
            }
            Err(HeaderCheck::BadField) => {
                problem = Some(Problem {
                    offset: pos,
                    reason: "record header has an invalid length or flags".into(),
                });
                break;
            }
        };
        let total = h.total_len() as u64;
        if pos + total > size {
            problem = Some(Problem {
                offset: pos,
                reason: format!("record of {total} bytes runs past the segment end {size}"),
            });
            break;
        }
        if h.flags & FLAG_FIRST_IN_WRITE != 0 && in_batch > 0 {
            problem = Some(Problem {
                offset: committed,
                reason: format!("batch is unfinished but a new write begins at offset {pos}"),
            });
            break;
        }
        let rec = r.get(pos, total as usize).await?;
        let payload = &rec[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + h.len];
        if !format::payload_ok(seq, &h, payload, &rec[RECORD_HEADER_SIZE + h.len..]) {
            problem = Some(Problem {
                offset: pos,
                reason: "record payload checksum mismatch".into(),
            });
            break;
        }
        let corrupt = |reason| WalError::Corrupt {
            path: seg_path.to_path_buf(),
            offset: pos,
            reason,
        };
        if h.kind == KIND_SEGMENT_START {
            // Checked against the previous segment by `check_segment_start`; never replayed.
            if pos != SEGMENT_HEADER_SIZE {
                return Err(corrupt(
                    "segment-start record in the middle of a segment".into(),
                ));
            }
            format::decode_segment_start(payload).map_err(corrupt)?;
        } else {
            let record = format::decode_payload(h.kind, payload).map_err(corrupt)?;
            if let Some(i) = record.index() {
                batch_index = Some(batch_index.map_or(i, |m| m.max(i)));
            }
            batch.push(record);
        }
        in_batch += 1;
        pos += total;
        if h.flags & FLAG_LAST_IN_BATCH != 0 {
            info.batches += 1;
            info.records += batch.len() as u64;
            for rec in batch.drain(..) {
                carry.observe(&rec);
                replay(rec);
            }
            if let Some(i) = batch_index.take() {
                max_index = Some(max_index.map_or(i, |m| m.max(i)));
            }
            in_batch = 0;
            committed = pos;
        }
    }
    if problem.is_none() && in_batch > 0 {
        problem = Some(Problem {
            offset: committed,
            reason: format!(
                "batch of {in_batch} record(s) has no final record (ends at offset {pos})"
            ),
        });
    }
    // Look past the stop point: for valid records that start a later write, and for the extent
    // of non-zero bytes (the unfinished batch and the damaged record count as non-zero).
    let scan_from = match &problem {
        Some(p) if p.offset >= pos => p.offset + RECORD_ALIGN as u64,
        _ => pos,
    };
    let (later_write, rest_dirty) = scan_rest(r, seq, scan_from).await?;
    let mut dirty_end = rest_dirty.max(pos);
    if problem.is_some() {
        dirty_end = dirty_end.max(scan_from);
    }
    Ok(Scan {
        committed,
        problem,
        later_write,
        dirty_end,
        max_index,
    })
}

/// Scans `[from, segment end)` block by block: returns the offset of the first valid record
/// flagged as the start of a write, and the end of the last non-zero byte (0 if none).
async fn scan_rest(
    r: &mut Reader<'_>,
    seq: u64,
    from: u64,
) -> Result<(Option<u64>, u64), WalError> {
    let size = r.logical_len;
    let mut later: Option<u64> = None;
    let mut dirty_end = 0u64;
    let mut block = align_down(from, BLOCK_SIZE as u64);
    while block < size {
        let lo = block.max(from);
        let b = r.get(lo, (block + BLOCK_SIZE as u64 - lo) as usize).await?;
        let Some(last_nz) = b.iter().rposition(|&x| x != 0) else {
            block += BLOCK_SIZE as u64;
            continue;
        };
        dirty_end = lo + last_nz as u64 + 1;
        if later.is_none() {
            let mut p = align_up(lo, RECORD_ALIGN as u64);
            while p < block + BLOCK_SIZE as u64 && later.is_none() {
                if p + RECORD_HEADER_SIZE as u64 <= size {
                    later = valid_write_start(r, seq, p).await?;
                }
                p += RECORD_ALIGN as u64;
            }
        }
        block += BLOCK_SIZE as u64;
    }
    Ok((later, dirty_end))
}

/// Whether a valid record flagged as the first of a write starts at `p`.
async fn valid_write_start(r: &mut Reader<'_>, seq: u64, p: u64) -> Result<Option<u64>, WalError> {
    let size = r.logical_len;
    let h = match decode_header(seq, r.get(p, RECORD_HEADER_SIZE).await?) {
        Ok(h) if h.flags & FLAG_FIRST_IN_WRITE != 0 => h,
        _ => return Ok(None),
    };
    let total = h.total_len() as u64;
    if p + total > size {
        return Ok(None);
    }
    let rec = r.get(p, total as usize).await?;
    let ok = format::payload_ok(
        seq,
        &h,
        &rec[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + h.len],
        &rec[RECORD_HEADER_SIZE + h.len..],
    );
    Ok(ok.then_some(p))
}
