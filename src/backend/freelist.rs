//! The freelist: which pages may be reused, and which wait for readers or for durability.
//!
//! A page freed by transaction `T` is still reachable in every snapshot older than `T`, and in
//! the durable meta while that meta's txid is older than `T`. It therefore sits in `pending[T]`
//! until both the synced txid and the oldest pinned reader snapshot are `>= T`; only then does
//! [`Freelist::release`] move it to `free`, from which pages are allocated.
//!
//! Allocation prefers contiguity over density ([`Freelist::alloc_in_run`]): a write
//! transaction's pages are taken one after another from a free extent, so a publish writes
//! them with a few large `pwritev`s and the disk gets sequential writes instead of one
//! scattered 4 KiB page per changed leaf. The writer first looks for an extent of
//! `RUN_LEVELS[0]` pages; without one it grows the file while little of it is free, else it
//! takes shorter extents (the other levels) and at last first fit ([`Freelist::alloc`]).
//!
//! One extent, the longest, is held back from runs and single pages (the reserve): breaking
//! up every extent for runs once left no extent for a multi-page run (a freelist segment, a
//! large value), so each of those grew the file, and the file crept without bound.

use std::collections::{BTreeMap, VecDeque};

use super::page::{header, rd_u64, FIRST_DATA_PAGE, HDR, KIND_FREELIST};
use super::view::View;
use super::{Error, Result};

/// Bytes before the records of a freelist segment: the next (older) segment's head page and
/// its length in pages.
pub(crate) const SEG_HDR: usize = 16;
/// Bit 63 of a record's length: the extent leaves the set (else it joins it).
pub(crate) const REMOVE_FLAG: u64 = 1 << 63;
/// Most segments in the persisted freelist chain before it is rewritten as one.
pub const MAX_FREELIST_SEGMENTS: usize = 256;
/// The extent lengths [`Freelist::alloc_in_run`] starts a run in, longest first. Level 0,
/// 16 pages = 64 KiB, is one publish `pwritev` (`MAX_WRITE_BYTES`) and the only level tried
/// while the file may still grow for runs.
pub const RUN_LEVELS: [u64; 4] = [16, 8, 4, 2];

/// The persisted freelist of a snapshot: the replayed set, its segments (oldest first) and
/// their total record count.
pub(crate) struct Chain {
    pub set: Freelist,
    pub segments: Vec<(u64, u64)>,
    pub records: u64,
}

/// Reads and replays the freelist chain starting at `head` (`pages` long). Every record is
/// checked against the snapshot's high water; an add of a page already in the set or a remove
/// of one not in it is damage.
pub(crate) fn load_chain(v: &View<'_>, head: u64, pages: u64) -> Result<Chain> {
    let bad = |m: String| Error::Corrupt(m);
    let mut segs: Vec<(u64, u64, &[u8])> = Vec::new();
    let (mut pg, mut n) = (head, pages);
    while pg != 0 {
        if segs.len() as u64 > v.hw {
            return Err(bad(format!("freelist chain at page {head} loops")));
        }
        let run = v.page(pg, KIND_FREELIST)?;
        let h = header(run);
        let count = h.payload as usize;
        if h.run as u64 != n || HDR + SEG_HDR + 16 * count > run.len() {
            return Err(bad(format!(
                "freelist page {pg}: {count} records in a run of {} pages (referenced as {n})",
                h.run
            )));
        }
        segs.push((pg, n, run));
        (pg, n) = (rd_u64(run, HDR), rd_u64(run, HDR + 8));
    }
    let mut set = Freelist::default();
    let mut records = 0;
    for &(pg, _, run) in segs.iter().rev() {
        let count = header(run).payload as usize;
        for j in 0..count {
            let at = HDR + SEG_HDR + 16 * j;
            let start = rd_u64(run, at);
            let raw = rd_u64(run, at + 8);
            let len = raw & !REMOVE_FLAG;
            if len == 0 || start < FIRST_DATA_PAGE || start.saturating_add(len) > v.hw {
                return Err(bad(format!(
                    "freelist page {pg}: record {j} ({start}+{len}) outside [2, {})",
                    v.hw
                )));
            }
            let ok = if raw & REMOVE_FLAG != 0 {
                set.remove_range(start, len)
            } else {
                set.insert_free(start, len)
            };
            if !ok {
                return Err(bad(format!(
                    "freelist page {pg}: record {j} ({start}+{len}) contradicts the set"
                )));
            }
            records += 1;
        }
    }
    Ok(Chain {
        set,
        segments: segs.iter().rev().map(|&(p, n, _)| (p, n)).collect(),
        records,
    })
}

/// Extents `(start page, page count)`, kept sorted and coalesced.
///
/// The reusable set is a sorted `VecDeque` rather than a tree: the write transaction takes it
/// over (and an aborted one rolls its changes back from a log, see `TxnCore::abort_freelist`),
/// and a compacting publish serialises the whole list. A deque because single pages are
/// allocated from the front (lowest page first): with thousands of one-page extents (the
/// pages of earlier random-key commits) each allocation is O(1), not a shift of the whole
/// list. [`Freelist::release`] merges a whole batch of extents in one linear pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct Freelist {
    free: VecDeque<(u64, u64)>,
    free_pages: u64,
    pending: BTreeMap<u64, Vec<(u64, u64)>>,
    pending_pages: u64,
    /// The page after the last one [`Freelist::alloc_in_run`] handed out: the run continues
    /// there while that page is still free. Only a hint (an aborted transaction leaves it
    /// pointing at pages that are free again, which is what the next one wants).
    cursor: u64,
    /// Bit `l` set: a full pass found no extent of `RUN_LEVELS[l]` pages (besides the
    /// reserve); cleared whenever the set may have gained one. Saves a pass over thousands of
    /// short extents per allocation while the set is fragmented.
    no_extent_at_level: u8,
    /// The reserve: the longest extent (start, length), which runs and single pages leave
    /// alone while there is any other choice. `None`: to be found again (by a pass).
    reserve: Option<(u64, u64)>,
}

impl Freelist {
    /// Pages ready for reuse.
    pub(crate) fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Pages waiting for readers / durability.
    pub(crate) fn pending_pages(&self) -> u64 {
        self.pending_pages
    }

    /// Adds `[start, start+len)` to the reusable set, merging with neighbours. Returns false
    /// (and changes nothing) if part of it is already free, which only a damaged file that
    /// references a page twice can cause.
    pub(crate) fn insert_free(&mut self, start: u64, len: u64) -> bool {
        debug_assert!(len > 0);
        if self.overlaps_free(start, len) {
            return false;
        }
        let i = self.free.partition_point(|&(s, _)| s < start);
        let joins_prev = i > 0 && {
            let (ps, pn) = self.free[i - 1];
            ps + pn == start
        };
        let joins_next = i < self.free.len() && self.free[i].0 == start + len;
        let merged_len = match (joins_prev, joins_next) {
            (true, true) => {
                let nn = self.free.remove(i).map_or(0, |(_, nn)| nn);
                self.free[i - 1].1 += len + nn;
                self.free[i - 1].1
            }
            (true, false) => {
                self.free[i - 1].1 += len;
                self.free[i - 1].1
            }
            (false, true) => {
                self.free[i] = (start, len + self.free[i].1);
                self.free[i].1
            }
            (false, false) => {
                self.free.insert(i, (start, len));
                len
            }
        };
        for (l, &run) in RUN_LEVELS.iter().enumerate() {
            if merged_len >= run {
                self.no_extent_at_level &= !(1 << l);
            }
        }
        if let Some((_, reserve_len)) = self.reserve {
            if merged_len >= reserve_len {
                // The merged extent is the new longest (if it swallowed the reserve, the
                // reserve's start may have moved with it).
                let at = self.free.partition_point(|&(s, _)| s <= start) - 1;
                self.reserve = Some(self.free[at]);
            }
        }
        self.free_pages += len;
        true
    }

    /// Takes `[start, start+len)` out of the reusable set; false (nothing changed) unless it
    /// lies inside one free extent.
    pub(crate) fn remove_range(&mut self, start: u64, len: u64) -> bool {
        let i = self.free.partition_point(|&(s, _)| s <= start);
        if i == 0 {
            return false;
        }
        let (s, n) = self.free[i - 1];
        if start.saturating_add(len) > s + n {
            return false;
        }
        if self.reserve.is_some_and(|(rs, _)| rs == s) {
            self.reserve = None;
        }
        let (before, after) = (start - s, s + n - (start + len));
        match (before > 0, after > 0) {
            (false, false) => {
                self.free.remove(i - 1);
            }
            (true, false) => self.free[i - 1].1 = before,
            (false, true) => self.free[i - 1] = (start + len, after),
            (true, true) => {
                self.free[i - 1].1 = before;
                self.free.insert(i, (start + len, after));
            }
        }
        self.free_pages -= len;
        true
    }

    /// Whether any page of `[start, start+len)` is in the reusable set.
    pub(crate) fn overlaps_free(&self, start: u64, len: u64) -> bool {
        let i = self
            .free
            .partition_point(|&(s, _)| s < start.saturating_add(len));
        i > 0 && {
            let (s, n) = self.free[i - 1];
            s + n > start
        }
    }

    /// Records that transaction `txid` stopped referencing `[start, start+len)`.
    pub(crate) fn add_pending(&mut self, txid: u64, start: u64, len: u64) {
        debug_assert!(len > 0);
        self.pending.entry(txid).or_default().push((start, len));
        self.pending_pages += len;
    }

    /// Forgets every extent recorded pending for transaction `txid` (an aborted transaction's
    /// frees); returns how many pages that was.
    pub(crate) fn drop_pending(&mut self, txid: u64) -> u64 {
        let n: u64 = self
            .pending
            .remove(&txid)
            .map_or(0, |v| v.iter().map(|&(_, n)| n).sum());
        self.pending_pages -= n;
        n
    }

    /// Moves every extent freed by a transaction `<= upto` to the reusable set.
    pub(crate) fn release(&mut self, upto: u64) {
        let mut batch = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > upto {
                break;
            }
            for (s, n) in entry.remove() {
                self.pending_pages -= n;
                batch.push((s, n));
            }
        }
        self.no_extent_at_level = 0;
        self.reserve = None;
        if batch.len() < 16 {
            for (s, n) in batch {
                // A page freed twice (damaged file) is already free: keep the set consistent.
                self.insert_free(s, n);
            }
            return;
        }
        // One sorted merge (O(set + batch log batch)) instead of a Vec insert per extent. Any
        // overlap (a page freed twice: damaged file) is unioned, so the set stays consistent.
        batch.sort_unstable();
        let mut merged: VecDeque<(u64, u64)> =
            VecDeque::with_capacity(self.free.len() + batch.len());
        let mut total = 0;
        let mut a = std::mem::take(&mut self.free).into_iter().peekable();
        let mut b = batch.into_iter().peekable();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            let (s, n) = next.expect("peeked");
            match merged.back_mut() {
                Some((ls, ln)) if *ls + *ln >= s => {
                    let end = (*ls + *ln).max(s + n);
                    total += end - (*ls + *ln);
                    *ln = end - *ls;
                }
                _ => {
                    merged.push_back((s, n));
                    total += n;
                }
            }
        }
        self.free = merged;
        self.free_pages = total;
    }

    /// Takes `n` contiguous reusable pages (first fit; a single page from the reserve only
    /// if nothing else is free); `None` if no extent is long enough.
    pub(crate) fn alloc(&mut self, n: u64) -> Option<u64> {
        debug_assert!(n > 0);
        let reserve = self.reserve_start();
        let skip = |s: u64| n == 1 && Some(s) == reserve;
        let i = match self.free.iter().position(|&(s, len)| len >= n && !skip(s)) {
            Some(i) => i,
            None => self.free.iter().position(|&(_, len)| len >= n)?,
        };
        let (s, len) = self.free[i];
        if Some(s) == reserve {
            self.reserve = None;
        }
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (s + n, len - n);
        }
        self.free_pages -= n;
        Some(s)
    }

    /// Takes `n` contiguous reusable pages for a transaction that wants its pages in runs:
    /// right after the previous allocation if those pages are free, else from the front of
    /// the next extent (in page order, wrapping once) of at least `max(n, RUN_LEVELS[level])`
    /// pages; never from the reserve. `None` if there is no such extent; the caller then
    /// grows the file, tries the next level or falls back to [`Freelist::alloc`].
    pub(crate) fn alloc_in_run(&mut self, n: u64, level: usize) -> Option<u64> {
        debug_assert!(n > 0);
        let reserve = self.reserve_start();
        let at = self.free.partition_point(|&(s, _)| s < self.cursor);
        if let Some(&(s, len)) = self.free.get(at) {
            if s == self.cursor && len >= n && Some(s) != reserve {
                return Some(self.take_front(at, n));
            }
        }
        let run = RUN_LEVELS[level];
        let memo = n <= run;
        if memo && self.no_extent_at_level & (1 << level) != 0 {
            return None;
        }
        let want = n.max(run);
        let count = self.free.len();
        let found = (0..count)
            .map(|k| (at + k) % count)
            .find(|&i| self.free[i].1 >= want && Some(self.free[i].0) != reserve);
        match found {
            Some(i) => Some(self.take_front(i, n)),
            None => {
                if memo {
                    self.no_extent_at_level |= 1 << level;
                }
                None
            }
        }
    }

    /// The reserve's first page, found again by a pass over the set if it was used up or
    /// moved (after a release, or when an allocation or removal took part of it).
    fn reserve_start(&mut self) -> Option<u64> {
        if self.reserve.is_none() {
            let mut longest: Option<(u64, u64)> = None;
            for &(s, len) in &self.free {
                if longest.is_none_or(|(_, l)| len > l) {
                    longest = Some((s, len));
                }
            }
            self.reserve = longest;
        }
        self.reserve.map(|(s, _)| s)
    }

    /// Takes the first `n` pages of extent `i` (at least `n` long, not the reserve) and moves
    /// the cursor past them.
    fn take_front(&mut self, i: usize, n: u64) -> u64 {
        let (s, len) = self.free[i];
        debug_assert!(len >= n);
        debug_assert!(
            self.reserve.is_none_or(|(r, _)| r != s),
            "run taken from the reserve"
        );
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (s + n, len - n);
        }
        self.free_pages -= n;
        self.cursor = s + n;
        s
    }

    /// Points the run cursor at `pg` (the writer grew the file there, so its next pages
    /// follow on if they become free).
    pub(crate) fn set_cursor(&mut self, pg: u64) {
        self.cursor = pg;
    }

    /// Whether page `pg` is in the reusable set.
    #[cfg(test)]
    pub(crate) fn is_free(&self, pg: u64) -> bool {
        let i = self.free.partition_point(|&(s, _)| s <= pg);
        i > 0 && pg < self.free[i - 1].0 + self.free[i - 1].1
    }

    /// Every free or pending extent, sorted and coalesced: what a meta persists (after a crash
    /// or restart nothing is pinned and the meta is durable, so all of it is reusable).
    /// Fails, naming a page, if two extents overlap (a page freed twice: damaged file).
    pub(crate) fn all_extents(&self) -> std::result::Result<Vec<(u64, u64)>, String> {
        // `free` is already sorted; only the (usually few) pending extents need sorting.
        let mut pend: Vec<(u64, u64)> = self.pending.values().flatten().copied().collect();
        pend.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.free.len() + pend.len());
        let mut free = self.free.iter().copied().peekable();
        let mut pend = pend.into_iter().peekable();
        loop {
            let next = match (free.peek(), pend.peek()) {
                (Some(a), Some(b)) if a.0 <= b.0 => free.next(),
                (Some(_), Some(_)) => pend.next(),
                (Some(_), None) => free.next(),
                (None, Some(_)) => pend.next(),
                (None, None) => break,
            };
            let (s, n) = next.expect("peeked");
            match out.last_mut() {
                Some((ls, ln)) if *ls + *ln == s => *ln += n,
                Some((ls, ln)) if *ls + *ln > s => {
                    return Err(format!(
                        "page {s} freed twice (it is referenced twice: damaged file, run check())"
                    ))
                }
                _ => out.push((s, n)),
            }
        }
        Ok(out)
    }

    /// The reusable extents (sorted, coalesced).
    pub(crate) fn extents(&self) -> Vec<(u64, u64)> {
        self.free.iter().copied().collect()
    }

    /// Upper bound on the number of extents `all_extents` returns.
    pub(crate) fn extent_bound(&self) -> usize {
        self.free.len() + self.pending.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_allocates_first_fit() {
        let mut f = Freelist::default();
        f.insert_free(10, 2);
        f.insert_free(14, 1);
        f.insert_free(12, 2);
        assert_eq!(f.all_extents().unwrap(), vec![(10, 5)]);
        assert!(!f.insert_free(11, 1), "overlap refused");
        f.insert_free(20, 3);
        assert_eq!(f.alloc(4), Some(10));
        assert_eq!(f.alloc(2), Some(20));
        assert_eq!(f.alloc(2), None);
        // Single pages leave the reserve (the longest extent, the lowest of equals) alone.
        assert_eq!(f.alloc(1), Some(22));
        assert_eq!(f.free_pages(), 1);
        assert!(f.is_free(14) && !f.is_free(22));
    }

    #[test]
    fn runs_continue_at_the_cursor_then_take_the_next_long_extent_but_not_the_reserve() {
        const RUN: u64 = RUN_LEVELS[0];
        let mut f = Freelist::default();
        f.insert_free(10, 3);
        f.insert_free(100, RUN);
        f.insert_free(200, RUN + 1);
        f.insert_free(1000, 4 * RUN);
        f.set_cursor(150);
        // From the cursor on, the first long extent (short ones skipped, the longest, at
        // 1000, held back); the run continues there.
        assert_eq!(f.alloc_in_run(1, 0), Some(200));
        assert_eq!(f.alloc_in_run(3, 0), Some(201));
        // A page freed right at the cursor continues the run even though it is short.
        assert!(f.remove_range(204, RUN - 3));
        f.insert_free(204, 1);
        assert_eq!(f.alloc_in_run(1, 0), Some(204));
        // The pass wraps to the lowest long extent.
        assert_eq!(f.alloc_in_run(2, 0), Some(100));
        assert!(f.remove_range(102, RUN - 2));
        // Only short extents besides the reserve: no run at level 0 (remembered until the set
        // gains a long extent), but shorter levels find one.
        assert_eq!(f.alloc_in_run(1, 0), None);
        assert_eq!(f.no_extent_at_level & 1, 1);
        assert_eq!(
            f.alloc_in_run(1, 2),
            None,
            "no extent of 4 pages but the reserve"
        );
        assert_eq!(
            f.alloc_in_run(1, 3),
            Some(10),
            "an extent of 3 is a run at level 3"
        );
        f.insert_free(50, RUN - 1);
        assert_eq!(
            f.no_extent_at_level & 1,
            1,
            "a short extent does not reset the memo"
        );
        f.insert_free(50 + RUN - 1, 1);
        f.set_cursor(0);
        assert_eq!(
            f.alloc_in_run(1, 0),
            Some(50),
            "two short extents merged make a run"
        );
        // A run longer than the reserve can only come from first fit, which may use it.
        assert_eq!(f.alloc_in_run(RUN + 1, 0), None);
        assert_eq!(f.alloc(4 * RUN), Some(1000));
        assert_eq!(f.free_pages(), 2 + RUN - 1);
        // A release resets the memo and finds the reserve again.
        f.no_extent_at_level = 0xff;
        for pg in 300..300 + 2 * RUN {
            f.add_pending(7, pg, 1);
        }
        f.release(7);
        assert_eq!(
            f.alloc_in_run(1, 0),
            Some(51),
            "the reserve (300) is left alone"
        );
        // Single pages by first fit skip the reserve too, unless nothing else is free.
        let mut g = Freelist::default();
        g.insert_free(5, 1);
        g.insert_free(7, 3);
        assert_eq!(g.alloc(1), Some(5));
        assert_eq!(g.alloc(1), Some(7), "only the reserve is left");
        assert_eq!(g.alloc(2), Some(8));
    }

    #[test]
    fn pending_pages_are_released_only_up_to_the_limit() {
        let mut f = Freelist::default();
        f.add_pending(5, 30, 1);
        f.add_pending(6, 31, 1);
        f.add_pending(8, 40, 2);
        assert_eq!(f.alloc(1), None, "pending pages must not be handed out");
        f.release(4);
        assert_eq!(f.free_pages(), 0);
        f.release(6);
        assert_eq!((f.free_pages(), f.pending_pages()), (2, 2));
        assert_eq!(f.alloc(2), Some(30));
        assert_eq!(f.all_extents().unwrap(), vec![(40, 2)]);
        f.add_pending(9, 40, 1);
        assert!(f.all_extents().is_err(), "double free detected");
        f.release(u64::MAX);
        assert!(f.remove_range(41, 1) && !f.remove_range(41, 1));
        assert!(f.insert_free(41, 1));
        assert_eq!(f.alloc(2), Some(40));
        assert_eq!(f.alloc(1), None, "the double-freed page is handed out once");
    }

    #[test]
    fn batched_release_merges_like_single_inserts() {
        let mut batched = Freelist::default();
        let mut single = Freelist::default();
        for f in [&mut batched, &mut single] {
            f.insert_free(100, 3);
            f.insert_free(200, 1);
        }
        // 40 scattered, some adjacent to each other or to the existing extents.
        let ext: Vec<(u64, u64)> = (0..40u64)
            .map(|i| (if i % 3 == 0 { 103 + i } else { 300 + 7 * i }, 1))
            .collect();
        for &(s, n) in &ext {
            batched.add_pending(9, s, n);
        }
        batched.release(9);
        for &(s, n) in &ext {
            single.insert_free(s, n);
        }
        assert_eq!(batched.extents(), single.all_extents().unwrap());
        assert_eq!(batched.free_pages(), 4 + 40);
        assert_eq!(batched.pending_pages(), 0);
        // Lowest page first, except that single pages leave the longest extent alone.
        assert_eq!(batched.alloc(2), Some(100));
        assert_eq!(batched.alloc(1), Some(106), "102+2 is now the longest");
        // A page freed twice (damaged file) is unioned, not counted twice.
        for i in 0..20u64 {
            batched.add_pending(10, 1000 + i, 1);
        }
        batched.add_pending(10, 1000, 1);
        batched.release(10);
        assert_eq!(batched.free_pages(), 41 + 20);
    }
}
