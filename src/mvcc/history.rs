//! Reading the `history` tree for watch catch-up: the events of whole revisions, in order,
//! with their key-values resolved from the `kv` tree of the same snapshot.
//!
//! A chunk never ends inside a revision (etcd's atomicity: one revision's events go out
//! together), so a chunk may exceed `max_events` by the rest of its last revision; one
//! revision is bounded by `store::MAX_CHANGES_PER_REQUEST`.

use std::ops::Bound;

use super::encoding::{history_key, split_history_key, split_history_value, HISTORY_TREE};
use super::read::{latest, to_key_value, KvView, SnapshotView};
use super::types::{Event, EventKind, KeyValue, Result, Revision};
use crate::backend::ReadTxn;

/// One chunk of history: the events of revisions `from..next`, in revision order.
#[derive(Debug, Default)]
pub struct HistoryChunk {
    /// Events whose key `wanted` accepted, in (revision, sub) order.
    pub events: Vec<Event>,
    /// The first revision not covered by this chunk (`to + 1` once the history up to `to`
    /// was read completely).
    pub next: Revision,
}

/// Reads the events of revisions `from..=to` from `txn`'s `history` tree, stopping after the
/// revision during which `max_events` history entries were reached. Only events whose key and
/// kind `wanted` accepts are resolved (one `kv` lookup each) and returned.
pub fn read_history(
    txn: &ReadTxn,
    from: Revision,
    to: Revision,
    max_events: usize,
    mut wanted: impl FnMut(EventKind, &[u8]) -> bool,
) -> Result<HistoryChunk> {
    debug_assert!(from >= 1 && max_events >= 1);
    let mut chunk = HistoryChunk {
        events: Vec::new(),
        next: to + 1,
    };
    if from > to {
        chunk.next = from;
        return Ok(chunk);
    }
    let Some(history) = txn.tree(HISTORY_TREE)? else {
        return Ok(chunk);
    };
    let mut view = SnapshotView::new(txn)?;
    let start = history_key(from, 0);
    let end = history_key(to + 1, 0);
    let mut last_rev: Revision = 0;
    let entries = history.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))?;
    for (seen, entry) in entries.enumerate() {
        let (k, v) = entry?;
        let (rev, _) = split_history_key(k)?;
        if seen >= max_events && rev != last_rev {
            chunk.next = rev;
            return Ok(chunk);
        }
        last_rev = rev;
        let (kind, key) = split_history_value(v)?;
        if !wanted(kind, key) {
            continue;
        }
        let kv = match kind {
            EventKind::Delete => KeyValue {
                key: key.to_vec(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            EventKind::Put => match latest(&mut view, key, rev)? {
                Some((mod_rev, record)) if mod_rev == rev => to_key_value(key, rev, &record, true)?,
                other => {
                    return Err(super::types::Error::new(
                        super::types::ErrorCode::Internal,
                        format!(
                            "corrupt MVCC data: history has a put of {:?} at revision {rev} but kv has {:?}",
                            String::from_utf8_lossy(key),
                            other.map(|(r, _)| r)
                        ),
                    ))
                }
            },
        };
        chunk.events.push(Event { kind, kv });
    }
    Ok(chunk)
}

/// The version of `key` visible at `rev` (etcd's prev_kv of an event at `rev + 1`), or None
/// if the key did not exist then or that version has been compacted away.
pub fn version_at(view: &mut impl KvView, key: &[u8], rev: Revision) -> Result<Option<KeyValue>> {
    if rev <= 0 {
        return Ok(None);
    }
    latest(view, key, rev)?
        .map(|(mod_rev, record)| to_key_value(key, mod_rev, &record, true))
        .transpose()
}
