//! One shard's lease table: the leases it owns, their deadlines, and the expiry heap.
//!
//! Pure data structure (time is passed in), so it is tested against a naive model.
//!
//! Expiry structure: a min-heap of `(deadline, id, generation)` with exactly one *live* entry
//! per lease (the one whose generation matches the lease's). A keep-alive only moves the
//! lease's deadline later in the map (O(1), no heap work); when the heap entry comes due and
//! the lease's deadline has moved, the entry is re-pushed at the new deadline. So the heap
//! never holds more than one live entry per lease, keep-alives cost a hash update, and
//! expiry costs O(log n) per lease that actually comes due. Entries of removed leases become
//! stale (generation mismatch) and are dropped when popped, or all at once when stale
//! entries outnumber live ones ([`LeaseTable::compact_heap`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::mvcc::lease::LeaseCheckpoint;

/// How long an expired lease waits for its revoke to be applied before the owner proposes it
/// again (the first proposal may have been refused, e.g. during shutdown or over quota).
pub const REVOKE_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Stale heap entries tolerated (beyond one per live lease) before the heap is rebuilt.
const HEAP_SLACK: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Granted TTL, seconds.
    ttl: i64,
    /// When the lease expires unless kept alive.
    deadline: Instant,
    /// Deadline of the lease's live heap entry (<= `deadline` unless revoking).
    due: Instant,
    /// Generation of the lease's live heap entry.
    generation: u64,
    /// Set once the lease expired and its revoke was handed out.
    revoking: bool,
}

/// The leases one shard owns. Bounded by the store's `MAX_LEASES`.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Entry>,
    heap: BinaryHeap<Reverse<(Instant, i64, u64)>>,
    next_generation: u64,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// Number of leases held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether lease `id` is held.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    fn push(&mut self, id: i64, deadline: Instant) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.heap.push(Reverse((deadline, id, generation)));
        generation
    }

    /// Adds lease `id` with `remaining` time left (a fresh grant: its TTL; a restart: the
    /// checkpointed remaining TTL). An id already held is left as it is: grants are applied
    /// once, and a replayed grant after a restart must not reset a running lease.
    pub fn insert(&mut self, id: i64, ttl: i64, remaining: Duration, now: Instant) {
        if self.leases.contains_key(&id) {
            return;
        }
        let deadline = now + remaining;
        let generation = self.push(id, deadline);
        self.leases.insert(
            id,
            Entry {
                ttl,
                deadline,
                due: deadline,
                generation,
                revoking: false,
            },
        );
        self.debug_check();
    }

    /// Drops lease `id` (revoked); its heap entry goes stale.
    pub fn remove(&mut self, id: i64) -> bool {
        let removed = self.leases.remove(&id).is_some();
        if self.heap.len() > 2 * self.leases.len() + HEAP_SLACK {
            self.compact_heap();
        }
        removed
    }

    /// Refreshes lease `id`: its deadline becomes `now + TTL`. Returns the TTL, or `None` if
    /// the lease is not held or already expired (an expired lease is being revoked; etcd
    /// answers such a keep-alive as "not found" too).
    pub fn keep_alive(&mut self, id: i64, now: Instant) -> Option<i64> {
        let e = self.leases.get_mut(&id)?;
        if e.revoking || e.deadline <= now {
            return None;
        }
        e.deadline = now + ttl_duration(e.ttl);
        Some(e.ttl)
    }

    /// (granted TTL, remaining seconds rounded up) of lease `id`; remaining is 0 once
    /// expired.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let e = self.leases.get(&id)?;
        Some((e.ttl, ceil_secs(e.deadline.saturating_duration_since(now))))
    }

    /// The earliest moment something may come due (a heap entry), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Leases whose deadline passed, at most `max`: each is marked revoking and scheduled to
    /// come due again after [`REVOKE_RETRY_INTERVAL`] (when its revoke has not been applied
    /// by then, it is returned again). Entries that moved (keep-alives) are re-pushed.
    pub fn pop_expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&Reverse((deadline, id, generation))) = self.heap.peek() else {
                break;
            };
            if deadline > now {
                break;
            }
            self.heap.pop();
            let Some(e) = self.leases.get(&id).copied() else {
                continue; // removed: stale entry
            };
            if e.generation != generation {
                continue; // superseded
            }
            let (next, expired) = if e.revoking {
                (now + REVOKE_RETRY_INTERVAL, true)
            } else if e.deadline > now {
                (e.deadline, false)
            } else {
                (now + REVOKE_RETRY_INTERVAL, true)
            };
            let generation = self.push(id, next);
            let entry = self.leases.get_mut(&id).expect("checked above");
            entry.generation = generation;
            entry.due = next;
            if expired {
                entry.revoking = true;
                out.push(id);
            }
        }
        self.debug_check();
        out
    }

    /// The remaining TTL of every lease that is not expired, in seconds (rounded up, at
    /// least 1), to be checkpointed through the log.
    pub fn checkpoints(&self, now: Instant) -> Vec<LeaseCheckpoint> {
        let mut out: Vec<LeaseCheckpoint> = self
            .leases
            .iter()
            .filter(|(_, e)| !e.revoking && e.deadline > now)
            .map(|(&id, e)| LeaseCheckpoint {
                id,
                remaining_ttl: ceil_secs(e.deadline - now).clamp(1, e.ttl),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Rebuilds the heap from the live leases, dropping every stale entry.
    pub fn compact_heap(&mut self) {
        let mut heap = BinaryHeap::with_capacity(self.leases.len());
        for (&id, e) in &self.leases {
            heap.push(Reverse((e.due, id, e.generation)));
        }
        self.heap = heap;
        self.debug_check();
    }

    fn debug_check(&self) {
        debug_assert!(
            self.heap.len() >= self.leases.len(),
            "every lease has a live heap entry"
        );
    }
}

/// A TTL in seconds as a duration (TTLs are positive and at most `MAX_LEASE_TTL`).
pub fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// Seconds in `d`, rounded up.
pub fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() as i64;
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keep_alive_moves_the_deadline_and_expiry_follows() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.insert(1, 10, Duration::from_secs(10), t0);
        t.insert(2, 5, Duration::from_secs(5), t0);
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(4), 10),
            Vec::<i64>::new()
        );
        assert_eq!(t.keep_alive(2, t0 + Duration::from_secs(4)), Some(5));
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(6), 10),
            Vec::<i64>::new()
        );
        assert_eq!(t.remaining(2, t0 + Duration::from_secs(6)), Some((5, 3)));
        // Earliest deadline first: lease 2 (kept alive until 9 s), then lease 1 (10 s).
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(10), 10), vec![2, 1]);
        // Expired: keep-alive refused, retried after the interval, gone once removed.
        assert_eq!(t.keep_alive(1, t0 + Duration::from_secs(10)), None);
        assert!(t.pop_expired(t0 + Duration::from_secs(11), 10).is_empty());
        let retry = t0 + Duration::from_secs(10) + REVOKE_RETRY_INTERVAL;
        assert_eq!(t.pop_expired(retry, 10), vec![1, 2]);
        assert!(t.remove(1));
        assert!(!t.remove(1));
        assert_eq!(t.pop_expired(retry + REVOKE_RETRY_INTERVAL, 10), vec![2]);
    }

    #[test]
    fn insert_of_a_held_id_keeps_the_running_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.insert(7, 10, Duration::from_secs(2), t0);
        t.insert(7, 10, Duration::from_secs(10), t0);
        assert_eq!(t.remaining(7, t0), Some((10, 2)));
    }

    #[test]
    fn heap_stays_bounded_under_churn() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        for round in 0..20_000i64 {
            t.insert(round, 60, Duration::from_secs(60), t0);
            t.remove(round);
        }
        assert!(
            t.heap.len() <= 2 * t.len() + HEAP_SLACK + 1,
            "{}",
            t.heap.len()
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i64, i64),
        Remove(i64),
        KeepAlive(i64),
        Advance(u64),
        Pop(usize),
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..12i64, 1..6i64).prop_map(|(id, ttl)| Op::Insert(id, ttl)),
            (0..12i64).prop_map(Op::Remove),
            (0..12i64).prop_map(Op::KeepAlive),
            (0..4000u64).prop_map(Op::Advance),
            (1..5usize).prop_map(Op::Pop),
            Just(Op::Compact),
        ]
    }

    /// The naive model: a map scanned in full on every pop.
    #[derive(Clone, Copy, Debug)]
    struct Model {
        ttl: i64,
        deadline: Instant,
        /// When the next revoke of an expired lease is due.
        retry_at: Option<Instant>,
    }

    proptest! {
        #[test]
        fn matches_a_naive_model(ops in proptest::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = LeaseTable::new();
            let mut m: HashMap<i64, Model> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(id, ttl) => {
                        t.insert(id, ttl, ttl_duration(ttl), now);
                        m.entry(id).or_insert(Model { ttl, deadline: now + ttl_duration(ttl), retry_at: None });
                    }
                    Op::Remove(id) => {
                        prop_assert_eq!(t.remove(id), m.remove(&id).is_some());
                    }
                    Op::KeepAlive(id) => {
                        let expect = match m.get_mut(&id) {
                            Some(e) if e.retry_at.is_none() && e.deadline > now => {
                                e.deadline = now + ttl_duration(e.ttl);
                                Some(e.ttl)
                            }
                            _ => None,
                        };
                        prop_assert_eq!(t.keep_alive(id, now), expect);
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Pop(max) => {
                        let mut got = t.pop_expired(now, max);
                        // Every lease due in the model: expired and not yet revoking, or a
                        // revoke whose retry time came.
                        let mut due: Vec<i64> = m
                            .iter()
                            .filter(|(_, e)| match e.retry_at {
                                None => e.deadline <= now,
                                Some(r) => r <= now,
                            })
                            .map(|(&id, _)| id)
                            .collect();
                        due.sort();
                        got.sort();
                        prop_assert!(got.len() <= max);
                        if due.len() <= max {
                            prop_assert_eq!(&got, &due);
                        } else {
                            prop_assert_eq!(got.len(), max);
                            prop_assert!(got.iter().all(|id| due.contains(id)));
                        }
                        for id in got {
                            m.get_mut(&id).unwrap().retry_at = Some(now + REVOKE_RETRY_INTERVAL);
                        }
                    }
                    Op::Compact => t.compact_heap(),
                }
                prop_assert_eq!(t.len(), m.len());
                for (&id, e) in &m {
                    let remaining = ceil_secs(e.deadline.saturating_duration_since(now));
                    prop_assert_eq!(t.remaining(id, now), Some((e.ttl, remaining)));
                }
            }
        }
    }
}
