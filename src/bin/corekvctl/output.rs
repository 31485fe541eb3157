//! Rendering of responses in etcdctl v3's output formats (`-w simple|json|table`).
//!
//! Every renderer returns the bytes to write, so the formats can be unit-tested and the caller
//! decides how to report a failed write. Keys and values are raw bytes: the simple format
//! writes them unchanged (or `\xNN`-escaped with `--hex`), the JSON format base64-encodes them
//! as Go's `encoding/json` does for etcd's `[]byte` fields.

use std::time::Duration;

use corekv::api::Header;
use corekv::client::Status;
use corekv::mvcc::{
    DeleteRangeResponse, KeyValue, PutResponse, RangeResponse, ResponseOp, TxnResponse,
};
use serde_json::{json, Map, Value};

/// The output format chosen with `-w/--write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's human-readable lines.
    Simple,
    /// One JSON document per command, with etcd's field names.
    Json,
    /// An ASCII table (endpoint commands only, as in etcdctl).
    Table,
}

/// Options of the simple format.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimpleOptions {
    /// Print keys and values as `\xNN` escapes (`--hex`).
    pub hex: bool,
    /// Print only values (`get --print-value-only`).
    pub value_only: bool,
}

/// One endpoint's status, as `endpoint status` reports it.
pub struct EndpointStatus {
    /// The endpoint as the user wrote it.
    pub endpoint: String,
    /// What the member answered.
    pub status: Status,
}

/// One endpoint's health, as `endpoint health` reports it.
pub struct EndpointHealth {
    /// The endpoint as the user wrote it.
    pub endpoint: String,
    /// Whether the linearizable read succeeded and no alarm is active.
    pub healthy: bool,
    /// How long the check took.
    pub took: Duration,
    /// Why it is unhealthy (empty when healthy).
    pub error: String,
}

// ---------------------------------------------------------------------------------------------
// simple

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
    if !o.value_only {
        push_line(out, &kv.key, o.hex);
    }
    push_line(out, &kv.value, o.hex);
}

/// `get` in the simple format: key line then value line per key (value only with
/// `--print-value-only`); with `--count-only`, the count alone.
pub fn simple_get(resp: &RangeResponse, count_only: bool, o: SimpleOptions) -> Vec<u8> {
    let mut out = Vec::new();
    if count_only {
        out.extend_from_slice(format!("{}\n", resp.count).as_bytes());
        return out;
    }
    for kv in &resp.kvs {
        simple_kv(&mut out, kv, o);
    }
    out
}

/// `put` in the simple format: `OK`, then the previous key/value with `--prev-kv`.
pub fn simple_put(resp: &PutResponse, o: SimpleOptions) -> Vec<u8> {
    let mut out = b"OK\n".to_vec();
    if let Some(kv) = &resp.prev_kv {
        simple_kv(&mut out, kv, o);
    }
    out
}

/// `del` in the simple format: the number deleted, then the deleted pairs with `--prev-kv`.
pub fn simple_del(resp: &DeleteRangeResponse, o: SimpleOptions) -> Vec<u8> {
    let mut out = format!("{}\n", resp.deleted).into_bytes();
    for kv in &resp.prev_kvs {
        simple_kv(&mut out, kv, o);
    }
    out
}

/// `txn` in the simple format: `SUCCESS` or `FAILURE`, then a blank line and the simple
/// rendering of each response of the branch taken.
pub fn simple_txn(resp: &TxnResponse, o: SimpleOptions) -> Vec<u8> {
    let mut out = if resp.succeeded {
        b"SUCCESS\n".to_vec()
    } else {
        b"FAILURE\n".to_vec()
    };
    for r in &resp.responses {
        out.push(b'\n');
        match r {
            ResponseOp::Range(r) => out.extend(simple_get(r, false, o)),
            ResponseOp::Put(r) => out.extend(simple_put(r, o)),
            ResponseOp::DeleteRange(r) => out.extend(simple_del(r, o)),
            // The txn syntax cannot express nested transactions, but render one fully anyway.
            ResponseOp::Txn(r) => out.extend(simple_txn(r, o)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// json (etcd's protobuf structs through Go's encoding/json: snake_case fields, omitempty)

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (how Go's encoding/json writes `[]byte`).
pub fn base64(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn put_nonzero_i64(m: &mut Map<String, Value>, name: &str, v: i64) {
    if v != 0 {
        m.insert(name.into(), json!(v));
    }
}

fn put_nonzero_u64(m: &mut Map<String, Value>, name: &str, v: u64) {
    if v != 0 {
        m.insert(name.into(), json!(v));
    }
}

fn put_true(m: &mut Map<String, Value>, name: &str, v: bool) {
    if v {
        m.insert(name.into(), json!(true));
    }
}

/// etcd's `ResponseHeader`.
pub fn json_header(h: &Header) -> Value {
    let mut m = Map::new();
    put_nonzero_u64(&mut m, "cluster_id", h.cluster_id);
    put_nonzero_u64(&mut m, "member_id", h.member_id);
    put_nonzero_i64(&mut m, "revision", h.revision);
    put_nonzero_u64(&mut m, "raft_term", h.raft_term);
    Value::Object(m)
}

/// etcd's `mvccpb.KeyValue`.
pub fn json_kv(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    if !kv.key.is_empty() {
        m.insert("key".into(), json!(base64(&kv.key)));
    }
    put_nonzero_i64(&mut m, "create_revision", kv.create_revision);
    put_nonzero_i64(&mut m, "mod_revision", kv.mod_revision);
    put_nonzero_i64(&mut m, "version", kv.version);
    if !kv.value.is_empty() {
        m.insert("value".into(), json!(base64(&kv.value)));
    }
    put_nonzero_i64(&mut m, "lease", kv.lease);
    Value::Object(m)
}

fn json_kvs(m: &mut Map<String, Value>, name: &str, kvs: &[KeyValue]) {
    if !kvs.is_empty() {
        m.insert(name.into(), Value::Array(kvs.iter().map(json_kv).collect()));
    }
}

/// etcd's `RangeResponse`.
pub fn json_range(r: &RangeResponse, h: &Header) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), json_header(h));
    json_kvs(&mut m, "kvs", &r.kvs);
    put_true(&mut m, "more", r.more);
    put_nonzero_i64(&mut m, "count", r.count);
    Value::Object(m)
}

/// etcd's `PutResponse`.
pub fn json_put(r: &PutResponse, h: &Header) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), json_header(h));
    if let Some(kv) = &r.prev_kv {
        m.insert("prev_kv".into(), json_kv(kv));
    }
    Value::Object(m)
}

/// etcd's `DeleteRangeResponse`.
pub fn json_del(r: &DeleteRangeResponse, h: &Header) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), json_header(h));
    put_nonzero_i64(&mut m, "deleted", r.deleted);
    json_kvs(&mut m, "prev_kvs", &r.prev_kvs);
    Value::Object(m)
}

/// etcd's `TxnResponse`; each op response is wrapped as Go marshals a protobuf oneof:
/// `{"Response":{"response_put":{..}}}`. Inner responses carry a header with the
/// transaction's revision (etcd fills only the revision of inner headers).
pub fn json_txn(r: &TxnResponse, h: &Header) -> Value {
    let inner = Header {
        revision: h.revision,
        ..Header::default()
    };
    let mut m = Map::new();
    m.insert("header".into(), json_header(h));
    put_true(&mut m, "succeeded", r.succeeded);
    if !r.responses.is_empty() {
        let responses = r
            .responses
            .iter()
            .map(|op| {
                let (name, v) = match op {
                    ResponseOp::Range(x) => ("response_range", json_range(x, &inner)),
                    ResponseOp::Put(x) => ("response_put", json_put(x, &inner)),
                    ResponseOp::DeleteRange(x) => ("response_delete_range", json_del(x, &inner)),
                    ResponseOp::Txn(x) => ("response_txn", json_txn(x, &inner)),
                };
                json!({ "Response": { name: v } })
            })
            .collect();
        m.insert("responses".into(), Value::Array(responses));
    }
    Value::Object(m)
}

/// etcdctl's `endpoint status -w json`: `[{"Endpoint":..,"Status":{..}}]`.
pub fn json_status(list: &[EndpointStatus]) -> Value {
    Value::Array(
        list.iter()
            .map(|e| {
                let s = &e.status;
                let mut m = Map::new();
                m.insert("header".into(), json_header(&s.header));
                if !s.version.is_empty() {
                    m.insert("version".into(), json!(s.version));
                }
                put_nonzero_i64(&mut m, "dbSize", s.db_size);
                put_nonzero_u64(&mut m, "leader", s.leader);
                put_nonzero_u64(&mut m, "raftIndex", s.raft_index);
                put_nonzero_u64(&mut m, "raftTerm", s.raft_term);
                put_nonzero_u64(&mut m, "raftAppliedIndex", s.raft_applied_index);
                if !s.errors.is_empty() {
                    m.insert("errors".into(), json!(s.errors));
                }
                put_nonzero_i64(&mut m, "dbSizeInUse", s.db_size_in_use);
                json!({ "Endpoint": e.endpoint, "Status": Value::Object(m) })
            })
            .collect(),
    )
}

/// etcdctl's `endpoint health -w json`: `[{"endpoint":..,"health":..,"took":..}]`.
pub fn json_health(list: &[EndpointHealth]) -> Value {
    Value::Array(
        list.iter()
            .map(|h| {
                let mut m = Map::new();
                m.insert("endpoint".into(), json!(h.endpoint));
                m.insert("health".into(), json!(h.healthy));
                m.insert("took".into(), json!(go_duration(h.took)));
                if !h.error.is_empty() {
                    m.insert("error".into(), json!(h.error));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// A JSON document as one line, as etcdctl prints it.
pub fn json_line(v: &Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

// ---------------------------------------------------------------------------------------------
// endpoint tables

const STATUS_HEADER: [&str; 10] = [
    "endpoint",
    "ID",
    "version",
    "db size",
    "is leader",
    "is learner",
    "raft term",
    "raft index",
    "raft applied index",
    "errors",
];

fn status_rows(list: &[EndpointStatus]) -> Vec<Vec<String>> {
    list.iter()
        .map(|e| {
            let s = &e.status;
            vec![
                e.endpoint.clone(),
                format!("{:x}", s.header.member_id),
                s.version.clone(),
                human_bytes(s.db_size.max(0) as u64),
                (s.leader == s.header.member_id).to_string(),
                // Learners come with membership changes; a member is never one today.
                "false".to_string(),
                s.raft_term.to_string(),
                s.raft_index.to_string(),
                s.raft_applied_index.to_string(),
                s.errors.join(", "),
            ]
        })
        .collect()
}

const HEALTH_HEADER: [&str; 4] = ["endpoint", "health", "took", "error"];

fn health_rows(list: &[EndpointHealth]) -> Vec<Vec<String>> {
    list.iter()
        .map(|h| {
            vec![
                h.endpoint.clone(),
                h.healthy.to_string(),
                go_duration(h.took),
                h.error.clone(),
            ]
        })
        .collect()
}

/// `endpoint status` in the simple format: one comma-separated line per endpoint.
pub fn simple_status(list: &[EndpointStatus]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in status_rows(list) {
        out.extend_from_slice(row.join(", ").as_bytes());
        out.push(b'\n');
    }
    out
}

/// `endpoint status -w table`.
pub fn table_status(list: &[EndpointStatus]) -> Vec<u8> {
    table(&STATUS_HEADER, &status_rows(list)).into_bytes()
}

/// `endpoint health -w table`.
pub fn table_health(list: &[EndpointHealth]) -> Vec<u8> {
    table(&HEALTH_HEADER, &health_rows(list)).into_bytes()
}

/// An ASCII table in the style etcdctl prints: upper-case centred headers, right-aligned
/// cells, `+---+` borders.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        debug_assert_eq!(row.len(), widths.len(), "row width matches the header");
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut rule = String::from("+");
    for w in &widths {
        rule.push_str(&"-".repeat(w + 2));
        rule.push('+');
    }
    rule.push('\n');
    let mut out = rule.clone();
    out.push('|');
    for (h, w) in header.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&rule);
    for row in rows {
        out.push('|');
        for (cell, w) in row.iter().zip(&widths) {
            let pad = w - cell.chars().count();
            out.push_str(&format!(" {}{} |", " ".repeat(pad), cell));
        }
        out.push('\n');
    }
    if !rows.is_empty() {
        out.push_str(&rule);
    }
    out
}

/// `endpoint health` in the simple format: the healthy lines (for stdout) and the unhealthy
/// ones (for stderr), as etcdctl splits them.
pub fn simple_health(list: &[EndpointHealth]) -> (Vec<u8>, Vec<u8>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for h in list {
        if h.healthy {
            ok.extend_from_slice(
                format!(
                    "{} is healthy: successfully committed proposal: took = {}\n",
                    h.endpoint,
                    go_duration(h.took)
                )
                .as_bytes(),
            );
        } else {
            bad.extend_from_slice(
                format!(
                    "{} is unhealthy: failed to commit proposal: {}\n",
                    h.endpoint, h.error
                )
                .as_bytes(),
            );
        }
    }
    (ok, bad)
}

// ---------------------------------------------------------------------------------------------
// numbers the way etcdctl's Go libraries print them

/// Bytes in SI units as go-humanize's `Bytes` prints them: "8 B", "1.5 kB", "25 MB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let mut e = 0;
    let mut scale = 1f64;
    while e + 1 < UNITS.len() && n as f64 >= scale * 1000.0 {
        scale *= 1000.0;
        e += 1;
    }
    let v = ((n as f64 / scale) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

/// A duration as Go's `time.Duration.String` prints it: "812.345µs", "1.5s", "2m3.004s".
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |value: u128, unit: u128, suffix: &str| -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.ilog10() as usize;
        let s = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", s.trim_end_matches('0'))
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return frac(ns, 1_000, "µs");
    }
    if ns < 1_000_000_000 {
        return frac(ns, 1_000_000, "ms");
    }
    let secs_ns = ns % 60_000_000_000;
    let minutes = ns / 60_000_000_000;
    let (h, m) = (minutes / 60, minutes % 60);
    let mut s = String::new();
    if h > 0 {
        s.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        s.push_str(&format!("{m}m"));
    }
    s.push_str(&frac(secs_ns, 1_000_000_000, "s"));
    s
}

/// Parses a Go duration ("5s", "500ms", "1m30s", "1.5h"): etcdctl's `--command-timeout` and
/// `--dial-timeout` syntax. Refuses zero and negative durations (no request could finish).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why} (examples: 5s, 500ms, 1m30s)");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("must be positive"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    let d = Duration::from_secs_f64(total);
    if d.is_zero() {
        return Err(bad("must be positive"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn simple_formats_follow_etcdctl() {
        let r = RangeResponse {
            kvs: vec![kv("a", "1"), kv("b", "")],
            more: false,
            count: 2,
        };
        let o = SimpleOptions::default();
        assert_eq!(simple_get(&r, false, o), b"a\n1\nb\n\n");
        let vo = SimpleOptions {
            value_only: true,
            ..o
        };
        assert_eq!(simple_get(&r, false, vo), b"1\n\n");
        assert_eq!(simple_get(&r, true, o), b"2\n");
        let hex = SimpleOptions { hex: true, ..o };
        assert_eq!(simple_get(&r, false, hex), b"\\x61\n\\x31\n\\x62\n\n");
        let p = PutResponse {
            prev_kv: Some(kv("a", "0")),
        };
        assert_eq!(simple_put(&p, o), b"OK\na\n0\n");
        let d = DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![kv("a", "1")],
        };
        assert_eq!(simple_del(&d, o), b"1\na\n1\n");
        let t = TxnResponse {
            succeeded: false,
            responses: vec![
                ResponseOp::Put(PutResponse::default()),
                ResponseOp::Range(r.clone()),
            ],
        };
        assert_eq!(simple_txn(&t, o), b"FAILURE\n\nOK\n\na\n1\nb\n\n");
    }

    #[test]
    fn json_omits_zero_fields_like_go() {
        let h = Header {
            cluster_id: 7,
            member_id: 9,
            revision: 4,
            raft_term: 2,
        };
        let r = RangeResponse {
            kvs: vec![kv("k", "v")],
            more: false,
            count: 1,
        };
        assert_eq!(
            json_range(&r, &h).to_string(),
            r#"{"header":{"cluster_id":7,"member_id":9,"revision":4,"raft_term":2},"kvs":[{"key":"aw==","create_revision":2,"mod_revision":3,"version":2,"value":"dg=="}],"count":1}"#
        );
        let empty = RangeResponse::default();
        assert_eq!(
            json_range(&empty, &Header::default()).to_string(),
            r#"{"header":{}}"#
        );
        let t = TxnResponse {
            succeeded: true,
            responses: vec![ResponseOp::DeleteRange(DeleteRangeResponse {
                deleted: 1,
                prev_kvs: vec![],
            })],
        };
        assert_eq!(
            json_txn(&t, &h).to_string(),
            r#"{"header":{"cluster_id":7,"member_id":9,"revision":4,"raft_term":2},"succeeded":true,"responses":[{"Response":{"response_delete_range":{"header":{"revision":4},"deleted":1}}}]}"#
        );
    }

    #[test]
    fn table_aligns_like_tablewriter() {
        let t = table(
            &["endpoint", "is leader"],
            &[vec!["127.0.0.1:1".into(), "true".into()]],
        );
        assert_eq!(
            t,
            "+-------------+-----------+\n\
             |  ENDPOINT   | IS LEADER |\n\
             +-------------+-----------+\n\
             | 127.0.0.1:1 |      true |\n\
             +-------------+-----------+\n"
        );
    }

    #[test]
    fn human_bytes_matches_go_humanize() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(1500), "1.5 kB");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2 << 30), "2.1 GB");
    }

    #[test]
    fn go_durations_format_and_parse() {
        assert_eq!(go_duration(Duration::from_nanos(0)), "0s");
        assert_eq!(go_duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(go_duration(Duration::from_nanos(812_345)), "812.345µs");
        assert_eq!(go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_millis(2_000)), "2s");
        assert_eq!(go_duration(Duration::from_millis(123_004)), "2m3.004s");
        assert_eq!(go_duration(Duration::from_secs(3_600)), "1h0m0s");
        assert_eq!(parse_go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250us"), Ok(Duration::from_micros(250)));
        for bad in ["", "5", "s", "-1s", "0s", "1x", "1.2.3s", "1e400h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
