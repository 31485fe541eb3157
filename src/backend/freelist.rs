//! The freelist: which pages may be reused, and which wait for readers or for durability.
//!
//! A page freed by transaction `T` is still reachable in every snapshot older than `T`, and in
//! the durable meta while that meta's txid is older than `T`. It therefore sits in `pending[T]`
//! until both the synced txid and the oldest pinned reader snapshot are `>= T`; only then does
//! [`Freelist::release`] move it to `free`, from which runs are allocated (first fit, lowest
//! page first, so the file stays dense).

use std::collections::BTreeMap;

/// Extents `(start page, page count)`, kept sorted and coalesced.
///
/// The reusable set is a sorted `Vec` rather than a tree: the write transaction works on a
/// copy (so an aborted transaction leaves the freelist untouched), and copying a `Vec` is one
/// memcpy; every publish serialises the whole list anyway.
#[derive(Clone, Debug, Default)]
pub(crate) struct Freelist {
    free: Vec<(u64, u64)>,
    free_pages: u64,
    pending: BTreeMap<u64, Vec<(u64, u64)>>,
    pending_pages: u64,
}

impl Freelist {
    /// A freelist whose every extent is immediately reusable (as after open: no readers, and
    /// the meta that persisted it is durable).
    pub(crate) fn from_extents(extents: impl IntoIterator<Item = (u64, u64)>) -> Freelist {
        let mut f = Freelist::default();
        for (s, n) in extents {
            f.insert_free(s, n);
        }
        f
    }

    /// Pages ready for reuse.
    pub(crate) fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Pages waiting for readers / durability.
    pub(crate) fn pending_pages(&self) -> u64 {
        self.pending_pages
    }

    /// Adds `[start, start+len)` to the reusable set, merging with neighbours.
    pub(crate) fn insert_free(&mut self, start: u64, len: u64) {
        debug_assert!(len > 0);
        let i = self.free.partition_point(|&(s, _)| s < start);
        let joins_prev = i > 0 && {
            let (ps, pn) = self.free[i - 1];
            debug_assert!(ps + pn <= start, "page {start} freed twice");
            ps + pn == start
        };
        let joins_next = i < self.free.len() && {
            let (ns, _) = self.free[i];
            debug_assert!(ns >= start + len, "page {} freed twice", start + len - 1);
            ns == start + len
        };
        match (joins_prev, joins_next) {
            (true, true) => {
                let (_, nn) = self.free.remove(i);
                self.free[i - 1].1 += len + nn;
            }
            (true, false) => self.free[i - 1].1 += len,
            (false, true) => self.free[i] = (start, len + self.free[i].1),
            (false, false) => self.free.insert(i, (start, len)),
        }
        self.free_pages += len;
    }

    /// Records that transaction `txid` stopped referencing `[start, start+len)`.
    pub(crate) fn add_pending(&mut self, txid: u64, start: u64, len: u64) {
        debug_assert!(len > 0);
        self.pending.entry(txid).or_default().push((start, len));
        self.pending_pages += len;
    }

    /// Moves every extent freed by a transaction `<= upto` to the reusable set.
    pub(crate) fn release(&mut self, upto: u64) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > upto {
                break;
            }
            for (s, n) in entry.remove() {
                self.pending_pages -= n;
                self.insert_free(s, n);
            }
        }
    }

    /// Takes `n` contiguous reusable pages (first fit); `None` if no extent is long enough.
    pub(crate) fn alloc(&mut self, n: u64) -> Option<u64> {
        debug_assert!(n > 0);
        let i = self.free.iter().position(|&(_, len)| len >= n)?;
        let (s, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (s + n, len - n);
        }
        self.free_pages -= n;
        Some(s)
    }

    /// Whether page `pg` is in the reusable set.
    #[cfg(test)]
    pub(crate) fn is_free(&self, pg: u64) -> bool {
        let i = self.free.partition_point(|&(s, _)| s <= pg);
        i > 0 && pg < self.free[i - 1].0 + self.free[i - 1].1
    }

    /// Every free or pending extent, sorted and coalesced: what a meta persists (after a crash
    /// or restart nothing is pinned and the meta is durable, so all of it is reusable).
    pub(crate) fn all_extents(&self) -> Vec<(u64, u64)> {
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
                _ => {
                    debug_assert!(
                        out.last().is_none_or(|(ls, ln)| ls + ln <= s),
                        "overlapping free extents"
                    );
                    out.push((s, n))
                }
            }
        }
        out
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
        assert_eq!(f.all_extents(), vec![(10, 5)]);
        f.insert_free(20, 3);
        assert_eq!(f.alloc(4), Some(10));
        assert_eq!(f.alloc(2), Some(20));
        assert_eq!(f.alloc(2), None);
        assert_eq!(f.alloc(1), Some(14));
        assert_eq!(f.free_pages(), 1);
        assert!(f.is_free(22) && !f.is_free(21));
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
        assert_eq!(f.all_extents(), vec![(40, 2)]);
        f.release(u64::MAX);
        assert_eq!(f.alloc(2), Some(40));
    }
}
