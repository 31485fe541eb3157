//! The watch validator: concurrent writers (puts, deletes, delete-ranges, txns, compactions)
//! against a 2-shard server while watchers on several connections record everything: fast
//! ones, deliberately slow ones (one does not read at all until the writers are done, so its
//! send buffer overflows and it must catch up from history), ones starting in the past, and
//! one that cancels and resumes from its last revision + 1. Every guarantee is then checked
//! against the writes the server acknowledged (each write's revision and exact changes):
//! ordered, unique, reliable (no gaps), atomic (a revision never spans responses), resumable,
//! bookmarkable (a progress response means every event up to it arrived before it), and
//! prev_kv correct.
//!
//! Size: `COREKV_WATCH_VALIDATOR_ITERS` write requests per writer (default 150).
//! The writer set is the `WriteKind` enum: add a variant (and its arm in `write_once`) to
//! include another kind of write.

#[path = "support/server.rs"]
mod server;
#[path = "support/watch.rs"]
mod watch;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use corekv::client::txn::prefix_end;
use corekv::client::watch::{WatchRequest, WatchResponse, WatchStream};
use corekv::client::{Client, ClientError, Txn};
use corekv::mvcc::{
    DeleteRangeRequest, ErrorCode, EventKind, PutRequest, RangeRequest, RequestOp, ResponseOp,
};
use server::{with_client, ServerProcess};
use watch::{connect, next_within, RECV_DEADLINE};

const KEYS: u64 = 40;
/// Compactions the writers made (reported, so a run that made none is visible).
static COMPACTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const PREFIX: &[u8] = b"v/";

fn iters() -> usize {
    std::env::var("COREKV_WATCH_VALIDATOR_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Deterministic pseudo-random numbers (xorshift), seeded per writer.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("v/{i:02}").into_bytes()
}

/// One change the server acknowledged: (kind, key, value).
type Change = (EventKind, Vec<u8>, Vec<u8>);
/// Every acknowledged change by revision, in the order the server applied them.
type Truth = Rc<RefCell<BTreeMap<i64, Vec<Change>>>>;

/// The kinds of write the writers issue (extend here).
#[derive(Clone, Copy, Debug)]
enum WriteKind {
    Put,
    Delete,
    DeleteRange,
    Txn,
    Compact,
    /// A lease with keys that is left to expire (its deletes get a revision nobody is
    /// answered with; the writer finds it by reading the keys at older revisions).
    LeaseExpiry,
}

fn pick(rng: &mut Rng, writer: usize) -> WriteKind {
    if writer == 0 && rng.below(25) == 0 {
        return WriteKind::Compact;
    }
    match rng.below(10) {
        0..=4 => WriteKind::Put,
        5 => WriteKind::Delete,
        6 => WriteKind::DeleteRange,
        _ => WriteKind::Txn,
    }
}

fn value(rng: &mut Rng, writer: usize, i: usize) -> Vec<u8> {
    // 200..4200 bytes: enough volume (with prev_kv) that the non-reading watcher overflows
    // its 1 MiB stream buffer and has to catch up from history.
    let len = 200 + rng.below(4000) as usize;
    let mut v = format!("w{writer}-{i}-").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

/// Writer 1 lets a lease expire at these iterations (each takes about a TTL of 1 s).
const LEASE_EXPIRY_AT: [usize; 2] = [10, 70];

async fn write_once(c: &Client, truth: &Truth, rng: &mut Rng, writer: usize, i: usize) {
    let kind = if writer == 1 && LEASE_EXPIRY_AT.contains(&i) {
        WriteKind::LeaseExpiry
    } else {
        pick(rng, writer)
    };
    match kind {
        WriteKind::LeaseExpiry => {
            let (id, _, _) = c.lease_grant(1, 0).await.unwrap();
            let keys: Vec<Vec<u8>> = (0..1 + rng.below(3))
                .map(|j| format!("v/lease-{i}-{j}").into_bytes())
                .collect();
            let mut present_at = 0;
            for k in &keys {
                let v = value(rng, writer, i);
                let (_, h) = c
                    .put(PutRequest {
                        key: k.clone(),
                        value: v.clone(),
                        lease: id,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                record(truth, h.revision, vec![(EventKind::Put, k.clone(), v)]);
                present_at = h.revision;
            }
            // Poll until the keys are gone; the expiry's revision is then in
            // (last revision seen with them, first revision seen without them].
            let read_at = |revision: i64| {
                let key = keys[0].clone();
                async move {
                    let (resp, h) = c
                        .range(RangeRequest {
                            key,
                            revision,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    (!resp.kvs.is_empty(), h.revision)
                }
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut absent_at = loop {
                let (present, rev) = read_at(0).await;
                if !present {
                    break rev;
                }
                present_at = rev;
                assert!(
                    std::time::Instant::now() < deadline,
                    "lease {id:x} did not expire"
                );
                glommio::timer::sleep(Duration::from_millis(5)).await;
            };
            while absent_at - present_at > 1 {
                let mid = present_at + (absent_at - present_at) / 2;
                if read_at(mid).await.0 {
                    present_at = mid;
                } else {
                    absent_at = mid;
                }
            }
            let deletes = keys
                .into_iter()
                .map(|k| (EventKind::Delete, k, Vec::new()))
                .collect();
            record(truth, absent_at, deletes);
        }
        WriteKind::Put => {
            let k = key(rng.below(KEYS));
            let v = value(rng, writer, i);
            let (_, h) = c
                .put(PutRequest {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            record(truth, h.revision, vec![(EventKind::Put, k, v)]);
        }
        WriteKind::Delete | WriteKind::DeleteRange => {
            let a = rng.below(KEYS);
            let (k, end) = if matches!(pick(rng, 1), WriteKind::Put) {
                (key(a), Vec::new())
            } else {
                (key(a), key((a + 1 + rng.below(5)).min(KEYS)))
            };
            let (resp, h) = c
                .delete_range(DeleteRangeRequest {
                    key: k,
                    range_end: end,
                    prev_kv: true,
                })
                .await
                .unwrap();
            if resp.deleted > 0 {
                let changes = resp
                    .prev_kvs
                    .into_iter()
                    .map(|kv| (EventKind::Delete, kv.key, Vec::new()))
                    .collect();
                record(truth, h.revision, changes);
            }
        }
        WriteKind::Txn => {
            let mut keys: Vec<u64> = (0..1 + rng.below(4)).map(|_| rng.below(KEYS)).collect();
            keys.sort_unstable();
            keys.dedup();
            let mut ops = Vec::new();
            let mut planned = Vec::new();
            for k in keys {
                if rng.below(3) == 0 {
                    ops.push(RequestOp::DeleteRange(DeleteRangeRequest {
                        key: key(k),
                        range_end: Vec::new(),
                        prev_kv: true,
                    }));
                    planned.push((EventKind::Delete, key(k), Vec::new()));
                } else {
                    let v = value(rng, writer, i);
                    ops.push(RequestOp::put(key(k), v.clone()));
                    planned.push((EventKind::Put, key(k), v));
                }
            }
            let (resp, h) = c.txn(Txn::new().and_then(ops)).await.unwrap();
            assert!(resp.succeeded);
            let changes: Vec<Change> = planned
                .into_iter()
                .zip(resp.responses)
                .filter(|(_, r)| match r {
                    ResponseOp::DeleteRange(d) => d.deleted > 0,
                    _ => true,
                })
                .map(|(p, _)| p)
                .collect();
            if !changes.is_empty() {
                record(truth, h.revision, changes);
            }
        }
        WriteKind::Compact => {
            let current = c.status().await.unwrap().header.revision;
            if current > 60 {
                match c.compact(current - 50, false).await {
                    Ok(_) => {
                        COMPACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(ClientError::Server(e)) if e.code == ErrorCode::Compacted => {}
                    Err(e) => panic!("compact: {e}"),
                }
            }
        }
    }
}

fn record(truth: &Truth, rev: i64, changes: Vec<Change>) {
    let old = truth.borrow_mut().insert(rev, changes);
    assert!(old.is_none(), "two acknowledged writes at revision {rev}");
}

/// What one watcher instance (a watch id on a stream) asked for.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    key: Vec<u8>,
    range_end: Vec<u8>,
    start: i64,
}

impl Spec {
    fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            k == self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.range_end.as_slice()
        }
    }
}

/// Everything one stream received, and the watchers it had.
struct Recording {
    specs: HashMap<i64, Spec>,
    responses: Vec<WatchResponse>,
}

async fn create(s: &WatchStream, spec: &Spec) -> i64 {
    s.create(WatchRequest {
        key: spec.key.clone(),
        range_end: spec.range_end.clone(),
        start_revision: spec.start,
        prev_kv: true,
        progress_notify: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Reads a stream until the writers are done and a stream-wide progress at or past the final
/// revision arrived; restarts compacted watchers at the compacted revision. `pause` delays
/// every read (a slow consumer); `hold` skips reading until the writers are done.
async fn follow(
    s: &mut WatchStream,
    rec: &mut Recording,
    done: Rc<RefCell<Option<i64>>>,
    pause: Duration,
    hold: bool,
) {
    let deadline = std::time::Instant::now() + RECV_DEADLINE * 4;
    let mut asked_at = None;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher did not finish"
        );
        let final_rev = *done.borrow();
        if hold && final_rev.is_none() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if let Some(f) = final_rev {
            if asked_at != Some(f) {
                s.request_progress().await.unwrap();
                asked_at = Some(f);
            }
        }
        let Some(r) = next_within(s, Duration::from_millis(200)).await else {
            asked_at = None; // ask again (a progress waits for catch-up to finish)
            continue;
        };
        if !pause.is_zero() {
            glommio::timer::sleep(pause).await;
        }
        if r.canceled && r.compact_revision > 0 {
            let old = rec.specs[&r.watch_id].clone();
            let spec = Spec {
                name: format!("{} (resumed after compaction)", old.name),
                start: r.compact_revision,
                ..old
            };
            let id = create(s, &spec).await;
            rec.specs.insert(id, spec);
        }
        let stop = r.watch_id == -1 && final_rev.is_some_and(|f| r.header.revision >= f);
        rec.responses.push(r);
        if stop {
            return;
        }
    }
}

/// One received event: (revision, kind, key, value, prev value).
type Received = (i64, EventKind, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Revisions `start..=end` as a `BTreeMap` range, empty when the watcher starts after `end`
/// (one resumed at the final revision + 1, or a bookmark older than its start).
fn revisions(start: i64, end: i64) -> std::ops::Range<i64> {
    start.min(end + 1)..end + 1
}

/// Checks every guarantee for every watcher instance of a recording.
fn check(rec: &Recording, truth: &BTreeMap<i64, Vec<Change>>, final_rev: i64, resumed: &[i64]) {
    // prev value of every change, from the acknowledged history (all writes are ours).
    let mut state: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut prev_of: HashMap<(i64, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
    for (&rev, changes) in truth {
        for (kind, k, v) in changes {
            prev_of.insert((rev, k.clone()), state.get(k).cloned());
            match kind {
                EventKind::Put => {
                    state.insert(k.clone(), v.clone());
                }
                EventKind::Delete => {
                    state.remove(k);
                }
            }
        }
    }
    let mut created_rev: HashMap<i64, i64> = HashMap::new();
    let mut got: HashMap<i64, Vec<Received>> = HashMap::new();
    let mut last_rev_of_response: HashMap<i64, i64> = HashMap::new();
    let mut ended: HashMap<i64, Option<i64>> = HashMap::new(); // canceled: compact revision
    for r in &rec.responses {
        if r.created {
            assert!(!got.contains_key(&r.watch_id), "created after events");
            created_rev.insert(r.watch_id, r.header.revision);
            got.insert(r.watch_id, Vec::new());
            continue;
        }
        if r.canceled {
            ended.insert(r.watch_id, Some(r.compact_revision));
            continue;
        }
        if r.watch_id == -1 || r.events.is_empty() {
            // Bookmark: every watcher concerned has every event up to the revision.
            let p = r.header.revision;
            for (id, evs) in &got {
                if r.watch_id != -1 && r.watch_id != *id {
                    continue;
                }
                if ended.contains_key(id) {
                    continue;
                }
                let spec = &rec.specs[id];
                let start = effective_start(spec, created_rev[id]);
                let want = truth
                    .range(revisions(start, p))
                    .flat_map(|(_, ch)| ch.iter().filter(|c| spec.contains(&c.1)))
                    .count();
                if evs.len() != want {
                    let got_revs: Vec<i64> = evs.iter().map(|e| e.0).collect();
                    let want_revs: Vec<i64> = truth
                        .range(revisions(start, p))
                        .flat_map(|(&rev, ch)| {
                            ch.iter().filter(|c| spec.contains(&c.1)).map(move |_| rev)
                        })
                        .collect();
                    panic!(
                        "{}: progress (watch id {}) at {p} but only {} of {want} events delivered before it\n got {got_revs:?}\nwant {want_revs:?}",
                        spec.name,
                        r.watch_id,
                        evs.len()
                    );
                }
            }
            continue;
        }
        let list = got
            .get_mut(&r.watch_id)
            .unwrap_or_else(|| panic!("events for watcher {} before its created", r.watch_id));
        assert!(!r.fragment, "no watcher asked for fragments");
        let first = r.events[0].kv.mod_revision;
        if let Some(&prev_last) = last_rev_of_response.get(&r.watch_id) {
            assert!(
                first > prev_last,
                "{}: revision {first} split across responses or reordered",
                rec.specs[&r.watch_id].name
            );
        }
        last_rev_of_response.insert(r.watch_id, r.events.last().unwrap().kv.mod_revision);
        for e in &r.events {
            list.push((
                e.kv.mod_revision,
                e.kind,
                e.kv.key.clone(),
                e.kv.value.clone(),
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            ));
        }
    }
    let max_compacted = rec
        .responses
        .iter()
        .map(|r| r.compact_revision)
        .max()
        .unwrap_or(0);
    for (id, evs) in &got {
        let spec = &rec.specs[id];
        let start = effective_start(spec, created_rev[id]);
        let expected: Vec<(i64, EventKind, Vec<u8>, Vec<u8>)> = truth
            .range(revisions(start, final_rev))
            .flat_map(|(&rev, ch)| {
                ch.iter()
                    .filter(|c| spec.contains(&c.1))
                    .map(move |c| (rev, c.0, c.1.clone(), c.2.clone()))
            })
            .collect();
        let got_plain: Vec<_> = evs
            .iter()
            .map(|e| (e.0, e.1, e.2.clone(), e.3.clone()))
            .collect();
        match ended.get(id) {
            Some(Some(compact)) if *compact > 0 => {
                // Canceled for compaction: a prefix (whole revisions), and it really needed
                // a compacted revision next.
                assert!(
                    expected.starts_with(&got_plain),
                    "{}: not a prefix",
                    spec.name
                );
                let next_needed = got_plain.last().map_or(start, |e| e.0 + 1);
                assert!(next_needed < *compact, "{}: canceled needlessly", spec.name);
            }
            Some(_) => {
                // Canceled by us (resumable): a prefix ending on a whole revision.
                assert!(
                    expected.starts_with(&got_plain),
                    "{}: not a prefix",
                    spec.name
                );
                if let Some(last) = got_plain.last() {
                    assert!(
                        resumed.contains(&(last.0 + 1)),
                        "{}: no watcher resumed at {}",
                        spec.name,
                        last.0 + 1
                    );
                }
            }
            None => {
                if got_plain != expected {
                    let g: Vec<_> = got_plain.iter().map(|e| (e.0, e.2.clone())).collect();
                    let w: Vec<_> = expected.iter().map(|e| (e.0, e.2.clone())).collect();
                    panic!("{}: events differ\n got {g:?}\nwant {w:?}", spec.name);
                }
            }
        }
        for (rev, _, k, _, prev) in evs {
            let want = &prev_of[&(*rev, k.clone())];
            if prev.is_none() && want.is_some() && *rev <= max_compacted + 1 {
                continue; // the previous version may have been compacted away, as in etcd
            }
            assert_eq!(prev, want, "{}: prev_kv of {k:?} at {rev}", spec.name);
        }
    }
}

fn effective_start(spec: &Spec, created_rev: i64) -> i64 {
    if spec.start > 0 {
        spec.start
    } else {
        created_rev + 1
    }
}

#[test]
fn watch_validator() {
    let srv = ServerProcess::start(&[
        "--shards",
        "2",
        "--watch-progress-notify-interval",
        "300ms",
        "--min-lease-ttl",
        "1",
    ]);
    let endpoint = srv.endpoint();
    with_client(&endpoint.clone(), async move |c0| {
        let truth: Truth = Rc::new(RefCell::new(BTreeMap::new()));
        let done: Rc<RefCell<Option<i64>>> = Rc::new(RefCell::new(None));
        // A little history before anyone watches, for watchers that start in the past.
        for i in 0..20u64 {
            let v = format!("seed{i}").into_bytes();
            let r = c0.put_kv(key(i), v.clone()).await.unwrap();
            record(&truth, r, vec![(EventKind::Put, key(i), v)]);
        }
        let prefix = Spec {
            name: String::new(),
            key: PREFIX.to_vec(),
            range_end: prefix_end(PREFIX),
            start: 0,
        };
        // (name, specs, pause per response, hold until the writers are done)
        let plans: Vec<(&str, Vec<Spec>, Duration, bool)> = vec![
            (
                "fast",
                vec![
                    Spec {
                        name: "fast prefix".into(),
                        ..prefix.clone()
                    },
                    Spec {
                        name: "fast single key".into(),
                        key: key(3),
                        range_end: Vec::new(),
                        start: 0,
                    },
                    // Twins get identical responses, which the server sends once for both
                    // (the client library hands each its copy).
                    Spec {
                        name: "fast prefix twin".into(),
                        ..prefix.clone()
                    },
                    Spec {
                        name: "fast single key twin".into(),
                        key: key(3),
                        range_end: Vec::new(),
                        start: 0,
                    },
                ],
                Duration::ZERO,
                false,
            ),
            (
                "past",
                vec![Spec {
                    name: "past prefix from 1".into(),
                    start: 1,
                    ..prefix.clone()
                }],
                Duration::from_millis(1),
                false,
            ),
            (
                "slow",
                vec![
                    Spec {
                        name: "slow range".into(),
                        key: key(5),
                        range_end: key(30),
                        start: 0,
                    },
                    Spec {
                        name: "slow range twin".into(),
                        key: key(5),
                        range_end: key(30),
                        start: 0,
                    },
                ],
                Duration::from_millis(3),
                false,
            ),
            (
                "stalled",
                vec![
                    Spec {
                        name: "stalled prefix (reads nothing until the end)".into(),
                        ..prefix.clone()
                    },
                    Spec {
                        name: "stalled prefix twin".into(),
                        ..prefix.clone()
                    },
                ],
                Duration::ZERO,
                true,
            ),
        ];
        let mut followers = Vec::new();
        for (_, specs, pause, hold) in plans {
            let endpoint = endpoint.clone();
            let done = done.clone();
            followers.push(async move {
                let c = connect(&endpoint).await;
                let mut s = c.watch_stream().await.unwrap();
                let mut rec = Recording {
                    specs: HashMap::new(),
                    responses: Vec::new(),
                };
                for spec in specs {
                    let id = create(&s, &spec).await;
                    rec.specs.insert(id, spec);
                }
                follow(&mut s, &mut rec, done, pause, hold).await;
                rec
            });
        }
        // The resumable watcher: cancels every ~40 events and resumes at last + 1 on a new
        // stream of a new connection.
        let resumable = {
            let endpoint = endpoint.clone();
            let done = done.clone();
            async move {
                let mut recs = Vec::new();
                let mut resumed_at = Vec::new();
                let mut start = 1;
                for round in 0..3 {
                    let c = connect(&endpoint).await;
                    let mut s = c.watch_stream().await.unwrap();
                    let spec = Spec {
                        name: format!("resumable round {round}"),
                        start,
                        ..prefix.clone()
                    };
                    let id = create(&s, &spec).await;
                    let mut rec = Recording {
                        specs: HashMap::from([(id, spec)]),
                        responses: Vec::new(),
                    };
                    if round == 2 {
                        follow(&mut s, &mut rec, done.clone(), Duration::ZERO, false).await;
                        recs.push(rec);
                        break;
                    }
                    let mut n = 0;
                    let mut last = None;
                    // Cancel after ~40 events, or once the writers are done: a short run
                    // (small COREKV_WATCH_VALIDATOR_ITERS) may never write 40, and the
                    // progress notifications that keep arriving would otherwise keep this
                    // loop waiting for ever.
                    let deadline = std::time::Instant::now() + RECV_DEADLINE * 4;
                    while n < 40 && done.borrow().is_none() {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "resumable watcher: 40 events did not arrive"
                        );
                        let Some(r) = next_within(&mut s, RECV_DEADLINE).await else {
                            panic!("resumable watcher got nothing");
                        };
                        n += r.events.len();
                        if let Some(e) = r.events.last() {
                            last = Some(e.kv.mod_revision);
                        }
                        rec.responses.push(r);
                    }
                    s.cancel(id).await.unwrap();
                    // Drain to the canceled response: events queued before it still count.
                    loop {
                        let r = next_within(&mut s, RECV_DEADLINE).await.expect("canceled");
                        if let Some(e) = r.events.last() {
                            last = Some(e.kv.mod_revision);
                        }
                        let canceled = r.canceled;
                        rec.responses.push(r);
                        if canceled {
                            break;
                        }
                    }
                    // No event before the cancel (the writers were already done): resume
                    // at the same revision.
                    start = last.map_or(start, |l| l + 1);
                    resumed_at.push(start);
                    recs.push(rec);
                }
                (recs, resumed_at)
            }
        };
        let writers = async {
            let mut ws = Vec::new();
            for w in 0..4usize {
                let endpoint = endpoint.clone();
                let truth = truth.clone();
                ws.push(async move {
                    let c = connect(&endpoint).await;
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1234_5678_9ABC));
                    for i in 0..iters() {
                        write_once(&c, &truth, &mut rng, w, i).await;
                    }
                });
            }
            futures::future::join_all(ws).await;
            let final_rev = c0.status().await.unwrap().header.revision;
            *done.borrow_mut() = Some(final_rev);
            final_rev
        };
        let (recs, (resumable_recs, resumed_at), final_rev) =
            futures::join!(futures::future::join_all(followers), resumable, writers);
        let truth = truth.borrow();
        assert_eq!(
            truth.keys().copied().collect::<Vec<_>>(),
            (1..=final_rev).collect::<Vec<_>>(),
            "every revision is accounted for by an acknowledged write"
        );
        let mut total_events = 0;
        let mut compacted_cancels = 0;
        for rec in recs.iter().chain(resumable_recs.iter()) {
            check(rec, &truth, final_rev, &resumed_at);
            total_events += rec.responses.iter().map(|r| r.events.len()).sum::<usize>();
            compacted_cancels += rec
                .responses
                .iter()
                .filter(|r| r.compact_revision > 0)
                .count();
        }
        assert!(total_events > 0);
        eprintln!(
            "watch validator: {final_rev} revisions, {total_events} events checked, {} compactions, \
             {compacted_cancels} watchers canceled by compaction and resumed, resumed at {resumed_at:?}",
            COMPACTIONS.load(std::sync::atomic::Ordering::Relaxed)
        );
    });
}
