//! The hub's matching structure: which synced watchers does an event on key `k` concern?
//!
//! Single-key watchers (the common case, and the one that reaches 100,000s) live in a hash map
//! from key to the head of an intrusive singly linked list threaded through the watcher slots,
//! so a key costs one map entry however many watchers share it, and the key bytes are shared
//! (`Arc<[u8]>`) between the map and every watcher on it. Range watchers (prefixes, from-key)
//! live in a set; matching walks a sorted copy of them by start key backwards from the last
//! start <= `k`, pruned by a prefix maximum of range ends: once no range starting at or before
//! position `i` reaches past `k`, nothing further left can match. The sorted copy is rebuilt
//! lazily after a change (O(r log r) for r range watchers), so creating many range watchers
//! costs nothing per event until the next event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// "No next slot" in the intrusive per-key lists.
pub const NIL: u32 = u32::MAX;

/// The key range of a watcher, as etcd encodes it: `end` empty = the single key, `[0]` = every
/// key >= `key`, otherwise `[key, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First key (shared with the index).
    pub key: Arc<[u8]>,
    /// None: only `key`. Some([0]): unbounded. Some(end): keys < end.
    pub end: Option<Arc<[u8]>>,
}

impl KeyRange {
    /// Whether `k` is in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == &*self.key,
            Some(end) if end[..] == [0] => k >= &*self.key,
            Some(end) => k >= &*self.key && k < &**end,
        }
    }

    fn is_single(&self) -> bool {
        self.end.is_none()
    }
}

/// Compares two range ends as upper bounds: the unbounded end (`[0]`) is the largest.
fn end_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a == [0], b == [0]) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// Whether a range end (not single) reaches past `k`, i.e. keys `k` may be below it.
fn end_above(end: &[u8], k: &[u8]) -> bool {
    end == [0] || k < end
}

/// Where the index reads a slot's range and threads its per-key list.
pub trait Slots {
    /// The range of the watcher in `slot`.
    fn range(&self, slot: u32) -> &KeyRange;
    /// The next slot on the same key's list.
    fn next(&self, slot: u32) -> u32;
    /// Sets the next slot on the same key's list.
    fn set_next(&mut self, slot: u32, next: u32);
}

/// The index of synced watchers by key range.
#[derive(Default)]
pub struct KeyIndex {
    single: HashMap<Arc<[u8]>, u32>,
    ranges: HashSet<u32>,
    /// `ranges` sorted by start key, and for each position the slot with the largest end
    /// among positions 0..=i. Valid only while `dirty` is false.
    sorted: Vec<u32>,
    prefix_max: Vec<u32>,
    dirty: bool,
    len: usize,
}

impl KeyIndex {
    /// An empty index.
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Number of watchers in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shared copy of `key` if some single-key watcher already holds it (so a new watcher
    /// on the same key does not allocate its own).
    pub fn shared_key(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.single.get_key_value(key).map(|(k, _)| k.clone())
    }

    /// Adds `slot` (whose range `slots` knows). The slot must not be in the index.
    pub fn insert(&mut self, slots: &mut impl Slots, slot: u32) {
        let range = slots.range(slot);
        if range.is_single() {
            let key = range.key.clone();
            let head = self.single.entry(key).or_insert(NIL);
            slots.set_next(slot, *head);
            *head = slot;
        } else {
            let fresh = self.ranges.insert(slot);
            debug_assert!(fresh, "slot {slot} inserted twice");
            self.dirty = true;
        }
        self.len += 1;
    }

    /// Removes `slot`; it must be in the index.
    pub fn remove(&mut self, slots: &mut impl Slots, slot: u32) {
        let range = slots.range(slot);
        if range.is_single() {
            let key = range.key.clone();
            let head = *self
                .single
                .get(&*key)
                .expect("a single-key watcher in the index has its key in the map");
            if head == slot {
                let next = slots.next(slot);
                if next == NIL {
                    self.single.remove(&*key);
                } else {
                    self.single.insert(key, next);
                }
            } else {
                let mut at = head;
                loop {
                    let next = slots.next(at);
                    assert_ne!(next, NIL, "slot {slot} is on its key's list");
                    if next == slot {
                        slots.set_next(at, slots.next(slot));
                        break;
                    }
                    at = next;
                }
            }
            slots.set_next(slot, NIL);
        } else {
            let was = self.ranges.remove(&slot);
            debug_assert!(was, "slot {slot} removed but not indexed");
            self.dirty = true;
        }
        self.len -= 1;
    }

    /// Calls `f` with every indexed slot whose range contains `key` (each once).
    pub fn for_each_match(&mut self, slots: &impl Slots, key: &[u8], mut f: impl FnMut(u32)) {
        if let Some(&head) = self.single.get(key) {
            let mut at = head;
            while at != NIL {
                f(at);
                at = slots.next(at);
            }
        }
        if self.ranges.is_empty() {
            return;
        }
        if self.dirty {
            self.rebuild(slots);
        }
        // Last position whose start <= key.
        let upto = self
            .sorted
            .partition_point(|&s| &*slots.range(s).key <= key);
        for i in (0..upto).rev() {
            let best = slots.range(self.prefix_max[i]);
            let best_end = best.end.as_deref().expect("range watchers have an end");
            if !end_above(best_end, key) {
                break; // nothing starting at or before position i reaches `key`
            }
            let slot = self.sorted[i];
            if slots.range(slot).contains(key) {
                f(slot);
            }
        }
    }

    fn rebuild(&mut self, slots: &impl Slots) {
        self.sorted.clear();
        self.sorted.extend(self.ranges.iter().copied());
        self.sorted
            .sort_unstable_by(|&a, &b| slots.range(a).key.cmp(&slots.range(b).key));
        self.prefix_max.clear();
        let mut best = NIL;
        for &s in &self.sorted {
            let end = slots.range(s).end.as_deref().expect("range watcher");
            if best == NIL
                || end_cmp(
                    end,
                    slots.range(best).end.as_deref().expect("range watcher"),
                )
                .is_gt()
            {
                best = s;
            }
            self.prefix_max.push(best);
        }
        self.dirty = false;
    }

    /// Approximate heap bytes of the index itself (not the watchers), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.single.capacity() * (std::mem::size_of::<(Arc<[u8]>, u32)>() + 1)
            + self.ranges.capacity() * 5
            + (self.sorted.capacity() + self.prefix_max.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct TestSlots {
        ranges: Vec<KeyRange>,
        next: Vec<u32>,
    }

    impl Slots for TestSlots {
        fn range(&self, slot: u32) -> &KeyRange {
            &self.ranges[slot as usize]
        }
        fn next(&self, slot: u32) -> u32 {
            self.next[slot as usize]
        }
        fn set_next(&mut self, slot: u32, next: u32) {
            self.next[slot as usize] = next;
        }
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        // A small alphabet so that keys, ranges and events collide often.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(b'c')],
            1..4,
        )
    }

    fn range_strategy() -> impl Strategy<Value = KeyRange> {
        (key_strategy(), 0..4u8, key_strategy()).prop_map(|(key, kind, end)| {
            let end = match kind {
                0 | 1 => None,
                2 => Some(Arc::from(&[0u8][..])),
                _ => Some(Arc::from(end)), // possibly empty ranges: must simply match nothing
            };
            KeyRange {
                key: Arc::from(key),
                end,
            }
        })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(KeyRange),
        Remove(usize),
        Match(Vec<u8>),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => range_strategy().prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Remove),
            3 => key_strategy().prop_map(Op::Match),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The index finds exactly the slots a naive scan of every live watcher finds.
        #[test]
        fn index_matches_naive_scan(ops in proptest::collection::vec(op_strategy(), 1..200)) {
            let mut slots = TestSlots { ranges: Vec::new(), next: Vec::new() };
            let mut index = KeyIndex::new();
            let mut live: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(r) => {
                        let slot = slots.ranges.len() as u32;
                        slots.ranges.push(r);
                        slots.next.push(NIL);
                        index.insert(&mut slots, slot);
                        live.push(slot);
                    }
                    Op::Remove(i) => {
                        if !live.is_empty() {
                            let slot = live.swap_remove(i % live.len());
                            index.remove(&mut slots, slot);
                        }
                    }
                    Op::Match(k) => {
                        let mut got = Vec::new();
                        index.for_each_match(&slots, &k, |s| got.push(s));
                        got.sort_unstable();
                        let mut want: Vec<u32> = live
                            .iter()
                            .copied()
                            .filter(|&s| slots.ranges[s as usize].contains(&k))
                            .collect();
                        want.sort_unstable();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(index.len(), live.len());
            }
        }
    }

    #[test]
    fn shared_key_reuses_the_indexed_buffer() {
        let mut slots = TestSlots {
            ranges: vec![KeyRange {
                key: Arc::from(&b"k"[..]),
                end: None,
            }],
            next: vec![NIL],
        };
        let mut index = KeyIndex::new();
        index.insert(&mut slots, 0);
        let shared = index.shared_key(b"k").expect("indexed");
        assert!(Arc::ptr_eq(&shared, &slots.ranges[0].key));
        index.remove(&mut slots, 0);
        assert!(index.shared_key(b"k").is_none());
        assert!(index.is_empty());
    }
}
