//! `corekvctl watch KEY [RANGE_END] [--prefix] [--rev N] [--prev-kv] [--progress-notify]`:
//! prints events until interrupted, as etcdctl does.
//!
//! Simple format, per event: the type (`PUT` / `DELETE`), then with `--prev-kv` the previous
//! key and value (if any), then the key and value. A progress notification prints
//! `progress notify: REV`. `-w json`: one line per response with etcdctl's field names
//! (`Header`, `Events`, `CompactRevision`, `Canceled`, `Created`). A cancel by the server
//! (e.g. a compacted `--rev`) prints `watch was canceled (REASON)` on stderr and exits 1.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::Args;
use corekv::client::txn::prefix_end;
use corekv::client::watch::{WatchRequest, WatchResponse};
use corekv::client::Client;
use corekv::mvcc::{EventKind, KeyValue};
use serde_json::{json, Map, Value};

use crate::output::{self, Format, SimpleOptions};
use crate::{exit, Failure};

/// Flags of `watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The key (with --prefix, the prefix; "" with --prefix means every key).
    pub key: OsString,
    /// End of the range [key, range_end).
    pub range_end: Option<OsString>,
    /// Watch every key with this prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Revision to start watching from (0: from now).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub rev: i64,
    /// Print the previous key-value before each event's key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Ask for periodic progress notifications.
    #[arg(long)]
    pub progress_notify: bool,
}

/// The watch request of `args`.
pub fn watch_request(args: &WatchArgs) -> Result<WatchRequest, Failure> {
    let bad = |m: &str| Failure::new(exit::BAD_ARGS, m.to_string());
    if args.rev < 0 {
        return Err(bad("--rev must not be negative"));
    }
    let key = args.key.clone().into_vec();
    let (key, range_end) = match (&args.range_end, args.prefix) {
        (Some(_), true) => {
            return Err(bad(
                "watch: too many arguments, only accept one argument when `--prefix` is set",
            ))
        }
        (Some(end), false) => (key, end.clone().into_vec()),
        (None, true) if key.is_empty() => (vec![0], vec![0]),
        (None, true) => {
            let end = prefix_end(&key);
            (key, end)
        }
        (None, false) => (key, Vec::new()),
    };
    if key.is_empty() {
        return Err(bad("watch: key is required"));
    }
    Ok(WatchRequest {
        key,
        range_end,
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        progress_notify: args.progress_notify,
        ..WatchRequest::default()
    })
}

fn push_line(out: &mut Vec<u8>, bytes: &[u8], hex: bool) {
    if hex {
        for b in bytes {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'\n');
}

fn simple_kv(out: &mut Vec<u8>, kv: &KeyValue, o: SimpleOptions) {
    push_line(out, &kv.key, o.hex);
    push_line(out, &kv.value, o.hex);
}

/// One response in the simple format (etcdctl's printer).
pub fn simple_watch(r: &WatchResponse, o: SimpleOptions) -> Vec<u8> {
    let mut out = Vec::new();
    if r.is_progress_notify() && !r.created {
        out.extend_from_slice(format!("progress notify: {}\n", r.header.revision).as_bytes());
    }
    for e in &r.events {
        out.extend_from_slice(match e.kind {
            EventKind::Put => b"PUT\n".as_slice(),
            EventKind::Delete => b"DELETE\n".as_slice(),
        });
        if let Some(prev) = &e.prev_kv {
            simple_kv(&mut out, prev, o);
        }
        simple_kv(&mut out, &e.kv, o);
    }
    out
}

/// One response as etcdctl's JSON printer writes clientv3's WatchResponse.
pub fn json_watch(r: &WatchResponse) -> Value {
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            let mut m = Map::new();
            if e.kind == EventKind::Delete {
                m.insert("type".into(), json!(1));
            }
            m.insert("kv".into(), output::json_kv(&e.kv));
            if let Some(prev) = &e.prev_kv {
                m.insert("prev_kv".into(), output::json_kv(prev));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "Header": output::json_header(&r.header),
        "Events": if events.is_empty() { Value::Null } else { Value::Array(events) },
        "CompactRevision": r.compact_revision,
        "Canceled": r.canceled,
        "Created": r.created,
    })
}

/// Watches until the stream ends (interrupted, or the connection is lost: exit 1).
pub async fn run(
    client: &Client,
    req: WatchRequest,
    format: Format,
    simple: SimpleOptions,
) -> Result<(), Failure> {
    let mut stream = client
        .watch_stream()
        .await
        .map_err(|e| Failure::new(exit::ERROR, e.to_string()))?;
    stream
        .create(req)
        .await
        .map_err(|e| Failure::new(exit::ERROR, e.to_string()))?;
    while let Some(r) = stream.next().await {
        let r = r.map_err(|e| Failure::new(exit::ERROR, e.to_string()))?;
        if r.canceled {
            let reason = if r.compact_revision > 0 {
                format!(
                    "etcdserver: mvcc: required revision has been compacted (compacted revision {})",
                    r.compact_revision
                )
            } else {
                r.cancel_reason.clone()
            };
            return Err(Failure::new(
                exit::ERROR,
                format!("watch was canceled ({reason})"),
            ));
        }
        if r.created {
            continue; // etcdctl prints nothing for the creation
        }
        let out = match format {
            Format::Json => output::json_line(&json_watch(&r)),
            _ => simple_watch(&r, simple),
        };
        crate::write_stdout(&out)?;
    }
    Err(Failure::new(
        exit::ERROR,
        "watch stream closed: connection lost",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv::client::watch::WatchEvent;

    fn kv(k: &str, v: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
            mod_revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn prints_like_etcdctl() {
        let r = WatchResponse {
            events: vec![
                WatchEvent {
                    kind: EventKind::Put,
                    kv: kv("foo", "bar", 5),
                    prev_kv: Some(kv("foo", "old", 4)),
                },
                WatchEvent {
                    kind: EventKind::Delete,
                    kv: kv("foo", "", 6),
                    prev_kv: None,
                },
            ],
            ..Default::default()
        };
        let o = SimpleOptions {
            hex: false,
            value_only: false,
        };
        assert_eq!(
            String::from_utf8(simple_watch(&r, o)).unwrap(),
            "PUT\nfoo\nold\nfoo\nbar\nDELETE\nfoo\n\n"
        );
        let j = json_watch(&r);
        assert_eq!(j["Events"][1]["type"], json!(1));
        assert!(j["Events"][0].get("type").is_none());
        let mut p = WatchResponse::default();
        p.header.revision = 9;
        assert_eq!(
            String::from_utf8(simple_watch(&p, o)).unwrap(),
            "progress notify: 9\n"
        );
    }

    #[test]
    fn prefix_and_range_arguments() {
        let args = WatchArgs {
            key: "a".into(),
            range_end: None,
            prefix: true,
            rev: 3,
            prev_kv: true,
            progress_notify: false,
        };
        let r = watch_request(&args).unwrap();
        assert_eq!(
            (r.key, r.range_end, r.start_revision),
            (b"a".to_vec(), b"b".to_vec(), 3)
        );
        let both = WatchArgs {
            range_end: Some("z".into()),
            ..args.clone()
        };
        assert_eq!(watch_request(&both).unwrap_err().code, exit::BAD_ARGS);
        let all = WatchArgs {
            key: "".into(),
            ..args
        };
        let r = watch_request(&all).unwrap();
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]));
    }
}
