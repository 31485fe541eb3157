//! The read path: bounds-checked, checksum-verified access to pages of one snapshot through
//! the mmap, and zero-copy search, cursors and ranges over them.
//!
//! Every page id is checked against the snapshot's high-water mark and every in-page offset
//! against the page, so a damaged file yields [`Error::Corrupt`] naming the page, never a
//! panic or an out-of-bounds read. A page's checksum is verified on its first visit (per
//! process) and remembered in the shared [`Bitmap`]; the writer clears the bit when it reuses
//! the page id.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::*};

use memmap2::MmapMut;

use super::page::*;
use super::{Error, KeyOrder, Result, MAX_KEY_SIZE, MAX_VALUE_SIZE, PAGE_SIZE};

/// One bit per page of the reserved mapping: "checksum verified".
pub(crate) struct Bitmap {
    map: MmapMut,
    words: usize,
}

impl Bitmap {
    /// Reserves (lazily, anonymous zero pages) one bit for each of `pages` pages.
    pub(crate) fn new(pages: u64) -> std::io::Result<Bitmap> {
        let words = (pages as usize).div_ceil(64).max(1);
        let map = MmapMut::map_anon(words * 8)?;
        Ok(Bitmap { map, words })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the anonymous mapping is page aligned, `words * 8` bytes long, lives as long
        // as `self`, and is only ever accessed through these atomics.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.words) }
    }

    #[inline]
    pub(crate) fn get(&self, pg: u64) -> bool {
        let w = (pg / 64) as usize;
        w < self.words && self.words()[w].load(Relaxed) & (1 << (pg % 64)) != 0
    }

    #[inline]
    pub(crate) fn set(&self, pg: u64) {
        let w = (pg / 64) as usize;
        if w < self.words {
            self.words()[w].fetch_or(1 << (pg % 64), Relaxed);
        }
    }

    /// Forgets that pages `[pg, pg+n)` were verified (their ids are being reused).
    pub(crate) fn clear(&self, pg: u64, n: u64) {
        for p in pg..pg + n {
            let w = (p / 64) as usize;
            if w < self.words {
                self.words()[w].fetch_and(!(1 << (p % 64)), Relaxed);
            }
        }
    }
}

/// Read access to the pages of one snapshot (all pages below `hw`).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub map: &'a [u8],
    pub hw: u64,
    pub bits: &'a Bitmap,
}

fn corrupt<T>(msg: String) -> Result<T> {
    Err(Error::Corrupt(msg))
}

/// Where a key or value is: inline in a page, or an overflow run `(head page, length)`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loc<'a> {
    Inline(&'a [u8]),
    Ovf(u64, usize),
}

impl Loc<'_> {
    /// The overflow run `(head page, length)` this location refers to, if any.
    #[inline]
    pub(crate) fn run(self) -> Option<(u64, usize)> {
        match self {
            Loc::Inline(_) => None,
            Loc::Ovf(pg, len) => Some((pg, len)),
        }
    }
}

impl<'a> View<'a> {
    /// Builds a view over the first `hw` pages of `map`. `map.len()` must be at least
    /// `hw * PAGE_SIZE` and those bytes must be backed by the file.
    pub(crate) fn new(map: &'a [u8], hw: u64, bits: &'a Bitmap) -> View<'a> {
        debug_assert!(map.len() as u64 >= hw * PAGE_SIZE as u64);
        View { map, hw, bits }
    }

    fn bytes(&self, pg: u64, pages: u64) -> &'a [u8] {
        let start = pg as usize * PAGE_SIZE;
        &self.map[start..start + pages as usize * PAGE_SIZE]
    }

    /// The page `pg`, which must be of `kind`; verified on first visit. For overflow and
    /// freelist kinds this is the whole run.
    #[inline]
    pub(crate) fn page(&self, pg: u64, kind: u8) -> Result<&'a [u8]> {
        if pg < FIRST_DATA_PAGE || pg >= self.hw {
            return corrupt(format!(
                "page id {pg} outside [2, {}) (expected a {} page)",
                self.hw,
                kind_name(kind)
            ));
        }
        let head = self.bytes(pg, 1);
        let h = header(head);
        let run = h.run as u64;
        if h.kind != kind {
            return corrupt(format!(
                "page {pg}: expected a {} page, found type {} ({})",
                kind_name(kind),
                h.kind,
                kind_name(h.kind)
            ));
        }
        let multi = kind == KIND_OVERFLOW || kind == KIND_FREELIST;
        if run == 0 || (!multi && run != 1) || pg.saturating_add(run) > self.hw {
            return corrupt(format!(
                "page {pg}: run of {run} pages invalid (high water {})",
                self.hw
            ));
        }
        let all = self.bytes(pg, run);
        if !self.bits.get(pg) {
            verify_run(pg, all).map_err(Error::Corrupt)?;
            if !multi {
                validate_node(all, kind == KIND_LEAF).map_err(Error::Corrupt)?;
            }
            self.bits.set(pg);
        }
        Ok(all)
    }

    /// The payload of the overflow run at `pg`, which must hold exactly `len` bytes.
    #[inline]
    pub(crate) fn overflow(&self, pg: u64, len: usize) -> Result<&'a [u8]> {
        let run = self.page(pg, KIND_OVERFLOW)?;
        let h = header(run);
        if h.payload as usize != len || HDR + len > run.len() {
            return corrupt(format!(
                "overflow page {pg}: holds {} bytes in {} pages, referenced as {len} bytes",
                h.payload, h.run
            ));
        }
        Ok(&run[HDR..HDR + len])
    }
}

/// Number of entries of a (verified) branch or leaf page.
#[inline]
pub(crate) fn count(p: &[u8]) -> usize {
    rd_u16(p, 6) as usize
}

/// Whether a verified branch or leaf page is a leaf.
#[inline]
pub(crate) fn is_leaf(p: &[u8]) -> bool {
    p[4] == KIND_LEAF
}

/// Page id of a verified page (from its header).
#[inline]
pub(crate) fn page_id(p: &[u8]) -> u64 {
    rd_u64(p, 8)
}

/// Byte offset of cell `i` (from the slot array).
#[inline]
pub(crate) fn slot(p: &[u8], i: usize) -> usize {
    debug_assert!(i < count(p));
    rd_u16(p, HDR + 2 * i) as usize
}

/// Bytes taken by an inline key/value part or an overflow reference.
#[inline]
fn part_len(ovf: bool, len: usize) -> usize {
    if ovf {
        8
    } else {
        len
    }
}

#[inline]
fn loc(p: &[u8], at: usize, ovf: bool, len: usize) -> Loc<'_> {
    if ovf {
        Loc::Ovf(rd_u64(p, at), len)
    } else {
        Loc::Inline(&p[at..at + len])
    }
}

/// Length in bytes of the leaf cell at byte `off` (header, key part, value part).
#[inline]
pub(crate) fn leaf_cell_len(p: &[u8], off: usize) -> usize {
    let flags = p[off];
    let klen = rd_u16(p, off + 1) as usize;
    let vlen = rd_u32(p, off + 3) as usize;
    LEAF_CELL_HDR
        + part_len(flags & FLAG_KEY_OVF != 0, klen)
        + part_len(flags & FLAG_VAL_OVF != 0, vlen)
}

/// Length in bytes of the branch cell at byte `off` (header, key part).
#[inline]
pub(crate) fn branch_cell_len(p: &[u8], off: usize) -> usize {
    let klen = rd_u16(p, off + 9) as usize;
    BRANCH_CELL_HDR + part_len(p[off + 8] & FLAG_KEY_OVF != 0, klen)
}

/// Checks the slot array and every cell of a branch or leaf page whose checksum was just
/// verified: slots fit, every cell lies after the slot array and inside the page, lengths
/// respect the format's limits (an inline key at most [`KEY_INLINE_MAX`], an inline value at
/// most [`val_inline_max`] for its key), and slots plus cells fit in [`USABLE`] bytes. A page that passed is
/// remembered in the verified bitmap, so the accessors below ([`leaf_cell`], [`branch_cell`],
/// ...) index without re-validating: on such a page they cannot go out of bounds.
pub(crate) fn validate_node(p: &[u8], leaf: bool) -> std::result::Result<(), String> {
    let id = page_id(p);
    let n = count(p);
    if n == 0 {
        let kind = if leaf { "leaf" } else { "branch" };
        return Err(format!("page {id}: empty {kind} page"));
    }
    let dir_end = HDR + 2 * n;
    if dir_end > PAGE_SIZE {
        return Err(format!("page {id}: {n} slots do not fit"));
    }
    let hdr = if leaf { LEAF_CELL_HDR } else { BRANCH_CELL_HDR };
    let mut total = 2 * n;
    for i in 0..n {
        let off = rd_u16(p, HDR + 2 * i) as usize;
        if off < dir_end || off + hdr > PAGE_SIZE {
            return Err(format!("page {id}: cell {i} offset {off} out of bounds"));
        }
        let (klen, kovf) = if leaf {
            (rd_u16(p, off + 1) as usize, p[off] & FLAG_KEY_OVF != 0)
        } else {
            (rd_u16(p, off + 9) as usize, p[off + 8] & FLAG_KEY_OVF != 0)
        };
        if klen > MAX_KEY_SIZE || (!kovf && klen > KEY_INLINE_MAX) {
            return Err(format!(
                "page {id}: cell {i} key length {klen} exceeds its limit"
            ));
        }
        let len = if leaf {
            let vlen = rd_u32(p, off + 3) as usize;
            let vovf = p[off] & FLAG_VAL_OVF != 0;
            if vlen > MAX_VALUE_SIZE || (!vovf && vlen > val_inline_max(key_part(klen, kovf))) {
                return Err(format!(
                    "page {id}: cell {i} value length {vlen} exceeds its limit"
                ));
            }
            leaf_cell_len(p, off)
        } else {
            branch_cell_len(p, off)
        };
        if off + len > PAGE_SIZE {
            return Err(format!("page {id}: cell {i} overruns the page"));
        }
        total += len;
    }
    if total > USABLE {
        return Err(format!(
            "page {id}: slots and cells take {total} bytes, more than the {USABLE} available"
        ));
    }
    Ok(())
}

/// Key location of a leaf cell given as its bytes (from its start).
#[inline]
pub(crate) fn cell_leaf_key(c: &[u8]) -> Loc<'_> {
    let klen = rd_u16(c, 1) as usize;
    loc(c, LEAF_CELL_HDR, c[0] & FLAG_KEY_OVF != 0, klen)
}

/// Separator key location of a branch cell given as its bytes (from its start).
#[inline]
pub(crate) fn cell_branch_key(c: &[u8]) -> Loc<'_> {
    let klen = rd_u16(c, 9) as usize;
    loc(c, BRANCH_CELL_HDR, c[8] & FLAG_KEY_OVF != 0, klen)
}

/// Key location of leaf cell `i` of a validated page.
#[inline]
pub(crate) fn leaf_key(p: &[u8], i: usize) -> Loc<'_> {
    cell_leaf_key(&p[slot(p, i)..])
}

#[inline]
fn leaf_cell_at(p: &[u8], off: usize) -> (Loc<'_>, Loc<'_>) {
    let flags = p[off];
    let klen = rd_u16(p, off + 1) as usize;
    let vlen = rd_u32(p, off + 3) as usize;
    let kovf = flags & FLAG_KEY_OVF != 0;
    let k = loc(p, off + LEAF_CELL_HDR, kovf, klen);
    let v = loc(
        p,
        off + LEAF_CELL_HDR + part_len(kovf, klen),
        flags & FLAG_VAL_OVF != 0,
        vlen,
    );
    (k, v)
}

/// Key and value locations of leaf cell `i` of a validated page.
#[inline]
pub(crate) fn leaf_cell(p: &[u8], i: usize) -> (Loc<'_>, Loc<'_>) {
    leaf_cell_at(p, slot(p, i))
}

/// Child page id of branch cell `i` of a validated page.
#[inline]
pub(crate) fn branch_child(p: &[u8], i: usize) -> u64 {
    rd_u64(p, slot(p, i))
}

/// Separator key location of branch cell `i` of a validated page (cell 0: empty).
#[inline]
pub(crate) fn branch_key(p: &[u8], i: usize) -> Loc<'_> {
    cell_branch_key(&p[slot(p, i)..])
}

/// Child page id and separator key location of branch cell `i` of a validated page.
#[inline]
pub(crate) fn branch_cell(p: &[u8], i: usize) -> (u64, Loc<'_>) {
    (branch_child(p, i), branch_key(p, i))
}

/// Turns a key or value location into its bytes: inline bytes directly, overflow runs through
/// the snapshot (and, for the writer, its own not yet published runs).
pub(crate) trait Resolve<'a> {
    /// The bytes at `loc`; an error if an overflow run is damaged.
    fn resolve(&self, loc: Loc<'a>) -> Result<&'a [u8]>;
}

impl<'a> Resolve<'a> for View<'a> {
    #[inline]
    fn resolve(&self, loc: Loc<'a>) -> Result<&'a [u8]> {
        match loc {
            Loc::Inline(b) => Ok(b),
            Loc::Ovf(pg, len) => self.overflow(pg, len),
        }
    }
}

/// Reads a page that is a branch or a leaf: returns (page, is_leaf).
#[inline]
pub(crate) fn node_page<'a>(v: &View<'a>, pg: u64) -> Result<(&'a [u8], bool)> {
    if pg < FIRST_DATA_PAGE || pg >= v.hw {
        return corrupt(format!("page id {pg} outside [2, {})", v.hw));
    }
    let start = pg as usize * PAGE_SIZE;
    let p = &v.map[start..start + PAGE_SIZE];
    let kind = p[4];
    // Fast path: a page verified (checksum, cell directory, non-empty) as this kind earlier.
    // Any other page kind, or an overflow run's interior page, never has the bit with a
    // branch/leaf kind byte (the bit is set only after page() checked the kind).
    if (kind == KIND_LEAF || kind == KIND_BRANCH) && v.bits.get(pg) {
        return Ok((p, kind == KIND_LEAF));
    }
    let kind = if kind == KIND_LEAF {
        KIND_LEAF
    } else {
        KIND_BRANCH
    };
    let p = v.page(pg, kind)?;
    Ok((p, kind == KIND_LEAF))
}

/// In a branch page: index of the child whose subtree may hold `key`.
#[inline]
pub(crate) fn branch_search<'a>(
    r: &impl Resolve<'a>,
    p: &'a [u8],
    key: &[u8],
    order: KeyOrder,
) -> Result<usize> {
    let n = count(p);
    let (mut lo, mut hi) = (1, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let k = r.resolve(branch_key(p, mid))?;
        if order.compare(k, key) != Ordering::Greater {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo - 1)
}

/// In a leaf page: the first index whose key is `>= key`, and whether it is equal.
#[inline]
pub(crate) fn leaf_search<'a>(
    r: &impl Resolve<'a>,
    p: &'a [u8],
    key: &[u8],
    order: KeyOrder,
) -> Result<(usize, bool)> {
    let (mut lo, mut hi) = (0, count(p));
    while lo < hi {
        let mid = (lo + hi) / 2;
        let k = r.resolve(leaf_key(p, mid))?;
        match order.compare(k, key) {
            Ordering::Less => lo = mid + 1,
            Ordering::Equal => return Ok((mid, true)),
            Ordering::Greater => hi = mid,
        }
    }
    Ok((lo, false))
}

/// Point lookup in the tree rooted at `root` (0 = empty tree).
pub(crate) fn get<'a>(
    v: &View<'a>,
    root: u64,
    key: &[u8],
    order: KeyOrder,
) -> Result<Option<&'a [u8]>> {
    if root == 0 {
        return Ok(None);
    }
    let mut pg = root;
    for _ in 0..MAX_DEPTH {
        let (p, leaf) = node_page(v, pg)?;
        if leaf {
            let (i, found) = leaf_search(v, p, key, order)?;
            if !found {
                return Ok(None);
            }
            return v.resolve(leaf_cell(p, i).1).map(Some);
        }
        let i = branch_search(v, p, key, order)?;
        pg = branch_child(p, i);
    }
    corrupt(format!(
        "tree at page {root}: deeper than {MAX_DEPTH} levels"
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unpositioned,
    At,
    AfterEnd,
    BeforeStart,
}

/// A position in a tree of one snapshot: the path of (page, index) from root to leaf.
pub(crate) struct RawCursor<'a> {
    v: View<'a>,
    root: u64,
    order: KeyOrder,
    stack: Vec<(&'a [u8], usize)>,
    state: State,
}

impl<'a> RawCursor<'a> {
    pub(crate) fn new(v: View<'a>, root: u64, order: KeyOrder) -> RawCursor<'a> {
        RawCursor {
            v,
            root,
            order,
            stack: Vec::new(),
            state: State::Unpositioned,
        }
    }

    /// Levels on the path to the current entry (the tree height when positioned).
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Leaf page id and index of the current entry (None unless positioned on one).
    pub(crate) fn pos(&self) -> Option<(u64, usize)> {
        if self.state != State::At {
            return None;
        }
        self.stack.last().map(|&(p, i)| (page_id(p), i))
    }

    /// Whether both cursors are on the same entry (compares page addresses, not ids: the
    /// cheapest test on the scan path).
    #[inline]
    fn same_pos(&self, other: &RawCursor<'_>) -> bool {
        match (
            self.state,
            other.state,
            self.stack.last(),
            other.stack.last(),
        ) {
            (State::At, State::At, Some(&(p, i)), Some(&(q, j))) => {
                i == j && std::ptr::eq(p.as_ptr(), q.as_ptr())
            }
            _ => false,
        }
    }

    /// The current entry.
    #[inline]
    pub(crate) fn current(&self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        if self.state != State::At {
            return Ok(None);
        }
        let &(p, i) = self.stack.last().expect("positioned cursor has a leaf");
        let (k, val) = leaf_cell(p, i);
        Ok(Some((self.v.resolve(k)?, self.v.resolve(val)?)))
    }

    /// The current key only.
    pub(crate) fn current_key(&self) -> Result<Option<&'a [u8]>> {
        if self.state != State::At {
            return Ok(None);
        }
        let &(p, i) = self.stack.last().expect("positioned cursor has a leaf");
        Ok(Some(self.v.resolve(leaf_key(p, i))?))
    }

    fn push(&mut self, p: &'a [u8], i: usize) -> Result<()> {
        if self.stack.len() >= MAX_DEPTH {
            return corrupt(format!(
                "tree at page {}: deeper than {MAX_DEPTH} levels",
                self.root
            ));
        }
        self.stack.push((p, i));
        Ok(())
    }

    /// From the top of the stack (a branch, or empty = root), descends to the first (or last)
    /// leaf entry below it.
    fn descend_edge(&mut self, last: bool) -> Result<()> {
        let mut pg = match self.stack.last() {
            None => self.root,
            Some(&(p, i)) => branch_child(p, i),
        };
        loop {
            let (p, leaf) = node_page(&self.v, pg)?;
            let i = if last { count(p) - 1 } else { 0 };
            self.push(p, i)?;
            if leaf {
                self.state = State::At;
                return Ok(());
            }
            pg = branch_child(p, i);
        }
    }

    fn first(&mut self) -> Result<()> {
        self.stack.clear();
        if self.root == 0 {
            self.state = State::AfterEnd;
            return Ok(());
        }
        self.descend_edge(false)
    }

    fn last(&mut self) -> Result<()> {
        self.stack.clear();
        if self.root == 0 {
            self.state = State::BeforeStart;
            return Ok(());
        }
        self.descend_edge(true)
    }

    /// Positions at the first entry `>= key` (or AfterEnd).
    pub(crate) fn seek(&mut self, key: &[u8]) -> Result<()> {
        if !self.descend_to(key)? {
            return Ok(());
        }
        let &(p, i) = self.stack.last().expect("leaf on stack");
        if i >= count(p) {
            // Past this leaf's last entry: the answer is the next leaf's first.
            self.stack.last_mut().expect("leaf").1 = count(p) - 1;
            self.step_next()?;
        }
        Ok(())
    }

    /// Positions at the last entry `<= key` (or BeforeStart).
    pub(crate) fn seek_for_prev(&mut self, key: &[u8]) -> Result<()> {
        if !self.descend_to(key)? {
            self.state = State::BeforeStart;
            return Ok(());
        }
        let &(p, i) = self.stack.last().expect("leaf on stack");
        let exact = i < count(p) && {
            let k = self.v.resolve(leaf_key(p, i))?;
            self.order.compare(k, key) == Ordering::Equal
        };
        if !exact {
            if i == 0 {
                self.step_prev()?;
            } else {
                self.stack.last_mut().expect("leaf").1 = i - 1;
            }
        }
        Ok(())
    }

    /// Descends towards `key`, leaving the leaf with its lower-bound index (which may be
    /// `count`) on top. Returns false for an empty tree.
    fn descend_to(&mut self, key: &[u8]) -> Result<bool> {
        self.stack.clear();
        self.state = State::AfterEnd;
        if self.root == 0 {
            return Ok(false);
        }
        let mut pg = self.root;
        loop {
            let (p, leaf) = node_page(&self.v, pg)?;
            if leaf {
                let (i, _) = leaf_search(&self.v, p, key, self.order)?;
                self.push(p, i)?;
                self.state = State::At;
                return Ok(true);
            }
            let i = branch_search(&self.v, p, key, self.order)?;
            self.push(p, i)?;
            pg = branch_child(p, i);
        }
    }

    /// Moves to the next entry.
    #[inline]
    pub(crate) fn step_next(&mut self) -> Result<()> {
        match self.state {
            State::Unpositioned | State::BeforeStart => return self.first(),
            State::AfterEnd => return Ok(()),
            State::At => {}
        }
        let (p, i) = self.stack.last_mut().expect("leaf on stack");
        if *i + 1 < count(p) {
            *i += 1;
            return Ok(());
        }
        self.stack.pop();
        while let Some((p, i)) = self.stack.last_mut() {
            if *i + 1 < count(p) {
                *i += 1;
                return self.descend_edge(false);
            }
            self.stack.pop();
        }
        self.state = State::AfterEnd;
        Ok(())
    }

    /// Moves to the previous entry.
    #[inline]
    pub(crate) fn step_prev(&mut self) -> Result<()> {
        match self.state {
            State::Unpositioned | State::AfterEnd => return self.last(),
            State::BeforeStart => return Ok(()),
            State::At => {}
        }
        let (_, i) = self.stack.last_mut().expect("leaf on stack");
        if *i > 0 {
            *i -= 1;
            return Ok(());
        }
        self.stack.pop();
        while let Some((_, i)) = self.stack.last_mut() {
            if *i > 0 {
                *i -= 1;
                return self.descend_edge(true);
            }
            self.stack.pop();
        }
        self.state = State::BeforeStart;
        Ok(())
    }

    /// Positions at the first entry inside `start`.
    pub(crate) fn seek_bound(&mut self, start: Bound<&[u8]>) -> Result<()> {
        match start {
            Bound::Unbounded => self.first(),
            Bound::Included(k) => self.seek(k),
            Bound::Excluded(k) => {
                self.seek(k)?;
                if let Some(c) = self.current_key()? {
                    if self.order.compare(c, k) == Ordering::Equal {
                        self.step_next()?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Positions at the last entry inside `end`.
    pub(crate) fn seek_bound_back(&mut self, end: Bound<&[u8]>) -> Result<()> {
        match end {
            Bound::Unbounded => self.last(),
            Bound::Included(k) => self.seek_for_prev(k),
            Bound::Excluded(k) => {
                self.seek_for_prev(k)?;
                if let Some(c) = self.current_key()? {
                    if self.order.compare(c, k) == Ordering::Equal {
                        self.step_prev()?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Two cursors walking towards each other over `[front, back]`.
pub(crate) struct RawRange<'a> {
    front: RawCursor<'a>,
    back: RawCursor<'a>,
    done: bool,
    err: Option<Error>,
}

impl<'a> RawRange<'a> {
    pub(crate) fn new(
        v: View<'a>,
        root: u64,
        order: KeyOrder,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<RawRange<'a>> {
        let mut front = RawCursor::new(v, root, order);
        let mut back = RawCursor::new(v, root, order);
        front.seek_bound(start)?;
        back.seek_bound_back(end)?;
        let done = match (front.current_key()?, back.current_key()?) {
            (Some(f), Some(b)) => order.compare(f, b) == Ordering::Greater,
            _ => true,
        };
        Ok(RawRange {
            front,
            back,
            done,
            err: None,
        })
    }

    #[inline]
    fn take(&mut self, from_back: bool) -> Option<Result<(&'a [u8], &'a [u8])>> {
        if self.err.is_some() {
            self.done = true;
            return self.err.take().map(Err);
        }
        if self.done {
            return None;
        }
        let cur = if from_back { &self.back } else { &self.front };
        let item = match cur.current() {
            Ok(Some(kv)) => kv,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if self.front.same_pos(&self.back) {
            self.done = true;
        } else {
            let step = if from_back {
                self.back.step_prev()
            } else {
                self.front.step_next()
            };
            if let Err(e) = step {
                self.err = Some(e);
            }
        }
        Some(Ok(item))
    }

    pub(crate) fn next_front(&mut self) -> Option<Result<(&'a [u8], &'a [u8])>> {
        self.take(false)
    }

    pub(crate) fn next_back(&mut self) -> Option<Result<(&'a [u8], &'a [u8])>> {
        self.take(true)
    }

    /// Counts the remaining entries without reading values.
    pub(crate) fn count(mut self) -> Result<u64> {
        let mut n = 0;
        if self.done {
            return Ok(0);
        }
        loop {
            if self.front.pos().is_none() {
                return corrupt("range walk left the tree before reaching its end".into());
            }
            n += 1;
            if self.front.pos() == self.back.pos() {
                return Ok(n);
            }
            self.front.step_next()?;
        }
    }
}
