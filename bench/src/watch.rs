//! `watch` (after etcd's `benchmark watch`) and `watch-latency`, for both targets.
//!
//! One engine, one concurrency model, one clock for corekv and etcd:
//! - `--streams` watch streams are spread over `--conns` connections (stream `s` on
//!   connection `s % conns`), connections over `--threads` load threads (connection `c` on
//!   thread `c % threads`), each a tokio current-thread runtime with a `LocalSet`.
//! - Creation (timed): watcher `g` is on stream `g % streams` with watch id
//!   `g / streams + 1`, on key number `g` of the key space (`--sequential-keys`, or mixed as
//!   the kv workloads do). Each stream keeps up to [`CREATE_WINDOW`] creates in flight. A
//!   create's latency runs from sending it to the server's acknowledgement (corekv: the reply
//!   to the create call; etcd: the `created` response on the stream, matched by watch id).
//! - Puts (timed): put `i` writes the key of watcher `i % watchers`, so every put is watched;
//!   its value starts with `i` in decimal. `--clients` put loops on their own connections,
//!   paced by `--rate`. In `watch-latency` puts go one at a time and each waits until all its
//!   events arrived (lockstep); `--rate` there also spaces the puts (etcd's `benchmark
//!   watch-latency` paces its puts at `--put-rate`, 100/s by default, instead of lockstep), so
//!   that a put does not start while the previous one's acknowledgements are still in flight.
//! - `watch-latency --trace FILE` writes a per-put timeline (sent, reply, first and last event)
//!   and per-stream mean latencies, to tell periodic stalls and slow shards or threads apart.
//! - Events: every reader takes the put number out of each event and records the time from
//!   just before that put was sent to the event's arrival. The run ends when every expected
//!   event arrived, or `--timeout` after the last put (missing events then count as errors).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::args::{self, Settings, COMMON_FLAGS};
use crate::kv::Keys;
use crate::load::Pacer;
use crate::report::{process_cpu, Report, Series};
use crate::streams::{self, Create, Finished, StreamConn, WatchMsg, WatchReceiver, WatchSender};

/// Most watchers one run creates.
pub const MAX_WATCHERS: usize = 10_000_000;
/// Most puts one run makes (each has a send-time slot).
pub const MAX_WATCH_PUTS: u64 = 10_000_000;
/// Creates in flight per stream.
pub const CREATE_WINDOW: usize = 64;
/// Put loops sharing one put connection.
pub const PUT_CLIENTS_PER_CONN: usize = 16;
/// Digits of the put number at the start of each value.
const SEQ_DIGITS: usize = 20;

/// The shape of one run.
#[derive(Clone, Debug)]
struct Plan {
    settings: Settings,
    /// Watchers in all.
    watchers: usize,
    /// Puts to make.
    puts: u64,
    /// One put at a time, each waiting for all its events.
    lockstep: bool,
    /// Write a per-put timeline (CSV) here (`watch-latency --trace`).
    trace: Option<std::path::PathBuf>,
}

impl Plan {
    fn streams(&self) -> usize {
        self.settings.streams.min(self.watchers).max(1)
    }
    fn conns(&self) -> usize {
        self.settings.conns.min(self.streams()).max(1)
    }
    fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.settings
            .threads
            .unwrap_or(cores)
            .clamp(1, self.conns())
    }
    /// The watchers of stream `s`, as global numbers.
    fn watchers_of(&self, s: usize) -> impl Iterator<Item = usize> {
        (s..self.watchers).step_by(self.streams())
    }
}

/// The value of put `i`: its number in decimal, padded to `len` bytes.
fn put_value(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{i:0SEQ_DIGITS$}").into_bytes();
    v.resize(len.max(SEQ_DIGITS), b'v');
    v
}

/// The put number an event's value starts with.
fn put_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..SEQ_DIGITS)?)
        .ok()?
        .parse()
        .ok()
}

/// State shared by the load threads and the put driver.
struct Shared {
    plan: Plan,
    keys: Keys,
    /// The clock's zero; every time below is nanoseconds since it.
    epoch: Instant,
    /// Per put: when it was sent, + 1 (0: not yet).
    sent_ns: Vec<AtomicU64>,
    /// Per put, only with a trace: arrival of its first event, + 1 (`u64::MAX`: none yet).
    first_event_of: Vec<AtomicU64>,
    /// Per put, only with a trace: arrival of its last event, + 1 (0: none yet).
    last_event_of: Vec<AtomicU64>,
    /// Per stream, only with a trace: events and the sum of their latencies (µs).
    stream_latency: Vec<(AtomicU64, AtomicU64)>,
    /// Events received that belong to a sent put.
    events: AtomicU64,
    /// The put driver waits until `events` reaches this.
    event_target: AtomicU64,
    /// Woken when `events` reaches `event_target`.
    event_notify: Notify,
    /// Arrival of the last event, + 1.
    last_event_ns: AtomicU64,
    /// End of the last create acknowledgement, + 1.
    create_end_ns: AtomicU64,
    /// A thread could not set up or create.
    failed: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }
    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns.saturating_sub(1))
    }
}

/// The creates of one stream, shared by its creator and (etcd) its reader.
struct StreamState {
    /// The stream's number in the plan (for the trace's per-stream figures).
    stream: usize,
    /// Per watcher of the stream (index = watch id - 1): when its create was sent.
    sent_at: RefCell<Vec<Option<Instant>>>,
    /// Creates acknowledged (or failed).
    acked: Cell<usize>,
    /// Woken on each acknowledgement.
    notify: Notify,
}

impl StreamState {
    fn ack(&self, watch_id: i64, create: &RefCell<Series>) {
        let at = Instant::now();
        let sent = usize::try_from(watch_id - 1)
            .ok()
            .and_then(|i| self.sent_at.borrow_mut().get_mut(i).and_then(Option::take));
        match sent {
            Some(t0) => create.borrow_mut().record(at - t0),
            None => create
                .borrow_mut()
                .fail("check:unexpected created response"),
        }
        self.acked.set(self.acked.get() + 1);
        self.notify.notify_one();
    }
}

/// What one load thread measured.
struct ThreadResult {
    create: Series,
    event: Series,
}

/// Creates the watchers `ids` (global numbers) on one stream, up to [`CREATE_WINDOW`] in
/// flight. Returns when every create was acknowledged or failed, or with an error when no
/// acknowledgement came within `timeout`.
async fn create_watchers(
    sender: &mut WatchSender,
    state: &Rc<StreamState>,
    create: &Rc<RefCell<Series>>,
    shared: &Shared,
    ids: Vec<usize>,
    key_of: &dyn Fn(usize) -> Vec<u8>,
) -> Result<(), String> {
    let timeout = shared.plan.settings.timeout;
    let n = ids.len();
    *state.sent_at.borrow_mut() = vec![None; n];
    let wait_for = |goal: usize| {
        let state = state.clone();
        async move {
            while state.acked.get() < goal {
                if tokio::time::timeout(timeout, state.notify.notified())
                    .await
                    .is_err()
                {
                    return Err(format!(
                        "watch creation stalled: {} of {n} watchers acknowledged, none more within {timeout:?}",
                        state.acked.get()
                    ));
                }
            }
            Ok(())
        }
    };
    for (idx, g) in ids.into_iter().enumerate() {
        wait_for((idx + 1).saturating_sub(CREATE_WINDOW)).await?;
        let id = idx as i64 + 1;
        state.sent_at.borrow_mut()[idx] = Some(Instant::now());
        match sender.create(key_of(g), id) {
            Create::Sent(fut) => {
                if let Err(e) = fut.await {
                    create.borrow_mut().fail(&e.0);
                    state.sent_at.borrow_mut()[idx] = None;
                    state.acked.set(state.acked.get() + 1);
                }
            }
            Create::Acked(fut) => {
                let (state, create) = (state.clone(), create.clone());
                tokio::task::spawn_local(async move {
                    match fut.await {
                        Ok(()) => state.ack(id, &create),
                        Err(e) => {
                            create.borrow_mut().fail(&e.0);
                            state.acked.set(state.acked.get() + 1);
                            state.notify.notify_one();
                        }
                    }
                });
            }
        }
    }
    wait_for(n).await?;
    let end = shared.now_ns();
    shared.create_end_ns.fetch_max(end, Ordering::SeqCst);
    Ok(())
}

/// Reads one stream until it ends: acknowledgements of creates (etcd) and events.
/// Where a stream goes once its watchers are created: its receiver to a reader task recording
/// into the `create` and `event` series (`shared` counts), or its sender into `keep` (etcd:
/// the receiver was taken when the stream was opened).
fn route_stream(
    finished: Finished,
    state: Rc<StreamState>,
    (create, event, shared): (&Rc<RefCell<Series>>, &Rc<RefCell<Series>>, &Arc<Shared>),
    readers: &mut Vec<tokio::task::JoinHandle<()>>,
    keep: &mut Vec<WatchSender>,
) {
    match finished {
        Finished::Read(rx) => readers.push(tokio::task::spawn_local(read_stream(
            *rx,
            state,
            create.clone(),
            event.clone(),
            shared.clone(),
            false,
        ))),
        Finished::Keep(tx) => keep.push(tx),
    }
}

async fn read_stream(
    mut rx: WatchReceiver,
    state: Rc<StreamState>,
    create: Rc<RefCell<Series>>,
    event: Rc<RefCell<Series>>,
    shared: Arc<Shared>,
    acks_on_stream: bool,
) {
    while let Some(m) = rx.next().await {
        match m {
            Ok(WatchMsg::Created(id)) => {
                if acks_on_stream {
                    state.ack(id, &create);
                }
            }
            Ok(WatchMsg::Events(values)) => {
                let now = Instant::now();
                let mut matched = 0;
                {
                    let mut event = event.borrow_mut();
                    for v in values {
                        let put = put_number(&v);
                        let sent = put
                            .and_then(|i| shared.sent_ns.get(i as usize))
                            .map(|t| t.load(Ordering::SeqCst))
                            .filter(|&t| t > 0);
                        match sent {
                            Some(t) => {
                                let latency = now.saturating_duration_since(shared.at(t));
                                event.record(latency);
                                matched += 1;
                                if let Some((n, sum)) = shared.stream_latency.get(state.stream) {
                                    n.fetch_add(1, Ordering::Relaxed);
                                    sum.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
                                }
                                if let Some(i) = put.filter(|_| !shared.first_event_of.is_empty()) {
                                    let at = now.duration_since(shared.epoch).as_nanos() as u64 + 1;
                                    shared.first_event_of[i as usize]
                                        .fetch_min(at, Ordering::Relaxed);
                                    shared.last_event_of[i as usize]
                                        .fetch_max(at, Ordering::Relaxed);
                                }
                            }
                            None => event.fail("check:event of no sent put"),
                        }
                    }
                }
                if matched > 0 {
                    shared
                        .last_event_ns
                        .fetch_max(shared.now_ns(), Ordering::SeqCst);
                    let total = shared.events.fetch_add(matched, Ordering::SeqCst) + matched;
                    if total >= shared.event_target.load(Ordering::SeqCst) {
                        shared.event_notify.notify_one();
                    }
                }
            }
            Ok(WatchMsg::Canceled(id, reason)) => {
                event.borrow_mut().fail("watch canceled");
                if acks_on_stream && state.acked.get() < state.sent_at.borrow().len() {
                    // A refused create: acknowledge it as failed so that its creator ends.
                    let _ = id;
                    create.borrow_mut().fail(&format!("canceled: {reason}"));
                    state.acked.set(state.acked.get() + 1);
                    state.notify.notify_one();
                }
            }
            Ok(WatchMsg::Other) => {}
            Err(e) => {
                event.borrow_mut().fail(&e.0);
                return;
            }
        }
    }
}

/// Phase barriers between the load threads and the put driver (the main thread).
struct Phases {
    ready: Barrier,
    go: Barrier,
    created: Barrier,
}

fn thread_main(
    t: usize,
    shared: Arc<Shared>,
    phases: Arc<Phases>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ThreadResult, String> {
    let fail = |e: String| {
        shared.failed.store(true, Ordering::SeqCst);
        e
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let e = fail(format!("watch thread {t}: start tokio runtime: {e}"));
            phases.ready.wait();
            phases.go.wait();
            phases.created.wait();
            return Err(e);
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let plan = &shared.plan;
        let s = &plan.settings;
        let (conns, threads) = (plan.conns(), plan.threads());
        let mine: Vec<usize> = (0..plan.streams())
            .filter(|st| st % conns % threads == t)
            .collect();
        let create = Rc::new(RefCell::new(Series::new("create")));
        let event = Rc::new(RefCell::new(Series::new("event")));
        // Set-up, untimed: connections and streams.
        let mut setup = async {
            let mut by_conn: HashMap<usize, StreamConn> = HashMap::new();
            let mut opened = Vec::with_capacity(mine.len());
            for &st in &mine {
                let c = st % conns;
                if let std::collections::hash_map::Entry::Vacant(slot) = by_conn.entry(c) {
                    let n = s.endpoints.len();
                    let endpoints: Vec<String> =
                        (0..n).map(|k| s.endpoints[(c + k) % n].clone()).collect();
                    slot.insert(streams::connect(s.target, &endpoints, s.timeout).await?);
                }
                let (tx, rx) = streams::open_watch(&by_conn[&c])
                    .await
                    .map_err(|e| format!("open watch stream {st}: {}", e.0))?;
                opened.push((st, tx, rx));
            }
            Ok::<_, String>((by_conn, opened))
        }
        .await;
        if let Err(e) = &setup {
            fail(e.clone());
        }
        phases.ready.wait();
        phases.go.wait();
        let mut readers = Vec::new();
        let mut keep = Vec::new();
        let created = async {
            let (_, opened) = setup.as_mut().map_err(|e| e.clone())?;
            let mut creators = Vec::new();
            for (st, tx, rx) in opened.drain(..) {
                let state = Rc::new(StreamState {
                    stream: st,
                    sent_at: RefCell::new(Vec::new()),
                    acked: Cell::new(0),
                    notify: Notify::new(),
                });
                let on_stream = tx.acks_on_stream();
                if let Some(rx) = rx {
                    readers.push(tokio::task::spawn_local(read_stream(
                        rx,
                        state.clone(),
                        create.clone(),
                        event.clone(),
                        shared.clone(),
                        on_stream,
                    )));
                }
                let (shared, create) = (shared.clone(), create.clone());
                let ids: Vec<usize> = shared.plan.watchers_of(st).collect();
                creators.push(tokio::task::spawn_local(async move {
                    let mut tx = tx;
                    let keys = shared.keys.clone();
                    let key_of = move |g: usize| keys.key(keys.number(g as u64, 1));
                    create_watchers(&mut tx, &state, &create, &shared, ids, &key_of).await?;
                    Ok::<_, String>((tx, state))
                }));
            }
            for c in creators {
                let (tx, state) = c
                    .await
                    .map_err(|e| format!("watch thread {t}: creator failed: {e}"))??;
                route_stream(
                    tx.finish()?,
                    state,
                    (&create, &event, &shared),
                    &mut readers,
                    &mut keep,
                );
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = &created {
            fail(e.clone());
        }
        phases.created.wait();
        created?;
        // Events flow until the put driver says stop.
        let mut stop = stop;
        let _ = stop.wait_for(|&v| v).await;
        for r in &readers {
            r.abort();
        }
        drop(keep);
        drop(setup);
        let create = create.borrow().clone();
        let event = event.borrow().clone();
        Ok(ThreadResult { create, event })
    })
}

/// Waits until `shared.events` reaches `target`, or `timeout` passes without it.
async fn wait_events(shared: &Shared, target: u64, timeout: Duration) -> bool {
    shared.event_target.store(target, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + timeout;
    while shared.events.load(Ordering::SeqCst) < target {
        if tokio::time::timeout_at(deadline, shared.event_notify.notified())
            .await
            .is_err()
        {
            return shared.events.load(Ordering::SeqCst) >= target;
        }
    }
    true
}

/// Writes the per-put timeline of a traced run to `path` (CSV, microseconds: when the put
/// was sent since the first put, then its reply, first and last event since it was sent;
/// empty where nothing arrived) and returns a note naming the slowest puts, so that stalls
/// that recur at a fixed interval show up.
fn write_trace(
    path: &std::path::Path,
    shared: &Shared,
    put_replied: &[Cell<u64>],
    put_start: Instant,
) -> Result<String, String> {
    use std::fmt::Write as _;
    let origin = put_start.duration_since(shared.epoch).as_nanos() as u64 + 1;
    let us = |from: u64, to: u64| to.saturating_sub(from) / 1000;
    let mut csv = String::from("put,sent_us,reply_us,first_event_us,last_event_us\n");
    let mut slowest: Vec<(u64, u64, u64)> = Vec::new(); // (last event, put, sent)
    for (i, sent) in shared.sent_ns.iter().enumerate() {
        let sent = sent.load(Ordering::SeqCst);
        if sent == 0 {
            continue;
        }
        let at = |t: u64| match t {
            0 | u64::MAX => String::new(),
            t => us(sent, t).to_string(),
        };
        let first = shared.first_event_of[i].load(Ordering::Relaxed);
        let last = shared.last_event_of[i].load(Ordering::Relaxed);
        let _ = writeln!(
            csv,
            "{i},{},{},{},{}",
            us(origin, sent),
            at(put_replied[i].get()),
            at(first),
            at(last)
        );
        if last > 0 {
            slowest.push((us(sent, last), i as u64, us(origin, sent)));
        }
    }
    std::fs::write(path, csv).map_err(|e| format!("write trace {}: {e}", path.display()))?;
    // Per stream: its mean event latency (streams of one server shard, or one load thread,
    // cluster together when that shard or thread is the slow part).
    let mut per_stream = String::from("stream,events,mean_us\n");
    for (st, (n, sum)) in shared.stream_latency.iter().enumerate() {
        let (n, sum) = (n.load(Ordering::Relaxed), sum.load(Ordering::Relaxed));
        let _ = writeln!(per_stream, "{st},{n},{}", sum.checked_div(n).unwrap_or(0));
    }
    let streams_path = path.with_extension("streams.csv");
    std::fs::write(&streams_path, per_stream)
        .map_err(|e| format!("write trace {}: {e}", streams_path.display()))?;
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    let list: Vec<String> = slowest
        .iter()
        .take(TRACE_SLOWEST)
        .map(|(last, i, sent)| {
            format!("put {i} sent at {:.1} ms: {last} µs", *sent as f64 / 1000.0)
        })
        .collect();
    Ok(format!(
        "trace in {} and {}; slowest puts (last event): {}",
        path.display(),
        streams_path.display(),
        list.join(", ")
    ))
}

/// Slowest puts named in a trace's note.
const TRACE_SLOWEST: usize = 10;

/// Runs one plan; returns its report.
fn run_plan(plan: Plan, workload: &str) -> Result<Report, String> {
    let s = plan.settings.clone();
    if plan.watchers == 0 || plan.watchers > MAX_WATCHERS {
        return Err(format!(
            "{} watchers: must be in 1..={MAX_WATCHERS}",
            plan.watchers
        ));
    }
    if plan.puts > MAX_WATCH_PUTS {
        return Err(format!(
            "{} puts: at most {MAX_WATCH_PUTS} (each has a send-time slot)",
            plan.puts
        ));
    }
    let keys = Keys::new(&s);
    // Events each put causes: the watchers on its key.
    let mut on_key: HashMap<u64, u64> = HashMap::new();
    for g in 0..plan.watchers {
        *on_key.entry(keys.number(g as u64, 1)).or_default() += 1;
    }
    let expected_of = |i: u64| on_key[&keys.number(i % plan.watchers as u64, 1)];
    let threads = plan.threads();
    let traced = |init: u64| -> Vec<AtomicU64> {
        match plan.trace {
            Some(_) => (0..plan.puts).map(|_| AtomicU64::new(init)).collect(),
            None => Vec::new(),
        }
    };
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        keys: keys.clone(),
        epoch: Instant::now(),
        sent_ns: (0..plan.puts).map(|_| AtomicU64::new(0)).collect(),
        first_event_of: traced(u64::MAX),
        last_event_of: traced(0),
        stream_latency: match plan.trace {
            Some(_) => (0..plan.streams())
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            None => Vec::new(),
        },
        events: AtomicU64::new(0),
        event_target: AtomicU64::new(u64::MAX),
        event_notify: Notify::new(),
        last_event_ns: AtomicU64::new(0),
        create_end_ns: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    // The put driver's connections, before any thread starts (a failure here needs no
    // barrier).
    let put_loops = s.clients.min(plan.puts.max(1) as usize).max(1);
    let put_loops = if plan.lockstep { 1 } else { put_loops };
    let put_conns_n = put_loops.div_ceil(PUT_CLIENTS_PER_CONN);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let put_conns = local.block_on(&rt, async {
        let mut v = Vec::with_capacity(put_conns_n);
        for _ in 0..put_conns_n {
            v.push(streams::connect(s.target, &s.endpoints, s.timeout).await?);
        }
        Ok::<_, String>(v)
    })?;

    let phases = Arc::new(Phases {
        ready: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        created: Barrier::new(threads + 1),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let (shared, phases, stop_rx) = (shared.clone(), phases.clone(), stop_rx.clone());
        let h = std::thread::Builder::new()
            .name(format!("watch-{t}"))
            .spawn(move || thread_main(t, shared, phases, stop_rx));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barriers count this thread: nobody could pass them. Stop here.
                return Err(format!(
                    "start watch thread {t}: {e} (the run cannot continue)"
                ));
            }
        }
    }
    phases.ready.wait();
    let cpu_before = process_cpu();
    let start = Instant::now();
    phases.go.wait();
    phases.created.wait();
    let join = |handles: Vec<std::thread::JoinHandle<Result<ThreadResult, String>>>| {
        let mut out = Vec::new();
        let mut first_error = None;
        for (t, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(format!("watch thread {t} panicked"));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    };
    if shared.failed.load(Ordering::SeqCst) {
        let _ = stop_tx.send(true);
        join(handles)?;
        return Err("a watch thread failed".into());
    }
    let create_elapsed = shared
        .at(shared.create_end_ns.load(Ordering::SeqCst))
        .saturating_duration_since(start);

    // Puts.
    let put_start = Instant::now();
    let pacer = s.rate.map(Pacer::new);
    let next = Cell::new(0u64);
    let put_series = RefCell::new(Series::new("put"));
    let lockstep_error = RefCell::new(None::<String>);
    let cumulative = Cell::new(0u64);
    // Per put, only with a trace: when its reply arrived, + 1.
    let put_replied: Vec<Cell<u64>> = match plan.trace {
        Some(_) => (0..plan.puts).map(|_| Cell::new(0)).collect(),
        None => Vec::new(),
    };
    let all_arrived = local.block_on(&rt, async {
        let mut loops = Vec::new();
        for l in 0..put_loops {
            let conn = &put_conns[l / PUT_CLIENTS_PER_CONN];
            let (shared, pacer, next, put_series) = (&shared, &pacer, &next, &put_series);
            let (lockstep_error, cumulative, expected_of, put_replied) =
                (&lockstep_error, &cumulative, &expected_of, &put_replied);
            loops.push(async move {
                loop {
                    let i = next.get();
                    if i >= plan.puts || lockstep_error.borrow().is_some() {
                        return;
                    }
                    next.set(i + 1);
                    if let Some(p) = pacer {
                        let slot = p.reserve(Instant::now());
                        tokio::time::sleep_until(slot.into()).await;
                    }
                    let key = shared
                        .keys
                        .key(shared.keys.number(i % plan.watchers as u64, 1));
                    let value = put_value(i, s.val_size);
                    let began = Instant::now();
                    shared.sent_ns[i as usize].store(
                        began.duration_since(shared.epoch).as_nanos() as u64 + 1,
                        Ordering::SeqCst,
                    );
                    let r = conn.put(key, value).await;
                    let ended = Instant::now();
                    if let Some(c) = put_replied.get(i as usize) {
                        c.set(ended.duration_since(shared.epoch).as_nanos() as u64 + 1);
                    }
                    match r {
                        Ok(()) => {
                            put_series.borrow_mut().record(ended - began);
                            // Events are expected of acknowledged puts only (a failed put
                            // may or may not have been applied).
                            cumulative.set(cumulative.get() + expected_of(i));
                        }
                        Err(e) => {
                            put_series.borrow_mut().fail(&e.0);
                            continue;
                        }
                    }
                    if plan.lockstep && !wait_events(shared, cumulative.get(), s.timeout).await {
                        *lockstep_error.borrow_mut() = Some(format!(
                            "put {i}: only {} of {} events within {:?}",
                            shared.events.load(Ordering::SeqCst),
                            cumulative.get(),
                            s.timeout
                        ));
                    }
                }
            });
        }
        futures::future::join_all(loops).await;
        // After a lockstep put timed out, waiting again would only repeat that timeout.
        lockstep_error.borrow().is_none() && wait_events(&shared, cumulative.get(), s.timeout).await
    });
    let put_end = Instant::now();
    let _ = stop_tx.send(true);
    let results = join(handles)?;
    drop(put_conns);

    let mut create = Series::new("create");
    let mut event = Series::new("event");
    for r in &results {
        create.merge(&r.create);
        event.merge(&r.event);
    }
    let received = shared.events.load(Ordering::SeqCst);
    let expected = cumulative.get();
    let last_event = match shared.last_event_ns.load(Ordering::SeqCst) {
        0 => put_end,
        ns => shared.at(ns),
    };
    let events_elapsed = last_event.max(put_end).saturating_duration_since(put_start);
    let mut put_series = put_series.into_inner();
    put_series.elapsed = Some(put_end.saturating_duration_since(put_start));
    create.elapsed = Some(create_elapsed);
    event.elapsed = Some(events_elapsed);
    let mut notes = Vec::new();
    if !all_arrived && received < expected {
        *event.errors.entry("missing".into()).or_default() += expected - received;
        notes.push(format!(
            "{} of {expected} events arrived within {:?} of the last put",
            received, s.timeout
        ));
    }
    if let Some(e) = lockstep_error.into_inner() {
        notes.push(e);
    }
    if let Some(path) = &plan.trace {
        notes.push(write_trace(path, &shared, &put_replied, put_start)?);
    }
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let mut config = vec![
        ("endpoints".to_string(), s.endpoints.join(",")),
        ("watchers".into(), plan.watchers.to_string()),
        ("streams".into(), plan.streams().to_string()),
        ("conns".into(), plan.conns().to_string()),
        ("threads".into(), threads.to_string()),
        ("puts".into(), plan.puts.to_string()),
        ("put_clients".into(), put_loops.to_string()),
        ("key_space_size".into(), s.key_space_size.to_string()),
        ("val_size".into(), s.val_size.max(SEQ_DIGITS).to_string()),
    ];
    if let Some(r) = s.rate {
        config.push(("rate".into(), r.to_string()));
    }
    if plan.lockstep {
        config.push(("lockstep".into(), "true".into()));
    }
    let metrics = vec![
        ("watchers".to_string(), plan.watchers as f64),
        (
            "watchers_created_per_sec".into(),
            create.ok() as f64 / secs(create_elapsed),
        ),
        ("expected_events".into(), expected as f64),
        ("received_events".into(), received as f64),
        (
            "events_per_sec".into(),
            received as f64 / secs(events_elapsed),
        ),
    ];
    Ok(Report {
        workload: workload.to_string(),
        target: s.target.name().to_string(),
        config,
        elapsed: events_elapsed,
        client_cpu: process_cpu().saturating_sub(cpu_before),
        series: vec![create, put_series, event],
        checks: Vec::new(),
        notes,
        metrics,
    })
}

/// Flags of `watch`.
const WATCH_FLAGS: &[&str] = &[
    "--streams",
    "--watchers-per-stream",
    "--key-size",
    "--val-size",
    "--key-space-size",
    "--sequential-keys",
];

/// Entry point of `watch`: `--streams` × `--watchers-per-stream` watchers, then `--total`
/// puts (default 1000) on watched keys at `--rate` from `--clients` put loops.
pub fn run_watch(argv: &[String]) -> Result<(), String> {
    let flags: Vec<&str> = COMMON_FLAGS
        .iter()
        .filter(|f| **f != "--duration")
        .chain(WATCH_FLAGS)
        .copied()
        .collect();
    let defaults = Settings {
        total: Some(1000),
        ..Settings::default()
    };
    let (s, _) = args::parse("watch", argv, &flags, defaults)?;
    let watchers = s
        .streams
        .checked_mul(s.watchers_per_stream)
        .filter(|&w| w <= MAX_WATCHERS)
        .ok_or_else(|| {
            format!(
                "--streams {} x --watchers-per-stream {} exceeds {MAX_WATCHERS} watchers",
                s.streams, s.watchers_per_stream
            )
        })?;
    let plan = Plan {
        puts: s.total_requests(),
        watchers,
        lockstep: false,
        trace: None,
        settings: s.clone(),
    };
    let mut r = run_plan(plan, "watch")?;
    r.config.push((
        "watchers_per_stream".into(),
        s.watchers_per_stream.to_string(),
    ));
    r.print(s.json);
    if r.series.iter().any(|x| x.failed() > 0) {
        return Err("some creates, puts or events failed (see the report)".into());
    }
    Ok(())
}

/// Flags of `watch-latency` besides the common ones.
const LATENCY_FLAGS: &[&str] = &[
    "--streams",
    "--watchers",
    "--puts",
    "--idle",
    "--server-pid",
    "--trace",
];

/// `watch-latency`'s own flags.
#[derive(Clone, Debug, PartialEq)]
struct LatencyFlags {
    watchers: Vec<usize>,
    puts: u64,
    idle: usize,
    server_pid: Option<u32>,
    /// Per-put timeline CSV (with several `--watchers` values, one file each: `<stem>.<n>.csv`).
    trace: Option<std::path::PathBuf>,
}

fn parse_latency(argv: &[String]) -> Result<(Settings, LatencyFlags), String> {
    let flags: Vec<&str> = [
        "--endpoints",
        "--target",
        "--conns",
        "--threads",
        "--rate",
        "--timeout",
        "--json",
        "--no-progress",
    ]
    .iter()
    .chain(LATENCY_FLAGS)
    .copied()
    .collect();
    let defaults = Settings {
        streams: 100,
        conns: 100,
        ..Settings::default()
    };
    let conns_given = argv
        .iter()
        .any(|a| a == "--conns" || a.starts_with("--conns="));
    let mut settings_argv = argv.to_vec();
    if !conns_given {
        // One connection per stream unless told otherwise (the streams decide).
        let streams = argv
            .iter()
            .position(|a| a == "--streams")
            .and_then(|i| argv.get(i + 1))
            .cloned()
            .or_else(|| {
                argv.iter()
                    .find_map(|a| a.strip_prefix("--streams=").map(str::to_string))
            });
        if let Some(n) = streams {
            settings_argv.extend(["--conns".to_string(), n]);
        }
    }
    let (s, own) = args::parse("watch-latency", &settings_argv, &flags, defaults)?;
    let mut l = LatencyFlags {
        watchers: vec![1, 1000],
        puts: 200,
        idle: 0,
        server_pid: None,
        trace: None,
    };
    for (flag, v) in own {
        let num = |v: &str, max: u64| -> Result<u64, String> {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{flag}: {v:?} is not a valid number"))?;
            if n == 0 && flag != "--idle" || n > max {
                return Err(format!("{flag}: {n} is not in 1..={max}"));
            }
            Ok(n)
        };
        match flag.as_str() {
            "--watchers" => {
                l.watchers = v
                    .split(',')
                    .map(|w| num(w.trim(), MAX_WATCHERS as u64).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--puts" => l.puts = num(&v, MAX_WATCH_PUTS)?,
            "--idle" => l.idle = num(&v, MAX_WATCHERS as u64)? as usize,
            "--server-pid" => l.server_pid = Some(num(&v, u32::MAX as u64)? as u32),
            "--trace" => l.trace = Some(v.into()),
            other => return Err(format!("watch-latency: unexpected flag {other}")),
        }
    }
    if l.idle > 0 && l.server_pid.is_none() {
        return Err("--idle needs --server-pid (memory is read from /proc/<pid>/status)".into());
    }
    Ok((s, l))
}

/// Resident memory of a process, bytes.
fn vm_rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// Opens `streams` fresh streams over `conns` and creates `idle` watchers on distinct,
/// never-written keys (`round` keeps the two batches' keys apart). The streams and their
/// readers are returned, so the watchers stay alive.
async fn idle_batch(
    conns: &[StreamConn],
    streams: usize,
    idle: usize,
    round: usize,
    shared: &Arc<Shared>,
    create: &Rc<RefCell<Series>>,
) -> Result<(Vec<WatchSender>, Vec<tokio::task::JoinHandle<()>>), String> {
    let event = Rc::new(RefCell::new(Series::new("event")));
    let mut opened = Vec::with_capacity(streams);
    let mut readers = Vec::new();
    for st in 0..streams {
        let (tx, rx) = streams::open_watch(&conns[st % conns.len()])
            .await
            .map_err(|e| format!("open watch stream: {}", e.0))?;
        let state = Rc::new(StreamState {
            stream: usize::MAX,
            sent_at: RefCell::new(Vec::new()),
            acked: Cell::new(0),
            notify: Notify::new(),
        });
        if let Some(rx) = rx {
            readers.push(tokio::task::spawn_local(read_stream(
                rx,
                state.clone(),
                create.clone(),
                event.clone(),
                shared.clone(),
                true,
            )));
        }
        opened.push((tx, state));
    }
    let mut jobs = Vec::new();
    for (st, (tx, state)) in opened.iter_mut().enumerate() {
        let ids: Vec<usize> = (st..idle).step_by(streams).collect();
        jobs.push(async move {
            let key_of = |g: usize| format!("corekv-bench/idle/{round}/{g:09}").into_bytes();
            create_watchers(tx, state, create, shared, ids, &key_of).await
        });
    }
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    // corekv streams are read (drained of their `created` responses) from here on.
    let mut keep = Vec::new();
    for (tx, state) in opened {
        route_stream(
            tx.finish()?,
            state,
            (create, &event, shared),
            &mut readers,
            &mut keep,
        );
    }
    Ok((keep, readers))
}

/// Memory per idle watcher: `idle` watchers on distinct never-written keys, created twice
/// (each time on fresh streams over the same connections); the server's VmRSS before and
/// after the second batch (the first warms up the allocator with the transient buffers of
/// creating watchers).
fn memory_run(s: &Settings, idle: usize, pid: u32) -> Result<(u64, u64), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let streams = s.streams.min(idle).max(1);
        let conns = s.conns.clamp(1, streams);
        let mut cs = Vec::new();
        for _ in 0..conns {
            cs.push(streams::connect(s.target, &s.endpoints, s.timeout).await?);
        }
        let create = Rc::new(RefCell::new(Series::new("create")));
        let shared = Arc::new(Shared {
            plan: Plan {
                settings: s.clone(),
                watchers: idle,
                puts: 0,
                lockstep: false,
                trace: None,
            },
            keys: Keys::new(s),
            epoch: Instant::now(),
            sent_ns: Vec::new(),
            first_event_of: Vec::new(),
            last_event_of: Vec::new(),
            stream_latency: Vec::new(),
            events: AtomicU64::new(0),
            event_target: AtomicU64::new(u64::MAX),
            event_notify: Notify::new(),
            last_event_ns: AtomicU64::new(0),
            create_end_ns: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        });
        let first = idle_batch(&cs, streams, idle, 0, &shared, &create).await?;
        settle().await;
        let before = vm_rss(pid)?;
        let second = idle_batch(&cs, streams, idle, 1, &shared, &create).await?;
        settle().await;
        let after = vm_rss(pid)?;
        for r in first.1.iter().chain(&second.1) {
            r.abort();
        }
        if create.borrow().failed() > 0 {
            return Err(format!(
                "idle watchers: {} creates failed: {:?}",
                create.borrow().failed(),
                create.borrow().errors
            ));
        }
        Ok((before, after))
    })
}

/// Lets the server finish the work of the last creates before memory is read. There is no
/// condition to wait on from outside the server process; this is a measurement pause, not
/// a synchronisation.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Entry point of `watch-latency`: for each N in `--watchers`, N watchers on one key over
/// `--streams` streams, then `--puts` puts one at a time, each waiting for all N events.
/// With `--server-pid` and `--idle N`, the server's memory per idle watcher afterwards.
pub fn run_latency(argv: &[String]) -> Result<(), String> {
    let (s, l) = parse_latency(argv)?;
    let mut failed = false;
    for &n in &l.watchers {
        let settings = Settings {
            key_space_size: 1,
            ..s.clone()
        };
        let plan = Plan {
            settings,
            watchers: n,
            puts: l.puts,
            lockstep: true,
            trace: l.trace.as_ref().map(|t| {
                if l.watchers.len() == 1 {
                    t.clone()
                } else {
                    t.with_extension(format!("{n}.csv"))
                }
            }),
        };
        let r = run_plan(plan, "watch-latency")?;
        failed |= r.series.iter().any(|x| x.failed() > 0);
        r.print(s.json);
    }
    if let (Some(pid), true) = (l.server_pid, l.idle > 0) {
        let (before, after) = memory_run(&s, l.idle, pid)?;
        let per = after.saturating_sub(before) as f64 / l.idle as f64;
        let r = Report {
            workload: "watch-memory".into(),
            target: s.target.name().into(),
            config: vec![
                ("idle_watchers".into(), l.idle.to_string()),
                ("streams".into(), s.streams.min(l.idle).to_string()),
                ("server_pid".into(), pid.to_string()),
            ],
            elapsed: Duration::ZERO,
            client_cpu: Duration::ZERO,
            series: Vec::new(),
            checks: Vec::new(),
            notes: vec![format!(
                "{} idle watchers, then {} more on fresh streams; server VmRSS {:.1} MiB -> {:.1} MiB over the second batch",
                l.idle,
                l.idle,
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            )],
            metrics: vec![("bytes_per_idle_watcher".into(), per)],
        };
        r.print(s.json);
    }
    if failed {
        return Err("some creates, puts or events failed (see the report)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn put_values_carry_their_number() {
        let v = put_value(42, 8);
        assert_eq!(v.len(), SEQ_DIGITS, "values are at least the digits long");
        assert_eq!(put_number(&v), Some(42));
        let v = put_value(7, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(put_number(&v), Some(7));
        assert_eq!(put_number(b"short"), None);
        assert_eq!(put_number(&[b'x'; 30]), None);
    }

    #[test]
    fn watchers_spread_round_robin_over_streams() {
        let plan = Plan {
            settings: Settings {
                streams: 3,
                conns: 2,
                threads: Some(8),
                ..Settings::default()
            },
            watchers: 10,
            puts: 1,
            lockstep: false,
            trace: None,
        };
        assert_eq!(plan.streams(), 3);
        assert_eq!(plan.threads(), 2, "threads never exceed connections");
        let all: Vec<Vec<usize>> = (0..3).map(|s| plan.watchers_of(s).collect()).collect();
        assert_eq!(all, vec![vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]);
        let few = Plan {
            watchers: 2,
            ..plan
        };
        assert_eq!(few.streams(), 2, "no stream without a watcher");
    }

    #[test]
    fn latency_flags_parse_and_bad_flags_say_which() {
        let (s, l) = parse_latency(&args(&[
            "--watchers",
            "1,10",
            "--puts",
            "5",
            "--streams",
            "4",
            "--idle",
            "100",
            "--server-pid",
            "7",
        ]))
        .unwrap();
        assert_eq!(l.watchers, vec![1, 10]);
        assert_eq!((l.puts, l.idle, l.server_pid), (5, 100, Some(7)));
        assert_eq!((s.streams, s.conns), (4, 4), "one connection per stream");
        let (s, _) = parse_latency(&args(&["--streams", "4", "--conns", "2"])).unwrap();
        assert_eq!(s.conns, 2);
        assert!(parse_latency(&args(&["--puts", "x"]))
            .unwrap_err()
            .contains("--puts"));
        assert!(parse_latency(&args(&["--watchers", "0"]))
            .unwrap_err()
            .contains("--watchers"));
        assert!(parse_latency(&args(&["--idle", "5"]))
            .unwrap_err()
            .contains("--server-pid"));
        assert!(parse_latency(&args(&["--streams", "2", "--conns", "3"]))
            .unwrap_err()
            .contains("must not exceed --streams"));
    }
}
