//! The load driver every request/response subcommand shares: the same concurrency model,
//! clock, pacing and histograms for every target.
//!
//! Model (after etcd's benchmark tool): `--clients` request loops share `--conns`
//! connections (client `c` uses connection `c % conns`); connections are spread over
//! `--threads` OS threads, each running a tokio current-thread runtime with a `LocalSet`.
//! Each loop takes the next request number from one shared counter, waits for its slot
//! when `--rate` is set, sends the request, and records the latency (`Instant`, measured
//! around the request's future) in its thread's series. The run ends when `--total`
//! requests were taken or `--duration` has passed (requests in flight finish and count).
//!
//! A workload is a [`Workload`]: the names of its latency series and one function that
//! sends request `i` on a connection and says which series it belongs to.

use std::cell::RefCell;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::args::Settings;
use crate::report::{process_cpu, Report, Series};
use crate::target::{self, Conn, ErrorKind, Get};

/// A future a workload returns for one request.
pub type RequestFuture<'a> = Pin<Box<dyn Future<Output = (usize, Result<(), ErrorKind>)> + 'a>>;

/// A request/response workload.
pub trait Workload: Send + Sync + 'static {
    /// Subcommand name, for the report.
    fn name(&self) -> &str;
    /// Names of the latency series; [`Workload::request`] returns an index into these.
    fn series(&self) -> Vec<String>;
    /// Sends request number `i` (0-based, unique in the run) on `conn`; resolves to the
    /// series it belongs to and whether it succeeded.
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a>;
}

/// The key of the untimed warm-up read on each connection (need not exist).
const WARM_UP_KEY: &[u8] = b"corekv-bench/warm-up";
/// How long a run must last before the progress bar is drawn.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Spaces request starts `1/rate` apart over all clients, like a token bucket holding one
/// token: a slot missed while every client was busy is not made up later by a burst.
pub struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer for `rate` (> 0) requests per second.
    pub fn new(rate: f64) -> Pacer {
        debug_assert!(rate > 0.0 && rate.is_finite());
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(None),
        }
    }

    /// Reserves the next start slot at or after `now`.
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + self.interval);
        slot
    }
}

/// What one load thread measured.
struct ThreadResult {
    series: Vec<Series>,
    last_end: Option<Instant>,
}

/// Shared state of one run.
struct Shared {
    settings: Settings,
    workload: Arc<dyn Workload>,
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicBool,
    pacer: Option<Pacer>,
    start: Mutex<Option<Instant>>,
}

/// Runs `workload` with `settings` and returns what it measured.
pub fn run(settings: &Settings, workload: Arc<dyn Workload>) -> Result<Report, String> {
    let threads = settings.thread_count();
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        workload: workload.clone(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        pacer: settings.rate.map(Pacer::new),
        start: Mutex::new(None),
    });
    // Every thread connects, then waits here; the main thread starts the clock when all are
    // ready, so connection set-up is not measured (for either target).
    let ready = Arc::new(Barrier::new(threads + 1));
    let go = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let (shared, ready, go) = (shared.clone(), ready.clone(), go.clone());
        let handle = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || thread_main(t, threads, &shared, &ready, &go))
            .map_err(|e| format!("start load thread {t}: {e}"))?;
        handles.push(handle);
    }
    ready.wait();
    let cpu_before = process_cpu();
    let start = Instant::now();
    *shared.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
    go.wait();
    let progress = Progress::start(settings, shared.clone(), start);
    let mut series: Vec<Series> = workload.series().iter().map(|n| Series::new(n)).collect();
    let mut last_end = start;
    let mut first_error = None;
    for (t, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => {
                for (acc, s) in series.iter_mut().zip(&r.series) {
                    acc.merge(s);
                }
                last_end = last_end.max(r.last_end.unwrap_or(start));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(format!("load thread {t} panicked"));
            }
        }
    }
    progress.finish();
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(Report {
        workload: workload.name().to_string(),
        target: settings.target.name().to_string(),
        config: describe(settings, threads),
        elapsed: last_end.duration_since(start),
        client_cpu: process_cpu().saturating_sub(cpu_before),
        series,
        checks: Vec::new(),
        notes: Vec::new(),
        metrics: Vec::new(),
    })
}

/// The settings every load report records.
fn describe(s: &Settings, threads: usize) -> Vec<(String, String)> {
    let mut c = vec![
        ("endpoints".to_string(), s.endpoints.join(",")),
        ("clients".into(), s.clients.to_string()),
        ("conns".into(), s.conns.to_string()),
        ("threads".into(), threads.to_string()),
    ];
    if let Some(t) = s.total {
        c.push(("total".into(), t.to_string()));
    }
    if let Some(d) = s.duration {
        c.push(("duration_s".into(), format!("{}", d.as_secs_f64())));
    }
    if let Some(r) = s.rate {
        c.push(("rate".into(), r.to_string()));
    }
    c
}

fn thread_main(
    t: usize,
    threads: usize,
    shared: &Arc<Shared>,
    ready: &Barrier,
    go: &Barrier,
) -> Result<ThreadResult, String> {
    // Whatever happens, this thread must reach both barriers, or the others wait forever.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            shared.failed.store(true, Ordering::SeqCst);
            ready.wait();
            go.wait();
            return Err(format!("load thread {t}: start tokio runtime: {e}"));
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let s = &shared.settings;
        // Connections `t, t + threads, ...` belong to this thread.
        let mine: Vec<usize> = (t..s.conns).step_by(threads).collect();
        let mut conns = Vec::with_capacity(mine.len());
        let mut error = None;
        for &c in &mine {
            // Connection c prefers endpoint c % n (spreads load over a cluster's members).
            let n = s.endpoints.len();
            let endpoints: Vec<String> = (0..n).map(|k| s.endpoints[(c + k) % n].clone()).collect();
            match target::connect(s.target, &endpoints, s.timeout).await {
                Ok(mut conn) => {
                    // One untimed request per connection, so that lazily connecting clients
                    // (etcd-client's channel) have finished their handshakes before the clock
                    // starts, as corekv's client has.
                    let warm_up = Get::key(WARM_UP_KEY.to_vec(), true);
                    if let Err(e) = conn.get(warm_up).await {
                        error = Some(format!(
                            "warm-up read on connection {c} to {endpoints:?} failed: {}",
                            e.0
                        ));
                        break;
                    }
                    conns.push(conn);
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_some() {
            shared.failed.store(true, Ordering::SeqCst);
        }
        ready.wait();
        go.wait();
        if let Some(e) = error {
            return Err(e);
        }
        if shared.failed.load(Ordering::SeqCst) {
            return Err(format!("load thread {t}: another thread failed to connect"));
        }
        let start = shared
            .start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect("main thread sets the start before releasing `go`");
        let deadline = s.duration.map(|d| start + d);
        let total = s.total_requests();
        let names = shared.workload.series();
        let series = Rc::new(RefCell::new(
            names.iter().map(|n| Series::new(n)).collect::<Vec<_>>(),
        ));
        let last_end = Rc::new(RefCell::new(None::<Instant>));
        let mut tasks = Vec::new();
        // Client loops whose connection is one of this thread's.
        for client in (0..s.clients).filter(|c| c % s.conns % threads == t) {
            let idx = mine
                .iter()
                .position(|&c| c == client % s.conns)
                .expect("the client's connection belongs to this thread");
            let mut conn = conns[idx].clone();
            let (shared, series, last_end) = (shared.clone(), series.clone(), last_end.clone());
            tasks.push(tokio::task::spawn_local(async move {
                loop {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return;
                    }
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    if let Some(p) = &shared.pacer {
                        let slot = p.reserve(now);
                        if deadline.is_some_and(|d| slot >= d) {
                            return;
                        }
                        tokio::time::sleep_until(slot.into()).await;
                    }
                    let began = Instant::now();
                    let (k, r) = shared.workload.request(&mut conn, i).await;
                    let ended = Instant::now();
                    {
                        let mut series = series.borrow_mut();
                        debug_assert!(k < series.len(), "workload returned series {k}");
                        let last = series.len() - 1;
                        let s = &mut series[k.min(last)];
                        match r {
                            Ok(()) => s.record(ended - began),
                            Err(e) => s.fail(&e.0),
                        }
                    }
                    *last_end.borrow_mut() = Some(ended);
                    shared.done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await
                .map_err(|e| format!("load thread {t}: client loop failed: {e}"))?;
        }
        let series = series.borrow().clone();
        let last_end = *last_end.borrow();
        Ok(ThreadResult { series, last_end })
    })
}

/// A progress bar on stderr, drawn only on a terminal and only once a run has lasted
/// [`PROGRESS_AFTER`].
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(settings: &Settings, shared: Arc<Shared>, start: Instant) -> Progress {
        if settings.no_progress || !std::io::stderr().is_terminal() {
            return Progress {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let total = settings.total;
        let duration = settings.duration;
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let mut bar: Option<indicatif::ProgressBar> = None;
                // Ends when the run drops the sender.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(PROGRESS_TICK)
                {
                    if start.elapsed() < PROGRESS_AFTER {
                        continue;
                    }
                    let done = shared.done.load(Ordering::Relaxed);
                    let b = bar.get_or_insert_with(|| new_bar(total, duration));
                    match (total, duration) {
                        (Some(_), _) | (None, None) => b.set_position(done),
                        (None, Some(_)) => b.set_position(start.elapsed().as_secs()),
                    }
                    b.set_message(format!("{done} requests"));
                }
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
            })
            .ok();
        Progress {
            stop: Some(tx),
            thread,
        }
    }

    fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn new_bar(total: Option<u64>, duration: Option<Duration>) -> indicatif::ProgressBar {
    let (len, unit) = match (total, duration) {
        (Some(n), _) => (n, "req"),
        (None, Some(d)) => (d.as_secs().max(1), "s"),
        (None, None) => (crate::args::DEFAULT_TOTAL, "req"),
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed}} {{msg}}"
    ));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_slots_and_does_not_burst_after_a_gap() {
        let p = Pacer::new(1000.0);
        let t0 = Instant::now();
        let a = p.reserve(t0);
        let b = p.reserve(t0);
        let c = p.reserve(t0);
        assert_eq!(a, t0);
        assert_eq!(b - a, Duration::from_millis(1));
        assert_eq!(c - b, Duration::from_millis(1));
        // Nobody asked for 10 ms: the next slot is "now", not a backlog of missed slots.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(p.reserve(later), later);
        assert_eq!(p.reserve(later), later + Duration::from_millis(1));
    }
}
