//! `corekv-bench put|range`: load against a running corekv server through the Rust client.
//!
//! `--clients` concurrent request loops share `--conns` connections (round-robin), on one
//! glommio executor per `--threads`; every request's latency goes into an hdrhistogram.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv::client::{Client, ClientError, ClientOptions, Glommio};
use corekv::mvcc::{PutRequest, RangeRequest};
use hdrhistogram::Histogram;

/// Which request the benchmark sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts of random (or sequential) keys.
    Put,
    /// Single-key ranges of keys written beforehand.
    Range,
}

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Server endpoints.
    pub endpoints: Vec<String>,
    /// Concurrent request loops.
    pub clients: usize,
    /// Connections shared by the clients.
    pub conns: usize,
    /// Executor threads the connections are spread over.
    pub threads: usize,
    /// Requests in total.
    pub total: u64,
    /// Key size, bytes.
    pub key_size: usize,
    /// Value size, bytes.
    pub val_size: usize,
    /// Distinct keys.
    pub key_space_size: u64,
    /// Keys in order instead of random.
    pub sequential_keys: bool,
    /// Serializable ranges (`s`) instead of linearizable (`l`).
    pub serializable: bool,
    /// Print JSON.
    pub json: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: 1,
            conns: 1,
            threads: 1,
            total: 10_000,
            key_size: 8,
            val_size: 256,
            key_space_size: 100_000,
            sequential_keys: false,
            serializable: false,
            json: false,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Requests that succeeded.
    pub ok: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of successful requests, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Report {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Human-readable summary.
    pub fn text(&self, name: &str) -> String {
        let h = &self.latency_us;
        let mut s = format!(
            "{name}: {} ok in {:.2}s = {:.0} req/s\nlatency us: p50 {} p90 {} p99 {} p99.9 {} max {}\n",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
        for (kind, n) in &self.errors {
            s.push_str(&format!("errors: {n} x {kind}\n"));
        }
        s
    }

    /// Machine-readable summary.
    pub fn json(&self, name: &str) -> String {
        let h = &self.latency_us;
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{{\"kind\":{k:?},\"count\":{n}}}"))
            .collect();
        format!(
            "{{\"workload\":{name:?},\"ok\":{},\"seconds\":{:.6},\"throughput\":{:.1},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"errors\":[{}]}}",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            errors.join(",")
        )
    }
}

fn key_for(i: u64, key_size: usize) -> Vec<u8> {
    let digits = format!("{i:020}");
    let mut k = vec![b'k'; key_size.max(1)];
    let n = digits.len().min(k.len());
    let at = k.len() - n;
    k[at..].copy_from_slice(&digits.as_bytes()[digits.len() - n..]);
    k
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server(e) => format!("{:?}", e.code),
        ClientError::Transport(_) => "Transport".into(),
        ClientError::Timeout(_) => "Timeout".into(),
        ClientError::BadEndpoint(_) => "BadEndpoint".into(),
    }
}

/// Writes every key of the key space once (so ranges find them).
pub fn preload(s: &Settings) -> Result<(), String> {
    let load = Settings {
        total: s.key_space_size,
        sequential_keys: true,
        clients: 64.max(s.clients),
        conns: s.conns.max(4),
        json: false,
        ..s.clone()
    };
    let report = run_workload(&load, Workload::Put)?;
    if !report.errors.is_empty() {
        return Err(format!("preload failed: {:?}", report.errors));
    }
    Ok(())
}

/// Runs `workload` with settings `s`.
pub fn run_workload(s: &Settings, workload: Workload) -> Result<Report, String> {
    if s.clients == 0 || s.conns == 0 || s.threads == 0 {
        return Err("--clients, --conns and --threads must be at least 1".into());
    }
    if s.conns > s.clients {
        return Err(format!(
            "--conns ({}) must not exceed --clients ({})",
            s.conns, s.clients
        ));
    }
    let threads = s.threads.min(s.conns);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let s = s.clone();
        let next = next.clone();
        // Connections and clients of this thread.
        let conns: Vec<usize> = (0..s.conns).filter(|c| c % threads == t).collect();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("bench-{t}"))
            .spawn(move || async move {
                let mut clients = Vec::new();
                for _ in &conns {
                    let options = ClientOptions {
                        request_timeout: Duration::from_secs(30),
                        ..ClientOptions::default()
                    };
                    clients.push(Rc::new(
                        Client::connect(&s.endpoints, options, Glommio)
                            .await
                            .map_err(|e| e.to_string())?,
                    ));
                }
                let hist = Rc::new(std::cell::RefCell::new(
                    Histogram::<u64>::new(3).expect("histogram"),
                ));
                let ok = Rc::new(Cell::new(0u64));
                let errors = Rc::new(std::cell::RefCell::new(BTreeMap::<String, u64>::new()));
                let mut tasks = Vec::new();
                // Client loops assigned to this thread's connections, round-robin.
                for loop_id in (0..s.clients).filter(|l| conns.contains(&(l % s.conns))) {
                    let client = clients[conns
                        .iter()
                        .position(|c| *c == loop_id % s.conns)
                        .expect("own conn")]
                    .clone();
                    let (s, next, hist, ok, errors) = (
                        s.clone(),
                        next.clone(),
                        hist.clone(),
                        ok.clone(),
                        errors.clone(),
                    );
                    tasks.push(glommio::spawn_local(async move {
                        let value = vec![b'v'; s.val_size];
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= s.total {
                                return;
                            }
                            let k = if s.sequential_keys {
                                i % s.key_space_size
                            } else {
                                mix(i) % s.key_space_size
                            };
                            let key = key_for(k, s.key_size);
                            let began = Instant::now();
                            let r = match workload {
                                Workload::Put => client
                                    .put(PutRequest {
                                        key,
                                        value: value.clone(),
                                        ..PutRequest::default()
                                    })
                                    .await
                                    .map(|_| ()),
                                Workload::Range => client
                                    .range(RangeRequest {
                                        key,
                                        serializable: s.serializable,
                                        ..RangeRequest::default()
                                    })
                                    .await
                                    .map(|_| ()),
                            };
                            match r {
                                Ok(()) => {
                                    let us = began.elapsed().as_micros() as u64;
                                    let _ = hist.borrow_mut().record(us.max(1));
                                    ok.set(ok.get() + 1);
                                }
                                Err(e) => {
                                    *errors.borrow_mut().entry(error_kind(&e)).or_default() += 1
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
                let h = hist.borrow().clone();
                let e = errors.borrow().clone();
                Ok::<_, String>((ok.get(), e, h))
            })
            .map_err(|e| format!("start bench thread: {e}"))?;
        handles.push(handle);
    }
    let mut report = Report {
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency_us: Histogram::new(3).expect("histogram"),
    };
    for h in handles {
        let (ok, errors, hist) = h.join().map_err(|e| format!("bench thread: {e}"))??;
        report.ok += ok;
        for (k, n) in errors {
            *report.errors.entry(k).or_default() += n;
        }
        report.latency_us.add(hist).map_err(|e| e.to_string())?;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

fn usage(cmd: &str) -> String {
    format!(
        "usage: corekv-bench {cmd} [--endpoints a,b] [--clients N] [--conns N] [--threads N] [--total N]\n\
         \x20      [--key-size N] [--val-size N] [--key-space-size N] [--sequential-keys]{} [--json]",
        if cmd == "range" { " [--consistency l|s]" } else { "" }
    )
}

/// Parses flags shared by `put` and `range`.
pub fn parse(cmd: &str, args: &[String]) -> Result<Settings, String> {
    let mut s = Settings::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage(cmd)))
        };
        let num = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--endpoints" => {
                s.endpoints = value("--endpoints")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--clients" => s.clients = num("--clients", value("--clients")?)? as usize,
            "--conns" => s.conns = num("--conns", value("--conns")?)? as usize,
            "--threads" => s.threads = num("--threads", value("--threads")?)? as usize,
            "--total" => s.total = num("--total", value("--total")?)?,
            "--key-size" => s.key_size = num("--key-size", value("--key-size")?)? as usize,
            "--val-size" => s.val_size = num("--val-size", value("--val-size")?)? as usize,
            "--key-space-size" => {
                s.key_space_size = num("--key-space-size", value("--key-space-size")?)?.max(1)
            }
            "--sequential-keys" => s.sequential_keys = true,
            "--consistency" if cmd == "range" => {
                s.serializable = match value("--consistency")?.as_str() {
                    "s" => true,
                    "l" => false,
                    other => return Err(format!("--consistency: {other:?} is not l or s")),
                }
            }
            "--json" => s.json = true,
            "-h" | "--help" => return Err(usage(cmd)),
            other => return Err(format!("unknown flag {other:?}\n{}", usage(cmd))),
        }
    }
    Ok(s)
}

/// Entry point of `corekv-bench put` and `corekv-bench range`.
pub fn run(cmd: &str, args: &[String]) -> Result<(), String> {
    let s = parse(cmd, args)?;
    let workload = match cmd {
        "put" => Workload::Put,
        "range" => {
            preload(&s)?;
            Workload::Range
        }
        other => return Err(format!("unknown workload {other}")),
    };
    let report = run_workload(&s, workload)?;
    if s.json {
        println!("{}", report.json(cmd));
    } else {
        print!("{}", report.text(cmd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_flags_say_which() {
        let s = parse(
            "range",
            &["--clients", "256", "--conns", "16", "--consistency", "s"].map(String::from),
        )
        .unwrap();
        assert_eq!((s.clients, s.conns, s.serializable), (256, 16, true));
        assert!(parse("put", &["--clients".to_string()])
            .unwrap_err()
            .contains("--clients"));
        assert!(parse("put", &["--consistency".into(), "s".into()])
            .unwrap_err()
            .contains("unknown flag"));
        assert!(parse("put", &["--total".into(), "x".into()])
            .unwrap_err()
            .contains("--total"));
    }

    #[test]
    fn keys_have_the_requested_size_and_differ() {
        assert_eq!(key_for(7, 8).len(), 8);
        assert_ne!(key_for(7, 8), key_for(8, 8));
        assert_eq!(key_for(123, 2).len(), 2);
    }
}
