//! `corekv-bench lease-keepalive`: keep-alive throughput, for both targets.
//!
//! Grants `--leases` leases (untimed), then `--conns` connections run `--inflight` loops
//! each, on one load thread (a tokio current-thread runtime with a `LocalSet`, for both
//! targets). A loop owns an equal share of the leases and sends keep-alive rounds of
//! `--batch` ids, cycling through its share, until `--duration` passes. Every answer is
//! checked: an id answered "not found" counts as lost. The leases are revoked at the end.
//!
//! What a round is differs by protocol, and the report says so (`ids_per_message`): corekv
//! sends a round as one message of `--batch` ids; etcd's `LeaseKeepAlive` request carries one
//! id, so a round is `--batch` messages sent back to back on the leases' keep-alive streams
//! (`etcd-client` opens one per lease) and awaited together. With `--batch 1` both send one
//! id per message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::args::{self, Settings};
use crate::report::{process_cpu, Report, Series};
use crate::streams;

/// Grants (and revokes) in flight while setting up and cleaning up.
const GRANT_CONCURRENCY: usize = 64;
/// Most leases one run grants.
pub const MAX_LEASES: u64 = 10_000_000;
/// Most keep-alive loops per connection.
pub const MAX_INFLIGHT: u64 = 10_000;
/// Default length of the keep-alive phase.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// `lease-keepalive`'s own flags.
#[derive(Clone, Debug, PartialEq)]
struct LeaseFlags {
    leases: usize,
    inflight: usize,
    batch: usize,
    ttl: i64,
}

fn parse(argv: &[String]) -> Result<(Settings, LeaseFlags), String> {
    let flags = [
        "--endpoints",
        "--target",
        "--conns",
        "--timeout",
        "--duration",
        "--json",
        "--no-progress",
        "--leases",
        "--inflight",
        "--batch",
        "--ttl",
    ];
    // `--seconds N` is the older spelling of `--duration N`.
    let argv: Vec<String> = argv
        .iter()
        .map(|a| match a.as_str() {
            "--seconds" => "--duration".to_string(),
            _ => match a.strip_prefix("--seconds=") {
                Some(v) => format!("--duration={v}"),
                None => a.clone(),
            },
        })
        .collect();
    let defaults = Settings {
        conns: 4,
        duration: Some(DEFAULT_DURATION),
        ..Settings::default()
    };
    let (s, own) = args::parse("lease-keepalive", &argv, &flags, defaults)?;
    let mut l = LeaseFlags {
        leases: 10_000,
        inflight: 4,
        batch: 1000,
        ttl: 600,
    };
    for (flag, v) in own {
        let num = |max: u64| -> Result<u64, String> {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{flag}: {v:?} is not a valid number"))?;
            if n == 0 || n > max {
                return Err(format!("{flag}: {n} is not in 1..={max}"));
            }
            Ok(n)
        };
        match flag.as_str() {
            "--leases" => l.leases = num(MAX_LEASES)? as usize,
            "--inflight" => l.inflight = num(MAX_INFLIGHT)? as usize,
            "--batch" => l.batch = num(corekv::api::lease::MAX_KEEPALIVE_IDS as u64)? as usize,
            // etcd's largest TTL is 9,000,000,000 s; a day is plenty for a benchmark.
            "--ttl" => l.ttl = num(86_400)? as i64,
            other => return Err(format!("lease-keepalive: unexpected flag {other}")),
        }
    }
    let loops = s.conns * l.inflight;
    if l.leases < loops {
        return Err(format!(
            "--leases {} is fewer than the {loops} loops (--conns {} x --inflight {}): every loop needs a lease",
            l.leases, s.conns, l.inflight
        ));
    }
    Ok((s, l))
}

/// Runs the benchmark and prints its report.
pub fn run(argv: &[String]) -> Result<(), String> {
    let (s, l) = parse(argv)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, bench(&s, &l))?;
    report.print(s.json);
    let lost = report
        .metrics
        .iter()
        .find(|m| m.0 == "lost")
        .map_or(0.0, |m| m.1);
    let failed = report.series[0].failed();
    if lost > 0.0 || failed > 0 {
        return Err(format!(
            "{lost} keep-alives answered 'not found' and {failed} rounds failed"
        ));
    }
    Ok(())
}

/// Runs `f(i)` for `i` in `0..n`, at most [`GRANT_CONCURRENCY`] at a time, in order of start.
async fn bounded_all<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter((0..n).map(f))
        .buffered(GRANT_CONCURRENCY)
        .collect()
        .await
}

async fn bench(s: &Settings, l: &LeaseFlags) -> Result<Report, String> {
    let setup = streams::connect(s.target, &s.endpoints, s.timeout).await?;
    let granted_at = Instant::now();
    let ids: Vec<i64> = bounded_all(l.leases, |_| setup.lease_grant(l.ttl))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("grant a lease: {}", e.0))?;
    let grant_secs = granted_at.elapsed().as_secs_f64();

    // Loop `k` (on connection `k % conns`) keeps leases `share * k ..` alive.
    let mut conns = Vec::with_capacity(s.conns);
    for c in 0..s.conns {
        let n = s.endpoints.len();
        let endpoints: Vec<String> = (0..n).map(|k| s.endpoints[(c + k) % n].clone()).collect();
        conns.push(streams::connect(s.target, &endpoints, s.timeout).await?);
    }
    let loops = s.conns * l.inflight;
    let share = ids.len() / loops;
    let setup_at = Instant::now();
    let mut alivers = Vec::with_capacity(loops);
    for k in 0..loops {
        let mine = ids[k * share..(k + 1) * share].to_vec();
        let a = conns[k % s.conns]
            .keep_aliver(mine)
            .await
            .map_err(|e| format!("set up keep-alives: {}", e.0))?;
        alivers.push(a);
    }
    let setup_secs = setup_at.elapsed().as_secs_f64();
    let per_message = alivers[0].ids_per_message(l.batch.min(share));
    let round = l.batch.min(share);

    let series = Rc::new(RefCell::new(Series::new("keepalive-round")));
    let (refreshed, lost, forwarded) = (
        Rc::new(Cell::new(0u64)),
        Rc::new(Cell::new(0u64)),
        Rc::new(Cell::new(0u64)),
    );
    let cpu_before = process_cpu();
    let start = Instant::now();
    let end = start + s.duration.unwrap_or(DEFAULT_DURATION);
    let mut tasks = Vec::with_capacity(loops);
    for mut a in alivers {
        let (series, refreshed, lost, forwarded) = (
            series.clone(),
            refreshed.clone(),
            lost.clone(),
            forwarded.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            let mut pos = 0;
            while Instant::now() < end {
                let began = Instant::now();
                match a.round(pos, round).await {
                    Ok(r) => {
                        series.borrow_mut().record(began.elapsed());
                        refreshed.set(refreshed.get() + r.refreshed);
                        lost.set(lost.get() + r.lost);
                        forwarded.set(forwarded.get() + r.forwarded);
                    }
                    Err(e) => series.borrow_mut().fail(&e.0),
                }
                pos = (pos + round) % a.len();
            }
            a
        }));
    }
    let mut alivers = Vec::with_capacity(loops);
    for t in tasks {
        alivers.push(
            t.await
                .map_err(|e| format!("keep-alive loop failed: {e}"))?,
        );
    }
    let elapsed = start.elapsed();
    let client_cpu = process_cpu().saturating_sub(cpu_before);
    drop(alivers);
    let revoked = bounded_all(ids.len(), |i| setup.lease_revoke(ids[i])).await;
    let revoke_errors = revoked.iter().filter(|r| r.is_err()).count();

    let series = series.borrow().clone();
    let rate = refreshed.get() as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut notes = vec![format!(
        "granted {} leases in {grant_secs:.2}s; keep-alive set-up took {setup_secs:.2}s",
        ids.len()
    )];
    notes.push(match s.target {
        crate::target::Target::Corekv => format!(
            "corekv: one keep-alive message carries the round's {round} ids"
        ),
        crate::target::Target::Etcd => format!(
            "etcd: one LeaseKeepAlive message carries 1 id; a round is {round} messages on the leases' own streams, sent back to back"
        ),
    });
    if revoke_errors > 0 {
        notes.push(format!("{revoke_errors} revokes failed at clean-up"));
    }
    Ok(Report {
        workload: "lease-keepalive".into(),
        target: s.target.name().into(),
        config: vec![
            ("endpoints".into(), s.endpoints.join(",")),
            ("leases".into(), ids.len().to_string()),
            ("leases_kept_alive".into(), (share * loops).to_string()),
            ("conns".into(), s.conns.to_string()),
            ("inflight".into(), l.inflight.to_string()),
            ("batch".into(), round.to_string()),
            ("ttl".into(), l.ttl.to_string()),
        ],
        elapsed,
        client_cpu,
        series: vec![series],
        checks: Vec::new(),
        notes,
        metrics: vec![
            ("keepalives_per_sec".into(), rate),
            ("ids_per_message".into(), per_message as f64),
            ("ids_per_round".into(), round as f64),
            ("refreshed".into(), refreshed.get() as f64),
            ("lost".into(), lost.get() as f64),
            ("forwarded".into(), forwarded.get() as f64),
            ("grant_seconds".into(), grant_secs),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_and_bad_flags_say_which() {
        let (s, l) = parse(&args(&["--leases", "50", "--json", "--seconds", "2"])).unwrap();
        assert_eq!(l.leases, 50);
        assert!(s.json);
        assert_eq!(
            s.duration,
            Some(Duration::from_secs(2)),
            "--seconds is --duration"
        );
        let (_, l) = parse(&args(&["--batch=7", "--inflight", "2", "--conns", "3"])).unwrap();
        assert_eq!((l.batch, l.inflight), (7, 2));
        assert!(parse(&args(&["--batch", "0"]))
            .unwrap_err()
            .contains("--batch"));
        assert!(parse(&args(&["--batch", "100000"]))
            .unwrap_err()
            .contains("1..="));
        assert!(parse(&args(&["--nope", "1"]))
            .unwrap_err()
            .contains("--nope"));
        assert!(
            parse(&args(&["--leases", "3", "--conns", "2", "--inflight", "2"]))
                .unwrap_err()
                .contains("every loop needs a lease")
        );
    }
}
