//! The report: per-phase medians over rounds as a table or as JSON.

use std::fmt::Write as _;

use super::{Config, EngineKind, EngineRun, PhaseResult};

/// A duration in nanoseconds with a readable unit.
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// A rate with a k/M suffix.
fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The median of `v` (mean of the middle two for an even count); `None` if empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// One phase of one engine, summarised over rounds.
pub struct Summary {
    /// Phase name.
    pub phase: String,
    /// Engine.
    pub engine: EngineKind,
    /// Median ops/s.
    pub ops_per_sec: f64,
    /// Median of the per-round p50 latencies (ns).
    pub p50_ns: f64,
    /// Median of the per-round p99 latencies (ns).
    pub p99_ns: f64,
    /// Median entries per second (scans: entries visited; reads: values found).
    pub entries_per_sec: f64,
    /// Write phases: median of the mean time per commit spent applying the puts (ns).
    pub apply_ns: Option<f64>,
    /// Write phases: the same for corekv's publish (0 for the others).
    pub publish_ns: Option<f64>,
    /// Write phases: the same for making the commit durable (sync / commit).
    pub sync_ns: Option<f64>,
}

/// Per phase (in run order) and engine (in `cfg.engines` order), the medians over rounds.
pub fn summarise(cfg: &Config, runs: &[EngineRun]) -> Vec<Summary> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for phase in first.phases.iter().map(|p| &p.phase) {
        for &engine in &cfg.engines {
            let rounds: Vec<&PhaseResult> = runs
                .iter()
                .filter(|r| r.engine == engine)
                .flat_map(|r| r.phases.iter().filter(|p| &p.phase == phase))
                .collect();
            let med = |f: &dyn Fn(&PhaseResult) -> f64| {
                median(rounds.iter().map(|p| f(p)).collect()).unwrap_or(f64::NAN)
            };
            if rounds.is_empty() {
                continue;
            }
            out.push(Summary {
                phase: phase.clone(),
                engine,
                ops_per_sec: med(&|p| p.ops_per_sec()),
                p50_ns: med(&|p| p.latency.value_at_quantile(0.5) as f64),
                p99_ns: med(&|p| p.latency.value_at_quantile(0.99) as f64),
                entries_per_sec: med(&|p| p.entries as f64 / p.busy.as_secs_f64().max(1e-9)),
                apply_ns: per_commit(&rounds, |p| p.write_times.apply.as_nanos() as f64),
                publish_ns: per_commit(&rounds, |p| p.write_times.publish.as_nanos() as f64),
                sync_ns: per_commit(&rounds, |p| p.write_times.sync.as_nanos() as f64),
            });
        }
    }
    out
}

/// The median over rounds of `total(p) / p.commits`; `None` unless this is a write phase.
fn per_commit(rounds: &[&PhaseResult], total: impl Fn(&PhaseResult) -> f64) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter(|p| p.commits > 0)
            .map(|p| total(p) / p.commits as f64)
            .collect(),
    )
}

/// corekv's median ops/s divided by `s`'s (above 1: corekv is faster), if corekv ran.
fn corekv_ratio(all: &[Summary], s: &Summary) -> Option<f64> {
    let ck = corekv_of(all, s)?;
    Some(ck.ops_per_sec / s.ops_per_sec)
}

/// `s`'s median p50 latency divided by corekv's (above 1: corekv is faster), if corekv ran.
/// Medians resist the preemption spikes of a shared machine better than means (ops/s).
fn corekv_p50_ratio(all: &[Summary], s: &Summary) -> Option<f64> {
    let ck = corekv_of(all, s)?;
    Some(s.p50_ns / ck.p50_ns)
}

fn corekv_of<'a>(all: &'a [Summary], s: &Summary) -> Option<&'a Summary> {
    all.iter()
        .find(|c| c.phase == s.phase && c.engine == EngineKind::Corekv)
}

fn median_disk(runs: &[EngineRun], engine: EngineKind) -> Option<u64> {
    let v = runs
        .iter()
        .filter(|r| r.engine == engine)
        .map(|r| r.disk_bytes as f64)
        .collect();
    median(v).map(|m| m as u64)
}

/// `--corekv-sync` as given.
fn sync_mode(cfg: &Config) -> &'static str {
    if cfg.corekv_blocking_sync {
        "blocking"
    } else {
        "ring"
    }
}

/// The human-readable report.
pub fn table(cfg: &Config, runs: &[EngineRun]) -> String {
    let all = summarise(cfg, runs);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "corekv-bench backend: {} keys loaded, {} B keys, {} B values, medians of {} rounds, \
         corekv sync {}",
        cfg.keys,
        cfg.shape.key_size,
        cfg.shape.value_size,
        cfg.rounds,
        sync_mode(cfg)
    );
    let _ = writeln!(
        t,
        "put/load: ops = puts, latency = one durable commit; get: latency = one read (1 in {}); \
         scan: ops = scans, latency = one scan txn\n\
         x ops/s = corekv ops/s / this ops/s; x p50 = this p50 / corekv p50 (above 1: corekv faster)",
        super::READ_SAMPLE_EVERY
    );
    let _ = writeln!(
        t,
        "{:<16} {:<7} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "phase", "engine", "ops/s", "p50", "p99", "x ops/s", "x p50"
    );
    let mut last_phase = "";
    for s in &all {
        let label = if s.phase == last_phase { "" } else { &s.phase };
        let ratio = |r: Option<f64>| match (s.engine, r) {
            (EngineKind::Corekv, _) | (_, None) => String::new(),
            (_, Some(r)) => format!("{r:.2}"),
        };
        let _ = writeln!(
            t,
            "{:<16} {:<7} {:>10} {:>10} {:>10} {:>8} {:>8}",
            label,
            s.engine.name(),
            fmt_rate(s.ops_per_sec),
            fmt_ns(s.p50_ns as u64),
            fmt_ns(s.p99_ns as u64),
            ratio(corekv_ratio(&all, s)),
            ratio(corekv_p50_ratio(&all, s)),
        );
        last_phase = &s.phase;
    }
    let _ = writeln!(
        t,
        "\nwrite breakdown, mean per commit (median of rounds):\n{:<16} {:<7} {:>10} {:>10} {:>10}",
        "phase", "engine", "apply", "publish", "sync"
    );
    let mut last_phase = "";
    for s in &all {
        let (Some(a), Some(p), Some(y)) = (s.apply_ns, s.publish_ns, s.sync_ns) else {
            continue;
        };
        let label = if s.phase == last_phase { "" } else { &s.phase };
        let _ = writeln!(
            t,
            "{:<16} {:<7} {:>10} {:>10} {:>10}",
            label,
            s.engine.name(),
            fmt_ns(a as u64),
            fmt_ns(p as u64),
            fmt_ns(y as u64)
        );
        last_phase = &s.phase;
    }
    let _ = writeln!(
        t,
        "(apply = begin + puts; publish = corekv pages to the file + visible; sync = corekv \
         sync, LMDB/redb commit)"
    );
    let _ = write!(t, "disk used at the end (median):");
    for &e in &cfg.engines {
        if let Some(b) = median_disk(runs, e) {
            let _ = write!(t, "  {} {}", e.name(), fmt_bytes(b));
        }
    }
    if let Some(keys) = runs.first().map(|r| r.final_keys) {
        let _ = write!(t, "  ({keys} keys)");
    }
    t
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (`null` for NaN or infinity, which JSON cannot carry).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// The machine-readable report: configuration, medians with ratios, and every round.
pub fn json(cfg: &Config, runs: &[EngineRun]) -> String {
    let all = summarise(cfg, runs);
    let mut j = String::from("{");
    let engines: Vec<String> = cfg.engines.iter().map(|e| json_str(e.name())).collect();
    let batches: Vec<String> = cfg.batches.iter().map(|b| b.to_string()).collect();
    let _ = write!(
        j,
        "\"config\":{{\"dir\":{},\"keys\":{},\"key_size\":{},\"value_size\":{},\"seed\":{},\
         \"batches\":[{}],\"puts\":{},\"min_commits\":{},\"load_batch\":{},\"reads\":{},\
         \"reads_per_txn\":{},\"scans\":{},\"scan_len\":{},\"rounds\":{},\"engines\":[{}],\
         \"read_sample_every\":{},\"map_size\":{},\"corekv_sync\":{}}}",
        json_str(&cfg.dir.display().to_string()),
        cfg.keys,
        cfg.shape.key_size,
        cfg.shape.value_size,
        cfg.shape.seed,
        batches.join(","),
        cfg.puts,
        cfg.min_commits,
        cfg.load_batch,
        cfg.reads,
        cfg.reads_per_txn,
        cfg.scans,
        cfg.scan_len,
        cfg.rounds,
        engines.join(","),
        super::READ_SAMPLE_EVERY,
        cfg.map_size,
        json_str(sync_mode(cfg)),
    );
    let summary: Vec<String> = all
        .iter()
        .map(|s| {
            format!(
                "{{\"phase\":{},\"engine\":{},\"ops_per_sec\":{},\"p50_ns\":{},\"p99_ns\":{},\
                 \"entries_per_sec\":{},\"corekv_over_this\":{},\"p50_this_over_corekv\":{},\
                 \"apply_ns_per_commit\":{},\
                 \"publish_ns_per_commit\":{},\"sync_ns_per_commit\":{}}}",
                json_str(&s.phase),
                json_str(s.engine.name()),
                json_num(s.ops_per_sec),
                json_num(s.p50_ns),
                json_num(s.p99_ns),
                json_num(s.entries_per_sec),
                corekv_ratio(&all, s).map_or("null".into(), json_num),
                corekv_p50_ratio(&all, s).map_or("null".into(), json_num),
                s.apply_ns.map_or("null".into(), json_num),
                s.publish_ns.map_or("null".into(), json_num),
                s.sync_ns.map_or("null".into(), json_num),
            )
        })
        .collect();
    let _ = write!(j, ",\"summary\":[{}]", summary.join(","));
    let rounds: Vec<String> = runs
        .iter()
        .map(|r| {
            let phases: Vec<String> = r
                .phases
                .iter()
                .map(|p| {
                    format!(
                        "{{\"phase\":{},\"ops\":{},\"busy_ns\":{},\"ops_per_sec\":{},\
                         \"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{},\"samples\":{},\
                         \"entries\":{}}}",
                        json_str(&p.phase),
                        p.ops,
                        p.busy.as_nanos(),
                        json_num(p.ops_per_sec()),
                        p.latency.value_at_quantile(0.5),
                        p.latency.value_at_quantile(0.99),
                        p.latency.max(),
                        p.latency.len(),
                        p.entries,
                    )
                })
                .collect();
            format!(
                "{{\"round\":{},\"engine\":{},\"disk_bytes\":{},\"final_keys\":{},\"phases\":[{}]}}",
                r.round,
                json_str(r.engine.name()),
                r.disk_bytes,
                r.final_keys,
                phases.join(",")
            )
        })
        .collect();
    let _ = write!(j, ",\"runs\":[{}]}}", rounds.join(","));
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formats() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(1_500), "1.5µs");
        assert_eq!(fmt_ns(2_500_000), "2.50ms");
        assert_eq!(fmt_rate(1_234_567.0), "1.23M");
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_num(f64::NAN), "null");
    }
}
