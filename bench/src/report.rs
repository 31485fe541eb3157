//! What a load run measured, and how it is printed (text for people, JSON for scripts).
//!
//! A run records one or more latency [`Series`] (e.g. `txn-mixed` records reads and writes
//! apart); each has an hdrhistogram of successful requests' latencies in microseconds and the
//! failed requests counted by [`ErrorKind`](crate::target::ErrorKind) label.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Largest latency a histogram records, µs (one hour; longer requests saturate at it).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits the histograms keep (0.1% relative error).
pub const HISTOGRAM_DIGITS: u8 = 3;
/// Buckets of the printed histogram.
pub const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the printed histogram's longest bar, characters.
const BAR_WIDTH: u64 = 40;

/// An empty latency histogram with the bounds every series uses.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// The requests of one kind in a run.
#[derive(Clone, Debug)]
pub struct Series {
    /// What the requests were ("put", "read", ...).
    pub name: String,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latencies of the successful requests, µs.
    pub latency_us: Histogram<u64>,
    /// This series' own duration when it is one phase of a run (watch creation, say); `None`:
    /// the report's. Throughput is counted over it.
    pub elapsed: Option<Duration>,
}

impl Series {
    /// An empty series.
    pub fn new(name: &str) -> Series {
        Series {
            name: name.to_string(),
            errors: BTreeMap::new(),
            latency_us: new_histogram(),
            elapsed: None,
        }
    }

    /// Records one successful request that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
    }

    /// Records one failed request.
    pub fn fail(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds `other`'s requests (same name) to this series.
    pub fn merge(&mut self, other: &Series) {
        debug_assert_eq!(self.name, other.name);
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        // Same bounds on both sides, so adding cannot fail.
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with equal bounds add");
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The numbers people compare, over a run of `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let h = &self.latency_us;
        let secs = elapsed.as_secs_f64();
        let ok = self.ok();
        let q = |x: f64| if ok == 0 { 0 } else { h.value_at_quantile(x) };
        Summary {
            ok,
            failed: self.failed(),
            throughput: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            min_us: if ok == 0 { 0 } else { h.min() },
            mean_us: if ok == 0 { 0.0 } else { h.mean() },
            stddev_us: if ok == 0 { 0.0 } else { h.stdev() },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ok == 0 { 0 } else { h.max() },
        }
    }

    /// `HISTOGRAM_BUCKETS` log-spaced buckets from the fastest to the slowest request:
    /// (upper bound µs, requests in the bucket). Every request lands in exactly one bucket.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        let h = &self.latency_us;
        if h.is_empty() {
            return Vec::new();
        }
        let (lo, hi) = (h.min().max(1), h.max().max(1));
        let ratio = (hi as f64 / lo as f64).powf(1.0 / HISTOGRAM_BUCKETS as f64);
        let mut out = Vec::with_capacity(HISTOGRAM_BUCKETS);
        let mut prev_top = 0u64;
        let mut counted = 0u64;
        for b in 1..=HISTOGRAM_BUCKETS {
            let top = if b == HISTOGRAM_BUCKETS {
                hi
            } else {
                ((lo as f64) * ratio.powi(b as i32)).round() as u64
            };
            if top <= prev_top {
                continue;
            }
            // hdrhistogram buckets values into equivalent ranges; count up to the bucket top's
            // range end so that no value is counted twice or lost between buckets.
            let n = h.count_between(prev_top.saturating_add(1), top);
            counted += n;
            out.push((top, n));
            prev_top = h.highest_equivalent(top);
        }
        debug_assert!(counted <= h.len());
        out
    }
}

/// The headline numbers of a [`Series`].
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// Successful requests per second of the run.
    pub throughput: f64,
    /// Fastest, µs.
    pub min_us: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Standard deviation, µs.
    pub stddev_us: f64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
}

/// A pass/fail criterion (check-perf).
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What was checked and the measured value.
    pub what: String,
    /// Whether it held.
    pub pass: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Subcommand.
    pub workload: String,
    /// Server name ("corekv", "etcd").
    pub target: String,
    /// The flags that shaped the load, for the record.
    pub config: Vec<(String, String)>,
    /// From the first request's start to the last request's end.
    pub elapsed: Duration,
    /// CPU time the load generator itself used (user + system), to show when it, rather
    /// than the server, may be the limit.
    pub client_cpu: Duration,
    /// Latency series.
    pub series: Vec<Series>,
    /// Pass/fail criteria, if the workload has any.
    pub checks: Vec<Check>,
    /// Free-form lines (set-up and clean-up facts).
    pub notes: Vec<String>,
    /// Named numbers a workload measures besides its latency series (events/s, keep-alives/s,
    /// bytes per watcher), in the order they were added.
    pub metrics: Vec<(String, f64)>,
}

impl Report {
    /// Whether every check passed (true when there are none).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// Human-readable report: per series the throughput, latency percentiles, a histogram
    /// and the errors by kind.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} against {} ({}): {:.2}s, load generator CPU {:.2}s\n",
            self.workload,
            self.target,
            self.config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.elapsed.as_secs_f64(),
            self.client_cpu.as_secs_f64(),
        );
        for series in &self.series {
            let m = series.summary(series.elapsed.unwrap_or(self.elapsed));
            s.push_str(&format!(
                "\n[{}] {} ok, {} failed, {:.1} req/s\n  latency: min {} mean {:.0} stddev {:.0} | p50 {} p90 {} p99 {} p99.9 {} max {} (µs)\n",
                series.name,
                m.ok,
                m.failed,
                m.throughput,
                m.min_us,
                m.mean_us,
                m.stddev_us,
                m.p50_us,
                m.p90_us,
                m.p99_us,
                m.p999_us,
                m.max_us
            ));
            let buckets = series.buckets();
            let most = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1);
            if !buckets.is_empty() {
                s.push_str("  histogram (µs, up to):\n");
            }
            for (top, n) in buckets {
                let bar = "∎".repeat(((n * BAR_WIDTH).div_ceil(most)) as usize);
                s.push_str(&format!("  {top:>10} [{n:>9}] {bar}\n"));
            }
            for (kind, n) in &series.errors {
                s.push_str(&format!("  error {kind}: {n}\n"));
            }
        }
        for c in &self.checks {
            let verdict = if c.pass { "PASS" } else { "FAIL" };
            s.push_str(&format!("{verdict}: {}\n", c.what));
        }
        if !self.checks.is_empty() {
            s.push_str(if self.passed() { "PASS\n" } else { "FAIL\n" });
        }
        for (name, v) in &self.metrics {
            s.push_str(&format!("{name}: {v:.1}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    /// Machine-readable report (one JSON object).
    pub fn json(&self) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|series| {
                let m = series.summary(series.elapsed.unwrap_or(self.elapsed));
                json!({
                    "name": series.name,
                    "ok": m.ok,
                    "failed": m.failed,
                    "throughput": m.throughput,
                    "latency_us": {
                        "min": m.min_us, "mean": m.mean_us, "stddev": m.stddev_us,
                        "p50": m.p50_us, "p90": m.p90_us, "p99": m.p99_us,
                        "p999": m.p999_us, "max": m.max_us,
                    },
                    "histogram": series.buckets().iter()
                        .map(|(top, n)| json!({"le_us": top, "count": n}))
                        .collect::<Vec<_>>(),
                    "errors": series.errors,
                })
            })
            .collect();
        let config: serde_json::Map<String, Value> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let metrics: serde_json::Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "workload": self.workload,
            "target": self.target,
            "config": config,
            "seconds": self.elapsed.as_secs_f64(),
            "client_cpu_seconds": self.client_cpu.as_secs_f64(),
            "series": series,
            "checks": self.checks.iter().map(|c| json!({"what": c.what, "pass": c.pass})).collect::<Vec<_>>(),
            "passed": self.passed(),
            "notes": self.notes,
            "metrics": metrics,
        })
    }

    /// Prints the report to stdout as text or JSON.
    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.json());
        } else {
            print!("{}", self.text());
        }
    }
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(latencies_us: &[u64]) -> Series {
        let mut s = Series::new("put");
        for &us in latencies_us {
            s.record(Duration::from_micros(us));
        }
        s
    }

    #[test]
    fn summary_reports_count_rate_and_percentiles() {
        // 1..=1000 µs, one request each: percentiles are the values themselves.
        let lat: Vec<u64> = (1..=1000).collect();
        let mut s = series(&lat);
        s.fail("timeout");
        s.fail("timeout");
        s.fail("transport");
        let m = s.summary(Duration::from_secs(2));
        assert_eq!((m.ok, m.failed), (1000, 3));
        assert!((m.throughput - 500.0).abs() < 1e-9);
        assert_eq!(m.min_us, 1);
        assert_eq!(m.max_us, 1000);
        assert_eq!(m.p50_us, 500);
        assert_eq!(m.p90_us, 900);
        assert_eq!(m.p99_us, 990);
        assert_eq!(m.p999_us, 999);
        assert!((m.mean_us - 500.5).abs() < 1.0, "mean {}", m.mean_us);
        // Population stddev of 1..=1000 is about 288.7.
        assert!((m.stddev_us - 288.7).abs() < 1.0, "stddev {}", m.stddev_us);
    }

    #[test]
    fn empty_series_summarises_to_zeros() {
        let m = Series::new("x").summary(Duration::from_secs(1));
        assert_eq!((m.ok, m.p99_us, m.max_us), (0, 0, 0));
        assert!(Series::new("x").buckets().is_empty());
    }

    #[test]
    fn buckets_count_every_request_once() {
        let lat: Vec<u64> = (0..5000).map(|i| 50 + (i * i) % 90_000).collect();
        let s = series(&lat);
        let b = s.buckets();
        assert!(!b.is_empty() && b.len() <= HISTOGRAM_BUCKETS);
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 5000);
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "bucket tops ascend");
        assert_eq!(b.last().unwrap().0, s.latency_us.max());
        // One distinct value: a single bucket.
        let one = series(&[700, 700, 700]);
        assert_eq!(one.buckets().iter().map(|x| x.1).sum::<u64>(), 3);
    }

    #[test]
    fn merge_adds_requests_and_errors() {
        let mut a = series(&[10, 20]);
        a.fail("timeout");
        let mut b = series(&[30]);
        b.fail("timeout");
        b.fail("grpc:Internal");
        a.merge(&b);
        assert_eq!(a.ok(), 3);
        assert_eq!(a.errors["timeout"], 2);
        assert_eq!(a.errors["grpc:Internal"], 1);
    }

    #[test]
    fn text_and_json_carry_the_same_numbers() {
        let mut s = series(&[100, 200, 300, 400]);
        s.fail("timeout");
        let r = Report {
            workload: "put".into(),
            target: "corekv".into(),
            config: vec![("clients".into(), "4".into())],
            elapsed: Duration::from_secs(1),
            client_cpu: Duration::from_millis(5),
            series: vec![s],
            checks: vec![Check {
                what: "throughput".into(),
                pass: false,
            }],
            notes: vec!["hello".into()],
            metrics: vec![("events_per_sec".into(), 12.5)],
        };
        let t = r.text();
        assert!(t.contains("4 ok, 1 failed, 4.0 req/s"), "{t}");
        assert!(t.contains("error timeout: 1"), "{t}");
        assert!(
            t.contains("FAIL: throughput")
                && t.contains("events_per_sec: 12.5\n")
                && t.ends_with("note: hello\n"),
            "{t}"
        );
        let j = r.json();
        assert_eq!(j["series"][0]["ok"], 4);
        assert_eq!(j["series"][0]["errors"]["timeout"], 1);
        assert_eq!(j["series"][0]["latency_us"]["max"], 400);
        assert_eq!(j["passed"], false);
        assert_eq!(j["config"]["clients"], "4");
        assert_eq!(j["metrics"]["events_per_sec"], 12.5);
        let counted: u64 = j["series"][0]["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 4);
    }
}
