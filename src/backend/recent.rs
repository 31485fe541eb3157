//! The writer's own copies of the branch and leaf pages it published most recently.
//!
//! Why: the writer rewrites the same paths again and again (the root and upper branches on
//! every transaction; the right edge of a tree under ascending keys), and every rewrite puts
//! the page at a new page id. Reading that new page back through the mmap costs a page fault,
//! and the kernel's fault-around then maps up to 15 neighbouring page-cache pages into the
//! process too, so a long load of ascending keys ends up with most of the file resident in the
//! process (RSS) although no reader asked for it. Keeping the bytes the writer just wrote
//! answers those reads from memory, and copy-on-write can take the buffer over instead of
//! copying it.
//!
//! Coherence: an entry is the exact bytes (sealed) that a publish wrote for that page id.
//! Every publish passes every page it wrote through [`RecentPages::written`] (which replaces
//! the entry) or [`RecentPages::overwritten`] (which forgets the ids it covers), and only the writer writes pages, so an entry
//! can only be stale for an id no live tree references (freed and not yet rewritten), which
//! the writer never reads. Debug builds compare every hit with the file.

use std::collections::VecDeque;

use super::write::PageMap;
use super::PAGE_SIZE;

/// Most pages the cache holds (8 MiB): enough for the upper levels of every tree a batch
/// touches plus the right edge under ascending keys. The oldest entries go first.
pub(crate) const MAX_RECENT_PAGES: usize = 2048;

/// Recently published branch and leaf pages by page id, evicted oldest first.
#[derive(Default)]
pub(crate) struct RecentPages {
    /// Page id -> (insertion number, page bytes).
    map: PageMap<(u64, Box<[u8]>)>,
    /// Insertion order: (page id, insertion number). An entry whose number no longer matches
    /// the map's was taken or replaced since and is skipped.
    order: VecDeque<(u64, u64)>,
    next: u64,
}

impl RecentPages {
    /// The cached bytes of page `pg`, if any.
    #[inline]
    pub(crate) fn get(&self, pg: u64) -> Option<&[u8]> {
        self.map.get(&pg).map(|(_, b)| &b[..])
    }

    /// Removes page `pg` and hands its buffer over (copy-on-write is about to free the page).
    pub(crate) fn take(&mut self, pg: u64) -> Option<Box<[u8]>> {
        self.map.remove(&pg).map(|(_, b)| b)
    }

    /// Forgets page `pg` (it was freed).
    pub(crate) fn forget(&mut self, pg: u64) {
        self.map.remove(&pg);
    }

    /// Number of cached pages.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Records that a publish wrote pages `[pg, pg + pages)` that are not a branch or leaf:
    /// forgets any entry they cover, handing its buffer to `spare`.
    pub(crate) fn overwritten(&mut self, pg: u64, pages: u64, mut spare: impl FnMut(Box<[u8]>)) {
        for id in pg..pg + pages {
            if let Some((_, old)) = self.map.remove(&id) {
                spare(old);
            }
        }
    }

    /// Records that a publish wrote the branch or leaf page `pg` with the bytes `buf`, and
    /// caches them; evicts the oldest entry when full. Buffers no longer needed (the replaced
    /// or evicted ones) go to `spare`, for reuse.
    pub(crate) fn written(&mut self, pg: u64, buf: Box<[u8]>, mut spare: impl FnMut(Box<[u8]>)) {
        debug_assert_eq!(buf.len(), PAGE_SIZE);
        let n = self.next;
        self.next += 1;
        if let Some((_, old)) = self.map.insert(pg, (n, buf)) {
            spare(old);
        }
        self.order.push_back((pg, n));
        while self.map.len() > MAX_RECENT_PAGES {
            let Some((id, n)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&id).is_some_and(|(m, _)| *m == n) {
                if let Some((_, old)) = self.map.remove(&id) {
                    spare(old);
                }
            }
        }
        // Taken and replaced entries leave dead records behind; drop them before the queue
        // outgrows the map by much (amortised O(1) per insertion).
        if self.order.len() > 2 * MAX_RECENT_PAGES {
            let map = &self.map;
            self.order
                .retain(|(id, n)| map.get(id).is_some_and(|(m, _)| m == n));
        }
        debug_assert!(self.map.len() <= MAX_RECENT_PAGES);
        debug_assert!(self.order.len() <= 2 * MAX_RECENT_PAGES + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Box<[u8]> {
        vec![fill; PAGE_SIZE].into_boxed_slice()
    }

    #[test]
    fn caches_single_node_pages_and_replaces_on_rewrite() {
        let mut r = RecentPages::default();
        let mut spares = 0;
        r.written(7, page(1), |_| spares += 1);
        assert_eq!(r.get(7).map(|b| b[0]), Some(1));
        r.written(7, page(2), |_| spares += 1);
        assert_eq!(r.get(7).map(|b| b[0]), Some(2));
        assert_eq!(spares, 1, "the replaced buffer comes back for reuse");
        // A run or a non-node page over a cached id forgets it.
        r.overwritten(6, 3, |_| spares += 1);
        assert!(r.get(7).is_none());
        assert_eq!(spares, 2);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn take_and_forget_remove_entries() {
        let mut r = RecentPages::default();
        r.written(3, page(3), |_| {});
        r.written(4, page(4), |_| {});
        assert_eq!(r.take(3).map(|b| b[0]), Some(3));
        assert!(r.get(3).is_none());
        r.forget(4);
        assert!(r.get(4).is_none());
        assert!(r.take(4).is_none());
    }

    #[test]
    fn evicts_oldest_first_and_stays_bounded() {
        let mut r = RecentPages::default();
        let mut evicted = Vec::new();
        for id in 0..(MAX_RECENT_PAGES as u64 + 10) {
            let mut p = page(0);
            p[..8].copy_from_slice(&id.to_le_bytes());
            r.written(id, p, |b| {
                evicted.push(u64::from_le_bytes(b[..8].try_into().unwrap()))
            });
        }
        assert_eq!(r.len(), MAX_RECENT_PAGES);
        assert_eq!(evicted, (0..10).collect::<Vec<u64>>());
        assert!(r.get(9).is_none() && r.get(10).is_some());
        // Churn (take + rewrite of the same ids) keeps the order queue bounded too.
        for round in 0..10 * MAX_RECENT_PAGES as u64 {
            let id = 10 + round % 16;
            let b = r.take(id).unwrap_or_else(|| page(0));
            r.written(id, b, |_| {});
            assert!(r.order.len() <= 2 * MAX_RECENT_PAGES + 1);
        }
        assert_eq!(r.len(), MAX_RECENT_PAGES);
    }
}
