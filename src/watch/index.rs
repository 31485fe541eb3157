//! The hub's matching structure: which synced watchers does an event on key `k` concern?
//!
//! Single-key watchers (the common case, and the one that reaches 100,000s) live in a hash
//! table of list heads: one 4-byte slot number per distinct key, hashed and compared through
//! the key stored in the head watcher's slot (the table holds no key bytes of its own), and an
//! intrusive singly linked list threaded through the watcher slots, so a key costs one table
//! entry however many watchers share it. Range watchers (prefixes, from-key) live in a set;
//! matching walks a sorted copy of them by start key backwards from the last start <= `k`,
//! pruned by a prefix maximum of range ends: once no range starting at or before position `i`
//! reaches past `k`, nothing further left can match. The sorted copy is rebuilt lazily after a
//! change (O(r log r) for r range watchers), so creating many range watchers costs nothing per
//! event until the next event.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// "No next slot" in the intrusive per-key lists.
pub const NIL: u32 = u32::MAX;

/// Marks a slot [`KeyIndex::remove_all`] has already unlinked from its key's list.
const UNLINKED: u32 = u32::MAX - 1;

/// Longest key stored inside a [`KeyRange`] itself (no heap allocation): most watched keys
/// are short, and a watcher's memory is dominated by its key when it is on the heap.
pub const INLINE_KEY_BYTES: usize = 22;

/// The key range of a watcher, as etcd encodes it: an empty end = the single key, `[0]` =
/// every key >= `key`, otherwise `[key, end)`. 24 bytes: a short single key is stored inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// A single key of at most [`INLINE_KEY_BYTES`] bytes, stored inline.
    Short {
        /// Bytes of `buf` in use.
        len: u8,
        /// The key, zero-padded.
        buf: [u8; INLINE_KEY_BYTES],
    },
    /// A longer single key.
    Long(Box<[u8]>),
    /// A range: `(key, end)` with `end` = `[0]` for unbounded; never empty.
    Range(Box<KeyAndEnd>),
}

/// The start key and end of a range watcher (boxed once, so [`KeyRange`] stays 24 bytes).
pub type KeyAndEnd = (Box<[u8]>, Box<[u8]>);

impl KeyRange {
    /// The range of `key` and etcd's `range_end` (empty: only `key`; `[0]`: from `key` on).
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if !range_end.is_empty() {
            return KeyRange::Range(Box::new((Box::from(key), Box::from(range_end))));
        }
        if key.len() <= INLINE_KEY_BYTES {
            let mut buf = [0; INLINE_KEY_BYTES];
            buf[..key.len()].copy_from_slice(key);
            KeyRange::Short {
                len: key.len() as u8,
                buf,
            }
        } else {
            KeyRange::Long(Box::from(key))
        }
    }

    /// The first key.
    pub fn key(&self) -> &[u8] {
        match self {
            KeyRange::Short { len, buf } => &buf[..*len as usize],
            KeyRange::Long(k) => k,
            KeyRange::Range(r) => &r.0,
        }
    }

    /// The range end: None for a single key, `[0]` for unbounded, otherwise exclusive.
    pub fn end(&self) -> Option<&[u8]> {
        match self {
            KeyRange::Range(r) => Some(&r.1),
            _ => None,
        }
    }

    /// Whether `k` is in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self.end() {
            None => k == self.key(),
            Some([0]) => k >= self.key(),
            Some(end) => k >= self.key() && k < end,
        }
    }

    /// Heap bytes this range owns beyond its own 24 bytes (allocator overhead excluded).
    pub fn heap_bytes(&self) -> usize {
        match self {
            KeyRange::Short { .. } => 0,
            KeyRange::Long(k) => k.len(),
            KeyRange::Range(r) => 32 + r.0.len() + r.1.len(),
        }
    }

    fn is_single(&self) -> bool {
        !matches!(self, KeyRange::Range(_))
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
    hasher: RandomState,
    /// Head slot of each single key's list, found by the key in that slot.
    single: HashTable<u32>,
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

    /// Adds `slot` (whose range `slots` knows). The slot must not be in the index.
    pub fn insert(&mut self, slots: &mut impl Slots, slot: u32) {
        if slots.range(slot).is_single() {
            let hash = self.hasher.hash_one(slots.range(slot).key());
            let found = {
                let s = &*slots;
                let key = s.range(slot).key();
                self.single.find_mut(hash, |&h| s.range(h).key() == key)
            };
            match found {
                Some(head) => {
                    debug_assert_ne!(*head, slot, "slot {slot} inserted twice");
                    let old = std::mem::replace(head, slot);
                    slots.set_next(slot, old);
                }
                None => {
                    slots.set_next(slot, NIL);
                    let s = &*slots;
                    let hasher = &self.hasher;
                    self.single
                        .insert_unique(hash, slot, |&h| hasher.hash_one(s.range(h).key()));
                }
            }
        } else {
            let fresh = self.ranges.insert(slot);
            debug_assert!(fresh, "slot {slot} inserted twice");
            self.dirty = true;
        }
        self.len += 1;
    }

    /// Removes `slot`; it must be in the index.
    pub fn remove(&mut self, slots: &mut impl Slots, slot: u32) {
        if slots.range(slot).is_single() {
            let hash = self.hasher.hash_one(slots.range(slot).key());
            let head = {
                let s = &*slots;
                let key = s.range(slot).key();
                let Ok(mut entry) = self.single.find_entry(hash, |&h| s.range(h).key() == key)
                else {
                    panic!("a single-key watcher in the index has its key in the table");
                };
                let head = *entry.get();
                if head == slot {
                    let next = s.next(slot);
                    if next == NIL {
                        entry.remove();
                    } else {
                        *entry.get_mut() = next;
                    }
                }
                head
            };
            if head != slot {
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

    /// Removes every slot in `doomed` (all must be in the index). Each key's list is walked
    /// once however many of its slots go, so removing n watchers of one key costs
    /// O(n + list length), where n single removals would cost O(n x list length).
    pub fn remove_all(&mut self, slots: &mut impl Slots, doomed: &HashSet<u32>) {
        for &slot in doomed {
            debug_assert!(slot < UNLINKED, "slot ids stay below the list markers");
            if !slots.range(slot).is_single() {
                let was = self.ranges.remove(&slot);
                debug_assert!(was, "slot {slot} removed but not indexed");
                self.dirty = true;
                self.len -= 1;
                continue;
            }
            if slots.next(slot) == UNLINKED {
                // Its key's list was already rebuilt for an earlier doomed slot.
                slots.set_next(slot, NIL);
                continue;
            }
            let hash = self.hasher.hash_one(slots.range(slot).key());
            let head = {
                let s = &*slots;
                let key = s.range(slot).key();
                *self
                    .single
                    .find(hash, |&h| s.range(h).key() == key)
                    .expect("a single-key watcher in the index has its key in the table")
            };
            // Rebuild the list without the doomed slots; mark those UNLINKED so later
            // doomed slots of the same key know their list is done.
            let (mut new_head, mut tail, mut at, mut removed) = (NIL, NIL, head, 0);
            while at != NIL {
                let next = slots.next(at);
                if doomed.contains(&at) {
                    slots.set_next(at, UNLINKED);
                    removed += 1;
                } else {
                    if tail == NIL {
                        new_head = at;
                    } else {
                        slots.set_next(tail, at);
                    }
                    tail = at;
                }
                at = next;
            }
            if tail != NIL {
                slots.set_next(tail, NIL);
            }
            debug_assert!(removed > 0, "slot {slot} is on its key's list");
            self.len -= removed;
            let s = &*slots;
            let key = s.range(slot).key();
            let Ok(mut entry) = self.single.find_entry(hash, |&h| s.range(h).key() == key) else {
                unreachable!("the key's entry was found above");
            };
            if new_head == NIL {
                entry.remove();
            } else {
                *entry.get_mut() = new_head;
            }
            slots.set_next(slot, NIL);
        }
    }

    /// Calls `f` with every indexed slot whose range contains `key` (each once).
    pub fn for_each_match(&mut self, slots: &impl Slots, key: &[u8], mut f: impl FnMut(u32)) {
        if !self.single.is_empty() {
            let hash = self.hasher.hash_one(key);
            if let Some(&head) = self.single.find(hash, |&h| slots.range(h).key() == key) {
                let mut at = head;
                while at != NIL {
                    f(at);
                    at = slots.next(at);
                }
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
            .partition_point(|&s| slots.range(s).key() <= key);
        for i in (0..upto).rev() {
            let best = slots.range(self.prefix_max[i]);
            let best_end = best.end().expect("range watchers have an end");
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
            .sort_unstable_by(|&a, &b| slots.range(a).key().cmp(slots.range(b).key()));
        self.prefix_max.clear();
        let mut best = NIL;
        for &s in &self.sorted {
            let end = slots.range(s).end().expect("range watcher");
            if best == NIL || end_cmp(end, slots.range(best).end().expect("range watcher")).is_gt()
            {
                best = s;
            }
            self.prefix_max.push(best);
        }
        self.dirty = false;
    }

    /// Approximate heap bytes of the index itself (not the watchers), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.single.capacity() * (std::mem::size_of::<u32>() + 1)
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
            match kind {
                0 | 1 => KeyRange::new(&key, b""),
                2 => KeyRange::new(&key, &[0]),
                // Possibly empty ranges: must simply match nothing.
                _ => KeyRange::new(&key, &end),
            }
        })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(KeyRange),
        Remove(usize),
        /// Removes several live slots at once (`remove_all`), picked by these indices.
        RemoveAll(Vec<usize>),
        Match(Vec<u8>),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => range_strategy().prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Remove),
            1 => proptest::collection::vec(any::<usize>(), 0..8).prop_map(Op::RemoveAll),
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
                    Op::RemoveAll(picks) => {
                        let mut doomed = HashSet::new();
                        for i in picks {
                            if !live.is_empty() {
                                doomed.insert(live.swap_remove(i % live.len()));
                            }
                        }
                        index.remove_all(&mut slots, &doomed);
                        for &slot in &doomed {
                            prop_assert_eq!(slots.next[slot as usize], NIL);
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
    fn short_keys_are_inline_and_long_ones_and_ranges_are_not() {
        assert_eq!(std::mem::size_of::<KeyRange>(), 24);
        let short = KeyRange::new(&[7u8; INLINE_KEY_BYTES], b"");
        assert!(matches!(short, KeyRange::Short { .. }));
        assert_eq!(short.key(), &[7u8; INLINE_KEY_BYTES]);
        assert_eq!(short.end(), None);
        let empty = KeyRange::new(b"", b"");
        assert_eq!(empty.key(), b"");
        let long = KeyRange::new(&[7u8; INLINE_KEY_BYTES + 1], b"");
        assert!(matches!(long, KeyRange::Long(_)));
        assert_eq!(long.key(), &[7u8; INLINE_KEY_BYTES + 1]);
        let range = KeyRange::new(b"a", b"c");
        assert_eq!((range.key(), range.end()), (&b"a"[..], Some(&b"c"[..])));
        assert!(range.contains(b"b") && !range.contains(b"c"));
        let from = KeyRange::new(b"b", &[0]);
        assert!(from.contains(b"zzz") && !from.contains(b"a"));
    }

    /// `n` watchers (slots 0..n) all on key "k".
    fn one_key_index(n: u32) -> (TestSlots, KeyIndex) {
        let mut slots = TestSlots {
            ranges: (0..n).map(|_| KeyRange::new(b"k", b"")).collect(),
            next: vec![NIL; n as usize],
        };
        let mut index = KeyIndex::new();
        for s in 0..n {
            index.insert(&mut slots, s);
        }
        (slots, index)
    }

    #[test]
    fn many_watchers_on_one_key_share_one_entry_and_unlink_in_any_order() {
        let n = 50u32;
        let (mut slots, mut index) = one_key_index(n);
        assert_eq!(index.single.len(), 1);
        // Remove heads, tails and middles alike.
        let order: Vec<u32> = (0..n).map(|i| (i * 17) % n).collect();
        for (done, &s) in order.iter().enumerate() {
            index.remove(&mut slots, s);
            let mut got = Vec::new();
            index.for_each_match(&slots, b"k", |x| got.push(x));
            got.sort_unstable();
            let mut want: Vec<u32> = order[done + 1..].to_vec();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        assert!(index.is_empty() && index.single.is_empty());
    }

    #[test]
    fn remove_all_takes_many_watchers_of_a_key_in_one_pass() {
        // 100,000 watchers on one key, every other one removed at once, then the rest: one
        // walk of the list per call (removing them one by one walks it per watcher).
        let n = 100_000u32;
        let (mut slots, mut index) = one_key_index(n);
        let odd: HashSet<u32> = (0..n).filter(|s| s % 2 == 1).collect();
        index.remove_all(&mut slots, &odd);
        let mut got = Vec::new();
        index.for_each_match(&slots, b"k", |x| got.push(x));
        got.sort_unstable();
        assert_eq!(got, (0..n).step_by(2).collect::<Vec<_>>());
        assert_eq!(index.len(), (n / 2) as usize);
        let even: HashSet<u32> = (0..n).step_by(2).collect();
        index.remove_all(&mut slots, &even);
        assert!(index.is_empty() && index.single.is_empty());
        assert!(slots.next.iter().all(|&x| x == NIL));
    }
}
