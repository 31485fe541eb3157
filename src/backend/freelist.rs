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
//! takes shorter extents (the other levels) and at last any extent that fits
//! ([`Freelist::alloc`]: the lowest single page, best fit for more).
//!
//! One extent, the longest, is held back from runs and single pages (the reserve): breaking
//! up every extent for runs once left no extent for a multi-page run (a freelist segment, a
//! large value), so each of those grew the file, and the file crept without bound.

use std::collections::{BTreeMap, BTreeSet};

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
/// The reusable set is a `BTreeMap` from an extent's first page to its length, indexed again
/// by length, so taking, splitting or adding an extent anywhere, finding the shortest extent
/// that fits a run and finding the longest are all O(log extents). Runs leave one-page holes
/// behind, so the set may hold a hundred thousand extents; the sorted `VecDeque` and linear
/// passes it replaced became the raft shard's largest cost there (`perf/backend.md`,
/// "Contiguous allocation"). The write transaction takes the set over (an aborted one rolls
/// its changes back from a log, see `TxnCore::abort_freelist`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Freelist {
    /// Start page -> length of every reusable extent.
    free: BTreeMap<u64, u64>,
    /// `(length, start)` of every extent in `free`: the same set ordered by length.
    by_len: BTreeSet<(u64, u64)>,
    free_pages: u64,
    pending: BTreeMap<u64, Vec<(u64, u64)>>,
    pending_pages: u64,
    /// The page after the last one [`Freelist::alloc_in_run`] handed out: the run continues
    /// there while that page is still free. Only a hint (an aborted transaction leaves it
    /// pointing at pages that are free again, which is what the next one wants).
    cursor: u64,
    /// The rest of the extent the current run is taken from, `(start, length)`, held out of
    /// both indexes so that continuing the run is O(1) instead of four tree updates per
    /// allocation. Its pages are free (counted in `free_pages`) and no indexed extent touches
    /// it; every change to the indexes that could touch it first puts it back
    /// ([`Freelist::settle`]).
    run: Option<(u64, u64)>,
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

    /// The reserve: the longest extent (the highest of equals) as `(start, length)`, which
    /// runs and single pages leave alone while there is any other choice.
    fn reserve(&self) -> Option<(u64, u64)> {
        let indexed = self.by_len.last().copied();
        let held = self.run.map(|(s, len)| (len, s));
        indexed.max(held).map(|(len, s)| (s, len))
    }

    /// The reusable extents `(start, length)` in page order (the held run among them).
    fn free_extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (below, above) = match self.run {
            Some((s, _)) => (self.free.range(..s), self.free.range(s..)),
            None => (self.free.range(..), self.free.range(0..0)),
        };
        let pair = |(&s, &n): (&u64, &u64)| (s, n);
        below.map(pair).chain(self.run).chain(above.map(pair))
    }

    /// The free extent holding page `pg`, if any.
    fn extent_at(&self, pg: u64) -> Option<(u64, u64)> {
        if let Some((s, n)) = self.run {
            if s <= pg && pg < s + n {
                return Some((s, n));
            }
        }
        let (&s, &n) = self.free.range(..=pg).next_back()?;
        (pg < s + n).then_some((s, n))
    }

    /// Whether the held run shares a page with `[start, end)`.
    fn run_overlaps(&self, start: u64, end: u64) -> bool {
        self.run.is_some_and(|(s, n)| s < end && start < s + n)
    }

    /// Puts the held run back into the indexes (no merging needed: nothing touches it).
    fn settle(&mut self) {
        if let Some((s, len)) = self.run.take() {
            self.put(s, len);
        }
    }

    /// Adds extent `(s, len)` to both indexes (no merging).
    fn put(&mut self, s: u64, len: u64) {
        debug_assert!(len > 0);
        let old = self.free.insert(s, len);
        debug_assert!(old.is_none(), "extent {s} added twice");
        self.by_len.insert((len, s));
    }

    /// Takes the extent starting at `s` out of both indexes; its length.
    fn del(&mut self, s: u64) -> Option<u64> {
        let len = self.free.remove(&s)?;
        let was = self.by_len.remove(&(len, s));
        debug_assert!(was, "extent {s}+{len} missing from the length index");
        Some(len)
    }

    /// Adds `[start, start+len)` to the reusable set, merging with neighbours. Returns false
    /// (and changes nothing) if part of it is already free, which only a damaged file that
    /// references a page twice can cause.
    pub(crate) fn insert_free(&mut self, start: u64, len: u64) -> bool {
        debug_assert!(len > 0);
        let end = start.saturating_add(len);
        if self.run_overlaps(start, end) {
            return false;
        }
        if let Some((s, n)) = self.run {
            if end == s || s + n == start {
                // Joins the held run: merge in the indexes.
                self.settle();
            }
        }
        // One lookup answers both questions: the last extent starting below `end` overlaps
        // the new pages if it reaches past `start`, and precedes them if it ends at `start`.
        let below = self.free.range(..end).next_back().map(|(&s, &n)| (s, n));
        if below.is_some_and(|(s, n)| s + n > start) {
            return false;
        }
        let next_len = self.del(end).unwrap_or(0);
        match below.filter(|&(s, n)| s + n == start) {
            Some((ps, pn)) => {
                // The key stays: lengthen the extent in place, re-index it by length.
                let merged = pn + len + next_len;
                *self.free.get_mut(&ps).expect("the extent just found") = merged;
                let was = self.by_len.remove(&(pn, ps));
                debug_assert!(was, "extent {ps}+{pn} missing from the length index");
                self.by_len.insert((merged, ps));
            }
            None => self.put(start, len + next_len),
        }
        self.free_pages += len;
        true
    }

    /// Takes `[start, start+len)` out of the reusable set; false (nothing changed) unless it
    /// lies inside one free extent.
    pub(crate) fn remove_range(&mut self, start: u64, len: u64) -> bool {
        self.settle();
        let Some((s, n)) = self.extent_at(start) else {
            return false;
        };
        if start.saturating_add(len) > s + n {
            return false;
        }
        self.del(s);
        let (before, after) = (start - s, s + n - (start + len));
        if before > 0 {
            self.put(s, before);
        }
        if after > 0 {
            self.put(start + len, after);
        }
        self.free_pages -= len;
        true
    }

    /// Whether any page of `[start, start+len)` is in the reusable set.
    pub(crate) fn overlaps_free(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        self.run_overlaps(start, end)
            || self
                .free
                .range(..end)
                .next_back()
                .is_some_and(|(&s, &n)| s + n > start)
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
        // Adjacent pages of one batch (a transaction's freed runs) join before they meet the
        // set: fewer tree operations.
        batch.sort_unstable();
        let mut joined: Vec<(u64, u64)> = Vec::with_capacity(batch.len());
        for (s, n) in batch {
            match joined.last_mut() {
                Some((ls, ln)) if *ls + *ln == s => *ln += n,
                _ => joined.push((s, n)),
            }
        }
        for (s, n) in joined {
            if !self.insert_free(s, n) {
                // A page freed twice (damaged file): add the part that is not free yet, so
                // the set stays consistent and counts no page twice.
                for pg in s..s + n {
                    if !self.overlaps_free(pg, 1) {
                        self.insert_free(pg, 1);
                    }
                }
            }
        }
    }

    /// Takes `n` contiguous reusable pages; `None` if no extent is long enough. A single
    /// page comes from the lowest extent that is not the reserve (the reserve only if nothing
    /// else is free), more pages from the shortest extent that fits (best fit).
    pub(crate) fn alloc(&mut self, n: u64) -> Option<u64> {
        debug_assert!(n > 0);
        self.settle();
        let (s, len) = if n == 1 {
            let reserve = self.reserve();
            let mut lowest = self.free_extents();
            match lowest.next()? {
                e if Some(e) == reserve => lowest.next().unwrap_or(e),
                e => e,
            }
        } else {
            let &(len, s) = self.by_len.range((n, 0)..).next()?;
            (s, len)
        };
        self.take_front(s, len, n);
        Some(s)
    }

    /// Takes `n` contiguous reusable pages for a transaction that wants its pages in runs:
    /// right after the previous allocation if those pages are free, else from the front of
    /// the shortest extent of at least `max(n, RUN_LEVELS[level])` pages; never from the
    /// reserve. `None` if there is no such extent; the caller then grows the file, tries the
    /// next level or falls back to [`Freelist::alloc`].
    pub(crate) fn alloc_in_run(&mut self, n: u64, level: usize) -> Option<u64> {
        debug_assert!(n > 0);
        let cursor = self.cursor;
        if let Some((s, len)) = self.run {
            if s == cursor && len >= n && Some((s, len)) != self.reserve() {
                return Some(self.hand_out(s, len, n));
            }
        }
        self.settle();
        let reserve = self.reserve();
        if let Some(&len) = self.free.get(&cursor) {
            if len >= n && Some((cursor, len)) != reserve {
                return Some(self.take_run(cursor, len, n));
            }
        }
        let want = n.max(RUN_LEVELS[level]);
        let &(len, s) = self.by_len.range((want, 0)..).next()?;
        // The reserve is the last extent by length: if it is the first that fits, it is the
        // only one.
        if Some((s, len)) == reserve {
            return None;
        }
        Some(self.take_run(s, len, n))
    }

    /// Takes the first `n` pages of the free extent `(s, len)` and holds the rest out of the
    /// indexes as the run, which continues after the pages taken.
    fn take_run(&mut self, s: u64, len: u64, n: u64) -> u64 {
        debug_assert!(len >= n && self.run.is_none());
        let had = self.del(s);
        debug_assert_eq!(had, Some(len));
        self.hand_out(s, len, n)
    }

    /// Hands out the first `n` pages of the unindexed extent `(s, len)`, holding the rest as
    /// the run; the cursor moves past them.
    fn hand_out(&mut self, s: u64, len: u64, n: u64) -> u64 {
        debug_assert!(len >= n);
        self.run = (len > n).then_some((s + n, len - n));
        self.free_pages -= n;
        self.cursor = s + n;
        s
    }

    /// Takes the first `n` pages of the free extent `(s, len)` (`len >= n`).
    fn take_front(&mut self, s: u64, len: u64, n: u64) {
        debug_assert!(len >= n);
        let had = self.del(s);
        debug_assert_eq!(had, Some(len));
        if len > n {
            self.put(s + n, len - n);
        }
        self.free_pages -= n;
    }

    /// Points the run cursor at `pg` (the writer grew the file there, so its next pages
    /// follow on if they become free).
    pub(crate) fn set_cursor(&mut self, pg: u64) {
        self.cursor = pg;
    }

    /// Panics unless the two indexes hold the same coalesced extents and `free_pages` counts
    /// them.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let indexed: Vec<(u64, u64)> = self.free.iter().map(|(&s, &n)| (s, n)).collect();
        let mut by_len: Vec<(u64, u64)> = self.by_len.iter().map(|&(n, s)| (s, n)).collect();
        by_len.sort_unstable();
        assert_eq!(indexed, by_len, "the length index differs");
        if let Some((s, n)) = self.run {
            assert!(n > 0, "empty held run");
            assert!(!self.free.contains_key(&s), "held run {s} also indexed");
        }
        // The held run among the indexed extents: still coalesced, nothing touching it.
        let by_start: Vec<(u64, u64)> = self.free_extents().collect();
        for w in by_start.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "extents {w:?} overlap or touch");
        }
        let pages: u64 = by_start.iter().map(|&(_, n)| n).sum();
        assert_eq!(pages, self.free_pages, "free_pages");
    }

    /// Whether page `pg` is in the reusable set.
    #[cfg(test)]
    pub(crate) fn is_free(&self, pg: u64) -> bool {
        self.extent_at(pg).is_some()
    }

    /// Every free or pending extent, sorted and coalesced: what a meta persists (after a crash
    /// or restart nothing is pinned and the meta is durable, so all of it is reusable).
    /// Fails, naming a page, if two extents overlap (a page freed twice: damaged file).
    pub(crate) fn all_extents(&self) -> std::result::Result<Vec<(u64, u64)>, String> {
        // `free` is already sorted; only the (usually few) pending extents need sorting.
        let mut pend: Vec<(u64, u64)> = self.pending.values().flatten().copied().collect();
        pend.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.extent_bound());
        let mut free = self.free_extents().peekable();
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
        self.free_extents().collect()
    }

    /// Upper bound on the number of extents `all_extents` returns.
    pub(crate) fn extent_bound(&self) -> usize {
        self.free.len()
            + usize::from(self.run.is_some())
            + self.pending.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn coalesces_and_allocates_lowest_single_pages_and_best_fit_runs() {
        let mut f = Freelist::default();
        f.insert_free(10, 2);
        f.insert_free(14, 1);
        f.insert_free(12, 2);
        assert_eq!(f.all_extents().unwrap(), vec![(10, 5)]);
        assert!(!f.insert_free(11, 1), "overlap refused");
        f.insert_free(20, 3);
        f.insert_free(30, 4);
        assert_eq!(f.alloc(4), Some(30), "the shortest extent that fits");
        assert_eq!(f.alloc(3), Some(20));
        assert_eq!(f.alloc(2), Some(10));
        assert_eq!(f.alloc(4), None);
        // (12, 3) is the reserve: single pages take it last.
        f.insert_free(40, 1);
        assert_eq!(f.alloc(1), Some(40));
        assert_eq!(f.alloc(1), Some(12), "only the reserve is left");
        assert_eq!(f.free_pages(), 2);
        assert!(f.is_free(14) && !f.is_free(12));
        f.assert_consistent();
    }

    #[test]
    fn runs_continue_at_the_cursor_then_take_the_shortest_long_extent_but_not_the_reserve() {
        const RUN: u64 = RUN_LEVELS[0];
        let mut f = Freelist::default();
        f.insert_free(10, 3);
        f.insert_free(100, RUN + 2);
        f.insert_free(200, RUN + 1);
        f.insert_free(1000, 4 * RUN);
        // The shortest extent of a run's length (short ones too short, the longest, at 1000,
        // held back); the run continues there.
        assert_eq!(f.alloc_in_run(1, 0), Some(200));
        assert_eq!(f.alloc_in_run(3, 0), Some(201));
        // A page freed right at the cursor continues the run even though it is short.
        assert!(f.remove_range(204, RUN - 3));
        f.insert_free(204, 1);
        assert_eq!(f.alloc_in_run(1, 0), Some(204));
        assert_eq!(f.alloc_in_run(2, 0), Some(100));
        assert!(f.remove_range(102, RUN));
        // Only short extents besides the reserve: no run at level 0, but shorter levels find
        // one.
        assert_eq!(f.alloc_in_run(1, 0), None);
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
        f.set_cursor(0);
        assert_eq!(f.alloc_in_run(1, 0), None);
        f.insert_free(50 + RUN - 1, 1);
        assert_eq!(
            f.alloc_in_run(1, 0),
            Some(50),
            "two short extents merged make a run"
        );
        // A run longer than the reserve can only come from `alloc`, which may use it.
        assert_eq!(f.alloc_in_run(RUN + 1, 0), None);
        assert_eq!(f.alloc(4 * RUN), Some(1000));
        assert_eq!(f.free_pages(), 2 + RUN - 1);
        // Released pages join into the new longest extent, the new reserve.
        for pg in 300..300 + 2 * RUN {
            f.add_pending(7, pg, 1);
        }
        f.release(7);
        assert_eq!(f.reserve(), Some((300, 2 * RUN)));
        assert_eq!(f.alloc_in_run(1, 0), Some(51), "the run continues");
        f.set_cursor(0);
        assert_eq!(
            f.alloc_in_run(1, 0),
            None,
            "the reserve (300) is left alone"
        );
        f.assert_consistent();
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
        // Single pages lowest first, except that they leave the longest extent alone.
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

    /// One step of the model test: what a writer does to the set.
    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u64),
        AllocInRun(u64, usize),
        Cursor(u64),
        /// Frees the `k`-th allocated extent (modulo) as pending for a later release.
        Free(usize),
        /// Returns the `k`-th allocated extent (modulo) to the set at once, as a write
        /// transaction does with a page it allocated itself (often next to the run).
        FreeNow(usize),
        /// Frees the `k`-th free page (modulo) again, as a damaged file would: refused.
        FreeAgain(usize),
        /// Releases every pending extent.
        Release,
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..5).prop_map(Op::Alloc),
            6 => (1u64..5, 0usize..RUN_LEVELS.len()).prop_map(|(n, l)| Op::AllocInRun(n, l)),
            1 => (0u64..400).prop_map(Op::Cursor),
            6 => any::<usize>().prop_map(Op::Free),
            3 => any::<usize>().prop_map(Op::FreeNow),
            1 => any::<usize>().prop_map(Op::FreeAgain),
            2 => Just(Op::Release),
            1 => (0u64..400, 1u64..20).prop_map(|(s, n)| Op::Remove(s, n)),
        ]
    }

    proptest! {
        /// Every allocator path hands out only free pages, never the same page twice, and
        /// keeps the set equal to a plain page set and its two indexes equal; runs leave the
        /// reserve alone.
        #[test]
        fn allocation_matches_a_page_set_model(
            extents in proptest::collection::vec((0u64..400, 1u64..40), 1..30),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut f = Freelist::default();
            let mut model = std::collections::BTreeSet::new();
            for (s, n) in extents {
                if f.insert_free(s, n) {
                    model.extend(s..s + n);
                }
                f.assert_consistent();
            }
            let (mut held, mut pending) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    Op::Alloc(n) | Op::AllocInRun(n, _) => {
                        let reserve = f.reserve();
                        let got = match op {
                            Op::AllocInRun(_, l) => f.alloc_in_run(n, l),
                            _ => f.alloc(n),
                        };
                        let any_fits = model.iter().any(|&p| (p..p + n).all(|q| model.contains(&q)));
                        if let Op::Alloc(_) = op {
                            prop_assert_eq!(got.is_some(), any_fits, "alloc finds any fit");
                        }
                        if let Some(pg) = got {
                            for q in pg..pg + n {
                                prop_assert!(model.remove(&q), "page {} handed out but not free", q);
                            }
                            if let (Op::AllocInRun(_, _), Some((rs, rl))) = (&op, reserve) {
                                prop_assert!(pg + n <= rs || pg >= rs + rl, "run from the reserve");
                            }
                            held.push((pg, n));
                        }
                    }
                    Op::Cursor(pg) => f.set_cursor(pg),
                    Op::Free(k) if !held.is_empty() => {
                        let (s, n) = held.swap_remove(k % held.len());
                        pending.push((s, n));
                        f.add_pending(1, s, n);
                    }
                    Op::Free(_) => {}
                    Op::FreeNow(k) if !held.is_empty() => {
                        let (s, n) = held.swap_remove(k % held.len());
                        prop_assert!(f.insert_free(s, n), "returned pages {}+{} were free", s, n);
                        model.extend(s..s + n);
                    }
                    Op::FreeNow(_) => {}
                    Op::FreeAgain(k) if !model.is_empty() => {
                        let pg = *model.iter().nth(k % model.len()).expect("non-empty");
                        prop_assert!(f.overlaps_free(pg, 1), "free page {} not seen as free", pg);
                        prop_assert!(!f.insert_free(pg, 1), "page {} freed twice", pg);
                    }
                    Op::FreeAgain(_) => {}
                    Op::Release => {
                        f.release(1);
                        for (s, n) in pending.drain(..) {
                            model.extend(s..s + n);
                        }
                    }
                    Op::Remove(s, n) => {
                        let all_free = (s..s + n).all(|q| model.contains(&q));
                        let inside_one = f.remove_range(s, n);
                        prop_assert_eq!(inside_one, all_free, "free pages are one extent");
                        if inside_one {
                            for q in s..s + n {
                                model.remove(&q);
                            }
                        }
                    }
                }
                f.assert_consistent();
                let pages: Vec<u64> = f.extents().iter().flat_map(|&(s, n)| s..s + n).collect();
                prop_assert_eq!(pages, model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(f.free_pages(), model.len() as u64);
            }
        }
    }
}
