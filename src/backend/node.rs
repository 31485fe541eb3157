//! A branch or leaf page being edited by the write transaction (a *dirty page*), and the
//! choice of split points.
//!
//! A dirty page keeps the on-disk layout of FORMAT.md (header, slot array, cells) in one
//! page-sized buffer and is edited in place, like a slotted page: copy-on-write copies the
//! 4 KiB of a clean page, an insert writes one cell into the free gap between the slot array
//! and the cells and shifts the slots, a delete drops a slot and leaves a hole that the next
//! insert needing the room compacts away. Publish only fills in the header and checksum
//! ([`super::page::seal`]): nothing is decoded into owned keys and values and nothing is
//! re-encoded. A change that does not fit the page is handed to the writer's split code
//! as a list of cells ([`PageBuf::cell`]), which rebuilds pages with [`PageBuf::build`].

use super::page::*;
use super::view::{self, Loc};
use super::{Error, Result, PAGE_SIZE};

/// Smallest size (bytes of slots + cells) below which a non-root node is merged with, or
/// refilled from, a sibling.
pub(crate) const MIN_FILL: usize = USABLE / 4;

/// A dirty branch or leaf page in the on-disk layout.
///
/// Invariants (checked by [`PageBuf::assert_valid`] in debug builds): the buffer is one page;
/// byte 4 is the kind, bytes 6..8 the slot count `n`; the slot array `[HDR, HDR + 2n)` is
/// followed by free space up to `top`; every cell lies in `[top, PAGE_SIZE)`; `used` is the
/// bytes of all slots and live cells and at most [`USABLE`]. Cells may leave holes (after
/// deletes); [`PageBuf::compact`] removes them.
///
/// A copy of a clean page starts with `top` and `used` unknown ([`UNMEASURED`]) and measures
/// them (a walk over every cell) only when an edit needs them: most copied branch pages only
/// get a new child pointer ([`PageBuf::set_child`]), and a branch holds ~150 cells.
pub(crate) struct PageBuf {
    b: Box<[u8]>,
    top: usize,
    used: usize,
}

/// `PageBuf::used` of a page not measured yet.
const UNMEASURED: usize = usize::MAX;

/// Bytes of the leaf cell for key `k` and value `v` (inline or overflow references).
pub(crate) fn leaf_cell_size(k: Loc<'_>, v: Loc<'_>) -> usize {
    LEAF_CELL_HDR + loc_part(k) + loc_part(v)
}

fn loc_part(l: Loc<'_>) -> usize {
    match l {
        Loc::Inline(b) => b.len(),
        Loc::Ovf(..) => 8,
    }
}

fn put_loc(out: &mut [u8], at: usize, l: Loc<'_>) -> usize {
    match l {
        Loc::Inline(b) => {
            out[at..at + b.len()].copy_from_slice(b);
            b.len()
        }
        Loc::Ovf(pg, _) => {
            wr_u64(out, at, pg);
            8
        }
    }
}

fn loc_len(l: Loc<'_>) -> usize {
    match l {
        Loc::Inline(b) => b.len(),
        Loc::Ovf(_, len) => len,
    }
}

/// Writes the leaf cell for `k`, `v` to the front of `out` (at least
/// [`leaf_cell_size`] bytes); returns its length.
pub(crate) fn write_leaf_cell(out: &mut [u8], k: Loc<'_>, v: Loc<'_>) -> usize {
    debug_assert!(out.len() >= leaf_cell_size(k, v));
    let mut flags = 0;
    if matches!(k, Loc::Ovf(..)) {
        flags |= FLAG_KEY_OVF;
    }
    if matches!(v, Loc::Ovf(..)) {
        flags |= FLAG_VAL_OVF;
    }
    out[0] = flags;
    wr_u16(out, 1, loc_len(k) as u16);
    wr_u32(out, 3, loc_len(v) as u32);
    let mut at = LEAF_CELL_HDR;
    at += put_loc(out, at, k);
    at += put_loc(out, at, v);
    at
}

/// The branch cell pointing at `child` with separator `k` (`Inline(&[])` for cell 0).
pub(crate) fn branch_cell_bytes(child: u64, k: Loc<'_>) -> Vec<u8> {
    let mut c = vec![0u8; BRANCH_CELL_HDR + loc_part(k)];
    wr_u64(&mut c, 0, child);
    c[8] = if matches!(k, Loc::Ovf(..)) {
        FLAG_KEY_OVF
    } else {
        0
    };
    wr_u16(&mut c, 9, loc_len(k) as u16);
    put_loc(&mut c, BRANCH_CELL_HDR, k);
    c
}

impl PageBuf {
    /// An empty leaf or branch page.
    #[cfg(test)]
    pub(crate) fn empty(leaf: bool) -> PageBuf {
        let mut b = vec![0u8; PAGE_SIZE].into_boxed_slice();
        b[4] = if leaf { KIND_LEAF } else { KIND_BRANCH };
        PageBuf {
            b,
            top: PAGE_SIZE,
            used: 0,
        }
    }

    /// A copy of the verified (checksum and cell directory, see [`view::validate_node`])
    /// clean page `p`, ready to edit.
    #[cfg(test)]
    pub(crate) fn from_page(p: &[u8]) -> PageBuf {
        Self::from_page_in(vec![0u8; PAGE_SIZE].into_boxed_slice(), p)
    }

    /// Like [`Self::from_page`], copying into `b` (a page-sized buffer whose old bytes do not
    /// matter) instead of a new allocation.
    pub(crate) fn from_page_in(mut b: Box<[u8]>, p: &[u8]) -> PageBuf {
        debug_assert_eq!(p.len(), PAGE_SIZE);
        debug_assert_eq!(b.len(), PAGE_SIZE);
        b.copy_from_slice(p);
        Self::from_page_buf(b)
    }

    /// Like [`Self::from_page`], taking over `b`, which already holds a verified page (the
    /// writer's own copy of a page it published).
    pub(crate) fn from_page_buf(b: Box<[u8]>) -> PageBuf {
        debug_assert_eq!(b.len(), PAGE_SIZE);
        let pb = PageBuf {
            b,
            top: PAGE_SIZE,
            used: UNMEASURED,
        };
        pb.assert_valid();
        pb
    }

    /// `(top, used)` of the cells as they lie in the buffer (a walk over every cell).
    fn measure(&self) -> (usize, usize) {
        let n = self.len();
        let (mut top, mut used) = (PAGE_SIZE, 2 * n);
        let offsets = self.b[HDR..HDR + 2 * n]
            .chunks_exact(2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
        // One loop per page kind, so the kind is not tested per cell.
        if self.is_leaf() {
            for off in offsets {
                used += view::leaf_cell_len(&self.b, off);
                top = top.min(off);
            }
        } else {
            for off in offsets {
                used += view::branch_cell_len(&self.b, off);
                top = top.min(off);
            }
        }
        (top, used)
    }

    /// Fills in `top` and `used` if this copy has not measured them yet.
    #[inline]
    fn measured(&mut self) -> &mut Self {
        if self.used == UNMEASURED {
            (self.top, self.used) = self.measure();
        }
        self
    }

    /// Builds a page of kind `leaf` holding `cells` in order (they must fit).
    #[cfg(test)]
    pub(crate) fn build<'c>(leaf: bool, cells: impl IntoIterator<Item = &'c [u8]>) -> PageBuf {
        PageBuf::build_in(PageBuf::empty(leaf).b, leaf, cells)
    }

    /// Like [`PageBuf::build`], reusing the page-sized buffer `b` (an earlier dirty page of
    /// this transaction) instead of allocating and zeroing one. Bytes outside the new cells
    /// keep old content of this transaction's own pages (unspecified by the format).
    pub(crate) fn build_in<'c>(
        mut b: Box<[u8]>,
        leaf: bool,
        cells: impl IntoIterator<Item = &'c [u8]>,
    ) -> PageBuf {
        debug_assert_eq!(b.len(), PAGE_SIZE);
        b[4] = if leaf { KIND_LEAF } else { KIND_BRANCH };
        wr_u16(&mut b, 6, 0);
        let mut pb = PageBuf {
            b,
            top: PAGE_SIZE,
            used: 0,
        };
        for (i, c) in cells.into_iter().enumerate() {
            pb.insert(i, c);
        }
        pb
    }

    /// A stand-in holding no buffer, for moving a page out of a map slot; never used as a
    /// page.
    pub(crate) fn placeholder() -> PageBuf {
        PageBuf {
            b: Box::default(),
            top: 0,
            used: 0,
        }
    }

    /// The page-sized buffer, for reuse by [`PageBuf::build_in`].
    pub(crate) fn into_buf(self) -> Box<[u8]> {
        self.b
    }

    /// The page bytes (header fields other than kind and count are stale until sealed).
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.b
    }

    /// The buffer, for sealing and writing.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.b.into_vec()
    }

    /// Whether this is a leaf page.
    #[inline]
    pub(crate) fn is_leaf(&self) -> bool {
        self.b[4] == KIND_LEAF
    }

    /// Number of cells (leaf entries or branch children).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        view::count(&self.b)
    }

    /// Bytes of slots and live cells.
    #[inline]
    pub(crate) fn size(&mut self) -> usize {
        self.measured().used
    }

    /// Whether cells taking `extra` more bytes (their slots included) fit.
    #[inline]
    pub(crate) fn fits(&mut self, extra: usize) -> bool {
        self.measured().used + extra <= USABLE
    }

    #[inline]
    fn cell_len_at(&self, off: usize) -> usize {
        if self.is_leaf() {
            view::leaf_cell_len(&self.b, off)
        } else {
            view::branch_cell_len(&self.b, off)
        }
    }

    /// The bytes of cell `i`.
    #[inline]
    pub(crate) fn cell(&self, i: usize) -> &[u8] {
        let off = view::slot(&self.b, i);
        &self.b[off..off + self.cell_len_at(off)]
    }

    /// Inserts `cell` as cell `i` (`i <= len`); the caller checked [`PageBuf::fits`] for
    /// `2 + cell.len()` bytes.
    pub(crate) fn insert(&mut self, i: usize, cell: &[u8]) {
        self.measured();
        let n = self.len();
        debug_assert!(i <= n && self.fits(2 + cell.len()));
        if self.top < HDR + 2 * (n + 1) + cell.len() {
            self.compact();
        }
        self.top -= cell.len();
        let top = self.top;
        self.b[top..top + cell.len()].copy_from_slice(cell);
        self.b
            .copy_within(HDR + 2 * i..HDR + 2 * n, HDR + 2 * i + 2);
        wr_u16(&mut self.b, HDR + 2 * i, top as u16);
        wr_u16(&mut self.b, 6, (n + 1) as u16);
        self.used += 2 + cell.len();
        self.assert_valid();
    }

    /// Removes cell `i`; its bytes become a hole until the next compaction.
    pub(crate) fn remove(&mut self, i: usize) {
        self.measured();
        let n = self.len();
        debug_assert!(i < n);
        let off = view::slot(&self.b, i);
        let len = self.cell_len_at(off);
        if off == self.top {
            self.top += len;
        }
        self.b
            .copy_within(HDR + 2 * i + 2..HDR + 2 * n, HDR + 2 * i);
        wr_u16(&mut self.b, 6, (n - 1) as u16);
        self.used -= 2 + len;
        if n == 1 {
            self.top = PAGE_SIZE;
        }
        self.assert_valid();
    }

    /// Replaces cell `i` by `cell` if it fits (in place when the length is unchanged);
    /// returns false, changing nothing, if it does not.
    pub(crate) fn replace(&mut self, i: usize, cell: &[u8]) -> bool {
        let off = view::slot(&self.b, i);
        let old = self.cell_len_at(off);
        if old == cell.len() {
            self.b[off..off + old].copy_from_slice(cell);
            return true;
        }
        if !self.fits(cell.len().saturating_sub(old)) {
            return false;
        }
        self.remove(i);
        self.insert(i, cell);
        true
    }

    /// Points branch cell `i` at `child`.
    #[inline]
    pub(crate) fn set_child(&mut self, i: usize, child: u64) {
        debug_assert!(!self.is_leaf());
        let off = view::slot(&self.b, i);
        wr_u64(&mut self.b, off, child);
    }

    /// Moves all cells to the end of the page, removing holes.
    fn compact(&mut self) {
        let n = self.len();
        let mut scratch = [0u8; PAGE_SIZE];
        scratch.copy_from_slice(&self.b);
        let leaf = self.is_leaf();
        let mut top = PAGE_SIZE;
        for i in 0..n {
            let off = view::slot(&scratch, i);
            let len = if leaf {
                view::leaf_cell_len(&scratch, off)
            } else {
                view::branch_cell_len(&scratch, off)
            };
            top -= len;
            self.b[top..top + len].copy_from_slice(&scratch[off..off + len]);
            wr_u16(&mut self.b, HDR + 2 * i, top as u16);
        }
        self.top = top;
        debug_assert_eq!(PAGE_SIZE - top + 2 * n, self.used);
    }

    /// Checks the invariants (debug builds only).
    #[inline]
    fn assert_valid(&self) {
        #[cfg(debug_assertions)]
        {
            let n = self.len();
            let (top, used) = match self.used {
                UNMEASURED => self.measure(),
                used => (self.top, used),
            };
            assert!(HDR + 2 * n <= top && top <= PAGE_SIZE);
            assert!(used <= USABLE);
            let mut sum = 2 * n;
            for i in 0..n {
                let off = view::slot(&self.b, i);
                assert!(off >= top, "cell {i} at {off} below top {top}");
                let len = self.cell_len_at(off);
                assert!(off + len <= PAGE_SIZE);
                sum += len;
            }
            assert_eq!(sum, used);
        }
    }
}

/// Where to cut a node whose entries have `sizes` so every piece fits in `cap` bytes. Returns
/// the start index of every piece after the first (empty: it fits). `append` packs the left
/// pieces full (sequential inserts at the right edge then leave full pages behind); otherwise
/// a two-way cut balances the bytes.
pub(crate) fn split_points(sizes: &[usize], cap: usize, append: bool) -> Result<Vec<usize>> {
    let total: usize = sizes.iter().sum();
    if total <= cap {
        return Ok(Vec::new());
    }
    if let Some(&big) = sizes.iter().find(|&&s| s > cap) {
        return Err(Error::Corrupt(format!(
            "internal: a {big}-byte entry cannot fit a page of {cap} bytes"
        )));
    }
    if !append {
        let mut best: Option<(usize, usize)> = None;
        let mut left = 0;
        for (k, &s) in sizes.iter().enumerate().take(sizes.len() - 1) {
            left += s;
            let right = total - left;
            if left <= cap && right <= cap {
                let worst = left.max(right);
                if best.is_none_or(|(_, w)| worst < w) {
                    best = Some((k + 1, worst));
                }
            }
        }
        if let Some((k, _)) = best {
            return Ok(vec![k]);
        }
    }
    let mut points = Vec::new();
    let mut acc = 0;
    for (i, &s) in sizes.iter().enumerate() {
        if acc + s > cap {
            points.push(i);
            acc = 0;
        }
        acc += s;
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn leaf_cell(k: &[u8], v: &[u8]) -> Vec<u8> {
        let mut c = vec![0u8; leaf_cell_size(Loc::Inline(k), Loc::Inline(v))];
        let n = write_leaf_cell(&mut c, Loc::Inline(k), Loc::Inline(v));
        assert_eq!(n, c.len());
        c
    }

    fn contents(pb: &PageBuf) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..pb.len())
            .map(|i| match view::leaf_cell(pb.bytes(), i) {
                (Loc::Inline(k), Loc::Inline(v)) => (k.to_vec(), v.to_vec()),
                other => panic!("unexpected overflow reference {other:?}"),
            })
            .collect()
    }

    /// A deterministic xorshift generator (no dependency needed for a unit test).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random inserts, replacements (of other lengths) and deletes on one page against a
    /// `BTreeMap`, checking contents, size accounting and that the sealed page passes the
    /// reader's validation after every step; half the steps edit a copy of the sealed page.
    #[test]
    fn in_place_edits_match_a_model() {
        let iters: usize = std::env::var("COREKV_PAGEBUF_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3000);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut pb = PageBuf::empty(true);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for step in 0..iters {
            let key = format!("k{:03}", rng.next() % 200).into_bytes();
            let vlen = (rng.next() % 300) as usize;
            let val: Vec<u8> = (0..vlen).map(|j| (step + j) as u8).collect();
            let pos = model.range::<Vec<u8>, _>(..&key).count();
            let present = model.contains_key(&key);
            if rng.next().is_multiple_of(3) {
                if present {
                    pb.remove(pos);
                    model.remove(&key);
                }
            } else {
                let cell = leaf_cell(&key, &val);
                let ok = if present {
                    pb.replace(pos, &cell)
                } else if pb.fits(2 + cell.len()) {
                    pb.insert(pos, &cell);
                    true
                } else {
                    false
                };
                if ok {
                    model.insert(key, val);
                } else {
                    // Did not fit: the model says the page would overflow.
                    let old = model.get(&key).map_or(0, |v| v.len() + key.len() + 7 + 2);
                    assert!(pb.size() - old + cell.len() + 2 > USABLE);
                }
            }
            let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(contents(&pb), want, "step {step}");
            let size: usize = want.iter().map(|(k, v)| 2 + 7 + k.len() + v.len()).sum();
            assert_eq!(pb.size(), size, "step {step}");
            if pb.len() > 0 {
                let mut page = pb.bytes().to_vec();
                seal(&mut page, KIND_LEAF, pb.len() as u16, 7, 1, 0);
                view::validate_node(&page, true).unwrap();
                // A copy of the sealed page holds the same cells and measures the same size.
                let mut copy = PageBuf::from_page(&page);
                assert_eq!((copy.size(), contents(&copy)), (pb.size(), want));
                // Every other step the edits go on in a fresh, unmeasured copy (holes
                // included), so edits that must measure the page first are covered too.
                if step % 2 == 0 {
                    pb = PageBuf::from_page(&page);
                }
            }
        }
    }

    #[test]
    fn build_cells_and_branch_children() {
        let cells = [
            branch_cell_bytes(5, Loc::Inline(&[])),
            branch_cell_bytes(6, Loc::Inline(b"m")),
            branch_cell_bytes(7, Loc::Ovf(9, 600)),
        ];
        let mut pb = PageBuf::build(false, cells.iter().map(|c| &c[..]));
        assert_eq!(pb.len(), 3);
        pb.set_child(1, 8);
        let p = pb.bytes();
        assert_eq!(view::branch_child(p, 0), 5);
        assert_eq!(view::branch_child(p, 1), 8);
        assert!(matches!(view::branch_key(p, 1), Loc::Inline(b"m")));
        assert!(matches!(view::branch_key(p, 2), Loc::Ovf(9, 600)));
        assert_eq!(pb.cell(2), &cells[2][..]);
        pb.remove(0);
        assert_eq!(view::branch_child(pb.bytes(), 0), 8);
        assert_eq!(pb.size(), 2 * 2 + 11 + 1 + 11 + 8);
    }

    #[test]
    fn validation_rejects_bad_cell_directories() {
        let cells = [leaf_cell(b"a", b"1"), leaf_cell(b"b", b"22")];
        let pb = PageBuf::build(true, cells.iter().map(|c| &c[..]));
        let mut page = pb.into_vec();
        seal(&mut page, KIND_LEAF, 2, 3, 1, 0);
        view::validate_node(&page, true).unwrap();
        // A slot pointing into the slot array, one past the page, a value running off it.
        for (at, val) in [(HDR, HDR as u16), (HDR + 2, PAGE_SIZE as u16 - 3)] {
            let mut bad = page.clone();
            wr_u16(&mut bad, at, val);
            let e = view::validate_node(&bad, true).unwrap_err();
            assert!(e.contains("page 3") && e.contains("cell"), "{e}");
        }
        let mut bad = page.clone();
        let off = view::slot(&bad, 1);
        wr_u32(&mut bad, off + 3, 5000); // inline value longer than VAL_INLINE_MAX
        assert!(view::validate_node(&bad, true)
            .unwrap_err()
            .contains("value length"));
        let mut bad = page;
        wr_u16(&mut bad, 6, 3000); // more slots than fit
        assert!(view::validate_node(&bad, true)
            .unwrap_err()
            .contains("slots"));
    }

    #[test]
    fn split_points_fit_and_balance() {
        let sizes = vec![1000; 5];
        assert_eq!(split_points(&sizes, 4064, false).unwrap(), vec![2]);
        assert_eq!(split_points(&sizes, 4064, true).unwrap(), vec![4]);
        assert!(split_points(&[10, 10], 4064, false).unwrap().is_empty());
        // Needs three pieces.
        let sizes = vec![1500; 7];
        let pts = split_points(&sizes, 4064, false).unwrap();
        assert_eq!(pts, vec![2, 4, 6]);
        assert!(split_points(&[5000], 4064, false).is_err());
    }
}
