//! The published snapshot descriptor and the reader registry (shared by all threads).
//!
//! The descriptor is a seqlock over a few atomics: the single writer bumps the sequence to odd,
//! stores the fields, bumps it to even. Readers copy the fields and retry if the sequence moved.
//!
//! Pinning: a reader claims one of [`MAX_READERS`] slots and stores its snapshot txid there,
//! then re-reads the published txid. If it is unchanged, any later page-reuse decision by the
//! writer (which reads the slots after publishing) sees the slot: all of these operations are
//! `SeqCst`, so either the writer's publish comes after the reader's recheck in the single total
//! order (then its slot scan, later still, sees the slot), or the recheck sees the new txid and
//! the reader retries with it. A slot holding an older txid than needed only delays reuse.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use super::{Error, Result};

/// Most read transactions that may be open at once (all threads together).
pub const MAX_READERS: usize = 1024;

/// One published snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snap {
    pub txid: u64,
    pub catalog_root: u64,
    pub high_water: u64,
    pub freelist: u64,
    pub freelist_pages: u64,
}

#[repr(align(64))]
struct Slot(AtomicU64);

/// Published descriptor + reader slots.
pub(crate) struct Registry {
    seq: AtomicU64,
    fields: [AtomicU64; 5],
    published: AtomicU64,
    slots: Box<[Slot]>,
    /// One past the highest slot ever claimed: the writer scans only below it.
    used: AtomicUsize,
}

static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    // Each thread starts its slot search at its own place (dense from 0, so the writer's
    // scan stays short), so threads rarely contend for a slot.
    static HINT: Cell<usize> = Cell::new(NEXT_HINT.fetch_add(1, Relaxed) % MAX_READERS);
}

impl Registry {
    pub(crate) fn new(s: Snap) -> Registry {
        let r = Registry {
            seq: AtomicU64::new(0),
            fields: Default::default(),
            published: AtomicU64::new(0),
            slots: (0..MAX_READERS).map(|_| Slot(AtomicU64::new(0))).collect(),
            used: AtomicUsize::new(0),
        };
        r.publish(s);
        r
    }

    /// Makes `s` the snapshot new readers get. Only the writer calls this.
    pub(crate) fn publish(&self, s: Snap) {
        let v = self.seq.load(Relaxed);
        debug_assert!(v.is_multiple_of(2));
        self.seq.store(v + 1, Relaxed);
        std::sync::atomic::fence(Release);
        let vals = [
            s.txid,
            s.catalog_root,
            s.high_water,
            s.freelist,
            s.freelist_pages,
        ];
        for (f, v) in self.fields.iter().zip(vals) {
            f.store(v, Relaxed);
        }
        self.seq.store(v + 2, Release);
        self.published.store(s.txid, SeqCst);
    }

    /// The latest published snapshot.
    pub(crate) fn load(&self) -> Snap {
        loop {
            let v1 = self.seq.load(Acquire);
            if v1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let f: [u64; 5] = std::array::from_fn(|i| self.fields[i].load(Relaxed));
            std::sync::atomic::fence(Acquire);
            if self.seq.load(Relaxed) == v1 {
                return Snap {
                    txid: f[0],
                    catalog_root: f[1],
                    high_water: f[2],
                    freelist: f[3],
                    freelist_pages: f[4],
                };
            }
        }
    }

    /// Pins the latest snapshot; returns the slot (to pass to [`Registry::unpin`]) and it.
    pub(crate) fn pin(&self) -> Result<(usize, Snap)> {
        let mut s = self.load();
        debug_assert!(s.txid > 0, "txid 0 marks a free slot");
        let start = HINT.with(Cell::get);
        let mut idx = None;
        for k in 0..MAX_READERS {
            let i = (start + k) % MAX_READERS;
            if self.slots[i]
                .0
                .compare_exchange(0, s.txid, SeqCst, Relaxed)
                .is_ok()
            {
                idx = Some(i);
                break;
            }
        }
        let Some(i) = idx else {
            return Err(Error::TooLarge {
                what: "open read transactions (MAX_READERS)",
                size: MAX_READERS + 1,
                limit: MAX_READERS,
            });
        };
        HINT.with(|h| h.set(i));
        // Raised before the recheck below: a writer whose publish comes after the recheck in
        // the SeqCst order reads `used` (and then the slot) after this.
        self.used.fetch_max(i + 1, SeqCst);
        while self.published.load(SeqCst) != s.txid {
            s = self.load();
            self.slots[i].0.store(s.txid, SeqCst);
        }
        Ok((i, s))
    }

    /// Releases a slot taken by [`Registry::pin`].
    pub(crate) fn unpin(&self, i: usize) {
        debug_assert!(self.slots[i].0.load(Relaxed) != 0);
        self.slots[i].0.store(0, Release);
    }

    /// The oldest pinned snapshot txid, or `u64::MAX` if no reader is open.
    pub(crate) fn oldest_pinned(&self) -> u64 {
        let used = self.used.load(SeqCst);
        self.slots[..used]
            .iter()
            .map(|s| s.0.load(SeqCst))
            .filter(|&t| t != 0)
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(txid: u64) -> Snap {
        Snap {
            txid,
            catalog_root: txid * 10,
            high_water: 2,
            freelist: 0,
            freelist_pages: 0,
        }
    }

    #[test]
    fn pin_sees_latest_and_oldest_tracks_pins() {
        let r = Registry::new(snap(1));
        let (a, sa) = r.pin().unwrap();
        assert_eq!(sa, snap(1));
        r.publish(snap(2));
        let (b, sb) = r.pin().unwrap();
        assert_eq!(sb.txid, 2);
        assert_eq!(r.oldest_pinned(), 1);
        r.unpin(a);
        assert_eq!(r.oldest_pinned(), 2);
        r.unpin(b);
        assert_eq!(r.oldest_pinned(), u64::MAX);
    }

    #[test]
    fn full_registry_is_an_error() {
        let r = Registry::new(snap(1));
        let pins: Vec<usize> = (0..MAX_READERS).map(|_| r.pin().unwrap().0).collect();
        assert!(matches!(r.pin(), Err(Error::TooLarge { .. })));
        for i in pins {
            r.unpin(i);
        }
        assert!(r.pin().is_ok());
    }

    #[test]
    fn concurrent_publish_and_pin_never_pin_below_visible() {
        let iters: u64 = std::env::var("COREKV_REGISTRY_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let r = std::sync::Arc::new(Registry::new(snap(1)));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..iters {
                let (i, s) = r2.pin().unwrap();
                // The seqlock never returns a mix of two snapshots.
                assert_eq!(s.catalog_root, s.txid * 10);
                r2.unpin(i);
            }
        });
        for tx in 2..iters {
            r.publish(snap(tx));
        }
        t.join().unwrap();
    }
}
