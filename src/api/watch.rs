//! Wire conversions of the Watch section of `schema/rpc.capnp`.

use super::{read_header, read_key_value, write_header, write_key_value, Header};
use crate::generated::rpc_capnp as wire;
use crate::mvcc::{EventKind, KeyValue};
use crate::watch::hub::{CreateRequest, Outgoing};

fn not_in_schema(what: &str, e: capnp::NotInSchema) -> capnp::Error {
    capnp::Error::failed(format!("{what}: value {} is not in the schema", e.0))
}

/// Reads a watch create request.
pub fn read_create_request(
    r: wire::watch_create_request::Reader<'_>,
) -> capnp::Result<CreateRequest> {
    let mut req = CreateRequest {
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        start_revision: r.get_start_revision(),
        progress_notify: r.get_progress_notify(),
        prev_kv: r.get_prev_kv(),
        watch_id: r.get_watch_id(),
        fragment: r.get_fragment(),
        ..CreateRequest::default()
    };
    for f in r.get_filters()?.iter() {
        match f.map_err(|e| not_in_schema("watch filter", e))? {
            wire::WatchFilter::NoPut => req.no_put = true,
            wire::WatchFilter::NoDelete => req.no_delete = true,
        }
    }
    Ok(req)
}

/// Writes a watch create request.
pub fn write_create_request(q: &CreateRequest, mut b: wire::watch_create_request::Builder<'_>) {
    b.set_key(&q.key);
    b.set_range_end(&q.range_end);
    b.set_start_revision(q.start_revision);
    b.set_progress_notify(q.progress_notify);
    b.set_prev_kv(q.prev_kv);
    b.set_watch_id(q.watch_id);
    b.set_fragment(q.fragment);
    let filters: Vec<wire::WatchFilter> = [
        (q.no_put, wire::WatchFilter::NoPut),
        (q.no_delete, wire::WatchFilter::NoDelete),
    ]
    .into_iter()
    .filter_map(|(on, f)| on.then_some(f))
    .collect();
    let mut list = b.init_filters(filters.len() as u32);
    for (i, f) in filters.into_iter().enumerate() {
        list.set(i as u32, f);
    }
}

/// Writes a server response; `header` supplies the ids and term (its revision is replaced by
/// the response's own).
pub fn write_outgoing(out: &Outgoing, header: Header, mut b: wire::watch_response::Builder<'_>) {
    let mut h = header;
    match out {
        Outgoing::Created { watch_id, revision } => {
            h.revision = *revision;
            b.set_watch_id(*watch_id);
            b.set_created(true);
        }
        Outgoing::Canceled {
            watch_id,
            revision,
            compact_revision,
            reason,
        } => {
            h.revision = *revision;
            b.set_watch_id(*watch_id);
            b.set_canceled(true);
            b.set_compact_revision(*compact_revision);
            b.set_cancel_reason(reason.as_str());
        }
        Outgoing::Progress { watch_id, revision } => {
            h.revision = *revision;
            b.set_watch_id(*watch_id);
        }
        Outgoing::Events {
            watch_id,
            more_ids,
            revision,
            fragment,
            source,
            events,
            prev_kvs,
        } => {
            h.revision = *revision;
            b.set_watch_id(*watch_id);
            b.set_fragment(*fragment);
            if !more_ids.is_empty() {
                let mut ids = b.reborrow().init_more_watch_ids(more_ids.len() as u32);
                for (i, &id) in more_ids.iter().enumerate() {
                    ids.set(i as u32, id);
                }
            }
            let mut list = b.reborrow().init_events(events.len() as u32);
            for (i, &e) in events.iter().enumerate() {
                let ev = &source.events[e as usize];
                let mut eb = list.reborrow().get(i as u32);
                eb.set_type(match ev.kind {
                    EventKind::Put => wire::WatchEventType::Put,
                    EventKind::Delete => wire::WatchEventType::Delete,
                });
                write_key_value(&ev.kv, eb.reborrow().init_kv());
                if let Some(Some(prev)) = prev_kvs.as_ref().map(|p| &p[i]) {
                    eb.set_has_prev_kv(true);
                    write_key_value(prev, eb.init_prev_kv());
                }
            }
        }
    }
    write_header(&h, b.init_header());
}

/// One event as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the event (a delete: key and mod revision only).
    pub kv: KeyValue,
    /// The previous version, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's WatchResponse as a client sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// Header (revision: see `schema/rpc.capnp`).
    pub header: Header,
    /// The watcher, or -1 for a stream-wide progress response.
    pub watch_id: i64,
    /// The watcher was created.
    pub created: bool,
    /// The watcher is gone.
    pub canceled: bool,
    /// Set with `canceled` when the start revision was compacted.
    pub compact_revision: i64,
    /// Why it was canceled.
    pub cancel_reason: String,
    /// More fragments of the same revision follow.
    pub fragment: bool,
    /// Events, in revision order.
    pub events: Vec<WatchEvent>,
}

impl WatchResponse {
    /// Whether this is a progress notification (no events, not created/canceled).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled && !self.fragment
    }
}

/// Reads a watch response and hands `each` one copy per watcher it is for: itself, then one
/// per id in `moreWatchIds` (with that id), in order.
pub fn read_watch_response_copies(
    r: wire::watch_response::Reader<'_>,
    mut each: impl FnMut(WatchResponse),
) -> capnp::Result<()> {
    let more: Vec<i64> = r.get_more_watch_ids()?.iter().collect();
    let first = read_watch_response(r)?;
    let Some((&last, middle)) = more.split_last() else {
        each(first);
        return Ok(());
    };
    each(first.clone());
    for &id in middle {
        each(WatchResponse {
            watch_id: id,
            ..first.clone()
        });
    }
    each(WatchResponse {
        watch_id: last,
        ..first
    });
    Ok(())
}

/// Reads a watch response (the copies for `moreWatchIds` are not made: see
/// [`read_watch_response_copies`]).
pub fn read_watch_response(r: wire::watch_response::Reader<'_>) -> capnp::Result<WatchResponse> {
    let mut events = Vec::new();
    for e in r.get_events()?.iter() {
        let kind = match e.get_type().map_err(|x| not_in_schema("event type", x))? {
            wire::WatchEventType::Put => EventKind::Put,
            wire::WatchEventType::Delete => EventKind::Delete,
        };
        events.push(WatchEvent {
            kind,
            kv: read_key_value(e.get_kv()?)?,
            prev_kv: if e.get_has_prev_kv() {
                Some(read_key_value(e.get_prev_kv()?)?)
            } else {
                None
            },
        });
    }
    Ok(WatchResponse {
        header: read_header(r.get_header()?),
        watch_id: r.get_watch_id(),
        created: r.get_created(),
        canceled: r.get_canceled(),
        compact_revision: r.get_compact_revision(),
        cancel_reason: r
            .get_cancel_reason()?
            .to_string()
            .map_err(|e| capnp::Error::failed(format!("cancel reason: {e}")))?,
        fragment: r.get_fragment(),
        events,
    })
}
