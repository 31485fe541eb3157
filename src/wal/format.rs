//! On-disk format of WAL segments: segment header, record framing, file names.
//!
//! The byte-by-byte description lives in `src/wal/FORMAT.md`; this module is its only
//! implementation. Everything here is pure (no I/O) so it can be tested exhaustively.

use super::{Record, WalError};

/// Unit of every O_DIRECT write and of the segment header. 4096 satisfies the logical block
/// size of every device we target (512 or 4096) and the page size.
pub const BLOCK_SIZE: usize = 4096;
/// The segment header occupies the whole first block; records start at this offset.
pub const SEGMENT_HEADER_SIZE: u64 = BLOCK_SIZE as u64;
/// Bytes of framing in front of every record payload.
pub const RECORD_HEADER_SIZE: usize = 16;
/// Every record starts at a multiple of this; the gap after a payload is zero padding.
pub const RECORD_ALIGN: usize = 8;
/// Largest payload a single record may carry (the length field is 32 bits; we stay far below).
pub const MAX_RECORD_PAYLOAD: usize = 16 << 20;
/// Smallest allowed segment: header block plus room for a few records.
pub const MIN_SEGMENT_SIZE: u64 = 16 * BLOCK_SIZE as u64;
/// Largest allowed segment (bounds recovery's per-segment scan and the preallocation).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Bytes of the segment-start record (16-byte payload) that opens every segment after the first.
pub const SEGMENT_START_LEN: usize = RECORD_HEADER_SIZE + 16;
/// Upper bound of what opens a new segment before the first appended batch: the segment-start
/// record plus the state records (hard state, snapshot marker, metadata) repeated from earlier
/// segments, three records of at most 24 payload bytes each.
pub const MAX_CARRY_OVER_BYTES: usize = SEGMENT_START_LEN + 3 * (RECORD_HEADER_SIZE + 24);

/// Magic bytes at offset 0 of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CKVWALSG";
/// Format version written into (and required in) every segment header.
pub const FORMAT_VERSION: u32 = 1;

/// Record kind codes (byte 4 of the record header).
pub const KIND_ENTRY: u8 = 1;
/// Raft hard state.
pub const KIND_HARD_STATE: u8 = 2;
/// Snapshot marker.
pub const KIND_SNAPSHOT: u8 = 3;
/// Cluster / member metadata.
pub const KIND_METADATA: u8 = 4;
/// Internal: first record of every segment after the first, naming where the previous segment
/// ended, so a lost (zeroed or truncated) tail of a sealed segment is detected. Never replayed.
pub const KIND_SEGMENT_START: u8 = 5;

/// Flag: this record is the first record of one `write` (group). Used by recovery to tell a
/// torn tail (damage inside the last write) from corruption (damage followed by a later write).
pub const FLAG_FIRST_IN_WRITE: u8 = 0x01;
/// Flag: this record ends a batch. Recovery only yields complete batches.
pub const FLAG_LAST_IN_BATCH: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_FIRST_IN_WRITE | FLAG_LAST_IN_BATCH;

/// Rounds `v` up to a multiple of `align` (a power of two).
#[inline]
pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

/// Rounds `v` down to a multiple of `align` (a power of two).
#[inline]
pub fn align_down(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v & !(align - 1)
}

/// Payload length of `record` once encoded.
pub fn payload_len(record: &Record) -> usize {
    match record {
        Record::Entry { data, .. } => 16 + data.len(),
        Record::HardState { .. } => 24,
        Record::Snapshot { .. } | Record::Metadata { .. } => 16,
    }
}

/// Bytes `record` occupies in a segment: header + payload, padded to [`RECORD_ALIGN`].
pub fn encoded_len(record: &Record) -> usize {
    align_up(
        (RECORD_HEADER_SIZE + payload_len(record)) as u64,
        RECORD_ALIGN as u64,
    ) as usize
}

fn kind_of(record: &Record) -> u8 {
    match record {
        Record::Entry { .. } => KIND_ENTRY,
        Record::HardState { .. } => KIND_HARD_STATE,
        Record::Snapshot { .. } => KIND_SNAPSHOT,
        Record::Metadata { .. } => KIND_METADATA,
    }
}

/// crc32 of `seq` (little endian) followed by `bytes`: folding the segment sequence number in
/// makes a record copied from (or left over by) another segment fail verification.
fn seq_crc(seq: u64, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Encodes `record` into `out` (exactly `encoded_len(record)` bytes, padding zeroed) for
/// segment `seq` with the given flags.
pub fn encode_record(record: &Record, seq: u64, flags: u8, out: &mut [u8]) {
    let plen = payload_len(record);
    let total = encoded_len(record);
    assert!(plen <= MAX_RECORD_PAYLOAD, "caller validated record size");
    assert_eq!(
        out.len(),
        total,
        "encode_record: output slice has the wrong length"
    );
    debug_assert_eq!(flags & !KNOWN_FLAGS, 0);
    let (head, rest) = out.split_at_mut(RECORD_HEADER_SIZE);
    let (payload, pad) = rest.split_at_mut(plen);
    match record {
        Record::Entry { index, term, data } => {
            payload[0..8].copy_from_slice(&index.to_le_bytes());
            payload[8..16].copy_from_slice(&term.to_le_bytes());
            payload[16..].copy_from_slice(data);
        }
        Record::HardState { term, vote, commit } => {
            payload[0..8].copy_from_slice(&term.to_le_bytes());
            payload[8..16].copy_from_slice(&vote.to_le_bytes());
            payload[16..24].copy_from_slice(&commit.to_le_bytes());
        }
        Record::Snapshot { index, term } => {
            payload[0..8].copy_from_slice(&index.to_le_bytes());
            payload[8..16].copy_from_slice(&term.to_le_bytes());
        }
        Record::Metadata {
            cluster_id,
            member_id,
        } => {
            payload[0..8].copy_from_slice(&cluster_id.to_le_bytes());
            payload[8..16].copy_from_slice(&member_id.to_le_bytes());
        }
    }
    pad.fill(0);
    finish_header(head, payload, kind_of(record), seq, flags);
}

/// Fills in a record header for the payload already in place.
fn finish_header(head: &mut [u8], payload: &[u8], kind: u8, seq: u64, flags: u8) {
    head[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[4] = kind;
    head[5] = flags;
    head[6] = 0;
    head[7] = 0;
    let pcrc = seq_crc(seq, &[payload]);
    head[8..12].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = seq_crc(seq, &[&head[0..12]]);
    head[12..16].copy_from_slice(&hcrc.to_le_bytes());
}

/// Encodes the segment-start record of segment `seq` into `out` ([`SEGMENT_START_LEN`] bytes):
/// the previous segment `prev_seq` holds records up to byte offset `prev_end`.
pub fn encode_segment_start(prev_seq: u64, prev_end: u64, seq: u64, flags: u8, out: &mut [u8]) {
    assert_eq!(out.len(), SEGMENT_START_LEN);
    debug_assert_eq!(flags & !KNOWN_FLAGS, 0);
    let (head, payload) = out.split_at_mut(RECORD_HEADER_SIZE);
    payload[0..8].copy_from_slice(&prev_seq.to_le_bytes());
    payload[8..16].copy_from_slice(&prev_end.to_le_bytes());
    finish_header(head, payload, KIND_SEGMENT_START, seq, flags);
}

/// Decodes a verified segment-start payload into `(prev_seq, prev_end)`.
pub fn decode_segment_start(p: &[u8]) -> Result<(u64, u64), String> {
    if p.len() != 16 {
        return Err(format!(
            "segment-start record has a {}-byte payload, expected 16",
            p.len()
        ));
    }
    Ok((
        u64::from_le_bytes(p[0..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")),
    ))
}

/// A record header that passed its own checksum: the length and kind can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: usize,
    /// Kind code.
    pub kind: u8,
    /// Flag bits.
    pub flags: u8,
    /// Expected payload crc.
    pub payload_crc: u32,
}

impl RecordHeader {
    /// Total bytes of the record including header and padding.
    pub fn total_len(&self) -> usize {
        align_up((RECORD_HEADER_SIZE + self.len) as u64, RECORD_ALIGN as u64) as usize
    }
}

/// Why a header did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    /// All 16 bytes are zero: nothing was ever written here (the clean end of a log).
    Zero,
    /// The header crc does not match (torn write, stale or foreign data, bit rot).
    BadCrc,
    /// Checksum matches but the length exceeds [`MAX_RECORD_PAYLOAD`] or flags are unknown.
    BadField,
}

/// Parses and verifies a 16-byte record header for segment `seq`.
pub fn decode_header(seq: u64, b: &[u8]) -> Result<RecordHeader, HeaderCheck> {
    debug_assert_eq!(b.len(), RECORD_HEADER_SIZE);
    if b.iter().all(|&x| x == 0) {
        return Err(HeaderCheck::Zero);
    }
    let stored = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    if seq_crc(seq, &[&b[0..12]]) != stored {
        return Err(HeaderCheck::BadCrc);
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    let flags = b[5];
    if len > MAX_RECORD_PAYLOAD || flags & !KNOWN_FLAGS != 0 || b[6] != 0 || b[7] != 0 {
        return Err(HeaderCheck::BadField);
    }
    Ok(RecordHeader {
        len,
        kind: b[4],
        flags,
        payload_crc: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
    })
}

/// Verifies a payload (and the zero padding after it) against its header.
pub fn payload_ok(seq: u64, h: &RecordHeader, payload: &[u8], padding: &[u8]) -> bool {
    debug_assert_eq!(payload.len(), h.len);
    seq_crc(seq, &[payload]) == h.payload_crc && padding.iter().all(|&x| x == 0)
}

/// Decodes a verified payload into a [`Record`]. A checksum-valid payload that does not
/// decode is a format error (newer writer or a bug), never a torn write.
pub fn decode_payload(kind: u8, p: &[u8]) -> Result<Record, String> {
    let u = |i: usize| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    match (kind, p.len()) {
        (KIND_ENTRY, n) if n >= 16 => Ok(Record::Entry {
            index: u(0),
            term: u(1),
            data: p[16..].to_vec(),
        }),
        (KIND_HARD_STATE, 24) => Ok(Record::HardState {
            term: u(0),
            vote: u(1),
            commit: u(2),
        }),
        (KIND_SNAPSHOT, 16) => Ok(Record::Snapshot {
            index: u(0),
            term: u(1),
        }),
        (KIND_METADATA, 16) => Ok(Record::Metadata {
            cluster_id: u(0),
            member_id: u(1),
        }),
        (k, n) => Err(format!(
            "record of kind {k} with a {n}-byte payload is not a known record type"
        )),
    }
}

/// Fields of a segment header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment sequence number (also in the file name).
    pub seq: u64,
    /// Segment length in bytes (the file is preallocated to exactly this).
    pub size: u64,
}

/// Writes a segment header into the first [`BLOCK_SIZE`] bytes of `out` (rest zeroed).
pub fn encode_segment_header(h: &SegmentHeader, out: &mut [u8]) {
    assert!(out.len() >= BLOCK_SIZE);
    out[..BLOCK_SIZE].fill(0);
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    out[16..24].copy_from_slice(&h.seq.to_le_bytes());
    out[24..32].copy_from_slice(&h.size.to_le_bytes());
    let crc = crc32fast::hash(&out[0..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// Parses and verifies a segment header block; the error says which field is wrong.
pub fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, String> {
    if b.len() < BLOCK_SIZE {
        return Err(format!(
            "header block is {} bytes, need {BLOCK_SIZE}",
            b.len()
        ));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err("bad magic (not a corekv WAL segment)".into());
    }
    let crc = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
    if crc32fast::hash(&b[0..32]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    let bs = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    if bs as usize != BLOCK_SIZE {
        return Err(format!(
            "block size {bs} differs from this build's {BLOCK_SIZE}"
        ));
    }
    let seq = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    let size = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
        || !size.is_multiple_of(BLOCK_SIZE as u64)
    {
        return Err(format!("segment size {size} in header is out of range"));
    }
    Ok(SegmentHeader { seq, size })
}

/// File name of a live segment: `<seq:016x>-<first_index:016x>.wal`.
pub fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// File name of a segment being prepared (never holds records): `<seq:016x>.prep`.
pub fn prep_file_name(seq: u64) -> String {
    format!("{seq:016x}.prep")
}

/// Parses a live segment file name into `(seq, first_index)`.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Parses a preparation file name into its sequence number.
pub fn parse_prep_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".prep")?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// Validates a single record for appending.
pub fn check_record(r: &Record) -> Result<(), WalError> {
    let n = payload_len(r);
    if n > MAX_RECORD_PAYLOAD {
        return Err(WalError::TooLarge {
            what: "record payload (MAX_RECORD_PAYLOAD)",
            size: n as u64,
            limit: MAX_RECORD_PAYLOAD as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(r: Record) {
        let mut buf = vec![0xAAu8; encoded_len(&r)];
        encode_record(&r, 7, FLAG_LAST_IN_BATCH, &mut buf);
        let h = decode_header(7, &buf[..RECORD_HEADER_SIZE]).expect("header");
        assert_eq!(h.total_len(), buf.len());
        let p = &buf[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + h.len];
        assert!(payload_ok(7, &h, p, &buf[RECORD_HEADER_SIZE + h.len..]));
        assert_eq!(decode_payload(h.kind, p).expect("decode"), r);
        // Same bytes under another segment sequence must not verify.
        assert_eq!(
            decode_header(8, &buf[..RECORD_HEADER_SIZE]),
            Err(HeaderCheck::BadCrc)
        );
    }

    #[test]
    fn records_roundtrip_and_bind_to_segment() {
        roundtrip(Record::Entry {
            index: 5,
            term: 2,
            data: vec![],
        });
        roundtrip(Record::Entry {
            index: u64::MAX,
            term: 1,
            data: (0..5000u32).map(|i| i as u8).collect(),
        });
        roundtrip(Record::HardState {
            term: 3,
            vote: 2,
            commit: 9,
        });
        roundtrip(Record::Snapshot { index: 10, term: 3 });
        roundtrip(Record::Metadata {
            cluster_id: 1,
            member_id: 2,
        });
    }

    #[test]
    fn segment_start_roundtrip() {
        let mut b = vec![0u8; SEGMENT_START_LEN];
        encode_segment_start(4, 12345, 5, FLAG_FIRST_IN_WRITE, &mut b);
        let h = decode_header(5, &b[..RECORD_HEADER_SIZE]).unwrap();
        assert_eq!(h.kind, KIND_SEGMENT_START);
        assert_eq!(h.total_len(), SEGMENT_START_LEN);
        let p = &b[RECORD_HEADER_SIZE..];
        assert!(payload_ok(5, &h, p, &[]));
        assert_eq!(decode_segment_start(p), Ok((4, 12345)));
    }

    #[test]
    fn every_header_bit_flip_is_detected() {
        let r = Record::Entry {
            index: 1,
            term: 1,
            data: b"abc".to_vec(),
        };
        let mut buf = vec![0u8; encoded_len(&r)];
        encode_record(&r, 1, FLAG_FIRST_IN_WRITE | FLAG_LAST_IN_BATCH, &mut buf);
        for byte in 0..RECORD_HEADER_SIZE {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(decode_header(1, &b[..RECORD_HEADER_SIZE]).is_err());
            }
        }
    }

    #[test]
    fn segment_header_and_names() {
        let mut b = vec![0u8; BLOCK_SIZE];
        let h = SegmentHeader {
            seq: 3,
            size: 1 << 20,
        };
        encode_segment_header(&h, &mut b);
        assert_eq!(decode_segment_header(&b), Ok(h));
        b[20] ^= 1;
        assert!(decode_segment_header(&b).is_err());
        let n = segment_file_name(3, 77);
        assert_eq!(parse_segment_file_name(&n), Some((3, 77)));
        assert_eq!(parse_prep_file_name(&prep_file_name(9)), Some(9));
        assert_eq!(parse_segment_file_name("x.wal"), None);
    }
}
