//! The write transaction's core: copy-on-write B+tree edits on in-memory nodes, page
//! allocation under the freelist reuse rule, and preparing the pages a publish writes.
//!
//! Pages allocated by this transaction ("dirty") live in `nodes` (branches and leaves) or
//! `runs` (overflow runs) until publish. A clean page (written by an earlier transaction) is
//! never modified: the first edit decodes it into a new dirty node with a fresh page id and
//! records the old id as freed by this transaction (pending reuse). A dirty page freed again in
//! the same transaction was never visible to anyone and goes straight back to the free set.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use super::freelist::{Freelist, MAX_FREELIST_SEGMENTS, REMOVE_FLAG, SEG_HDR};
use super::node::{split_points, Key, Node, Val, MIN_FILL};
use super::page::*;
use super::readers::Snap;
use super::view::View;
use super::{Error, KeyOrder, Result, Shared, PAGE_SIZE};

/// Most pages one write transaction may hold in memory before publish (1 GiB).
pub const MAX_TXN_DIRTY_PAGES: u64 = (1 << 30) / PAGE_SIZE as u64;

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

/// A sealed page or run `(first page id, bytes)`, ready to write.
pub(crate) type SealedPages = (u64, Vec<u8>);

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
    nodes: HashMap<u64, Node>,
    runs: HashMap<u64, Vec<u8>>,
    dirty_pages: u64,
    pub catalog_root: u64,
    /// Segments of the persisted freelist chain (oldest first) and their record count.
    pub chain: Vec<(u64, u64)>,
    pub chain_records: u64,
    /// This transaction's changes to the persisted set (free + pending): (start, len, added).
    delta: Vec<(u64, u64, bool)>,
    pub trees: Vec<TreeState>,
    poison: Option<Error>,
    /// Clean pages (run heads) this transaction freed, to catch a page referenced twice.
    freed_now: std::collections::HashSet<u64>,
}

fn internal(msg: &str) -> Error {
    Error::Corrupt(format!("internal invariant broken: {msg}"))
}

impl TxnCore {
    /// A transaction on top of snapshot `base`, allocating from `freelist`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        base: Snap,
        freelist: Freelist,
        chain: (Vec<(u64, u64)>, u64),
        max_pages: u64,
    ) -> TxnCore {
        TxnCore {
            shared,
            txid: base.txid + 1,
            base_hw: base.high_water,
            hw: base.high_water,
            max_pages,
            freelist,
            nodes: HashMap::new(),
            runs: HashMap::new(),
            dirty_pages: 0,
            catalog_root: base.catalog_root,
            chain: chain.0,
            chain_records: chain.1,
            delta: Vec::new(),
            trees: Vec::new(),
            poison: None,
            freed_now: std::collections::HashSet::new(),
        }
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
        let pg = match self.freelist.alloc(n) {
            Some(pg) => {
                self.delta.push((pg, n, false));
                pg
            }
            None => {
                if self.hw + n > self.max_pages {
                    return Err(Error::MapFull);
                }
                self.hw += n;
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
        if self.nodes.remove(&pg).is_some() || self.runs.remove(&pg).is_some() {
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
        self.freelist.add_pending(self.txid, pg, n);
        self.delta.push((pg, n, true));
        Ok(())
    }

    /// Returns pages allocated by this transaction (already removed from the maps).
    fn release_dirty(&mut self, pg: u64, n: u64) {
        self.dirty_pages -= n;
        let fresh = self.freelist.insert_free(pg, n);
        debug_assert!(fresh, "dirty page {pg} released twice");
        self.delta.push((pg, n, true));
    }

    /// Frees the overflow run at `pg` holding `len` bytes (checking a clean one really is).
    fn free_run(&mut self, pg: u64, len: usize) -> Result<()> {
        if !self.runs.contains_key(&pg) {
            self.view().overflow(pg, len)?;
        }
        self.free(pg, run_pages(len))
    }

    fn free_key(&mut self, k: Key) -> Result<()> {
        if k.ovf != 0 {
            self.free_run(k.ovf, k.bytes.len())?;
        }
        Ok(())
    }

    fn free_val(&mut self, v: Val) -> Result<()> {
        if let Val::Ovf(pg, len) = v {
            self.free_run(pg, len)?;
        }
        Ok(())
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

    /// An owned key (with its own overflow run if long).
    fn make_key(&mut self, bytes: &[u8]) -> Result<Key> {
        let ovf = if bytes.len() > KEY_INLINE_MAX {
            self.alloc_run(bytes)?
        } else {
            0
        };
        Ok(Key {
            bytes: bytes.to_vec(),
            ovf,
        })
    }

    /// An owned value (in its own overflow run if long).
    pub(crate) fn make_val(&mut self, bytes: &[u8]) -> Result<Val> {
        if bytes.len() > VAL_INLINE_MAX {
            Ok(Val::Ovf(self.alloc_run(bytes)?, bytes.len()))
        } else {
            Ok(Val::Inline(bytes.to_vec()))
        }
    }

    // ---- node access -----------------------------------------------------------------

    fn node(&self, pg: u64) -> Result<Cow<'_, Node>> {
        match self.nodes.get(&pg) {
            Some(n) => Ok(Cow::Borrowed(n)),
            None => Ok(Cow::Owned(Node::decode(&self.view(), pg)?)),
        }
    }

    /// Makes `pg` writable: returns its id in this transaction (a new one for a clean page).
    fn cow(&mut self, pg: u64) -> Result<u64> {
        if self.nodes.contains_key(&pg) {
            return Ok(pg);
        }
        let node = Node::decode(&self.view(), pg)?;
        self.free(pg, 1)?;
        let id = self.alloc(1)?;
        self.nodes.insert(id, node);
        Ok(id)
    }

    fn leaf_mut(&mut self, id: u64) -> Result<&mut Vec<(Key, Val)>> {
        match self.nodes.get_mut(&id) {
            Some(Node::Leaf(e)) => Ok(e),
            _ => Err(internal("expected a dirty leaf")),
        }
    }

    fn branch_mut(&mut self, id: u64) -> Result<(&mut Vec<Key>, &mut Vec<u64>)> {
        match self.nodes.get_mut(&id) {
            Some(Node::Branch { keys, children }) => Ok((keys, children)),
            _ => Err(internal("expected a dirty branch")),
        }
    }

    /// The bytes of a value (dirty run or clean page).
    fn val_bytes(&self, v: &Val) -> Result<Vec<u8>> {
        match v {
            Val::Inline(b) => Ok(b.clone()),
            Val::Ovf(pg, len) => match self.runs.get(pg) {
                Some(buf) => Ok(buf[HDR..HDR + len].to_vec()),
                None => Ok(self.view().overflow(*pg, *len)?.to_vec()),
            },
        }
    }

    // ---- splitting -------------------------------------------------------------------

    /// If dirty node `id` overflows its page, splits it; returns the new right siblings with
    /// their separators (to insert after `id` in the parent).
    fn finish(&mut self, id: u64, append: bool) -> Result<Vec<(Key, u64)>> {
        let sizes = self.nodes[&id].entry_sizes();
        let points = split_points(&sizes, USABLE, append)?;
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let node = self
            .nodes
            .remove(&id)
            .ok_or_else(|| internal("split of clean node"))?;
        let n = node.len();
        let mut bounds = vec![0];
        bounds.extend_from_slice(&points);
        bounds.push(n);
        let mut seps = Vec::with_capacity(points.len());
        match node {
            Node::Leaf(entries) => {
                let mut it = entries.into_iter();
                for (m, w) in bounds.windows(2).enumerate() {
                    let piece: Vec<(Key, Val)> = it.by_ref().take(w[1] - w[0]).collect();
                    if m == 0 {
                        self.nodes.insert(id, Node::Leaf(piece));
                    } else {
                        let sep = self.make_key(&piece[0].0.bytes)?;
                        let nid = self.alloc(1)?;
                        self.nodes.insert(nid, Node::Leaf(piece));
                        seps.push((sep, nid));
                    }
                }
            }
            Node::Branch { keys, children } => {
                let mut kit = keys.into_iter();
                let mut cit = children.into_iter();
                let mut up: Option<Key> = None;
                for (m, w) in bounds.windows(2).enumerate() {
                    let cnt = w[1] - w[0];
                    let ch: Vec<u64> = cit.by_ref().take(cnt).collect();
                    let ks: Vec<Key> = kit.by_ref().take(cnt - 1).collect();
                    let piece = Node::Branch {
                        keys: ks,
                        children: ch,
                    };
                    if m == 0 {
                        self.nodes.insert(id, piece);
                    } else {
                        let nid = self.alloc(1)?;
                        self.nodes.insert(nid, piece);
                        seps.push((up.take().ok_or_else(|| internal("missing separator"))?, nid));
                    }
                    up = kit.next();
                }
            }
        }
        debug_assert!(seps.iter().all(|(_, c)| self.nodes[c].size() <= USABLE));
        Ok(seps)
    }

    /// Makes a root from `id` and the siblings split off it, until one node holds all.
    fn grow_root(&mut self, mut id: u64, mut seps: Vec<(Key, u64)>) -> Result<u64> {
        while !seps.is_empty() {
            let mut keys = Vec::with_capacity(seps.len());
            let mut children = vec![id];
            for (k, c) in seps {
                keys.push(k);
                children.push(c);
            }
            let nid = self.alloc(1)?;
            self.nodes.insert(nid, Node::Branch { keys, children });
            seps = self.finish(nid, false)?;
            id = nid;
        }
        Ok(id)
    }

    /// Removes empty roots and single-child branch roots; returns the new root (0 = empty).
    fn shrink_root(&mut self, mut root: u64) -> Result<u64> {
        loop {
            let next = match self.nodes.get(&root) {
                Some(Node::Leaf(e)) if e.is_empty() => 0,
                Some(Node::Branch { children, .. }) if children.len() <= 1 => {
                    children.first().copied().unwrap_or(0)
                }
                _ => return Ok(root),
            };
            self.nodes.remove(&root);
            self.release_dirty(root, 1);
            root = next;
        }
    }

    // ---- insert ----------------------------------------------------------------------

    /// Inserts or replaces `key` in the tree at `*root`.
    pub(crate) fn put(
        &mut self,
        root: &mut u64,
        order: KeyOrder,
        key: &[u8],
        val: Val,
    ) -> Result<()> {
        if *root == 0 {
            let k = self.make_key(key)?;
            let id = self.alloc(1)?;
            self.nodes.insert(id, Node::Leaf(vec![(k, val)]));
            *root = id;
            return Ok(());
        }
        let (id, seps, old) = self.insert(*root, order, key, val, 0)?;
        *root = self.grow_root(id, seps)?;
        if let Some(old) = old {
            self.free_val(old)?;
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn insert(
        &mut self,
        pg: u64,
        order: KeyOrder,
        key: &[u8],
        val: Val,
        depth: usize,
    ) -> Result<(u64, Vec<(Key, u64)>, Option<Val>)> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let node = self.node(pg)?;
        match &*node {
            Node::Leaf(entries) => {
                let pos = entries.binary_search_by(|(k, _)| order.compare(&k.bytes, key));
                let n = entries.len();
                drop(node);
                let id = self.cow(pg)?;
                let (old, append) = match pos {
                    Ok(i) => {
                        let e = self.leaf_mut(id)?;
                        (Some(std::mem::replace(&mut e[i].1, val)), false)
                    }
                    Err(i) => {
                        let k = self.make_key(key)?;
                        let e = self.leaf_mut(id)?;
                        e.insert(i, (k, val));
                        debug_assert!(
                            (i == 0 || order.compare(&e[i - 1].0.bytes, key) == Ordering::Less)
                                && (i + 1 >= e.len()
                                    || order.compare(key, &e[i + 1].0.bytes) == Ordering::Less),
                            "leaf keys must stay strictly increasing"
                        );
                        (None, i == n)
                    }
                };
                let seps = self.finish(id, append)?;
                Ok((id, seps, old))
            }
            Node::Branch { keys, children } => {
                let i = keys.partition_point(|k| order.compare(&k.bytes, key) != Ordering::Greater);
                let child = children[i];
                let last = i == keys.len();
                drop(node);
                let (nc, cseps, old) = self.insert(child, order, key, val, depth + 1)?;
                let id = self.cow(pg)?;
                let append = last && !cseps.is_empty();
                let (keys, children) = self.branch_mut(id)?;
                children[i] = nc;
                for (j, (k, c)) in cseps.into_iter().enumerate() {
                    keys.insert(i + j, k);
                    children.insert(i + 1 + j, c);
                }
                let seps = self.finish(id, append)?;
                Ok((id, seps, old))
            }
        }
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
        self.free_val(old)?;
        let id = self.grow_root(id, seps)?;
        *root = self.shrink_root(id)?;
        Ok(true)
    }

    #[allow(clippy::type_complexity)]
    fn remove(
        &mut self,
        pg: u64,
        order: KeyOrder,
        key: &[u8],
        depth: usize,
    ) -> Result<Option<(u64, Vec<(Key, u64)>, Val)>> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "tree deeper than {MAX_DEPTH} levels at page {pg}"
            )));
        }
        let node = self.node(pg)?;
        match &*node {
            Node::Leaf(entries) => {
                let Ok(i) = entries.binary_search_by(|(k, _)| order.compare(&k.bytes, key)) else {
                    return Ok(None);
                };
                drop(node);
                let id = self.cow(pg)?;
                let (k, v) = self.leaf_mut(id)?.remove(i);
                self.free_key(k)?;
                // Normally a no-op; a damaged page can decode larger than a page.
                let seps = self.finish(id, false)?;
                Ok(Some((id, seps, v)))
            }
            Node::Branch { keys, children } => {
                let i = keys.partition_point(|k| order.compare(&k.bytes, key) != Ordering::Greater);
                let child = children[i];
                drop(node);
                let Some((nc, cseps, old)) = self.remove(child, order, key, depth + 1)? else {
                    return Ok(None);
                };
                let id = self.cow(pg)?;
                let no_seps = cseps.is_empty();
                let (keys, children) = self.branch_mut(id)?;
                children[i] = nc;
                for (j, (k, c)) in cseps.into_iter().enumerate() {
                    keys.insert(i + j, k);
                    children.insert(i + 1 + j, c);
                }
                if no_seps {
                    self.fix_child(id, i)?;
                }
                let seps = self.finish(id, false)?;
                Ok(Some((id, seps, old)))
            }
        }
    }

    /// After a delete below child `i` of dirty branch `parent`: drops the child if empty, or
    /// merges it with a sibling (re-splitting evenly if the two do not fit one page) if it is
    /// less than [`MIN_FILL`] full.
    fn fix_child(&mut self, parent: u64, i: usize) -> Result<()> {
        let (_, children) = self.branch_mut(parent)?;
        let nchildren = children.len();
        let child = children[i];
        let (len, size) = match self.nodes.get(&child) {
            Some(n) => (n.len(), n.size()),
            None => return Err(internal("deleted-from child is clean")),
        };
        if len == 0 {
            self.nodes.remove(&child);
            self.release_dirty(child, 1);
            let (keys, children) = self.branch_mut(parent)?;
            children.remove(i);
            let k = if i == 0 {
                (!keys.is_empty()).then(|| keys.remove(0))
            } else {
                Some(keys.remove(i - 1))
            };
            if let Some(k) = k {
                self.free_key(k)?;
            }
            return Ok(());
        }
        if size >= MIN_FILL || nchildren < 2 {
            return Ok(());
        }
        let (l, r) = if i + 1 < nchildren {
            (i, i + 1)
        } else {
            (i - 1, i)
        };
        let (lpg, rpg) = {
            let (_, c) = self.branch_mut(parent)?;
            (c[l], c[r])
        };
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
        let (keys, children) = self.branch_mut(parent)?;
        let sep = keys.remove(l);
        children.remove(r);
        children[l] = lid;
        let merged = match (left, right) {
            (Node::Leaf(mut a), Node::Leaf(b)) => {
                self.free_key(sep)?;
                a.extend(b);
                Node::Leaf(a)
            }
            (
                Node::Branch {
                    keys: mut ka,
                    children: mut ca,
                },
                Node::Branch {
                    keys: kb,
                    children: cb,
                },
            ) => {
                ka.push(sep);
                ka.extend(kb);
                ca.extend(cb);
                Node::Branch {
                    keys: ka,
                    children: ca,
                }
            }
            _ => {
                return Err(Error::Corrupt(format!(
                    "sibling pages {lpg} and {rpg} are at different tree levels"
                )))
            }
        };
        self.nodes.insert(lid, merged);
        self.release_dirty(rid, 1);
        let seps = self.finish(lid, false)?;
        let (keys, children) = self.branch_mut(parent)?;
        for (j, (k, c)) in seps.into_iter().enumerate() {
            keys.insert(l + j, k);
            children.insert(l + 1 + j, c);
        }
        Ok(())
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
        let node = self.node(root)?.into_owned();
        match node {
            Node::Leaf(entries) => {
                for (k, v) in entries {
                    self.free_key(k)?;
                    self.free_val(v)?;
                }
            }
            Node::Branch { keys, children } => {
                for k in keys {
                    self.free_key(k)?;
                }
                for c in children {
                    self.free_tree(c, depth + 1)?;
                }
            }
        }
        self.free(root, 1)?;
        Ok(())
    }

    // ---- reads inside the transaction --------------------------------------------------

    /// The value of `key` as this transaction sees it.
    pub(crate) fn get(&self, root: u64, order: KeyOrder, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut pg = root;
        if pg == 0 {
            return Ok(None);
        }
        for _ in 0..=MAX_DEPTH {
            let node = self.node(pg)?;
            match &*node {
                Node::Leaf(e) => {
                    return match e.binary_search_by(|(k, _)| order.compare(&k.bytes, key)) {
                        Ok(i) => self.val_bytes(&e[i].1).map(Some),
                        Err(_) => Ok(None),
                    }
                }
                Node::Branch { keys, children } => {
                    let i =
                        keys.partition_point(|k| order.compare(&k.bytes, key) != Ordering::Greater);
                    pg = children[i];
                }
            }
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
        let (after_start, before_end) = (
            |k: &[u8]| bounds.after_start(k),
            |k: &[u8]| bounds.before_end(k),
        );
        let node = self.node(pg)?;
        match &*node {
            Node::Leaf(entries) => {
                for (k, v) in entries {
                    if out.len() >= limit {
                        return Ok(false);
                    }
                    if !after_start(&k.bytes) {
                        continue;
                    }
                    if !before_end(&k.bytes) {
                        return Ok(false);
                    }
                    out.push((k.bytes.clone(), self.val_bytes(v)?));
                }
                Ok(out.len() < limit)
            }
            Node::Branch { keys, children } => {
                let first = match start {
                    Bound::Unbounded => 0,
                    Bound::Included(s) | Bound::Excluded(s) => {
                        keys.partition_point(|k| order.compare(&k.bytes, s) != Ordering::Greater)
                    }
                };
                for (i, &c) in children.iter().enumerate().skip(first) {
                    if i > 0 && !before_end(&keys[i - 1].bytes) {
                        return Ok(false);
                    }
                    if !self.scan(c, order, start, end, limit, out, depth + 1)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
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
        let (after_start, before_end) = (
            |k: &[u8]| bounds.after_start(k),
            |k: &[u8]| bounds.before_end(k),
        );
        let node = self.node(pg)?;
        match &*node {
            Node::Leaf(entries) => {
                for (k, v) in entries.iter().rev() {
                    if out.len() >= limit {
                        return Ok(false);
                    }
                    if !before_end(&k.bytes) {
                        continue;
                    }
                    if !after_start(&k.bytes) {
                        return Ok(false);
                    }
                    out.push((k.bytes.clone(), self.val_bytes(v)?));
                }
                Ok(out.len() < limit)
            }
            Node::Branch { keys, children } => {
                // Child i holds keys >= keys[i - 1]: start at the child that holds the end.
                let last = match end {
                    Bound::Unbounded => children.len() - 1,
                    Bound::Included(e) | Bound::Excluded(e) => {
                        keys.partition_point(|k| order.compare(&k.bytes, e) != Ordering::Greater)
                    }
                };
                for i in (0..=last.min(children.len() - 1)).rev() {
                    if !self.scan_rev(children[i], order, start, end, limit, out, depth + 1)? {
                        return Ok(false);
                    }
                    // Every earlier child holds keys below this separator.
                    if i > 0 && !after_start(&keys[i - 1].bytes) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
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
    /// pages) and the sealed segment, if one was written.
    fn persist_freelist(&mut self) -> Result<(u64, u64, Option<Vec<u8>>)> {
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
        seal(
            &mut buf,
            KIND_FREELIST,
            0,
            pg,
            self.txid,
            records.len() as u32,
        );
        self.chain_records = if compact {
            records.len() as u64
        } else {
            self.chain_records + records.len() as u64
        };
        Ok((pg, n, Some(buf)))
    }

    /// Applies tree changes to the catalog, persists the freelist, and returns every dirty
    /// page (sealed, sorted by id) with the snapshot they make up.
    pub(crate) fn prepare_commit(&mut self) -> Result<(Vec<SealedPages>, Snap)> {
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
                let v = self.make_val(&encode_desc(root, order))?;
                self.put(&mut croot, KeyOrder::Bytewise, &name, v)?;
            }
        }
        self.catalog_root = croot;
        for t in &mut self.trees {
            t.dirty = false;
        }
        let (fl, fl_pages, seg) = self.persist_freelist()?;
        let mut pages: Vec<SealedPages> =
            Vec::with_capacity(self.nodes.len() + self.runs.len() + 1);
        if let Some(seg) = seg {
            pages.push((fl, seg));
        }
        for (&id, node) in &self.nodes {
            if node.len() == 0 {
                return Err(internal(&format!("empty node {id} at publish")));
            }
            pages.push((id, node.encode(id, self.txid)));
        }
        for (&id, buf) in &mut self.runs {
            let len = rd_u32(buf, 28);
            seal(buf, KIND_OVERFLOW, 0, id, self.txid, len);
        }
        for (id, buf) in self.runs.drain() {
            pages.push((id, buf));
        }
        pages.sort_unstable_by_key(|(id, _)| *id);
        debug_assert!(pages
            .windows(2)
            .all(|w| w[0].0 + (w[0].1.len() / PAGE_SIZE) as u64 <= w[1].0));
        debug_assert!(pages
            .iter()
            .all(|(id, b)| *id >= FIRST_DATA_PAGE && id + (b.len() / PAGE_SIZE) as u64 <= self.hw));
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
