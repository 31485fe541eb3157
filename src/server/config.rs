//! Server configuration: etcd-like command-line flags and their validated form.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Default `--max-request-bytes` (etcd's default: 1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Largest accepted `--max-request-bytes`.
pub const MAX_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Default `--quota-backend-bytes` (etcd's default: 2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;
/// Largest accepted `--shards`.
pub const MAX_SHARDS: usize = 256;

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start-up, shutdown and notable events.
    Info,
    /// Everything.
    Debug,
}

/// Flags of the `corekv` binary.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "corekv",
    version,
    about = "corekv: an etcd-class coordination store on io_uring"
)]
pub struct Flags {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory for the write-ahead log and the backend file.
    #[arg(long, default_value = "./default.corekv")]
    pub data_dir: PathBuf,
    /// Comma-separated addresses to serve clients on (host:port; an http:// prefix is accepted).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Number of shard executors, one per core (default: every core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Largest client request accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most compares, success ops or failure ops in one transaction.
    #[arg(long, default_value_t = crate::mvcc::store::DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: usize,
    /// Largest backend file before writes fail with "no space" (0 = default 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Size of each write-ahead log segment file, bytes (a multiple of 4096, 64 KiB..=1 GiB).
    #[arg(long, default_value_t = crate::wal::DEFAULT_SEGMENT_SIZE)]
    pub wal_segment_bytes: u64,
    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Interval of progress notifications to watchers that ask for them (e.g. 10m, 5s, 100ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: std::time::Duration,
    /// Smallest lease TTL granted, seconds; smaller requests are raised to it (default as
    /// etcd derives it: 1.5 election timeouts, rounded up).
    #[arg(long, default_value_t = default_min_lease_ttl())]
    pub min_lease_ttl: i64,
    /// How often each shard checkpoints its leases' remaining TTLs through the log (so a
    /// restart resumes them): a number with a unit, e.g. 500ms, 30s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lease_checkpoint_interval: Duration,
}

/// Shortest accepted `--lease-checkpoint-interval`.
pub const MIN_LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// etcd's minimum lease TTL: 1.5 election timeouts (election ticks × tick interval), in whole
/// seconds rounded up; 2 s with corekv's raft settings.
pub fn default_min_lease_ttl() -> i64 {
    let election = crate::raft::TICK_INTERVAL * crate::raft::ELECTION_TICK as u32;
    let ms = election.as_millis() as i64 * 3 / 2;
    (ms + 999) / 1000
}

/// Parses a duration as etcd flags write them: a number with `ms`, `s`, `m` or `h`
/// (e.g. `10m`, `500ms`); `0` disables.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else if s == "0" {
        ("0", 1)
    } else {
        return Err(format!(
            "{s:?}: expected a number with ms, s, m or h (e.g. 10m)"
        ));
    };
    let n: u64 = num
        .parse()
        .map_err(|e| format!("{s:?}: {e} (expected e.g. 10m, 5s, 100ms)"))?;
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Validated server configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Number of shard executors.
    pub shards: usize,
    /// Largest client request, bytes.
    pub max_request_bytes: usize,
    /// Transaction op limit.
    pub max_txn_ops: usize,
    /// Backend size quota, bytes.
    pub quota_backend_bytes: u64,
    /// WAL settings.
    pub wal: crate::wal::Options,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Interval of watch progress notifications.
    pub watch_progress_notify_interval: std::time::Duration,
    /// Smallest lease TTL granted, seconds.
    pub min_lease_ttl: i64,
    /// Interval of lease checkpoints.
    pub lease_checkpoint_interval: Duration,
}

impl Config {
    /// Defaults for a server on `data_dir` listening on `listen` (used by tests and embedders).
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            name: "default".into(),
            data_dir: data_dir.into(),
            listen: vec![listen],
            shards: available_cores(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: crate::mvcc::store::DEFAULT_MAX_TXN_OPS,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            wal: crate::wal::Options::default(),
            log_level: LogLevel::Info,
            watch_progress_notify_interval: crate::watch::DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            min_lease_ttl: default_min_lease_ttl(),
            lease_checkpoint_interval: crate::lease::DEFAULT_CHECKPOINT_INTERVAL,
        }
    }

    /// Validates flags; the error names the flag and the accepted values.
    pub fn from_flags(flags: Flags) -> Result<Config, String> {
        let mut listen = Vec::new();
        for url in flags
            .listen_client_urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let hostport = url
                .strip_prefix("http://")
                .unwrap_or(url)
                .trim_end_matches('/');
            if url.starts_with("https://") || url.starts_with("unix:") {
                return Err(format!("--listen-client-urls: {url:?}: only plain host:port (or http://host:port) is supported"));
            }
            let addrs: Vec<SocketAddr> = hostport
                .to_socket_addrs()
                .map_err(|e| format!("--listen-client-urls: {url:?}: {e}"))?
                .collect();
            let addr = addrs
                .first()
                .ok_or_else(|| format!("--listen-client-urls: {url:?} resolves to no address"))?;
            listen.push(*addr);
        }
        if listen.is_empty() {
            return Err("--listen-client-urls: at least one address is required".into());
        }
        let shards = flags.shards.unwrap_or_else(available_cores);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(format!("--shards: {shards} is not in 1..={MAX_SHARDS}"));
        }
        if flags.max_request_bytes < 1024 || flags.max_request_bytes > MAX_MAX_REQUEST_BYTES {
            return Err(format!(
                "--max-request-bytes: {} is not in 1024..={MAX_MAX_REQUEST_BYTES}",
                flags.max_request_bytes
            ));
        }
        if flags.max_txn_ops == 0 {
            return Err("--max-txn-ops: must be at least 1".into());
        }
        if flags.min_lease_ttl < 1 || flags.min_lease_ttl > crate::mvcc::lease::MAX_LEASE_TTL {
            return Err(format!(
                "--min-lease-ttl: {} is not in 1..={}",
                flags.min_lease_ttl,
                crate::mvcc::lease::MAX_LEASE_TTL
            ));
        }
        let lease_checkpoint_interval = flags.lease_checkpoint_interval;
        if lease_checkpoint_interval < MIN_LEASE_CHECKPOINT_INTERVAL {
            return Err(format!(
                "--lease-checkpoint-interval: {lease_checkpoint_interval:?} is below the minimum of {MIN_LEASE_CHECKPOINT_INTERVAL:?}"
            ));
        }
        let wal = wal_options(flags.wal_segment_bytes)?;
        Ok(Config {
            name: flags.name,
            data_dir: flags.data_dir,
            listen,
            shards,
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
            quota_backend_bytes: if flags.quota_backend_bytes == 0 {
                DEFAULT_QUOTA_BACKEND_BYTES
            } else {
                flags.quota_backend_bytes
            },
            wal,
            log_level: flags.log_level,
            watch_progress_notify_interval: flags.watch_progress_notify_interval,
            min_lease_ttl: flags.min_lease_ttl,
            lease_checkpoint_interval,
        })
    }
}

/// WAL options for segments of `segment_bytes`: a batch may take at most half a segment.
fn wal_options(segment_bytes: u64) -> Result<crate::wal::Options, String> {
    let defaults = crate::wal::Options::default();
    let options = crate::wal::Options {
        segment_size: segment_bytes,
        max_batch_bytes: defaults.max_batch_bytes.min((segment_bytes / 2) as usize),
        ..defaults
    };
    options
        .validate()
        .map_err(|e| format!("--wal-segment-bytes: {segment_bytes}: {e}"))?;
    Ok(options)
}

/// Cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let flags = Flags::try_parse_from(std::iter::once("corekv").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_flags(flags)
    }

    #[test]
    fn defaults_match_etcd_habits() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./default.corekv"));
        assert_eq!(c.listen, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(c.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(c.max_txn_ops, 128);
        assert!(c.shards >= 1);
    }

    #[test]
    fn urls_accept_http_prefix_and_lists() {
        let c = parse(&[
            "--listen-client-urls",
            "http://127.0.0.1:3000/, 127.0.0.1:3001",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[0].port(), 3000);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        assert!(parse(&["--shards", "0"]).unwrap_err().contains("--shards"));
        assert!(parse(&["--listen-client-urls", "https://x:1"])
            .unwrap_err()
            .contains("--listen-client-urls"));
        assert!(parse(&["--max-request-bytes", "10"])
            .unwrap_err()
            .contains("--max-request-bytes"));
        assert!(parse(&["--max-txn-ops", "0"])
            .unwrap_err()
            .contains("--max-txn-ops"));
        assert!(parse(&["--min-lease-ttl", "0"])
            .unwrap_err()
            .contains("--min-lease-ttl"));
        for bad in ["5", "5x", "ms", "10ms"] {
            assert!(parse(&["--lease-checkpoint-interval", bad])
                .unwrap_err()
                .contains("--lease-checkpoint-interval"));
        }
    }

    #[test]
    fn lease_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.min_lease_ttl, 2,
            "etcd's derivation with 10 ticks of 100 ms"
        );
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(300));
        let c = parse(&[
            "--min-lease-ttl",
            "1",
            "--lease-checkpoint-interval",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.min_lease_ttl, 1);
        assert_eq!(c.lease_checkpoint_interval, Duration::from_millis(500));
    }

    #[test]
    fn durations_parse_as_etcd_writes_them() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5").is_err());
    }
}
