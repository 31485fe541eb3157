//! The consistency checker: walks every page of one snapshot and reports every problem it
//! finds (up to [`MAX_CHECK_PROBLEMS`]), without stopping at the first and without panicking
//! on garbage.
//!
//! Checked: each page's checksum, type and identity; every page reachable exactly once; keys
//! strictly increasing per the tree's comparator and inside the bounds set by the parent's
//! separators; all leaves of a tree at one depth; freelist extents inside the file, disjoint
//! from each other and from reachable pages; and no page below the high-water mark that is
//! neither reachable nor free (a leak).

use std::cmp::Ordering;

use super::freelist::load_chain;
use super::page::*;
use super::readers::Snap;
use super::view::{self, Bitmap, Loc, View};
use super::write::decode_desc;
use super::{CheckReport, KeyOrder};

/// Most problems listed in one report; the rest are counted in a final line.
pub const MAX_CHECK_PROBLEMS: usize = 1000;

const UNSEEN: u8 = 0;
const REACHABLE: u8 = 1;
const FREE: u8 = 2;

struct Checker<'a> {
    v: View<'a>,
    marks: Vec<u8>,
    problems: Vec<String>,
    suppressed: usize,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, msg: String) {
        if self.problems.len() < MAX_CHECK_PROBLEMS {
            self.problems.push(msg);
        } else {
            self.suppressed += 1;
        }
    }

    /// Marks `[pg, pg+n)` as reachable (`what` names the owner for messages). Returns false if
    /// the range is invalid.
    fn mark(&mut self, pg: u64, n: u64, how: u8, what: &str) -> bool {
        if pg < FIRST_DATA_PAGE || pg.saturating_add(n) > self.v.hw {
            self.problem(format!(
                "{what}: pages {pg}..{} outside [2, {})",
                pg.saturating_add(n),
                self.v.hw
            ));
            return false;
        }
        for p in pg..pg + n {
            let prev = self.marks[p as usize];
            if prev != UNSEEN {
                let was = if prev == REACHABLE {
                    "reachable"
                } else {
                    "free"
                };
                let now = if how == REACHABLE {
                    "reachable"
                } else {
                    "on the freelist"
                };
                self.problem(format!(
                    "page {p} ({what}) is {now} but was already seen {was}"
                ));
            } else {
                self.marks[p as usize] = how;
            }
        }
        true
    }

    /// Resolves a key/value location, marking its overflow run. None if unreadable.
    fn resolve(&mut self, loc: Loc<'a>, what: &str) -> Option<&'a [u8]> {
        match loc {
            Loc::Inline(b) => Some(b),
            Loc::Ovf(pg, len) => match self.v.overflow(pg, len) {
                Ok(b) => {
                    self.mark(pg, run_pages(len), REACHABLE, what);
                    Some(b)
                }
                Err(e) => {
                    self.problem(format!("{what}: {e}"));
                    None
                }
            },
        }
    }

    /// Walks the subtree at `pg`; every key must be in `[lo, hi)`. Collects catalog entries
    /// into `entries` when given. `leaf_depth` records the depth of the first leaf seen.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        tree: &str,
        pg: u64,
        order: KeyOrder,
        lo: Option<&'a [u8]>,
        hi: Option<&'a [u8]>,
        depth: usize,
        leaf_depth: &mut Option<usize>,
        mut entries: Option<&mut Vec<(Vec<u8>, Vec<u8>)>>,
    ) {
        let what = format!("tree {tree} page {pg}");
        if depth > MAX_DEPTH {
            self.problem(format!("{what}: deeper than {MAX_DEPTH} levels"));
            return;
        }
        let (p, leaf) = match view::node_page(&self.v, pg) {
            Ok(x) => x,
            Err(e) => {
                self.problem(format!("tree {tree}: {e}"));
                // Still claim the page so it is not also reported as leaked.
                self.mark(pg, 1, REACHABLE, &what);
                return;
            }
        };
        if !self.mark(pg, 1, REACHABLE, &what) {
            return;
        }
        let n = view::count(p);
        if leaf {
            match leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) if *d != depth => {
                    self.problem(format!("{what}: leaf at depth {depth}, others at {d}"));
                }
                _ => {}
            }
            let mut prev: Option<&'a [u8]> = lo;
            for i in 0..n {
                let (kl, vl) = view::leaf_cell(p, i);
                let key = self.resolve(kl, &format!("{what} key {i}"));
                let val = self.resolve(vl, &format!("{what} value {i}"));
                let Some(key) = key else { continue };
                if let Some(pk) = prev {
                    let c = order.compare(pk, key);
                    let bad = if i == 0 {
                        c == Ordering::Greater // lower bound is inclusive
                    } else {
                        c != Ordering::Less
                    };
                    if bad {
                        self.problem(format!("{what}: key {i} out of order"));
                    }
                }
                if let Some(h) = hi {
                    if order.compare(key, h) != Ordering::Less {
                        self.problem(format!("{what}: key {i} not below its parent's bound"));
                    }
                }
                prev = Some(key);
                if let (Some(out), Some(val)) = (entries.as_deref_mut(), val) {
                    out.push((key.to_vec(), val.to_vec()));
                }
            }
        } else {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                let (child, kl) = view::branch_cell(p, i);
                let key = if i == 0 {
                    lo
                } else {
                    match self.resolve(kl, &format!("{what} separator {i}")) {
                        Some(k) => Some(k),
                        None => return,
                    }
                };
                cells.push((child, key));
            }
            for i in 1..n {
                if let (Some(a), Some(b)) = (cells[i - 1].1, cells[i].1) {
                    let c = order.compare(a, b);
                    if c == Ordering::Greater || (i > 1 && c == Ordering::Equal) {
                        self.problem(format!("{what}: separator {i} out of order"));
                    }
                }
            }
            for i in 0..n {
                let (child, klo) = cells[i];
                let khi = if i + 1 < n { cells[i + 1].1 } else { hi };
                self.walk(
                    tree,
                    child,
                    order,
                    klo,
                    khi,
                    depth + 1,
                    leaf_depth,
                    entries.as_deref_mut(),
                );
            }
        }
    }
}

/// Checks snapshot `s` of the file mapped at `map` (at least `s.high_water` pages). Uses its
/// own "verified" bitmap, so every checksum is recomputed.
pub(crate) fn check_snapshot(map: &[u8], s: &Snap, mut problems: Vec<String>) -> CheckReport {
    let bits = match Bitmap::new(s.high_water) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("cannot allocate the checker's bitmap: {e}"));
            return CheckReport {
                problems,
                ..Default::default()
            };
        }
    };
    let mut c = Checker {
        v: View::new(map, s.high_water, &bits),
        marks: vec![UNSEEN; s.high_water as usize],
        problems,
        suppressed: 0,
    };
    // Catalog, then every tree it names.
    let mut cat = Vec::new();
    if s.catalog_root != 0 {
        let mut ld = None;
        c.walk(
            "(catalog)",
            s.catalog_root,
            KeyOrder::Bytewise,
            None,
            None,
            0,
            &mut ld,
            Some(&mut cat),
        );
    }
    for (name, desc) in &cat {
        let shown = String::from_utf8_lossy(name).into_owned();
        match decode_desc(name, desc) {
            Err(e) => c.problem(e.to_string()),
            Ok((0, _)) => {}
            Ok((root, order)) => {
                let mut ld = None;
                c.walk(&shown, root, order, None, None, 0, &mut ld, None);
            }
        }
    }
    // The persisted freelist: its segments are reachable, the set they replay to is free.
    let mut seg = (s.freelist, s.freelist_pages);
    let mut nseg = 0u64;
    while seg.0 != 0 && nseg <= s.high_water {
        nseg += 1;
        match c.v.page(seg.0, KIND_FREELIST) {
            Err(e) => {
                c.problem(format!("freelist: {e}"));
                c.mark(seg.0, seg.1.max(1), REACHABLE, "freelist segment");
                break;
            }
            Ok(run) => {
                c.mark(seg.0, header(run).run as u64, REACHABLE, "freelist segment");
                seg = (rd_u64(run, HDR), rd_u64(run, HDR + 8));
            }
        }
    }
    match load_chain(&c.v, s.freelist, s.freelist_pages) {
        Err(e) => c.problem(format!("freelist: {e}")),
        Ok(chain) => {
            for (j, (start, len)) in chain.set.extents().into_iter().enumerate() {
                c.mark(start, len, FREE, &format!("freelist extent {j}"));
            }
        }
    }
    let mut reachable = 0;
    let mut free = 0;
    let mut leaked = Vec::new();
    for p in FIRST_DATA_PAGE..s.high_water {
        match c.marks[p as usize] {
            REACHABLE => reachable += 1,
            FREE => free += 1,
            _ => leaked.push(p),
        }
    }
    for p in leaked {
        c.problem(format!(
            "page {p} leaked: neither reachable nor on the freelist"
        ));
    }
    if c.suppressed > 0 {
        let n = c.suppressed;
        c.problems.push(format!("... and {n} more problems"));
    }
    CheckReport {
        reachable_pages: reachable,
        free_pages: free,
        problems: c.problems,
    }
}
