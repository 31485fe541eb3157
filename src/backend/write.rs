//! The write transaction's core: copy-on-write B+tree edits on page buffers, page
//! allocation under the freelist reuse rule, and preparing the pages a publish writes.
//!
//! Pages allocated by this transaction ("dirty") live in `nodes` (branches and leaves, as
//! [`PageBuf`]s in the on-disk layout, edited in place) or `runs` (overflow runs) until
//! publish. A clean page (written by an earlier transaction) is never modified: the first edit
//! copies its bytes into a new dirty page with a fresh page id and records the old id as freed
//! by this transaction (pending reuse). A dirty page freed again in
//! the same transaction was never visible to anyone and goes straight back to the free set.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use super::freelist::{Freelist, MAX_FREELIST_SEGMENTS, REMOVE_FLAG, RUN_LEVELS, SEG_HDR};
use super::node::{branch_cell_bytes, split_points, write_leaf_cell, PageBuf, MIN_FILL};
use super::page::*;
use super::readers::Snap;
use super::recent::RecentPages;
use super::view::{self, Loc, Resolve, View};
use super::{Error, KeyOrder, Result, Shared, PAGE_SIZE};

/// Most pages one write transaction may hold in memory before publish (1 GiB).
pub const MAX_TXN_DIRTY_PAGES: u64 = (1 << 30) / PAGE_SIZE as u64;

/// Most spare page buffers kept for reuse (32 MiB): buffers of pages a transaction split,
/// merged or freed, and the buffers of the pages the previous publish wrote, so copying a
/// page or building a split page needs no allocation or zeroing. Without the hand-over
/// between transactions, glibc returns the freed heap top to the kernel after each large
/// publish and the next transaction page-faults it back in (~1 fault per page written).
pub(crate) const MAX_SPARE_PAGES: usize = 8192;

/// Size of a tree descriptor (the catalog value): root u64, order u8, 7 reserved bytes.
pub(crate) const TREE_DESC_SIZE: usize = 16;

/// Encodes a catalog value.
pub(crate) fn encode_desc(root: u64, order: KeyOrder) -> [u8; TREE_DESC_SIZE] {
    let mut d = [0u8; TREE_DESC_SIZE];
    wr_u64(&mut d, 0, root);
    d[8] = match order {
        KeyOrder::Bytewise => 0,
        KeyOrder::PrefixThenU64 => 1,
    };
    d
}

/// Decodes a catalog value; `name` is for the error message.
pub(crate) fn decode_desc(name: &[u8], d: &[u8]) -> Result<(u64, KeyOrder)> {
    let bad = |why: &str| {
        Error::Corrupt(format!(
            "catalog entry for tree {:?}: {why}",
            String::from_utf8_lossy(name)
        ))
    };
    if d.len() != TREE_DESC_SIZE {
        return Err(bad(&format!(
            "{} bytes, expected {TREE_DESC_SIZE}",
            d.len()
        )));
    }
    let order = match d[8] {
        0 => KeyOrder::Bytewise,
        1 => KeyOrder::PrefixThenU64,
        o => return Err(bad(&format!("unknown key order {o}"))),
    };
    Ok((rd_u64(d, 0), order))
}

/// Hashes page ids for the transaction's page maps: one multiply (Fibonacci hashing). Page
/// ids are trusted small integers chosen by the writer, so no DoS-resistant hash is needed,
/// and SipHash showed up in write profiles.
#[derive(Default, Clone, Copy)]
pub(crate) struct PageIdHasher(u64);

impl std::hash::Hasher for PageIdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by page id.
pub(crate) type PageMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PageIdHasher>>;

/// A dirty page or run handed to publish: its bytes and the header fields [`seal`] fills in.
/// Publish seals every page of the transaction, then writes them (sealing each page right
/// before its own write gave no consistent gain: `perf/backend.md`, "Copy-on-write
/// bookkeeping").
pub(crate) struct DirtyPage {
    /// First page id.
    pub id: u64,
    /// The page or run, `run * PAGE_SIZE` bytes.
    pub buf: Vec<u8>,
    kind: u8,
    count: u16,
    payload: u32,
}

impl DirtyPage {
    /// Pages in this page's run.
    pub(crate) fn pages(&self) -> u64 {
        (self.buf.len() / PAGE_SIZE) as u64
    }

    /// Fills in the header (kind, count, own id, `txid`, run, payload) and the checksum.
    pub(crate) fn seal(&mut self, txid: u64) {
        seal(
            &mut self.buf,
            self.kind,
            self.count,
            self.id,
            txid,
            self.payload,
        );
    }
}

/// One tree touched by this transaction.
pub(crate) struct TreeState {
    pub name: Vec<u8>,
    pub root: u64,
    pub order: KeyOrder,
    /// Root or existence changed: the catalog must be updated at publish.
    pub dirty: bool,
    pub dropped: bool,
}

/// The state of one write transaction.
pub(crate) struct TxnCore {
    pub shared: Arc<Shared>,
    pub txid: u64,
    base_hw: u64,
    pub hw: u64,
    max_pages: u64,
    pub freelist: Freelist,
    nodes: PageMap<PageBuf>,
    /// Page buffers no longer in use, for reuse (at most [`MAX_SPARE_PAGES`]).
    spare: Vec<Box<[u8]>>,
    /// The writer's copies of pages published recently (read before the mmap).
    recent: RecentPages,
    runs: PageMap<Vec<u8>>,
    dirty_pages: u64,
    pub catalog_root: u64,
    /// Segments of the persisted freelist chain (oldest first) and their record count.
    pub chain: Vec<(u64, u64)>,
    pub chain_records: u64,
    /// This transaction's changes to the persisted set (free + pending): (start, len, added).
    delta: Vec<(u64, u64, bool)>,
    pub trees: Vec<TreeState>,
    poison: Option<Error>,
    /// Changes to `freelist`'s reusable set, in order, so an aborted transaction can roll
    /// them back instead of every transaction working on a copy: (start, len, true) = taken
    /// out by an allocation, false = put back by freeing a page this transaction allocated.
    undo: Vec<(u64, u64, bool)>,
    /// Clean pages (run heads) this transaction freed, to catch a page referenced twice.
    freed_now: std::collections::HashSet<u64, std::hash::BuildHasherDefault<PageIdHasher>>,
}

/// The file grows for a run of contiguous pages (rather than reusing shorter free extents)
/// only while less than 1/`GROW_FOR_RUN_FREE_SHARE` of it is free. Runs make a publish a few
/// large writes instead of one `pwritev` and one scattered disk write per changed leaf
/// (`perf/backend.md`, "Contiguous allocation"); this bounds what they cost in file size:
/// the file grows for them only while it is under 1.5x the pages in use or waiting for a
/// sync.
pub(crate) const GROW_FOR_RUN_FREE_SHARE: u64 = 3;

fn internal(msg: &str) -> Error {
    Error::Corrupt(format!("internal invariant broken: {msg}"))
}

impl TxnCore {
    /// A transaction on top of snapshot `base`, allocating from `freelist`, taking new page
    /// buffers from `spare` (page-sized; their old bytes do not matter) before allocating,
    /// and reading clean pages from `recent` (copies of what earlier publishes wrote) before
    /// the mmap.
    pub(crate) fn new(
        shared: Arc<Shared>,
        base: Snap,
        freelist: Freelist,
        chain: (Vec<(u64, u64)>, u64),
        max_pages: u64,
        (spare, recent): (Vec<Box<[u8]>>, RecentPages),
    ) -> TxnCore {
        debug_assert!(spare.iter().all(|b| b.len() == PAGE_SIZE));
        TxnCore {
            shared,
            txid: base.txid + 1,
            base_hw: base.high_water,
            hw: base.high_water,
            max_pages,
            freelist,
            nodes: PageMap::default(),
            spare,
            recent,
            runs: PageMap::default(),
            dirty_pages: 0,
            catalog_root: base.catalog_root,
            chain: chain.0,
            chain_records: chain.1,
            delta: Vec::new(),
            undo: Vec::new(),
            trees: Vec::new(),
            poison: None,
            freed_now: Default::default(),
        }
    }

    /// Hands the freelist back as it was before this transaction: every change to the
    /// reusable set undone in reverse order, every page it recorded pending forgotten. For a
    /// transaction that is dropped or whose publish failed (nothing it wrote is reachable).
    pub(crate) fn abort_freelist(&mut self) -> Freelist {
        let mut fl = std::mem::take(&mut self.freelist);
        for (pg, n, taken) in self.undo.drain(..).rev() {
            let ok = if taken {
                fl.insert_free(pg, n)
            } else {
                fl.remove_range(pg, n)
            };
            debug_assert!(ok, "freelist rollback of {pg}+{n} (taken: {taken}) failed");
        }
        fl.drop_pending(self.txid);
        fl
    }

    /// Hands the freelist over as this (published) transaction left it.
    pub(crate) fn commit_freelist(&mut self) -> Freelist {
        self.undo.clear();
        std::mem::take(&mut self.freelist)
    }

    /// Clean pages of the base snapshot.
    pub(crate) fn view(&self) -> View<'_> {
        View::new(&self.shared.map, self.base_hw, &self.shared.bits)
    }

    /// Pages this transaction holds in memory.
    pub(crate) fn dirty_pages(&self) -> u64 {
        self.dirty_pages
    }

    /// Whether the transaction changed anything.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty_pages > 0 || self.trees.iter().any(|t| t.dirty)
    }

    /// Fails if an earlier edit failed half-way (the trees may then be inconsistent, so the
    /// transaction can only be dropped).
    pub(crate) fn check_poison(&self) -> Result<()> {
        match &self.poison {
            None => Ok(()),
            Some(e) => Err(e.duplicate("write transaction unusable after an earlier error: ")),
        }
    }

    /// Runs a mutation; any error poisons the transaction.
    pub(crate) fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_poison()?;
        let r = f(self);
        if let Err(e) = &r {
            self.poison = Some(e.duplicate(""));
        }
        r
    }

    // ---- page allocation -------------------------------------------------------------

    fn alloc(&mut self, n: u64) -> Result<u64> {
        if self.dirty_pages + n > MAX_TXN_DIRTY_PAGES {
            return Err(Error::TooLarge {
                what: "pages dirtied by one write transaction (MAX_TXN_DIRTY_PAGES)",
                size: (self.dirty_pages + n) as usize,
                limit: MAX_TXN_DIRTY_PAGES as usize,
            });
        }
        // Contiguity first (a long run in the free set, else the end of the file while little
        // of it is free, else shorter runs), then any fit, then the end of the file.
        let grow_ok = self.hw + n <= self.max_pages;
        let may_grow = grow_ok && self.freelist.free_pages() * GROW_FOR_RUN_FREE_SHARE < self.hw;
        let reused = match self.freelist.alloc_in_run(n, 0) {
            Some(pg) => Some(pg),
            None if may_grow => None,
            None => (1..RUN_LEVELS.len())
                .find_map(|level| self.freelist.alloc_in_run(n, level))
                .or_else(|| self.freelist.alloc(n)),
        };
        let pg = match reused {
            Some(pg) => {
                // Pages taken one after another make one record (nothing changed the set
                // between them, so on replay they lie in one extent).
                match self.delta.last_mut() {
                    Some((s, len, false)) if *s + *len == pg => *len += n,
                    _ => self.delta.push((pg, n, false)),
                }
                self.undo.push((pg, n, true));
                pg
            }
            None => {
                if !grow_ok {
                    return Err(Error::MapFull);
                }
                self.hw += n;
                self.freelist.set_cursor(self.hw);
                self.hw - n
            }
        };
        debug_assert!(pg >= FIRST_DATA_PAGE && pg + n <= self.hw);
        debug_assert!(!self.nodes.contains_key(&pg) && !self.runs.contains_key(&pg));
        // The id is reused: its old content's "verified" bit must not vouch for the new one.
        self.shared.bits.clear(pg, n);
        self.dirty_pages += n;
        Ok(pg)
    }

    /// Frees `[pg, pg+n)`: immediately if this transaction allocated it, else pending. A
    /// reference that cannot be right (outside the snapshot, already free, or freed twice in
    /// this transaction) is a damaged file: an error, never a corrupted freelist.
    fn free(&mut self, pg: u64, n: u64) -> Result<()> {
        if let Some(page) = self.nodes.remove(&pg) {
            self.recycle(page);
            self.release_dirty(pg, n);
            return Ok(());
        }
        if self.runs.remove(&pg).is_some() {
            self.release_dirty(pg, n);
            return Ok(());
        }
        if pg < FIRST_DATA_PAGE || pg.saturating_add(n) > self.base_hw {
            return Err(Error::Corrupt(format!(
                "reference to pages {pg}..{} outside [2, {}) (damaged file, run check())",
                pg.saturating_add(n),
                self.base_hw
            )));
        }
        if self.freelist.overlaps_free(pg, n) || !self.freed_now.insert(pg) {
            return Err(Error::Corrupt(format!(
                "page {pg} is referenced twice or also free (damaged file, run check())"
            )));
        }
        if n == 1 {
            self.recent.forget(pg);
        }
        self.freelist.add_pending(self.txid, pg, n);
        self.delta.push((pg, n, true));
        Ok(())
    }

    /// Returns pages allocated by this transaction (already removed from the maps).
    fn release_dirty(&mut self, pg: u64, n: u64) {
        self.dirty_pages -= n;
        let fresh = self.freelist.insert_free(pg, n);
        debug_assert!(fresh, "dirty page {pg} released twice");
        if fresh {
            self.undo.push((pg, n, false));
        }
        self.delta.push((pg, n, true));
    }

    /// Frees the overflow run at `pg` holding `len` bytes (checking a clean one really is).
    fn free_run(&mut self, pg: u64, len: usize) -> Result<()> {
        if !self.runs.contains_key(&pg) {
            self.view().overflow(pg, len)?;
        }
        self.free(pg, run_pages(len))
    }

    /// Frees the overflow run of a key or value, if it has one.
    fn free_loc(&mut self, run: Option<(u64, usize)>) -> Result<()> {
        match run {
            Some((pg, len)) => self.free_run(pg, len),
            None => Ok(()),
        }
    }

    fn alloc_run(&mut self, bytes: &[u8]) -> Result<u64> {
        let n = run_pages(bytes.len());
        let pg = self.alloc(n)?;
        let mut buf = vec![0u8; n as usize * PAGE_SIZE];
        buf[HDR..HDR + bytes.len()].copy_from_slice(bytes);
        wr_u32(&mut buf, 28, bytes.len() as u32);
        self.runs.insert(pg, buf);
        Ok(pg)
    }

    /// Where a new key is stored: inline, or in a new overflow run of its own if long.
    fn make_key<'k>(&mut self, bytes: &'k [u8]) -> Result<Loc<'k>> {
        if bytes.len() > KEY_INLINE_MAX {
            Ok(Loc::Ovf(self.alloc_run(bytes)?, bytes.len()))
        } else {
            Ok(Loc::Inline(bytes))
        }
    }

    /// Where a new value for `key` is stored: inline, or in a new overflow run of its own if
    /// its cell would exceed [`MAX_LEAF_CELL`] (the key is stored as [`Self::make_key`] decides).
    pub(crate) fn make_val<'v>(&mut self, key: &[u8], bytes: &'v [u8]) -> Result<Loc<'v>> {
        let kpart = key_part(key.len(), key.len() > KEY_INLINE_MAX);
        if bytes.len() > val_inline_max(kpart) {
            Ok(Loc::Ovf(self.alloc_run(bytes)?, bytes.len()))
        } else {
            Ok(Loc::Inline(bytes))
        }
    }

    // ---- page access -----------------------------------------------------------------

    /// Resolves key and value locations against this transaction's runs and the snapshot.
    fn res(&self) -> TxnRes<'_> {
        TxnRes {
            runs: &self.runs,
            v: self.view(),
        }
    }

    /// The branch or leaf page `pg` as this transaction sees it (dirty copy, the writer's
    /// copy of a recently published page, or the clean page in the mmap).
    #[inline]
    fn page(&self, pg: u64) -> Result<&[u8]> {
        if let Some(n) = self.nodes.get(&pg) {
            return Ok(n.bytes());
        }
        if let Some(p) = self.recent.get(pg) {
            self.debug_check_recent(pg, p);
            return Ok(p);
        }
        Ok(view::node_page(&self.view(), pg)?.0)
    }

    /// Debug builds: a cached page must be exactly what the file holds. Read with `pread`,
    /// not through the mmap, so the check does not map the pages the cache keeps unmapped.
    #[inline]
    fn debug_check_recent(&self, pg: u64, p: &[u8]) {
        if cfg!(debug_assertions) {
            use std::os::unix::fs::FileExt;
            let mut file = vec![0u8; PAGE_SIZE];
            let read = self
                .shared
                .file
                .read_exact_at(&mut file, pg * PAGE_SIZE as u64);
            debug_assert!(
                read.is_ok() && file == p,
                "recent-page cache differs from the file at page {pg} ({read:?})"
            );
        }
    }

    /// Makes `pg` writable: returns its id in this transaction (a new one for a clean page,
    /// holding a copy of its bytes; a cached copy is taken over, not copied).
    fn cow(&mut self, pg: u64) -> Result<u64> {
        if self.nodes.contains_key(&pg) {
            return Ok(pg);
        }
        let copy = match self.recent.take(pg) {
            Some(b) => {
                self.debug_check_recent(pg, &b);
                PageBuf::from_page_buf(b)
            }
            None => {
                let b = self.new_buf();
                PageBuf::from_page_in(b, view::node_page(&self.view(), pg)?.0)
            }
        };
        self.free(pg, 1)?;
        let id = self.alloc(1)?;
        self.nodes.insert(id, copy);
        Ok(id)
    }

    /// The unused spare page buffers and the recent-page cache (for the next transaction).
    pub(crate) fn take_buffers(&mut self) -> (Vec<Box<[u8]>>, RecentPages) {
        (
            std::mem::take(&mut self.spare),
            std::mem::take(&mut self.recent),
        )
    }

    /// After a publish wrote `pages`: caches the branch and leaf pages in the recent-page
    /// cache (which forgets every other id written), and keeps single-page buffers it does
    /// not need as spares (up to [`MAX_SPARE_PAGES`]).
    pub(crate) fn keep_written(&mut self, pages: Vec<DirtyPage>) {
        let spare = &mut self.spare;
        let mut keep = |b: Box<[u8]>| {
            if b.len() == PAGE_SIZE && spare.len() < MAX_SPARE_PAGES {
                spare.push(b);
            }
        };
        for p in pages {
            let n = p.pages();
            let node = p.kind == KIND_LEAF || p.kind == KIND_BRANCH;
            let one_page = p.buf.len() == PAGE_SIZE && p.buf.capacity() == PAGE_SIZE;
            if node && one_page {
                self.recent
                    .written(p.id, p.buf.into_boxed_slice(), &mut keep);
            } else {
                self.recent.overwritten(p.id, n, &mut keep);
                // A run is not converted: its capacity may exceed its length, and shrinking
                // it would copy.
                if one_page {
                    keep(p.buf.into_boxed_slice());
                }
            }
        }
    }

    /// A page-sized buffer for a new page: a spare one, or a new zeroed one.
    fn new_buf(&mut self) -> Box<[u8]> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0u8; PAGE_SIZE].into_boxed_slice())
    }

    /// Keeps the buffer of a page no longer used for reuse by [`Self::new_buf`].
    fn recycle(&mut self, page: PageBuf) {
        let b = page.into_buf();
        if b.len() == PAGE_SIZE && self.spare.len() < MAX_SPARE_PAGES {
            self.spare.push(b);
        }
    }

    fn dirty(&mut self, id: u64) -> Result<&mut PageBuf> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| internal("expected a dirty page"))
    }

    // ---- splitting -------------------------------------------------------------------

    /// Inserts the `new` cells at index `i` of dirty page `id`; if they do not fit, splits
    /// the page. Returns the branch cells of the new right siblings (to insert after `id` in
    /// the parent).
    fn insert_cells(
        &mut self,
        id: u64,
        order: KeyOrder,
        i: usize,
        new: &[&[u8]],
        append: bool,
    ) -> Result<Vec<Vec<u8>>> {
        let page = self.dirty(id)?;
        let extra: usize = new.iter().map(|c| 2 + c.len()).sum();
        if page.fits(extra) {
            for (j, c) in new.iter().enumerate() {
                page.insert(i + j, c);
            }
            return Ok(Vec::new());
        }
        let old = std::mem::replace(page, PageBuf::placeholder());
        let n = old.len();
        let mut cells: Vec<&[u8]> = Vec::with_capacity(n + new.len());
        cells.extend((0..i).map(|j| old.cell(j)));
        cells.extend_from_slice(new);
        cells.extend((i..n).map(|j| old.cell(j)));
        let seps = self.place(id, order, old.is_leaf(), &cells, append);
        drop(cells);
        self.recycle(old);
        seps
    }

    /// Rewrites dirty page `id` to hold `cells` (in order), splitting them over `id` and new
    /// pages if they do not fit one. Returns the branch cells pointing at the new pages, with
    /// their separators: for leaves the shortest key between the previous piece's last key
    /// and this piece's first ([`KeyOrder::separator`]; in a new run of its own if long, as
    /// no run is ever shared); for branches the piece's first separator moves up and its cell
    /// keeps only the child.
    fn place(
        &mut self,
        id: u64,
        order: KeyOrder,
        leaf: bool,
        cells: &[&[u8]],
        append: bool,
    ) -> Result<Vec<Vec<u8>>> {
        let sizes: Vec<usize> = cells.iter().map(|c| 2 + c.len()).collect();
        let points = split_points(&sizes, USABLE, append)?;
        let mut bounds = Vec::with_capacity(points.len() + 2);
        bounds.push(0);
        bounds.extend_from_slice(&points);
        bounds.push(cells.len());
        let mut seps = Vec::with_capacity(points.len());
        for (m, w) in bounds.windows(2).enumerate() {
            let piece = &cells[w[0]..w[1]];
            if m == 0 {
                let b = self.new_buf();
                let page = PageBuf::build_in(b, leaf, piece.iter().copied());
                self.nodes.insert(id, page);
                continue;
            }
            let nid = self.alloc(1)?;
            let first = piece[0];
            if leaf {
                let key = {
                    let r = self.res();
                    let left = r.resolve(view::cell_leaf_key(cells[w[0] - 1]))?;
                    order.separator(left, r.resolve(view::cell_leaf_key(first))?)
                };
                let sep = branch_cell_bytes(nid, self.make_key(&key)?);
                let b = self.new_buf();
                let page = PageBuf::build_in(b, true, piece.iter().copied());
                self.nodes.insert(nid, page);
                seps.push(sep);
            } else {
                let mut sep = first.to_vec();
                wr_u64(&mut sep, 0, nid);
                let cell0 = branch_cell_bytes(rd_u64(first, 0), Loc::Inline(&[]));
                let rest = piece[1..].iter().copied();
                let b = self.new_buf();
                let page = PageBuf::build_in(b, false, std::iter::once(&cell0[..]).chain(rest));
                self.nodes.insert(nid, page);
                seps.push(sep);
            }
        }
        debug_assert!(seps.iter().all(|c| self
            .nodes
            .get_mut(&rd_u64(c, 0))
            .is_some_and(|n| n.size() <= USABLE)));
        Ok(seps)
    }

    /// Makes a root from `id` and the siblings split off it, until one node holds all.
    fn grow_root(&mut self, order: KeyOrder, mut id: u64, mut seps: Vec<Vec<u8>>) -> Result<u64> {
        while !seps.is_empty() {
            let nid = self.alloc(1)?;
            let cell0 = branch_cell_bytes(id, Loc::Inline(&[]));
            let mut cells: Vec<&[u8]> = Vec::with_capacity(seps.len() + 1);
            cells.push(&cell0);
            cells.extend(seps.iter().map(|c| &c[..]));
            let next = self.place(nid, order, false, &cells, false)?;
            seps = next;
            id = nid;
        }
        Ok(id)
    }

    /// Removes empty roots and single-child branch roots; returns the new root (0 = empty).
    fn shrink_root(&mut self, mut root: u64) -> Result<u64> {
        loop {
            let next = match self.nodes.get(&root) {
                Some(p) if p.len() == 0 => 0,
                Some(p) if !p.is_leaf() && p.len() == 1 => view::branch_child(p.bytes(), 0),
                _ => return Ok(root),
            };
            if let Some(page) = self.nodes.remove(&root) {
                self.recycle(page);
            }
            self.release_dirty(root, 1);
            root = next;
        }
    }

    // ---- insert ----------------------------------------------------------------------

    /// Inserts or replaces `key` (with value `val`, see [`Self::make_val`]) in the tree at
    /// `*root`.
    pub(crate) fn put(
        &mut self,
        root: &mut u64,
        order: KeyOrder,
        key: &[u8],
        val: Loc<'_>,
    ) -> Result<()> {
        if *root == 0 {
            let k = self.make_key(key)?;
            let mut cell = [0u8; MAX_LEAF_CELL];
            let n = write_leaf_cell(&mut cell, k, val);
            let id = self.alloc(1)?;
            let b = self.new_buf();
            let page = PageBuf::build_in(b, true, std::iter::once(&cell[..n]));
            self.nodes.insert(id, page);
            *root = id;
            return Ok(());
        }
        let (id, seps, old) = self.insert(*root, order, key, val, 0)?;
        *root = self.grow_root(order, id, seps)?;
        self.free_loc(old)
    }

    /// Inserts below `pg`; returns the page's id in this transaction, the branch cells of
    /// siblings split off it, and the overflow run of a replaced value (to free).
    #[allow(clippy::type_complexity)]
    fn insert(
        &mut self,
        pg: u64,
        order: KeyOrder,
        key: &[u8],
        val: Loc<'_>,
        depth: usize,
    ) -> Result<(u64, Vec<Vec<u8>>, Option<(u64, usize)>)> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let p = self.page(pg)?;
        let n = view::count(p);
        if view::is_leaf(p) {
            let (i, found) = view::leaf_search(&self.res(), p, key, order)?;
            let id = self.cow(pg)?;
            let mut cell = [0u8; MAX_LEAF_CELL];
            if found {
                let page = self.dirty(id)?;
                let (old_k, old_v) = view::leaf_cell(page.bytes(), i);
                let old = old_v.run();
                let len = write_leaf_cell(&mut cell, old_k, val);
                if page.replace(i, &cell[..len]) {
                    return Ok((id, Vec::new(), old));
                }
                page.remove(i);
                let seps = self.insert_cells(id, order, i, &[&cell[..len]], false)?;
                return Ok((id, seps, old));
            }
            let k = self.make_key(key)?;
            let len = write_leaf_cell(&mut cell, k, val);
            debug_assert!(
                {
                    let page = self.page(id)?;
                    let r = self.res();
                    (i == 0
                        || order.compare(r.resolve(view::leaf_key(page, i - 1))?, key)
                            == Ordering::Less)
                        && (i >= n
                            || order.compare(key, r.resolve(view::leaf_key(page, i))?)
                                == Ordering::Less)
                },
                "leaf keys must stay strictly increasing"
            );
            let seps = self.insert_cells(id, order, i, &[&cell[..len]], i == n)?;
            return Ok((id, seps, None));
        }
        let i = view::branch_search(&self.res(), p, key, order)?;
        let child = view::branch_child(p, i);
        let last = i + 1 == n;
        let (nc, cseps, old) = self.insert(child, order, key, val, depth + 1)?;
        let id = self.cow(pg)?;
        self.dirty(id)?.set_child(i, nc);
        if cseps.is_empty() {
            return Ok((id, Vec::new(), old));
        }
        let new: Vec<&[u8]> = cseps.iter().map(|c| &c[..]).collect();
        let seps = self.insert_cells(id, order, i + 1, &new, last)?;
        Ok((id, seps, old))
    }

    // ---- delete ----------------------------------------------------------------------

    /// Removes `key` from the tree at `*root`; returns whether it was present.
    pub(crate) fn del(&mut self, root: &mut u64, order: KeyOrder, key: &[u8]) -> Result<bool> {
        if *root == 0 {
            return Ok(false);
        }
        let Some((id, seps, old)) = self.remove(*root, order, key, 0)? else {
            return Ok(false);
        };
        self.free_loc(old)?;
        let id = self.grow_root(order, id, seps)?;
        *root = self.shrink_root(id)?;
        Ok(true)
    }

    /// Removes `key` below `pg`; None if absent, else the page's id in this transaction, the
    /// branch cells of siblings split off it (a merge below can re-split), and the overflow
    /// run of the removed value (to free).
    #[allow(clippy::type_complexity)]
    fn remove(
        &mut self,
        pg: u64,
        order: KeyOrder,
        key: &[u8],
        depth: usize,
    ) -> Result<Option<(u64, Vec<Vec<u8>>, Option<(u64, usize)>)>> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let p = self.page(pg)?;
        if view::is_leaf(p) {
            let (i, found) = view::leaf_search(&self.res(), p, key, order)?;
            if !found {
                return Ok(None);
            }
            let id = self.cow(pg)?;
            let page = self.dirty(id)?;
            let (k, v) = view::leaf_cell(page.bytes(), i);
            let (krun, vrun) = (k.run(), v.run());
            page.remove(i);
            self.free_loc(krun)?;
            return Ok(Some((id, Vec::new(), vrun)));
        }
        let i = view::branch_search(&self.res(), p, key, order)?;
        let child = view::branch_child(p, i);
        let Some((nc, cseps, old)) = self.remove(child, order, key, depth + 1)? else {
            return Ok(None);
        };
        let id = self.cow(pg)?;
        self.dirty(id)?.set_child(i, nc);
        let seps = if cseps.is_empty() {
            self.fix_child(id, order, i)?
        } else {
            let new: Vec<&[u8]> = cseps.iter().map(|c| &c[..]).collect();
            self.insert_cells(id, order, i + 1, &new, false)?
        };
        Ok(Some((id, seps, old)))
    }

    /// After a delete below child `i` of dirty branch `parent`: drops the child if empty, or
    /// merges it with a sibling (re-splitting evenly if the two do not fit one page) if it is
    /// less than [`MIN_FILL`] full. Returns the branch cells of siblings split off `parent`.
    fn fix_child(&mut self, parent: u64, order: KeyOrder, i: usize) -> Result<Vec<Vec<u8>>> {
        let (nchildren, child) = {
            let pp = self.page(parent)?;
            (view::count(pp), view::branch_child(pp, i))
        };
        let (len, size) = match self.nodes.get_mut(&child) {
            Some(n) => (n.len(), n.size()),
            None => return Err(internal("deleted-from child is clean")),
        };
        if len == 0 {
            if let Some(page) = self.nodes.remove(&child) {
                self.recycle(page);
            }
            self.release_dirty(child, 1);
            let page = self.dirty(parent)?;
            let freed = if i > 0 {
                let k = view::branch_key(page.bytes(), i).run();
                page.remove(i);
                k
            } else if nchildren > 1 {
                // Cell 1 becomes cell 0: its separator goes, its child stays.
                let p = page.bytes();
                let k = view::branch_key(p, 1).run();
                let cell0 = branch_cell_bytes(view::branch_child(p, 1), Loc::Inline(&[]));
                page.remove(1);
                let fits = page.replace(0, &cell0);
                debug_assert!(fits, "a shorter cell always fits");
                k
            } else {
                page.remove(0);
                None
            };
            self.free_loc(freed)?;
            return Ok(Vec::new());
        }
        if size >= MIN_FILL || nchildren < 2 {
            return Ok(Vec::new());
        }
        let (l, r) = if i + 1 < nchildren {
            (i, i + 1)
        } else {
            (i - 1, i)
        };
        let pp = self.page(parent)?;
        let (lpg, rpg) = (view::branch_child(pp, l), view::branch_child(pp, r));
        let lid = self.cow(lpg)?;
        let rid = self.cow(rpg)?;
        let left = self
            .nodes
            .remove(&lid)
            .ok_or_else(|| internal("left sibling"))?;
        let right = self
            .nodes
            .remove(&rid)
            .ok_or_else(|| internal("right sibling"))?;
        self.release_dirty(rid, 1);
        if left.is_leaf() != right.is_leaf() || right.len() == 0 {
            return Err(Error::Corrupt(format!(
                "sibling pages {lpg} and {rpg} are at different tree levels"
            )));
        }
        let page = self.dirty(parent)?;
        let sep_cell = page.cell(r).to_vec();
        page.remove(r);
        page.set_child(l, lid);
        let leaf = left.is_leaf();
        let mut cells: Vec<&[u8]> = Vec::with_capacity(left.len() + right.len());
        cells.extend((0..left.len()).map(|j| left.cell(j)));
        let down;
        if leaf {
            cells.extend((0..right.len()).map(|j| right.cell(j)));
            self.free_loc(view::cell_branch_key(&sep_cell).run())?;
        } else {
            // The separator comes down as the key of the right node's first child.
            let mut c = sep_cell;
            wr_u64(&mut c, 0, view::branch_child(right.bytes(), 0));
            down = c;
            cells.push(&down);
            cells.extend((1..right.len()).map(|j| right.cell(j)));
        }
        let seps = self.place(lid, order, leaf, &cells, false);
        drop(cells);
        self.recycle(left);
        self.recycle(right);
        let seps = seps?;
        let new: Vec<&[u8]> = seps.iter().map(|c| &c[..]).collect();
        self.insert_cells(parent, order, l + 1, &new, false)
    }

    /// Frees every page of the tree at `root` (nodes and overflow runs).
    pub(crate) fn free_tree(&mut self, root: u64, depth: usize) -> Result<()> {
        if root == 0 {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {root}"
            )));
        }
        let p = self.page(root)?;
        let n = view::count(p);
        let mut runs = Vec::new();
        let mut children = Vec::new();
        if view::is_leaf(p) {
            for i in 0..n {
                let (k, v) = view::leaf_cell(p, i);
                runs.extend(k.run());
                runs.extend(v.run());
            }
        } else {
            for i in 0..n {
                let (c, k) = view::branch_cell(p, i);
                if i > 0 {
                    runs.extend(k.run());
                }
                children.push(c);
            }
        }
        for r in runs {
            self.free_loc(Some(r))?;
        }
        for c in children {
            self.free_tree(c, depth + 1)?;
        }
        self.free(root, 1)
    }

    // ---- reads inside the transaction --------------------------------------------------

    /// The value of `key` as this transaction sees it.
    pub(crate) fn get(&self, root: u64, order: KeyOrder, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut pg = root;
        if pg == 0 {
            return Ok(None);
        }
        let r = self.res();
        for _ in 0..=MAX_DEPTH {
            let p = self.page(pg)?;
            if view::is_leaf(p) {
                let (i, found) = view::leaf_search(&r, p, key, order)?;
                if !found {
                    return Ok(None);
                }
                return Ok(Some(r.resolve(view::leaf_cell(p, i).1)?.to_vec()));
            }
            pg = view::branch_child(p, view::branch_search(&r, p, key, order)?);
        }
        Err(Error::Corrupt(format!(
            "tree at page {root}: deeper than {MAX_DEPTH} levels"
        )))
    }

    /// Appends up to `limit` entries of `[start, end]` to `out`, in key order. Returns false
    /// once the walk passed `end` or filled `limit`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scan(
        &self,
        pg: u64,
        order: KeyOrder,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
        depth: usize,
    ) -> Result<bool> {
        if pg == 0 {
            return Ok(true);
        }
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let bounds = ScanBounds { order, start, end };
        let r = self.res();
        let p = self.page(pg)?;
        let n = view::count(p);
        if view::is_leaf(p) {
            for i in 0..n {
                if out.len() >= limit {
                    return Ok(false);
                }
                let (k, v) = view::leaf_cell(p, i);
                let k = r.resolve(k)?;
                if !bounds.after_start(k) {
                    continue;
                }
                if !bounds.before_end(k) {
                    return Ok(false);
                }
                out.push((k.to_vec(), r.resolve(v)?.to_vec()));
            }
            return Ok(out.len() < limit);
        }
        let first = match start {
            Bound::Unbounded => 0,
            Bound::Included(s) | Bound::Excluded(s) => view::branch_search(&r, p, s, order)?,
        };
        for i in first..n {
            if i > 0 && !bounds.before_end(r.resolve(view::branch_key(p, i))?) {
                return Ok(false);
            }
            let c = view::branch_child(p, i);
            if !self.scan(c, order, start, end, limit, out, depth + 1)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Like [`Self::scan`], but collects entries in descending key order, starting from the
    /// end bound. Returns false once `limit` entries are collected or the start bound passed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scan_rev(
        &self,
        pg: u64,
        order: KeyOrder,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
        depth: usize,
    ) -> Result<bool> {
        if pg == 0 {
            return Ok(true);
        }
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let bounds = ScanBounds { order, start, end };
        let r = self.res();
        let p = self.page(pg)?;
        let n = view::count(p);
        if view::is_leaf(p) {
            for i in (0..n).rev() {
                if out.len() >= limit {
                    return Ok(false);
                }
                let (k, v) = view::leaf_cell(p, i);
                let k = r.resolve(k)?;
                if !bounds.before_end(k) {
                    continue;
                }
                if !bounds.after_start(k) {
                    return Ok(false);
                }
                out.push((k.to_vec(), r.resolve(v)?.to_vec()));
            }
            return Ok(out.len() < limit);
        }
        // Child i holds keys >= separator i: start at the child that holds the end.
        let last = match end {
            Bound::Unbounded => n - 1,
            Bound::Included(e) | Bound::Excluded(e) => view::branch_search(&r, p, e, order)?,
        };
        for i in (0..=last.min(n - 1)).rev() {
            let c = view::branch_child(p, i);
            if !self.scan_rev(c, order, start, end, limit, out, depth + 1)? {
                return Ok(false);
            }
            // Every earlier child holds keys below this separator.
            if i > 0 && !bounds.after_start(r.resolve(view::branch_key(p, i))?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    // ---- trees and catalog -------------------------------------------------------------

    /// Index of tree `name` in `trees`, loading it from the catalog; None if it does not
    /// exist.
    pub(crate) fn find_tree(&mut self, name: &[u8]) -> Result<Option<usize>> {
        if let Some(i) = self.trees.iter().position(|t| t.name == name) {
            return Ok((!self.trees[i].dropped).then_some(i));
        }
        let Some(d) = self.get(self.catalog_root, KeyOrder::Bytewise, name)? else {
            return Ok(None);
        };
        let (root, order) = decode_desc(name, &d)?;
        self.trees.push(TreeState {
            name: name.to_vec(),
            root,
            order,
            dirty: false,
            dropped: false,
        });
        Ok(Some(self.trees.len() - 1))
    }

    /// Writes this transaction's freelist: normally one new segment holding its changes
    /// (`delta`) in front of the existing chain; the whole set as a single segment when the
    /// chain has grown long relative to the set (so open replays little, and a long reader
    /// never makes each commit rewrite everything pending). Returns the chain head (page,
    /// pages) and the segment (to be sealed by publish), if one was written.
    fn persist_freelist(&mut self) -> Result<(u64, u64, Option<DirtyPage>)> {
        let bound = self.freelist.extent_bound();
        let compact = self.chain.is_empty()
            || self.chain.len() >= MAX_FREELIST_SEGMENTS
            || self.chain_records + self.delta.len() as u64 > 2 * bound as u64 + 256;
        if !compact && self.delta.is_empty() {
            let &(pg, n) = self.chain.last().expect("non-empty chain");
            return Ok((pg, n, None));
        }
        let (records, next): (Vec<(u64, u64)>, (u64, u64)) = if compact {
            for (pg, n) in std::mem::take(&mut self.chain) {
                self.free(pg, n)?;
            }
            let bound = self.freelist.extent_bound();
            if bound == 0 {
                self.chain_records = 0;
                self.delta.clear();
                return Ok((0, 0, None));
            }
            // Allocating the segment can only keep or shrink the extent count.
            let n = run_pages(SEG_HDR + 16 * bound);
            let pg = self.alloc(n)?;
            let ext = self.freelist.all_extents().map_err(Error::Corrupt)?;
            debug_assert!(ext.len() <= bound);
            self.chain.push((pg, n));
            (ext, (0, 0))
        } else {
            let next = *self.chain.last().expect("non-empty chain");
            // One more record for the segment's own allocation (if it comes from the set).
            let n = run_pages(SEG_HDR + 16 * (self.delta.len() + 1));
            let pg = self.alloc(n)?;
            self.chain.push((pg, n));
            let recs = self
                .delta
                .iter()
                .map(|&(s, len, add)| (s, if add { len } else { len | REMOVE_FLAG }))
                .collect();
            (recs, next)
        };
        self.delta.clear();
        let &(pg, n) = self.chain.last().expect("just pushed");
        debug_assert!(SEG_HDR + 16 * records.len() <= n as usize * PAGE_SIZE - HDR);
        let mut buf = vec![0u8; n as usize * PAGE_SIZE];
        wr_u64(&mut buf, HDR, next.0);
        wr_u64(&mut buf, HDR + 8, next.1);
        for (j, (s, len)) in records.iter().enumerate() {
            wr_u64(&mut buf, HDR + SEG_HDR + 16 * j, *s);
            wr_u64(&mut buf, HDR + SEG_HDR + 16 * j + 8, *len);
        }
        self.chain_records = if compact {
            records.len() as u64
        } else {
            self.chain_records + records.len() as u64
        };
        let seg = DirtyPage {
            id: pg,
            buf,
            kind: KIND_FREELIST,
            count: 0,
            payload: records.len() as u32,
        };
        Ok((pg, n, Some(seg)))
    }

    /// Applies tree changes to the catalog, persists the freelist, and returns every dirty
    /// page (sorted by id, not yet sealed: see [`DirtyPage::seal`]) with the snapshot they
    /// make up.
    pub(crate) fn prepare_commit(&mut self) -> Result<(Vec<DirtyPage>, Snap)> {
        self.check_poison()?;
        let trees: Vec<(Vec<u8>, u64, KeyOrder, bool)> = self
            .trees
            .iter()
            .filter(|t| t.dirty)
            .map(|t| (t.name.clone(), t.root, t.order, t.dropped))
            .collect();
        let mut croot = self.catalog_root;
        for (name, root, order, dropped) in trees {
            if dropped {
                self.del(&mut croot, KeyOrder::Bytewise, &name)?;
            } else {
                let desc = encode_desc(root, order);
                let v = self.make_val(&name, &desc)?;
                self.put(&mut croot, KeyOrder::Bytewise, &name, v)?;
            }
        }
        self.catalog_root = croot;
        for t in &mut self.trees {
            t.dirty = false;
        }
        let (fl, fl_pages, seg) = self.persist_freelist()?;
        let mut pages: Vec<DirtyPage> = Vec::with_capacity(self.nodes.len() + self.runs.len() + 1);
        pages.extend(seg);
        for (id, node) in self.nodes.drain() {
            let (n, kind) = (node.len(), node.bytes()[4]);
            if n == 0 {
                return Err(internal(&format!("empty node {id} at publish")));
            }
            pages.push(DirtyPage {
                id,
                buf: node.into_vec(),
                kind,
                count: n as u16,
                payload: 0,
            });
        }
        for (id, buf) in self.runs.drain() {
            let len = rd_u32(&buf, 28);
            pages.push(DirtyPage {
                id,
                buf,
                kind: KIND_OVERFLOW,
                count: 0,
                payload: len,
            });
        }
        pages.sort_unstable_by_key(|p| p.id);
        debug_assert!(pages.windows(2).all(|w| w[0].id + w[0].pages() <= w[1].id));
        debug_assert!(pages
            .iter()
            .all(|p| p.id >= FIRST_DATA_PAGE && p.id + p.pages() <= self.hw));
        let snap = Snap {
            txid: self.txid,
            catalog_root: self.catalog_root,
            high_water: self.hw,
            freelist: fl,
            freelist_pages: fl_pages,
        };
        Ok((pages, snap))
    }
}

/// Resolves locations for the write transaction: its own (unpublished) overflow runs first,
/// then the snapshot it started from.
struct TxnRes<'a> {
    runs: &'a PageMap<Vec<u8>>,
    v: View<'a>,
}

impl<'a> Resolve<'a> for TxnRes<'a> {
    // Inline keys are the common case of every search probe: keep that path in the caller.
    #[inline(always)]
    fn resolve(&self, loc: Loc<'a>) -> Result<&'a [u8]> {
        match loc {
            Loc::Inline(b) => Ok(b),
            Loc::Ovf(pg, len) => self.resolve_run(pg, len),
        }
    }
}

impl<'a> TxnRes<'a> {
    /// The bytes of the overflow run at `pg`: this transaction's own unwritten run, or the
    /// snapshot's (checked to hold exactly `len` bytes).
    #[cold]
    #[inline(never)]
    fn resolve_run(&self, pg: u64, len: usize) -> Result<&'a [u8]> {
        match self.runs.get(&pg) {
            Some(buf) if HDR + len <= buf.len() => Ok(&buf[HDR..HDR + len]),
            Some(_) => Err(internal(&format!(
                "dirty run {pg} is shorter than the {len} bytes referenced"
            ))),
            None => self.v.overflow(pg, len),
        }
    }
}

/// The bounds of a range walk, compared under the tree's key order.
struct ScanBounds<'k> {
    order: KeyOrder,
    start: Bound<&'k [u8]>,
    end: Bound<&'k [u8]>,
}

impl ScanBounds<'_> {
    /// Whether `k` is at or after the start bound.
    fn after_start(&self, k: &[u8]) -> bool {
        match self.start {
            Bound::Unbounded => true,
            Bound::Included(s) => self.order.compare(k, s) != Ordering::Less,
            Bound::Excluded(s) => self.order.compare(k, s) == Ordering::Greater,
        }
    }

    /// Whether `k` is at or before the end bound.
    fn before_end(&self, k: &[u8]) -> bool {
        match self.end {
            Bound::Unbounded => true,
            Bound::Included(e) => self.order.compare(k, e) != Ordering::Greater,
            Bound::Excluded(e) => self.order.compare(k, e) == Ordering::Less,
        }
    }
}
