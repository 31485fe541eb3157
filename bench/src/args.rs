//! Flags shared by every load subcommand (`put`, `range`, `txn-put`, `txn-mixed`,
//! `check-perf`, ...), named after etcd's benchmark tool.
//!
//! One [`Settings`] holds every flag; each subcommand passes the list of flags it accepts to
//! [`parse`], so a flag that means nothing to a subcommand is refused instead of ignored.

use std::time::Duration;

use crate::target::Target;

/// Most concurrent request loops one run may start (each is a task with its own buffers).
pub const MAX_CLIENTS: usize = 100_000;
/// Most connections one run may open.
pub const MAX_CONNS: usize = 10_000;
/// Most load-generator threads.
pub const MAX_THREADS: usize = 256;
/// Largest key a workload generates, bytes (etcd's own limit is about 1.5 MiB per request).
pub const MAX_KEY_SIZE: usize = 64 * 1024;
/// Largest value a workload generates, bytes.
pub const MAX_VAL_SIZE: usize = 1024 * 1024;
/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 10_000;
/// Most keys one range request may ask for.
pub const MAX_RANGE_LIMIT: u64 = 1_000_000;
/// Requests a run sends when neither `--total` nor `--duration` is given (etcd's default).
pub const DEFAULT_TOTAL: u64 = 10_000;

/// Every flag of the load subcommands, with etcd benchmark's defaults where they exist.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Server endpoints (`host:port`, an `http://` prefix is accepted).
    pub endpoints: Vec<String>,
    /// Which server the endpoints belong to.
    pub target: Target,
    /// Connections shared by the clients (client `c` uses connection `c % conns`).
    pub conns: usize,
    /// Concurrent request loops.
    pub clients: usize,
    /// Load-generator threads the connections are spread over (`None`: min(cores, conns)).
    pub threads: Option<usize>,
    /// Requests to send (`None`: unbounded when `duration` is set, else [`DEFAULT_TOTAL`]).
    pub total: Option<u64>,
    /// Stop starting requests after this long.
    pub duration: Option<Duration>,
    /// Most requests started per second over all clients (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Key size, bytes.
    pub key_size: usize,
    /// Value size, bytes.
    pub val_size: usize,
    /// Distinct keys the workload draws from.
    pub key_space_size: u64,
    /// Keys in order (request `i` uses key `i % key_space_size`) instead of pseudo-random.
    pub sequential_keys: bool,
    /// Serializable reads (`--consistency s`) instead of linearizable (`l`).
    pub serializable: bool,
    /// Keys per range request (0 and 1: a single-key get).
    pub limit: u64,
    /// Puts per transaction (`txn-put`).
    pub txn_ops: usize,
    /// Reads per write (`txn-mixed`).
    pub rw_ratio: f64,
    /// Watch streams (watch subcommands).
    pub streams: usize,
    /// Watchers per stream (watch subcommands).
    pub watchers_per_stream: usize,
    /// Write the key space before a read workload.
    pub preload: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    pub json: bool,
    /// Draw no progress bar even on a terminal.
    pub no_progress: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoints: vec!["127.0.0.1:2379".into()],
            target: Target::Corekv,
            conns: 1,
            clients: 1,
            threads: None,
            total: None,
            duration: None,
            rate: None,
            key_size: 8,
            val_size: 8,
            key_space_size: 1,
            sequential_keys: false,
            serializable: false,
            limit: 0,
            txn_ops: 1,
            rw_ratio: 1.0,
            streams: 10,
            watchers_per_stream: 10,
            preload: true,
            timeout: Duration::from_secs(30),
            json: false,
            no_progress: false,
        }
    }
}

impl Settings {
    /// Threads the run uses: `--threads`, else min(available cores, conns); always ≤ conns.
    pub fn thread_count(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads.unwrap_or(cores).clamp(1, self.conns.max(1))
    }

    /// Requests the run may send: `--total`, else unbounded with `--duration`, else the default.
    pub fn total_requests(&self) -> u64 {
        match (self.total, self.duration) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => DEFAULT_TOTAL,
        }
    }

    /// Keys one request of a range workload covers.
    pub fn range_span(&self) -> u64 {
        self.limit.max(1)
    }
}

/// Flags every load subcommand accepts.
pub const COMMON_FLAGS: &[&str] = &[
    "--endpoints",
    "--target",
    "--conns",
    "--clients",
    "--threads",
    "--total",
    "--duration",
    "--rate",
    "--timeout",
    "--json",
    "--no-progress",
];

/// Flags that shape the keys and values a workload writes.
pub const KEY_FLAGS: &[&str] = &[
    "--key-size",
    "--val-size",
    "--key-space-size",
    "--sequential-keys",
];

/// Describes one flag for `--help`.
fn describe(flag: &str) -> &'static str {
    match flag {
        "--endpoints" => "a,b,..   server endpoints (default 127.0.0.1:2379)",
        "--target" => "corekv|etcd   which server (default corekv)",
        "--conns" => "N   connections shared by the clients (default 1)",
        "--clients" => "N   concurrent request loops (default 1)",
        "--threads" => "N   load-generator threads (default min(cores, conns))",
        "--total" => "N   requests to send (default 10000 unless --duration)",
        "--duration" => "SECS   stop starting requests after SECS seconds",
        "--rate" => "N   most requests started per second over all clients (default unlimited)",
        "--timeout" => "SECS   per-request timeout (default 30)",
        "--json" => "   print one JSON object",
        "--no-progress" => "   no progress bar",
        "--key-size" => "N   key size in bytes",
        "--val-size" => "N   value size in bytes",
        "--key-space-size" => "N   distinct keys",
        "--sequential-keys" => "   keys in order instead of pseudo-random",
        "--consistency" => "l|s   linearizable or serializable reads (default l)",
        "--limit" => "N   keys per range request (default 1)",
        "--txn-ops" => "N   puts per transaction (default 1)",
        "--rw-ratio" => "R   reads per write (default 1)",
        "--streams" => "N   watch streams, spread over the connections (default 10)",
        "--watchers-per-stream" => "N   watchers per stream (default 10)",
        "--watchers" => "N,N,..   watchers per run, spread over the streams (default 1,1000)",
        "--puts" => "N   puts, one at a time, each waiting for all its events (default 200)",
        "--idle" => "N   idle watchers for the memory measurement (needs --server-pid)",
        "--server-pid" => "PID   the server process, for memory per idle watcher",
        "--trace" => "FILE   write a per-put timeline (CSV: sent, reply, first and last event)",
        "--leases" => "N   leases granted and kept alive (default 10000)",
        "--inflight" => "N   keep-alive loops per connection (default 4)",
        "--batch" => "N   lease ids per keep-alive round (default 1000)",
        "--ttl" => "SECS   TTL of the granted leases (default 600)",
        "--no-preload" => "   do not write the key space before reading",
        "--load" => "s|m|l|xl   etcdctl check perf workload (default s)",
        _ => "",
    }
}

/// The usage text of `cmd` accepting `flags`.
pub fn usage(cmd: &str, flags: &[&str]) -> String {
    let mut s = format!("usage: corekv-bench {cmd} [flags]\n");
    for f in flags {
        s.push_str(&format!("  {f} {}\n", describe(f)));
    }
    s
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

fn bounded(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = number(flag, v)?;
    if n < min || n > max {
        return Err(format!("{flag}: {n} is not in {min}..={max}"));
    }
    Ok(n)
}

fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = number(flag, v)?;
    if !(s.is_finite() && s > 0.0 && s <= 7.0 * 86_400.0) {
        return Err(format!(
            "{flag}: {v:?} is not a duration in (0, 604800] seconds"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Parses `args` for subcommand `cmd`, which accepts `flags` (from [`COMMON_FLAGS`],
/// [`KEY_FLAGS`] and its own). `defaults` is the subcommand's starting point. Returns the
/// settings and the values of flags the caller handles itself (`--load`), by name.
/// `--flag value` and `--flag=value` are both accepted. Errors name the flag and the limit.
pub fn parse(
    cmd: &str,
    args: &[String],
    flags: &[&str],
    defaults: Settings,
) -> Result<(Settings, Vec<(String, String)>), String> {
    let mut s = defaults;
    let mut own = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(usage(cmd, flags));
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if !flags.contains(&flag) {
            return Err(format!(
                "unknown flag {flag:?} for {cmd}\n{}",
                usage(cmd, flags)
            ));
        }
        let switch = matches!(
            flag,
            "--json" | "--no-progress" | "--sequential-keys" | "--no-preload"
        );
        if switch {
            if inline.is_some() {
                return Err(format!("{flag} takes no value"));
            }
            match flag {
                "--json" => s.json = true,
                "--no-progress" => s.no_progress = true,
                "--sequential-keys" => s.sequential_keys = true,
                _ => s.preload = false,
            }
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage(cmd, flags)))?,
        };
        let v = v.as_str();
        match flag {
            "--endpoints" => {
                s.endpoints = v
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                if s.endpoints.is_empty() {
                    return Err("--endpoints: no endpoint given".into());
                }
            }
            "--target" => s.target = Target::parse(v)?,
            "--conns" => s.conns = bounded(flag, v, 1, MAX_CONNS as u64)? as usize,
            "--clients" => s.clients = bounded(flag, v, 1, MAX_CLIENTS as u64)? as usize,
            "--threads" => s.threads = Some(bounded(flag, v, 1, MAX_THREADS as u64)? as usize),
            "--total" => s.total = Some(bounded(flag, v, 1, u64::MAX)?),
            "--duration" => s.duration = Some(seconds(flag, v)?),
            "--timeout" => s.timeout = seconds(flag, v)?,
            "--rate" => {
                let r: f64 = number(flag, v)?;
                if !(r.is_finite() && (0.0..=1e9).contains(&r)) {
                    return Err(format!("--rate: {v:?} is not in 0..=1e9 (0: unlimited)"));
                }
                s.rate = (r > 0.0).then_some(r);
            }
            "--key-size" => s.key_size = bounded(flag, v, 1, MAX_KEY_SIZE as u64)? as usize,
            "--val-size" => s.val_size = bounded(flag, v, 0, MAX_VAL_SIZE as u64)? as usize,
            "--key-space-size" => s.key_space_size = bounded(flag, v, 1, u64::MAX)?,
            "--consistency" => {
                s.serializable = match v {
                    "s" | "S" => true,
                    "l" | "L" => false,
                    other => return Err(format!("--consistency: {other:?} is not l or s")),
                }
            }
            "--limit" => s.limit = bounded(flag, v, 0, MAX_RANGE_LIMIT)?,
            "--txn-ops" => s.txn_ops = bounded(flag, v, 1, MAX_TXN_OPS as u64)? as usize,
            "--rw-ratio" => {
                let r: f64 = number(flag, v)?;
                if !(r.is_finite() && (0.0..=1e6).contains(&r)) {
                    return Err(format!("--rw-ratio: {v:?} is not in 0..=1e6"));
                }
                s.rw_ratio = r;
            }
            "--streams" => s.streams = bounded(flag, v, 1, MAX_CONNS as u64)? as usize,
            "--watchers-per-stream" => {
                s.watchers_per_stream = bounded(flag, v, 1, MAX_CLIENTS as u64)? as usize
            }
            _ => own.push((flag.to_string(), v.to_string())),
        }
    }
    let conns_per = if flags.contains(&"--streams") {
        ConnsPer::Stream
    } else if flags.contains(&"--clients") {
        ConnsPer::Client
    } else {
        ConnsPer::Nothing
    };
    check(&s, conns_per)?;
    Ok((s, own))
}

/// What the connections of a subcommand carry, which bounds how many make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnsPer {
    /// Request loops (`--clients`): the kv subcommands.
    Client,
    /// Watch streams (`--streams`): the watch subcommands.
    Stream,
    /// Neither (lease-keepalive: loops per connection).
    Nothing,
}

/// Cross-flag checks that hold for every subcommand.
fn check(s: &Settings, conns_per: ConnsPer) -> Result<(), String> {
    if conns_per == ConnsPer::Stream {
        if s.conns > s.streams {
            return Err(format!(
                "--conns ({}) must not exceed --streams ({}): a connection without a stream watches nothing",
                s.conns, s.streams
            ));
        }
    } else if conns_per == ConnsPer::Client && s.conns > s.clients {
        return Err(format!(
            "--conns ({}) must not exceed --clients ({}): a connection without a client sends nothing",
            s.conns, s.clients
        ));
    }
    // Keys carry the key number in decimal in their last `key_size` bytes (at most 20
    // digits); a key space larger than that would make different numbers the same key.
    let digits = s.key_size.min(20) as u32;
    if digits < 20 && s.key_space_size > 10u64.pow(digits) {
        return Err(format!(
            "--key-space-size {} needs keys of at least {} bytes (--key-size is {})",
            s.key_space_size,
            s.key_space_size.saturating_sub(1).to_string().len(),
            s.key_size
        ));
    }
    if s.range_span() > s.key_space_size {
        return Err(format!(
            "--limit {} is larger than --key-space-size {}",
            s.limit, s.key_space_size
        ));
    }
    if s.txn_ops as u64 > s.key_space_size {
        return Err(format!(
            "--txn-ops {} is larger than --key-space-size {} (keys in one txn must differ)",
            s.txn_ops, s.key_space_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const ALL: &[&str] = &[
        "--endpoints",
        "--target",
        "--conns",
        "--clients",
        "--threads",
        "--total",
        "--duration",
        "--rate",
        "--timeout",
        "--json",
        "--no-progress",
        "--key-size",
        "--val-size",
        "--key-space-size",
        "--sequential-keys",
        "--consistency",
        "--limit",
        "--txn-ops",
        "--rw-ratio",
        "--load",
    ];

    #[test]
    fn every_flag_parses_in_both_spellings() {
        let (s, own) = parse(
            "x",
            &args(&[
                "--endpoints=a:1,b:2",
                "--conns",
                "16",
                "--clients=256",
                "--threads",
                "2",
                "--total",
                "1000",
                "--duration",
                "1.5",
                "--rate=500",
                "--timeout",
                "3",
                "--json",
                "--no-progress",
                "--key-size",
                "32",
                "--val-size=1024",
                "--key-space-size",
                "5000",
                "--sequential-keys",
                "--consistency",
                "s",
                "--limit",
                "100",
                "--txn-ops",
                "4",
                "--rw-ratio",
                "0.25",
                "--load",
                "xl",
            ]),
            ALL,
            Settings::default(),
        )
        .unwrap();
        assert_eq!(s.endpoints, vec!["a:1", "b:2"]);
        assert_eq!((s.conns, s.clients, s.threads), (16, 256, Some(2)));
        assert_eq!(s.total, Some(1000));
        assert_eq!(s.duration, Some(Duration::from_millis(1500)));
        assert_eq!(s.rate, Some(500.0));
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert!(s.json && s.no_progress && s.sequential_keys && s.serializable);
        assert_eq!((s.key_size, s.val_size, s.key_space_size), (32, 1024, 5000));
        assert_eq!((s.limit, s.txn_ops, s.rw_ratio), (100, 4, 0.25));
        assert_eq!(own, vec![("--load".to_string(), "xl".to_string())]);
        assert_eq!(s.total_requests(), 1000);
        assert_eq!(s.thread_count(), 2);
    }

    #[test]
    fn defaults_follow_etcd_benchmark() {
        let (s, _) = parse("x", &[], ALL, Settings::default()).unwrap();
        assert_eq!(s.total_requests(), DEFAULT_TOTAL);
        assert_eq!(s.target, Target::Corekv);
        assert!(!s.serializable, "reads are linearizable unless asked");
        let (s, _) = parse("x", &args(&["--duration", "2"]), ALL, Settings::default()).unwrap();
        assert_eq!(
            s.total_requests(),
            u64::MAX,
            "a duration-bound run has no count"
        );
        let (s, _) = parse("x", &args(&["--rate", "0"]), ALL, Settings::default()).unwrap();
        assert_eq!(s.rate, None, "rate 0 means unlimited");
    }

    #[test]
    fn bad_flags_say_which_flag_and_which_limit() {
        let err = |a: &[&str], flags: &[&str]| {
            parse("put", &args(a), flags, Settings::default()).unwrap_err()
        };
        assert!(err(&["--clients"], ALL).contains("--clients needs a value"));
        assert!(err(&["--total", "x"], ALL).contains("--total"));
        assert!(err(&["--total", "0"], ALL).contains("1..="));
        assert!(err(&["--clients", "0"], ALL).contains("--clients"));
        assert!(err(&["--consistency", "q"], ALL).contains("not l or s"));
        assert!(err(&["--duration", "-1"], ALL).contains("--duration"));
        assert!(err(&["--rate", "nan"], ALL).contains("--rate"));
        assert!(err(&["--target", "zookeeper"], ALL).contains("zookeeper"));
        assert!(err(&["--json=yes"], ALL).contains("takes no value"));
        assert!(err(&["--limit", "5"], COMMON_FLAGS).contains("unknown flag \"--limit\""));
        assert!(err(&["--conns", "4", "--clients", "2"], ALL).contains("must not exceed"));
        assert!(err(&["--key-size", "2", "--key-space-size", "1000"], ALL)
            .contains("--key-space-size 1000 needs keys of at least 3 bytes"));
        assert!(err(&["--key-space-size", "10", "--limit", "11"], ALL).contains("larger than"));
        assert!(err(&["--key-space-size", "3", "--txn-ops", "4"], ALL).contains("--txn-ops"));
        assert!(err(&["--help"], ALL).starts_with("usage: corekv-bench put"));
    }

    #[test]
    fn watch_flags_parse_and_bound_connections_by_streams() {
        let flags: Vec<&str> = COMMON_FLAGS
            .iter()
            .chain(&["--streams", "--watchers-per-stream"])
            .copied()
            .collect();
        let (s, _) = parse(
            "watch",
            &args(&["--streams", "8", "--watchers-per-stream=50", "--conns", "4"]),
            &flags,
            Settings::default(),
        )
        .unwrap();
        assert_eq!((s.streams, s.watchers_per_stream, s.conns), (8, 50, 4));
        // More connections than clients is fine here: connections carry streams.
        assert_eq!(s.clients, 1);
        let err = parse(
            "watch",
            &args(&["--streams", "2", "--conns", "3"]),
            &flags,
            Settings::default(),
        )
        .unwrap_err();
        assert!(err.contains("must not exceed --streams"), "{err}");
        let err = parse(
            "watch",
            &args(&["--watchers-per-stream", "0"]),
            &flags,
            Settings::default(),
        )
        .unwrap_err();
        assert!(err.contains("--watchers-per-stream"), "{err}");
    }
}
