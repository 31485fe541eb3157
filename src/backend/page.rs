//! On-disk page format: constants, the common page header, meta pages, checksums.
//!
//! The byte-by-byte description lives in `FORMAT.md` next to this file; every constant here is
//! named there. All integers are little-endian.

use super::{Error, Result, PAGE_SIZE};

/// Size of the header at the start of every data page (branch, leaf, overflow, freelist).
pub(crate) const HDR: usize = 32;
/// Bytes available for slots and cells in a branch or leaf page.
pub(crate) const USABLE: usize = PAGE_SIZE - HDR;

/// Page kinds (byte 4 of the header).
pub(crate) const KIND_BRANCH: u8 = 1;
/// A leaf page: keys and values.
pub(crate) const KIND_LEAF: u8 = 2;
/// The head page of a run of contiguous pages holding one large key or value.
pub(crate) const KIND_OVERFLOW: u8 = 3;
/// The head page of the run holding the persisted freelist.
pub(crate) const KIND_FREELIST: u8 = 4;

/// Keys longer than this are stored in an overflow run; the cell keeps only its page id.
pub(crate) const KEY_INLINE_MAX: usize = 512;
/// Values up to this length (a quarter page) are always stored inline; longer ones are inline
/// while their cell stays within [`MAX_LEAF_CELL`] (see [`val_inline_max`]).
pub(crate) const VAL_INLINE_MIN: usize = 1024;

/// Leaf cell header: flags u8, key length u16, value length u32.
pub(crate) const LEAF_CELL_HDR: usize = 7;

/// Largest leaf cell: header, an inline key of [`KEY_INLINE_MAX`] bytes and an inline value of
/// [`VAL_INLINE_MIN`] bytes (1,543 bytes), so any leaf holds at least two cells and a two-way
/// split of a full page plus one cell always fits.
pub(crate) const MAX_LEAF_CELL: usize = LEAF_CELL_HDR + KEY_INLINE_MAX + VAL_INLINE_MIN;
// Two largest cells and their 2-byte slots fit one page: every split has room.
const _: () = assert!(2 * (MAX_LEAF_CELL + 2) <= USABLE);

/// Bytes the key takes in its leaf cell: the key itself, or the 8-byte page id of its overflow run.
#[inline]
pub(crate) fn key_part(klen: usize, overflow: bool) -> usize {
    if overflow {
        8
    } else {
        klen
    }
}

/// Longest value stored inline next to a key whose cell part is `key_part` bytes: whatever keeps
/// the cell within [`MAX_LEAF_CELL`]. A short key leaves room for a longer value (a 1 KiB value
/// with a few hundred bytes of key and record header stays in the leaf instead of taking a
/// 4 KiB overflow page of its own); never less than [`VAL_INLINE_MIN`].
#[inline]
pub(crate) fn val_inline_max(key_part: usize) -> usize {
    debug_assert!(key_part <= KEY_INLINE_MAX);
    MAX_LEAF_CELL - LEAF_CELL_HDR - key_part
}
/// Branch cell header: child page id u64, flags u8, key length u16.
pub(crate) const BRANCH_CELL_HDR: usize = 11;
/// Cell flag: the key is in an overflow run (cell holds its u64 page id).
pub(crate) const FLAG_KEY_OVF: u8 = 1;
/// Cell flag: the value is in an overflow run (cell holds its u64 page id).
pub(crate) const FLAG_VAL_OVF: u8 = 2;

/// First page that can hold data (pages 0 and 1 are the meta pages).
pub(crate) const FIRST_DATA_PAGE: u64 = 2;
/// Deepest tree accepted; deeper means a corrupt (possibly cyclic) tree. With at least two
/// entries per page this is far beyond any real file.
pub(crate) const MAX_DEPTH: usize = 40;

/// Largest transaction id a meta may carry (far beyond any real count; leaves room to
/// increment without overflow).
pub(crate) const MAX_TXID: u64 = 1 << 62;
/// Meta page magic.
pub(crate) const META_MAGIC: [u8; 8] = *b"COREKVB\0";
/// Version of the file format described in FORMAT.md, written into every meta page.
/// Version 2 lets a value longer than 1 KiB stay inline when its key is short (see
/// [`val_inline_max`]); every version 1 file is a valid version 2 file.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build opens.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;
/// Bytes of the meta page covered by its checksum (the checksum follows them).
pub(crate) const META_CRC_OFFSET: usize = 56;

#[inline]
pub(crate) fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
#[inline]
pub(crate) fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
#[inline]
pub(crate) fn wr_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Number of pages of a run holding `payload` bytes after the header.
pub(crate) fn run_pages(payload: usize) -> u64 {
    (HDR + payload).div_ceil(PAGE_SIZE) as u64
}

/// Human name of a page kind, for error messages.
pub(crate) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_BRANCH => "branch",
        KIND_LEAF => "leaf",
        KIND_OVERFLOW => "overflow",
        KIND_FREELIST => "freelist",
        _ => "unknown",
    }
}

/// Fills in the header of a page (or the head page of a run) and its checksum.
/// `buf` is the whole page or run; its length must be a multiple of the page size.
pub(crate) fn seal(buf: &mut [u8], kind: u8, count: u16, id: u64, txid: u64, payload: u32) {
    debug_assert!(!buf.is_empty() && buf.len().is_multiple_of(PAGE_SIZE));
    buf[4] = kind;
    buf[5] = 0;
    wr_u16(buf, 6, count);
    wr_u64(buf, 8, id);
    wr_u64(buf, 16, txid);
    wr_u32(buf, 24, (buf.len() / PAGE_SIZE) as u32);
    wr_u32(buf, 28, payload);
    let crc = crc32fast::hash(&buf[4..]);
    wr_u32(buf, 0, crc);
}

/// The fields of a page header.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // txid is part of the format, read by tests and debugging tools
pub(crate) struct Header {
    pub kind: u8,
    pub count: u16,
    pub id: u64,
    pub txid: u64,
    pub run: u32,
    pub payload: u32,
}

/// Reads the header of a page (no checksum verification).
pub(crate) fn header(p: &[u8]) -> Header {
    Header {
        kind: p[4],
        count: rd_u16(p, 6),
        id: rd_u64(p, 8),
        txid: rd_u64(p, 16),
        run: rd_u32(p, 24),
        payload: rd_u32(p, 28),
    }
}

/// Verifies the checksum and identity of the page or run at `id`. `run` is the whole run
/// (`header.run` pages). Returns a description of the problem if any.
pub(crate) fn verify_run(id: u64, run: &[u8]) -> std::result::Result<(), String> {
    let stored = rd_u32(run, 0);
    let computed = crc32fast::hash(&run[4..]);
    if stored != computed {
        return Err(format!(
            "page {id} (file offset {}): checksum mismatch (stored {stored:#010x}, computed {computed:#010x})",
            id * PAGE_SIZE as u64
        ));
    }
    let h = header(run);
    if h.id != id {
        return Err(format!(
            "page {id}: header names page {} (misplaced write)",
            h.id
        ));
    }
    Ok(())
}

/// The decoded contents of a meta page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Transaction id this meta describes.
    pub txid: u64,
    /// Root page of the catalog tree (0 = empty catalog).
    pub catalog_root: u64,
    /// Head page of the newest persisted freelist segment (0 = no free pages).
    pub freelist: u64,
    /// Pages in that segment.
    pub freelist_pages: u64,
    /// Number of pages in use by the format: every page id is below this.
    pub high_water: u64,
}

impl Meta {
    /// Encodes into a full page.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        p[0..8].copy_from_slice(&META_MAGIC);
        wr_u32(&mut p, 8, FORMAT_VERSION);
        wr_u32(&mut p, 12, PAGE_SIZE as u32);
        wr_u64(&mut p, 16, self.txid);
        wr_u64(&mut p, 24, self.catalog_root);
        wr_u64(&mut p, 32, self.freelist);
        wr_u64(&mut p, 40, self.freelist_pages);
        wr_u64(&mut p, 48, self.high_water);
        let crc = crc32fast::hash(&p[..META_CRC_OFFSET]);
        wr_u32(&mut p, META_CRC_OFFSET, crc);
        p
    }

    /// Decodes and validates a meta page; the error says what is wrong with it.
    pub(crate) fn decode(p: &[u8]) -> std::result::Result<Meta, String> {
        if p.len() < META_CRC_OFFSET + 4 {
            return Err(format!("only {} bytes present", p.len()));
        }
        if p[0..8] != META_MAGIC {
            return Err("bad magic (not a corekv backend file, or torn)".into());
        }
        let stored = rd_u32(p, META_CRC_OFFSET);
        let computed = crc32fast::hash(&p[..META_CRC_OFFSET]);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let version = rd_u32(p, 8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version}, this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
            ));
        }
        let ps = rd_u32(p, 12);
        if ps as usize != PAGE_SIZE {
            return Err(format!("page size {ps}, this build uses {PAGE_SIZE}"));
        }
        let m = Meta {
            txid: rd_u64(p, 16),
            catalog_root: rd_u64(p, 24),
            freelist: rd_u64(p, 32),
            freelist_pages: rd_u64(p, 40),
            high_water: rd_u64(p, 48),
        };
        if m.txid > MAX_TXID {
            return Err(format!("txid {} above the limit {MAX_TXID}", m.txid));
        }
        if m.high_water < FIRST_DATA_PAGE {
            return Err(format!("high water {} below 2", m.high_water));
        }
        let in_range = |pg: u64| pg == 0 || (pg >= FIRST_DATA_PAGE && pg < m.high_water);
        if !in_range(m.catalog_root) {
            return Err(format!(
                "catalog root {} outside [2, {})",
                m.catalog_root, m.high_water
            ));
        }
        if !in_range(m.freelist)
            || (m.freelist != 0
                && (m.freelist_pages == 0
                    || m.freelist.saturating_add(m.freelist_pages) > m.high_water))
        {
            return Err(format!(
                "freelist run {}+{} outside [2, {})",
                m.freelist, m.freelist_pages, m.high_water
            ));
        }
        Ok(m)
    }
}

/// Chooses the meta to open from the two meta pages and the file size: the valid meta with the
/// highest txid. A torn (invalid) newer meta falls back to the older valid one. A *valid*
/// newest meta whose high-water mark does not fit in the file is refused rather than
/// skipped: every meta is written only after the file was grown and fdatasynced, so a short
/// file means outside damage (truncation), and opening the older meta would silently drop
/// transactions that were acknowledged as durable. Returns (slot, meta), or an error that
/// explains what is wrong with each slot.
pub(crate) fn choose_meta(
    path: &std::path::Path,
    m0: &[u8],
    m1: &[u8],
    file_len: u64,
) -> Result<(usize, Meta)> {
    let decoded = [Meta::decode(m0), Meta::decode(m1)];
    let best = (0..2)
        .filter_map(|slot| decoded[slot].as_ref().ok().map(|m| (slot, *m)))
        .max_by_key(|(_, m)| m.txid);
    let describe = |slot: usize| match &decoded[slot] {
        Ok(m) => format!("valid, txid {}, {} pages", m.txid, m.high_water),
        Err(e) => e.clone(),
    };
    let Some((slot, m)) = best else {
        return Err(Error::Corrupt(format!(
            "{}: no usable meta page: meta 0: {}; meta 1: {}",
            path.display(),
            describe(0),
            describe(1)
        )));
    };
    let need = m.high_water.saturating_mul(PAGE_SIZE as u64);
    if need > file_len {
        return Err(Error::Corrupt(format!(
            "{}: truncated: meta {slot} (txid {}) needs {} pages ({need} bytes) but the file has              only {file_len} bytes; not falling back to the other meta ({}) because that would              silently drop synced transactions",
            path.display(),
            m.txid,
            m.high_water,
            describe(1 - slot)
        )));
    }
    Ok((slot, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn meta(txid: u64, hw: u64) -> Meta {
        Meta {
            txid,
            catalog_root: 0,
            freelist: 0,
            freelist_pages: 0,
            high_water: hw,
        }
    }

    #[test]
    fn meta_roundtrip() {
        let m = Meta {
            txid: 7,
            catalog_root: 3,
            freelist: 4,
            freelist_pages: 2,
            high_water: 10,
        };
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
    }

    /// Re-encodes `m` as written by format `version` (checksum recomputed).
    fn encode_version(m: &Meta, version: u32) -> Vec<u8> {
        let mut p = m.encode();
        wr_u32(&mut p, 8, version);
        let crc = crc32fast::hash(&p[..META_CRC_OFFSET]);
        wr_u32(&mut p, META_CRC_OFFSET, crc);
        p
    }

    #[test]
    fn meta_versions_from_oldest_to_current_open_others_are_refused() {
        let m = meta(5, 9);
        for v in OLDEST_FORMAT_VERSION..=FORMAT_VERSION {
            assert_eq!(
                Meta::decode(&encode_version(&m, v)).unwrap(),
                m,
                "version {v}"
            );
        }
        for v in [0, FORMAT_VERSION + 1] {
            let err = Meta::decode(&encode_version(&m, v)).unwrap_err();
            assert!(err.contains(&format!("format version {v}")), "{err}");
        }
    }

    #[test]
    fn inline_value_limit_keeps_every_cell_within_the_largest() {
        assert_eq!(val_inline_max(KEY_INLINE_MAX), VAL_INLINE_MIN);
        for klen in [0, 8, 264, KEY_INLINE_MAX] {
            let kpart = key_part(klen, false);
            assert_eq!(LEAF_CELL_HDR + kpart + val_inline_max(kpart), MAX_LEAF_CELL);
        }
        // A key in an overflow run takes 8 bytes of its cell.
        assert_eq!(
            val_inline_max(key_part(KEY_INLINE_MAX + 1, true)),
            MAX_LEAF_CELL - 15
        );
    }

    #[test]
    fn meta_rejects_absurd_txid() {
        let mut m = meta(5, 9);
        m.txid = u64::MAX;
        assert!(Meta::decode(&m.encode()).unwrap_err().contains("txid"));
    }

    #[test]
    fn meta_rejects_each_flipped_byte() {
        let raw = meta(5, 9).encode();
        for i in 0..META_CRC_OFFSET + 4 {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            assert!(Meta::decode(&bad).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn choose_highest_valid_and_fall_back_on_torn() {
        let p = Path::new("x");
        let a = meta(4, 2).encode();
        let b = meta(5, 2).encode();
        assert_eq!(choose_meta(p, &a, &b, 8192).unwrap().0, 1);
        assert_eq!(choose_meta(p, &b, &a, 8192).unwrap().0, 0);
        // Torn newer meta: half of it zeroed.
        let mut torn = b.clone();
        torn[20..].fill(0);
        let (slot, m) = choose_meta(p, &a, &torn, 8192).unwrap();
        assert_eq!((slot, m.txid), (0, 4));
        // Both bad: a clear error naming both.
        let err = choose_meta(p, &torn, &torn, 8192).unwrap_err().to_string();
        assert!(err.contains("meta 0") && err.contains("meta 1"), "{err}");
    }

    #[test]
    fn truncated_file_is_refused_not_rolled_back() {
        let p = Path::new("x");
        let old = meta(4, 3).encode();
        let new = meta(5, 100).encode();
        let err = choose_meta(p, &old, &new, 3 * PAGE_SIZE as u64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated") && err.contains("txid 4"), "{err}");
        // A torn newer meta still falls back, also when only the older one fits.
        let mut torn = new.clone();
        torn[30] ^= 1;
        let (slot, m) = choose_meta(p, &old, &torn, 3 * PAGE_SIZE as u64).unwrap();
        assert_eq!((slot, m.txid), (0, 4));
        assert!(choose_meta(p, &old, &new, 100 * PAGE_SIZE as u64).is_ok());
    }

    #[test]
    fn seal_and_verify() {
        let mut run = vec![0u8; 2 * PAGE_SIZE];
        run[HDR..HDR + 5].copy_from_slice(b"hello");
        seal(&mut run, KIND_OVERFLOW, 0, 9, 3, 5);
        verify_run(9, &run).unwrap();
        assert!(verify_run(8, &run).is_err());
        run[PAGE_SIZE + 100] ^= 1;
        assert!(verify_run(9, &run).unwrap_err().contains("checksum"));
        let h = header(&run);
        assert_eq!((h.kind, h.run, h.payload, h.txid), (KIND_OVERFLOW, 2, 5, 3));
    }
}
