//! The raft log as raft-rs sees it: the unreleased tail of the WAL, kept in memory.
//!
//! Every entry and hard state is written to the WAL (durable) before it is added here; on
//! start the WAL's records are replayed into a fresh [`LogStore`]. Entries at or below the
//! backend's durable applied index are dropped ([`LogStore::compact`]) so memory is bounded
//! by the unapplied tail.

use std::collections::VecDeque;

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::wal::Record;

/// In-memory raft log: hard state, conf state, and entries after the compaction point.
#[derive(Debug)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entries at or below this index were compacted away (covered by the backend).
    snapshot_index: u64,
    /// Term of the entry at `snapshot_index`.
    snapshot_term: u64,
    /// Entries `snapshot_index + 1 ..`, contiguous.
    entries: VecDeque<Entry>,
    /// Cluster and member id found in the log, if any.
    metadata: Option<(u64, u64)>,
    /// During replay: the entries jumped past a gap, so `snapshot_index` was moved to just
    /// before the gap with its term still unknown; a later snapshot marker must cover it.
    gap_pending: bool,
}

impl LogStore {
    /// An empty log for a cluster whose only voter is `member_id`.
    pub fn new(member_id: u64) -> LogStore {
        let conf_state = ConfState {
            voters: vec![member_id],
            ..ConfState::default()
        };
        LogStore {
            hard_state: HardState::default(),
            conf_state,
            snapshot_index: 0,
            snapshot_term: 0,
            entries: VecDeque::new(),
            metadata: None,
            gap_pending: false,
        }
    }

    /// Applies one record replayed from the WAL, in log order.
    ///
    /// Released segments can leave a gap before the first replayed entries: the snapshot
    /// marker carried to the start of the oldest kept segment may predate the last release,
    /// whose own marker (covering everything released) was appended after entries that
    /// follow it. So a gap moves the compaction point to just before it, and the later
    /// marker then supplies its term; [`LogStore::finish_recovery`] refuses a gap that no
    /// marker covered (lost entries).
    pub fn recover(&mut self, record: Record) {
        match record {
            Record::Entry { index, term, data } => {
                if index <= self.snapshot_index {
                    return; // covered by a later-written snapshot marker's state
                }
                if index > self.last() + 1 {
                    self.entries.clear();
                    self.snapshot_index = index - 1;
                    self.snapshot_term = 0;
                    self.gap_pending = true;
                }
                let e = Entry {
                    index,
                    term,
                    data: data.into(),
                    ..Entry::default()
                };
                self.append(&[e]);
            }
            Record::HardState { term, vote, commit } => {
                self.hard_state.term = term;
                self.hard_state.vote = vote;
                self.hard_state.commit = commit;
            }
            Record::Snapshot { index, term } => {
                if index > self.snapshot_index {
                    self.compact_to(index, term);
                    self.gap_pending = false;
                } else if index == self.snapshot_index && self.gap_pending {
                    self.snapshot_term = term;
                    self.gap_pending = false;
                }
            }
            Record::Metadata {
                cluster_id,
                member_id,
            } => self.metadata = Some((cluster_id, member_id)),
        }
    }

    /// Checks the replayed log after the last record: a gap in the entries that no snapshot
    /// marker covers means the WAL lost entries.
    pub fn finish_recovery(&self) -> Result<(), String> {
        if self.gap_pending {
            return Err(format!(
                "the WAL has no entries before index {} and no snapshot marker covering them: entries were lost",
                self.snapshot_index + 1
            ));
        }
        Ok(())
    }

    /// The (cluster id, member id) recorded in the log, if any.
    pub fn metadata(&self) -> Option<(u64, u64)> {
        self.metadata
    }

    /// Appends entries, first removing any existing entries they conflict with (raft's log
    /// matching: a new entry at index i replaces i and everything after it).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            first.index > self.snapshot_index,
            "appending entry {} at or below the compaction point {}",
            first.index,
            self.snapshot_index
        );
        let keep = (first.index - self.snapshot_index - 1) as usize;
        assert!(
            keep <= self.entries.len(),
            "log gap: appending {} after last index {}",
            first.index,
            self.last()
        );
        self.entries.truncate(keep);
        for e in ents {
            debug_assert_eq!(e.index, self.last() + 1, "appended entries are contiguous");
            self.entries.push_back(e.clone());
        }
    }

    /// Sets the hard state (after it is durable).
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.hard_state = hs.clone();
    }

    /// Raises the commit index (from raft's light ready).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Makes sure commit covers `applied` (applied entries were committed, but the commit
    /// index is persisted lazily and may lag after a restart).
    pub fn ensure_commit_at_least(&mut self, applied: u64) {
        if self.hard_state.commit < applied {
            self.hard_state.commit = applied;
        }
    }

    /// Drops entries at or below `index` (which must be applied and durable in the backend).
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        let term = self.term_of(index).expect("compacting within the log");
        self.compact_to(index, term);
    }

    fn compact_to(&mut self, index: u64, term: u64) {
        let drop = index
            .saturating_sub(self.snapshot_index)
            .min(self.entries.len() as u64);
        self.entries.drain(..drop as usize);
        if self.entries.front().is_some_and(|e| e.index != index + 1) {
            // A marker beyond our entries: nothing older survives.
            self.entries.clear();
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// First index that may hold an entry (one past the compaction point).
    pub fn first(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// Last index in the log (the compaction point if it holds no entries).
    pub fn last(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_index, |e| e.index)
    }

    /// Term of the entry at `index`, if it is known.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return None;
        }
        self.entries
            .get((index - self.snapshot_index - 1) as usize)
            .map(|e| e.term)
    }

    /// Number of entries held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held in memory.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "entries [{low}, {high}) beyond last index {}",
            self.last()
        );
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let e = &self.entries[(index - self.snapshot_index - 1) as usize];
            size += (e.data.len() + e.context.len() + 16) as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if idx < self.snapshot_index {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(::raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        // Only a single voter exists until the cluster issue adds peers and snapshot shipping.
        Err(::raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Entry::default()
        }
    }

    #[test]
    fn append_replaces_conflicting_suffix() {
        let mut s = LogStore::new(1);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        s.append(&[entry(2, 2)]);
        assert_eq!(s.last(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(
            s.entries(1, 3, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let mut s = LogStore::new(1);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
        s.compact(2);
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(s.term(1).is_err());
        assert!(s
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(
            s.entries(3, 4, None, GetEntriesContext::empty(false))
                .unwrap()[0]
                .index,
            3
        );
    }

    #[test]
    fn recovery_applies_markers_and_the_latest_hard_state() {
        let mut s = LogStore::new(1);
        s.recover(Record::Metadata {
            cluster_id: 9,
            member_id: 1,
        });
        for i in 1..=5 {
            s.recover(Record::Entry {
                index: i,
                term: 1,
                data: vec![],
            });
        }
        s.recover(Record::HardState {
            term: 1,
            vote: 1,
            commit: 3,
        });
        s.recover(Record::Snapshot { index: 4, term: 1 });
        // Replayed twice (state records repeat at segment starts): no effect.
        s.recover(Record::Snapshot { index: 4, term: 1 });
        s.recover(Record::HardState {
            term: 1,
            vote: 1,
            commit: 5,
        });
        assert_eq!(s.metadata(), Some((9, 1)));
        assert_eq!(s.first_index().unwrap(), 5);
        assert_eq!(s.last(), 5);
        assert_eq!(s.hard_state().commit, 5);
    }

    fn replay_entries(s: &mut LogStore, indexes: std::ops::RangeInclusive<u64>, term: u64) {
        for index in indexes {
            s.recover(Record::Entry {
                index,
                term,
                data: vec![],
            });
        }
    }

    /// The oldest kept segment starts with a stale carried-over marker (100) and then entries
    /// after a released gap (151..); the marker of that release (150) comes later in the log.
    #[test]
    fn recovery_accepts_a_released_gap_covered_by_a_later_marker() {
        let mut s = LogStore::new(1);
        s.recover(Record::Snapshot {
            index: 100,
            term: 1,
        });
        replay_entries(&mut s, 151..=160, 2);
        s.recover(Record::Snapshot {
            index: 150,
            term: 2,
        });
        replay_entries(&mut s, 161..=170, 2);
        s.finish_recovery().unwrap();
        assert_eq!(s.first_index().unwrap(), 151);
        assert_eq!(s.last(), 170);
        assert_eq!(s.term(150).unwrap(), 2);
        assert_eq!(s.term(160).unwrap(), 2);

        // A later marker beyond the gap point also covers it.
        let mut s = LogStore::new(1);
        s.recover(Record::Snapshot {
            index: 100,
            term: 1,
        });
        replay_entries(&mut s, 151..=160, 2);
        s.recover(Record::Snapshot {
            index: 155,
            term: 2,
        });
        s.finish_recovery().unwrap();
        assert_eq!((s.first_index().unwrap(), s.last()), (156, 160));
    }

    #[test]
    fn recovery_refuses_a_gap_no_marker_covers() {
        let mut s = LogStore::new(1);
        s.recover(Record::Snapshot {
            index: 100,
            term: 1,
        });
        replay_entries(&mut s, 101..=120, 1);
        replay_entries(&mut s, 131..=140, 1);
        let err = s.finish_recovery().unwrap_err();
        assert!(err.contains("before index 131"), "{err}");
    }
}
