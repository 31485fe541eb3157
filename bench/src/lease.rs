//! `corekv-bench lease-keepalive`: keep-alive throughput against a running corekv server.
//!
//! Grants `--leases` leases, then `--conns` connections (each on the server shard the kernel
//! picks) run `--inflight` loops each; a loop sends one keep-alive message of `--batch` ids at
//! a time, cycling through its share of the leases, until `--seconds` pass. Reports ids
//! refreshed per second and the latency of each message (p50/p99). Every answer is checked:
//! an id answered 0 (lease lost) counts as an error. The leases are revoked at the end.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv::client::{Client, ClientOptions, Glommio};
use hdrhistogram::Histogram;

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Settings {
    endpoints: Vec<String>,
    leases: usize,
    conns: usize,
    inflight: usize,
    batch: usize,
    seconds: u64,
    ttl: i64,
    json: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoints: vec!["127.0.0.1:2379".into()],
            leases: 10_000,
            conns: 4,
            inflight: 4,
            batch: 1000,
            seconds: 10,
            ttl: 600,
            json: false,
        }
    }
}

/// Grants run concurrently while setting up.
const GRANT_CONCURRENCY: usize = 64;

fn usage() -> String {
    "usage: corekv-bench lease-keepalive [--endpoints host:port,..] [--leases 10000] [--conns 4] \
     [--inflight 4] [--batch 1000] [--seconds 10] [--ttl 600] [--json]"
        .to_string()
}

fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--json" {
            s.json = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(usage());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--endpoints" => s.endpoints = v.split(',').map(str::to_string).collect(),
            "--leases" => s.leases = num(v)? as usize,
            "--conns" => s.conns = num(v)? as usize,
            "--inflight" => s.inflight = num(v)? as usize,
            "--batch" => s.batch = num(v)? as usize,
            "--seconds" => s.seconds = num(v)?,
            "--ttl" => s.ttl = num(v)? as i64,
            other => return Err(format!("unknown flag {other:?}\n{}", usage())),
        }
    }
    if s.leases == 0 || s.conns == 0 || s.inflight == 0 || s.batch == 0 || s.seconds == 0 {
        return Err(
            "--leases, --conns, --inflight, --batch and --seconds must be at least 1".into(),
        );
    }
    if s.batch > corekv::api::lease::MAX_KEEPALIVE_IDS {
        return Err(format!(
            "--batch {} exceeds the server's MAX_KEEPALIVE_IDS ({})",
            s.batch,
            corekv::api::lease::MAX_KEEPALIVE_IDS
        ));
    }
    Ok(s)
}

/// Runs the benchmark and prints its report.
pub fn run(args: &[String]) -> Result<(), String> {
    let s = parse(args)?;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("bench-lease")
        .spawn(move || async move { bench(s).await })
        .map_err(|e| format!("start bench thread: {e}"))?
        .join()
        .map_err(|e| format!("bench thread: {e}"))?
}

async fn connect(s: &Settings) -> Result<Rc<Client>, String> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    Ok(Rc::new(
        Client::connect(&s.endpoints, options, Glommio)
            .await
            .map_err(|e| e.to_string())?,
    ))
}

async fn bench(s: Settings) -> Result<(), String> {
    let setup = connect(&s).await?;
    let ids = Rc::new(RefCell::new(Vec::with_capacity(s.leases)));
    let next = Rc::new(Cell::new(0usize));
    let granted_at = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..GRANT_CONCURRENCY.min(s.leases) {
        let (c, ids, next, total, ttl) =
            (setup.clone(), ids.clone(), next.clone(), s.leases, s.ttl);
        tasks.push(glommio::spawn_local(async move {
            while next.get() < total {
                next.set(next.get() + 1);
                let (id, _, _) = c.lease_grant(ttl, 0).await.map_err(|e| e.to_string())?;
                ids.borrow_mut().push(id);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    let grant_secs = granted_at.elapsed().as_secs_f64();
    let ids: Rc<Vec<i64>> = Rc::new(ids.borrow().clone());

    let mut conns = Vec::new();
    for _ in 0..s.conns {
        conns.push(connect(&s).await?);
    }
    let refreshed = Rc::new(Cell::new(0u64));
    let lost = Rc::new(Cell::new(0u64));
    let forwarded = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let hist = Rc::new(RefCell::new(Histogram::<u64>::new(3).expect("histogram")));
    let loops = s.conns * s.inflight;
    let share = ids.len().div_ceil(loops);
    let start = Instant::now();
    let end = start + Duration::from_secs(s.seconds);
    let mut tasks = Vec::new();
    for l in 0..loops {
        let client = conns[l % s.conns].clone();
        let (ids, refreshed, lost, forwarded, errors, hist, batch) = (
            ids.clone(),
            refreshed.clone(),
            lost.clone(),
            forwarded.clone(),
            errors.clone(),
            hist.clone(),
            s.batch,
        );
        tasks.push(glommio::spawn_local(async move {
            let mine = &ids[(l * share).min(ids.len())..((l + 1) * share).min(ids.len())];
            if mine.is_empty() {
                return;
            }
            let mut pos = 0;
            while Instant::now() < end {
                let n = batch.min(mine.len());
                let msg: Vec<i64> = (0..n).map(|i| mine[(pos + i) % mine.len()]).collect();
                pos = (pos + n) % mine.len();
                let began = Instant::now();
                match client.lease_keep_alive_report(&msg, batch).await {
                    Ok(r) => {
                        let us = began.elapsed().as_micros() as u64;
                        let _ = hist.borrow_mut().record(us.max(1));
                        let ok = r.ttls.iter().filter(|&&t| t > 0).count() as u64;
                        refreshed.set(refreshed.get() + ok);
                        lost.set(lost.get() + msg.len() as u64 - ok);
                        forwarded.set(forwarded.get() + r.forwarded as u64);
                    }
                    Err(_) => errors.set(errors.get() + 1),
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    for &id in ids.iter() {
        let _ = setup.lease_revoke(id).await;
    }
    let h = hist.borrow();
    let rate = refreshed.get() as f64 / elapsed;
    if s.json {
        println!(
            "{{\"workload\":\"lease-keepalive\",\"leases\":{},\"conns\":{},\"inflight\":{},\"batch\":{},\"seconds\":{elapsed:.3},\"keepalives_per_sec\":{rate:.0},\"refreshed\":{},\"lost\":{},\"forwarded\":{},\"errors\":{},\"message_latency_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"grant_seconds\":{grant_secs:.3}}}",
            s.leases,
            s.conns,
            s.inflight,
            s.batch,
            refreshed.get(),
            lost.get(),
            forwarded.get(),
            errors.get(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    } else {
        println!(
            "lease-keepalive: {} leases, {} conns x {} in flight, {} ids/message\n\
             {} keep-alives in {elapsed:.2}s = {rate:.0}/s ({} forwarded to another shard), {} lost, {} failed messages\n\
             message latency us: p50 {} p99 {} max {}\n\
             granting {} leases took {grant_secs:.2}s",
            s.leases,
            s.conns,
            s.inflight,
            s.batch,
            refreshed.get(),
            forwarded.get(),
            lost.get(),
            errors.get(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            s.leases
        );
    }
    if lost.get() > 0 || errors.get() > 0 {
        return Err(format!(
            "{} keep-alives answered 'not found' and {} messages failed",
            lost.get(),
            errors.get()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_flags_say_which() {
        let s = parse(&["--leases".into(), "5".into(), "--json".into()]).unwrap();
        assert_eq!(s.leases, 5);
        assert!(s.json);
        assert!(parse(&["--batch".into(), "0".into()]).is_err());
        assert!(parse(&["--batch".into(), "100000".into()])
            .unwrap_err()
            .contains("MAX_KEEPALIVE_IDS"));
        assert!(parse(&["--nope".into(), "1".into()])
            .unwrap_err()
            .contains("--nope"));
    }
}
