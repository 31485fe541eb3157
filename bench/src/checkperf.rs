//! `check-perf --load s|m|l|xl`: etcdctl's `check perf` workloads and pass criteria.
//!
//! Each load is 60 s of puts of a 256-byte key under `/etcdctl-check-perf/` with a 1 KiB
//! value, started at a fixed rate by a fixed number of clients, one connection per client
//! (as etcdctl does). Before the run the prefix must be empty; after it, the prefix is
//! deleted. The run passes when no request failed, throughput is more than 90% of the rate,
//! the slowest request took at most 500 ms and the latencies' standard deviation is at most
//! 100 ms.

use std::sync::Arc;
use std::time::Duration;

use crate::args::{self, Settings, COMMON_FLAGS};
use crate::kv::mix;
use crate::load::{self, RequestFuture, Workload};
use crate::report::Check;
use crate::target::{self, Conn, Get};

/// The key prefix (etcdctl's), so a run is comparable to `etcdctl check perf`.
pub const PREFIX: &[u8] = b"/etcdctl-check-perf/";
/// Bytes after the prefix in each key.
pub const KEY_SIZE: usize = 256;
/// Value size, bytes.
pub const VAL_SIZE: usize = 1024;
/// Length of a standard run.
pub const STANDARD_DURATION: Duration = Duration::from_secs(60);
/// Keys listed per clean-up step (each step deletes what it listed: bounded requests).
pub const CLEANUP_BATCH: u64 = 10_000;
/// Environment variable that lowers [`CLEANUP_BATCH`] (a test makes a small run's clean-up
/// take many steps).
pub const CLEANUP_BATCH_ENV: &str = "COREKV_CHECK_PERF_CLEANUP_BATCH";
/// Pass: throughput must exceed this share of the rate.
pub const MIN_THROUGHPUT_SHARE: f64 = 0.9;
/// Pass: slowest request at most this long.
pub const MAX_SLOWEST: Duration = Duration::from_millis(500);
/// Pass: standard deviation of latencies at most this.
pub const MAX_STDDEV: Duration = Duration::from_millis(100);

/// One of etcdctl's loads: puts per second and clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Name (`s`, `m`, `l`, `xl`).
    pub name: &'static str,
    /// Puts started per second.
    pub rate: u64,
    /// Clients (each with its own connection).
    pub clients: usize,
}

/// etcdctl check perf's loads.
pub const LOADS: [Load; 4] = [
    Load {
        name: "s",
        rate: 150,
        clients: 50,
    },
    Load {
        name: "m",
        rate: 1000,
        clients: 200,
    },
    Load {
        name: "l",
        rate: 8000,
        clients: 500,
    },
    Load {
        name: "xl",
        rate: 15000,
        clients: 1000,
    },
];

/// Looks a load up by its name or etcdctl's long alias.
pub fn load_named(name: &str) -> Result<Load, String> {
    let short = match name {
        "small" => "s",
        "medium" => "m",
        "large" => "l",
        "xLarge" | "xlarge" => "xl",
        other => other,
    };
    LOADS
        .iter()
        .find(|l| l.name == short)
        .copied()
        .ok_or_else(|| format!("--load: {name:?} is not s, m, l or xl"))
}

/// The puts: a random 256-byte key (8 random bytes, then zeros, as etcdctl builds it) and a
/// zero value.
struct Puts {
    seed: u64,
    value: Vec<u8>,
}

impl Puts {
    fn key(&self, i: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(PREFIX.len() + KEY_SIZE);
        k.extend_from_slice(PREFIX);
        k.extend_from_slice(&mix(self.seed ^ i).to_be_bytes());
        k.resize(PREFIX.len() + KEY_SIZE, 0);
        k
    }
}

impl Workload for Puts {
    fn name(&self) -> &str {
        "check-perf"
    }
    fn series(&self) -> Vec<String> {
        vec!["put".into()]
    }
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a> {
        Box::pin(async move { (0, conn.put(self.key(i), self.value.clone()).await) })
    }
}

/// The smallest key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    corekv::client::txn::prefix_end(prefix)
}

/// Whether any key under the prefix exists.
async fn prefix_has_keys(conn: &mut Conn) -> Result<bool, String> {
    let g = Get {
        key: PREFIX.to_vec(),
        range_end: prefix_end(PREFIX),
        limit: 1,
        serializable: false,
        keys_only: true,
    };
    let kvs = conn.get(g).await.map_err(|e| {
        format!(
            "check-perf: list {:?}: {}",
            String::from_utf8_lossy(PREFIX),
            e.0
        )
    })?;
    Ok(!kvs.is_empty())
}

/// Deletes every key under the prefix in steps of at most [`CLEANUP_BATCH`] keys (servers
/// bound the changes one request may make); returns how many it deleted. Each listing starts
/// after the keys already deleted: from the prefix start, every listing would step over all
/// the deleted keys again (quadratic: minutes for the xl load's ~900k keys).
async fn delete_prefix(conn: &mut Conn, batch: u64) -> Result<u64, String> {
    let end = prefix_end(PREFIX);
    let mut deleted = 0u64;
    let mut from = PREFIX.to_vec();
    loop {
        let g = Get {
            key: from.clone(),
            range_end: end.clone(),
            limit: batch,
            serializable: false,
            keys_only: true,
        };
        let keys = conn
            .get(g)
            .await
            .map_err(|e| format!("check-perf clean-up: list: {}", e.0))?;
        let Some(last) = keys.last() else {
            return Ok(deleted);
        };
        let mut upto = last.clone();
        upto.push(0);
        deleted += conn
            .delete_range(from, upto.clone())
            .await
            .map_err(|e| format!("check-perf clean-up: delete: {}", e.0))?;
        from = upto;
    }
}

/// The pass criteria of etcdctl check perf over a run's summary.
pub fn criteria(
    rate: u64,
    failed: u64,
    throughput: f64,
    slowest: Duration,
    stddev: Duration,
) -> Vec<Check> {
    vec![
        Check {
            what: format!("{failed} requests failed (allowed: 0)"),
            pass: failed == 0,
        },
        Check {
            what: format!(
                "throughput {:.0} writes/s (needs > {:.0}, 90% of {rate})",
                throughput,
                MIN_THROUGHPUT_SHARE * rate as f64
            ),
            pass: throughput / rate as f64 > MIN_THROUGHPUT_SHARE,
        },
        Check {
            what: format!(
                "slowest request {:.6}s (allowed: {:.1}s)",
                slowest.as_secs_f64(),
                MAX_SLOWEST.as_secs_f64()
            ),
            pass: slowest <= MAX_SLOWEST,
        },
        Check {
            what: format!(
                "stddev {:.6}s (allowed: {:.1}s)",
                stddev.as_secs_f64(),
                MAX_STDDEV.as_secs_f64()
            ),
            pass: stddev <= MAX_STDDEV,
        },
    ]
}

/// Entry point of `corekv-bench check-perf`. Exits non-zero (an error) when the run fails
/// the criteria, as etcdctl does.
pub fn run(argv: &[String]) -> Result<(), String> {
    let mut flags: Vec<&str> = COMMON_FLAGS.to_vec();
    flags.push("--load");
    // The load sets the defaults, so find it first; explicit flags (e.g. a shorter
    // --duration for a smoke run) then override them.
    let name = argv
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a.strip_prefix("--load=") {
            Some(v) => Some(v),
            None if a == "--load" => argv.get(i + 1).map(String::as_str),
            None => None,
        })
        .next_back()
        .unwrap_or("s");
    let load = load_named(name)?;
    let defaults = Settings {
        clients: load.clients,
        conns: load.clients,
        rate: Some(load.rate as f64),
        duration: Some(STANDARD_DURATION),
        ..Settings::default()
    };
    let (s, own) = args::parse("check-perf", argv, &flags, defaults)?;
    debug_assert!(own.iter().all(|(f, _)| f == "--load"));
    if s.total.is_some() {
        return Err("check-perf runs for --duration; --total does not apply".into());
    }
    let rate = s
        .rate
        .ok_or("check-perf needs a rate (--rate 0 is not allowed)")?;
    let nonempty = target::with_conn(s.target, &s.endpoints, s.timeout, |mut c| async move {
        prefix_has_keys(&mut c).await
    })?;
    if nonempty {
        return Err(format!(
            "check-perf: prefix {:?} has keys; delete them first",
            String::from_utf8_lossy(PREFIX)
        ));
    }
    let puts = Puts {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        value: vec![0; VAL_SIZE],
    };
    let batch = match std::env::var(CLEANUP_BATCH_ENV) {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|b| (1..=CLEANUP_BATCH).contains(b))
            .ok_or(format!(
                "{CLEANUP_BATCH_ENV}={v:?}: expected a key count from 1 to {CLEANUP_BATCH}"
            ))?,
        Err(_) => CLEANUP_BATCH,
    };
    let run = load::run(&s, Arc::new(puts));
    // Clean up even when the run failed part-way.
    let deleted = target::with_conn(s.target, &s.endpoints, s.timeout, |mut c| async move {
        delete_prefix(&mut c, batch).await
    });
    let mut report = run?;
    let deleted = deleted?;
    let m = report.series[0].summary(report.elapsed);
    report.workload = format!("check-perf --load {}", load.name);
    report.checks = criteria(
        rate as u64,
        m.failed,
        m.throughput,
        Duration::from_micros(m.max_us),
        Duration::from_secs_f64(m.stddev_us / 1e6),
    );
    report.notes.push(format!(
        "deleted {deleted} keys under the prefix afterwards"
    ));
    let standard = s.duration == Some(STANDARD_DURATION)
        && s.clients == load.clients
        && s.conns == load.clients
        && s.rate == Some(load.rate as f64);
    if !standard {
        report
            .notes
            .push("non-standard settings: not comparable to etcdctl check perf".into());
    }
    report.print(s.json);
    if report.passed() {
        Ok(())
    } else {
        Err(format!("check-perf --load {}: FAIL", load.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_are_etcdctls() {
        let l = |n| load_named(n).unwrap();
        assert_eq!((l("s").rate, l("s").clients), (150, 50));
        assert_eq!((l("m").rate, l("m").clients), (1000, 200));
        assert_eq!((l("l").rate, l("l").clients), (8000, 500));
        assert_eq!((l("xl").rate, l("xl").clients), (15000, 1000));
        assert_eq!(l("xLarge"), l("xl"));
        assert!(load_named("xxl").unwrap_err().contains("xxl"));
    }

    #[test]
    fn criteria_follow_etcdctl() {
        let ms = Duration::from_millis;
        let pass = |c: Vec<Check>| c.iter().all(|c| c.pass);
        assert!(pass(criteria(1000, 0, 950.0, ms(500), ms(100))));
        // Throughput must be strictly above 90%.
        assert!(!pass(criteria(1000, 0, 900.0, ms(10), ms(1))));
        assert!(!pass(criteria(1000, 0, 990.0, ms(501), ms(1))));
        assert!(!pass(criteria(1000, 0, 990.0, ms(10), ms(101))));
        assert!(!pass(criteria(1000, 1, 990.0, ms(10), ms(1))));
    }

    #[test]
    fn keys_are_prefixed_256_bytes_and_differ() {
        let p = Puts {
            seed: 7,
            value: Vec::new(),
        };
        let (a, b) = (p.key(1), p.key(2));
        assert_eq!(a.len(), PREFIX.len() + KEY_SIZE);
        assert!(a.starts_with(PREFIX));
        assert_ne!(a, b);
        assert!(a.as_slice() < prefix_end(PREFIX).as_slice());
    }
}
