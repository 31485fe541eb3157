//! The key-value subcommands after etcd's benchmark tool: `put`, `range`, `txn-put`,
//! `txn-mixed`; plus `first-read` (restart measurements: time until a read succeeds).
//!
//! Keys and values are the same for every target: key number `n` is written in decimal
//! into the last bytes of a `--key-size` key padded with `k` (so key order is number order),
//! values are `--val-size` pseudo-random bytes fixed per run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{self, Settings, COMMON_FLAGS, KEY_FLAGS};
use crate::load::{self, RequestFuture, Workload};
use crate::report::Report;
use crate::target::{self, Conn, ErrorKind, Get, TxnOp};

/// Key number `n` as a `size`-byte key: `k…k` then the decimal digits of `n` (the last
/// `size` digits when `size` < 20; `args::parse` refuses key spaces that would collide).
pub fn key_for(n: u64, size: usize) -> Vec<u8> {
    // Digits by hand rather than `format!`: this runs once per request in the load generator,
    // which shares the machine's cores with the server it measures.
    let mut digits = [b'0'; 20];
    let mut rest = n;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let mut k = vec![b'k'; size.max(1)];
    let len = digits.len().min(k.len());
    let at = k.len() - len;
    k[at..].copy_from_slice(&digits[digits.len() - len..]);
    k
}

/// splitmix64: a fixed, fast mixing of request numbers into pseudo-random key numbers (the
/// same sequence for every target).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` pseudo-random bytes (incompressible, like etcd benchmark's values).
pub fn value_bytes(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (mix(seed ^ (i / 8)) >> ((i % 8) * 8)) as u8)
        .collect()
}

/// The keys and value of a run.
#[derive(Clone, Debug)]
pub struct Keys {
    key_size: usize,
    space: u64,
    sequential: bool,
    value: Vec<u8>,
}

impl Keys {
    /// Keys and value as `s` asks.
    pub fn new(s: &Settings) -> Keys {
        Keys {
            key_size: s.key_size,
            space: s.key_space_size,
            sequential: s.sequential_keys,
            value: value_bytes(s.val_size, 0x5eed),
        }
    }

    /// The key number request `i` starts at, in `0..space - span + 1` (so that `span`
    /// consecutive keys from it exist).
    pub fn number(&self, i: u64, span: u64) -> u64 {
        debug_assert!(span >= 1 && span <= self.space);
        let n = self.space - span + 1;
        if self.sequential {
            i % n
        } else {
            mix(i) % n
        }
    }

    /// Key number `n`.
    pub fn key(&self, n: u64) -> Vec<u8> {
        key_for(n, self.key_size)
    }

    /// The value every put writes.
    pub fn value(&self) -> Vec<u8> {
        self.value.clone()
    }

    /// A read of `span` consecutive keys from number `n` (a single-key get when `span` is 1).
    pub fn get(&self, n: u64, span: u64, serializable: bool) -> Get {
        if span <= 1 {
            return Get::key(self.key(n), serializable);
        }
        Get {
            key: self.key(n),
            range_end: self.key(n + span),
            limit: span,
            serializable,
            keys_only: false,
        }
    }
}

/// `put`: one key per request.
pub struct Put {
    keys: Keys,
}

impl Workload for Put {
    fn name(&self) -> &str {
        "put"
    }
    fn series(&self) -> Vec<String> {
        vec!["put".into()]
    }
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a> {
        Box::pin(async move {
            let key = self.keys.key(self.keys.number(i, 1));
            (0, conn.put(key, self.keys.value()).await)
        })
    }
}

/// Checks that a read of `span` preloaded keys found all of them.
fn expect_keys(found: usize, span: u64) -> Result<(), ErrorKind> {
    if found as u64 == span {
        Ok(())
    } else {
        Err(ErrorKind::check("read found fewer keys than preloaded"))
    }
}

/// `range`: reads `--limit` consecutive preloaded keys (one key by default).
pub struct Range {
    keys: Keys,
    span: u64,
    serializable: bool,
}

impl Workload for Range {
    fn name(&self) -> &str {
        "range"
    }
    fn series(&self) -> Vec<String> {
        vec!["range".into()]
    }
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a> {
        Box::pin(async move {
            let g = self
                .keys
                .get(self.keys.number(i, self.span), self.span, self.serializable);
            let r = conn.get(g).await;
            (0, r.and_then(|kvs| expect_keys(kvs.len(), self.span)))
        })
    }
}

/// `txn-put`: `--txn-ops` puts of consecutive keys in one transaction (distinct keys: etcd
/// refuses a transaction that writes a key twice).
pub struct TxnPut {
    keys: Keys,
    ops: u64,
}

impl Workload for TxnPut {
    fn name(&self) -> &str {
        "txn-put"
    }
    fn series(&self) -> Vec<String> {
        vec!["txn-put".into()]
    }
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a> {
        Box::pin(async move {
            let first = self.keys.number(i, self.ops);
            let ops = (first..first + self.ops)
                .map(|n| TxnOp::Put(self.keys.key(n), self.keys.value()))
                .collect();
            (0, conn.txn(ops).await.map(|_| ()))
        })
    }
}

/// `txn-mixed`: transactions of one read (`--limit` keys) or one put, `--rw-ratio` reads
/// per write; reads and writes are reported as separate series.
pub struct TxnMixed {
    keys: Keys,
    span: u64,
    serializable: bool,
    /// A request is a write when its mixed number falls below this.
    write_below: u64,
}

impl TxnMixed {
    fn new(s: &Settings) -> TxnMixed {
        let write_share = 1.0 / (1.0 + s.rw_ratio);
        TxnMixed {
            keys: Keys::new(s),
            span: s.range_span(),
            serializable: s.serializable,
            write_below: (write_share * u64::MAX as f64) as u64,
        }
    }

    fn is_write(&self, i: u64) -> bool {
        // A different mixing than the key choice, so writes are not tied to some keys.
        mix(i ^ 0xA5A5_A5A5_A5A5_A5A5) < self.write_below
    }
}

impl Workload for TxnMixed {
    fn name(&self) -> &str {
        "txn-mixed"
    }
    fn series(&self) -> Vec<String> {
        vec!["read".into(), "write".into()]
    }
    fn request<'a>(&'a self, conn: &'a mut Conn, i: u64) -> RequestFuture<'a> {
        Box::pin(async move {
            if self.is_write(i) {
                let key = self.keys.key(self.keys.number(i, 1));
                let r = conn.txn(vec![TxnOp::Put(key, self.keys.value())]).await;
                (1, r.map(|_| ()))
            } else {
                let n = self.keys.number(i, self.span);
                let g = self.keys.get(n, self.span, self.serializable);
                let r = conn.txn(vec![TxnOp::Get(g)]).await;
                let r =
                    r.and_then(|found| expect_keys(found.first().copied().unwrap_or(0), self.span));
                (0, r)
            }
        })
    }
}

/// Writes every key of the key space once, so that reads find them. Uses the run's target,
/// endpoints and key shape, with enough clients to be quick; not measured.
pub fn preload(s: &Settings) -> Result<Report, String> {
    let clients = s.clients.max(64);
    let load = Settings {
        total: Some(s.key_space_size),
        duration: None,
        rate: None,
        sequential_keys: true,
        clients,
        conns: s.conns.max(4).min(clients),
        no_progress: s.no_progress,
        ..s.clone()
    };
    let report = load::run(
        &load,
        Arc::new(Put {
            keys: Keys::new(&load),
        }),
    )?;
    let failed: u64 = report.series.iter().map(|x| x.failed()).sum();
    if failed > 0 {
        return Err(format!(
            "preload of {} keys failed: {:?}",
            s.key_space_size, report.series[0].errors
        ));
    }
    Ok(report)
}

const READ_FLAGS: &[&str] = &["--consistency", "--limit", "--no-preload"];

/// Entry point of `put`, `range`, `txn-put` and `txn-mixed`.
pub fn run(cmd: &str, argv: &[String]) -> Result<(), String> {
    let mut flags: Vec<&str> = COMMON_FLAGS.iter().chain(KEY_FLAGS).copied().collect();
    let mut defaults = Settings::default();
    match cmd {
        "put" => {}
        "range" => {
            flags.extend(READ_FLAGS);
            defaults.key_space_size = 10_000;
        }
        "txn-put" => flags.push("--txn-ops"),
        "txn-mixed" => {
            flags.extend(READ_FLAGS);
            flags.push("--rw-ratio");
            defaults.key_space_size = 10_000;
        }
        other => return Err(format!("kv: unknown subcommand {other}")),
    }
    let (s, _) = args::parse(cmd, argv, &flags, defaults)?;
    let workload: Arc<dyn Workload> = match cmd {
        "put" => Arc::new(Put {
            keys: Keys::new(&s),
        }),
        "range" => Arc::new(Range {
            keys: Keys::new(&s),
            span: s.range_span(),
            serializable: s.serializable,
        }),
        "txn-put" => Arc::new(TxnPut {
            keys: Keys::new(&s),
            ops: s.txn_ops as u64,
        }),
        _ => Arc::new(TxnMixed::new(&s)),
    };
    let mut notes = Vec::new();
    if matches!(cmd, "range" | "txn-mixed") && s.preload {
        let p = preload(&s)?;
        notes.push(format!(
            "preloaded {} keys in {:.2}s",
            s.key_space_size,
            p.elapsed.as_secs_f64()
        ));
    }
    let mut report = load::run(&s, workload)?;
    report.config.extend([
        ("key_size".into(), s.key_size.to_string()),
        ("val_size".into(), s.val_size.to_string()),
        ("key_space_size".into(), s.key_space_size.to_string()),
        ("sequential_keys".into(), s.sequential_keys.to_string()),
    ]);
    if matches!(cmd, "range" | "txn-mixed") {
        report.config.push((
            "consistency".into(),
            if s.serializable { "s" } else { "l" }.into(),
        ));
        report
            .config
            .push(("limit".into(), s.range_span().to_string()));
    }
    match cmd {
        "txn-put" => report
            .config
            .push(("txn_ops".into(), s.txn_ops.to_string())),
        "txn-mixed" => report
            .config
            .push(("rw_ratio".into(), s.rw_ratio.to_string())),
        _ => {}
    }
    report.notes.extend(notes);
    report.print(s.json);
    Ok(())
}

/// How often `first-read` retries, and the longest it waits in all.
const FIRST_READ_RETRY: Duration = Duration::from_millis(5);
/// Default `first-read` deadline.
const FIRST_READ_DEADLINE: Duration = Duration::from_secs(120);

/// `first-read`: from now until a linearizable read of key number 0 (as `put
/// --sequential-keys` writes it) succeeds and finds the key, retrying connection and read
/// errors every 5 ms. Prints the time in seconds (restart measurements).
pub fn first_read(argv: &[String]) -> Result<(), String> {
    let flags: Vec<&str> = [
        "--endpoints",
        "--target",
        "--timeout",
        "--key-size",
        "--json",
    ]
    .into();
    let defaults = Settings {
        timeout: FIRST_READ_DEADLINE,
        ..Settings::default()
    };
    let (s, _) = args::parse("first-read", argv, &flags, defaults)?;
    let began = Instant::now();
    let deadline = began + s.timeout;
    let key = key_for(0, s.key_size);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let per_try = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let r = target::with_conn(s.target, &s.endpoints, per_try, |mut c| {
            let key = key.clone();
            async move { c.get(Get::key(key, false)).await.map_err(|e| e.0) }
        });
        let last_error = match r {
            Ok(kvs) if !kvs.is_empty() => break,
            Ok(_) => {
                return Err(format!(
                    "first-read: key {:?} is missing",
                    String::from_utf8_lossy(&key)
                ))
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "first-read: no successful read within {:?} ({attempts} attempts, last error: {last_error})",
                s.timeout
            ));
        }
        std::thread::sleep(FIRST_READ_RETRY);
    }
    let secs = began.elapsed().as_secs_f64();
    if s.json {
        println!("{{\"first_read_seconds\":{secs:.6},\"attempts\":{attempts}}}");
    } else {
        println!("first successful read after {secs:.3}s ({attempts} attempts)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_sort_by_number_and_differ() {
        assert_eq!(key_for(7, 8).len(), 8);
        assert_eq!(key_for(7, 8), b"00000007".to_vec());
        assert_eq!(key_for(7, 22), b"kk00000000000000000007".to_vec());
        assert_ne!(key_for(7, 8), key_for(8, 8));
        assert!(key_for(9, 8) < key_for(10, 8));
        assert_eq!(key_for(123, 2), b"23".to_vec());
        assert_eq!(key_for(5, 32).len(), 32);
        assert_eq!(key_for(u64::MAX, 20), u64::MAX.to_string().into_bytes());
        assert_eq!(key_for(0, 3), b"000".to_vec());
        for n in [1, 9, 10, 99_999, 1 << 40] {
            assert_eq!(key_for(n, 20), format!("{n:020}").into_bytes());
        }
    }

    #[test]
    fn key_numbers_stay_in_the_space_with_room_for_the_span() {
        for sequential in [false, true] {
            let s = Settings {
                key_space_size: 100,
                sequential_keys: sequential,
                ..Settings::default()
            };
            let k = Keys::new(&s);
            for i in 0..10_000 {
                assert!(k.number(i, 1) < 100);
                assert!(k.number(i, 10) + 10 <= 100);
            }
        }
        let k = Keys::new(&Settings {
            key_space_size: 1000,
            ..Settings::default()
        });
        let g = k.get(5, 3, true);
        assert_eq!(
            (g.key, g.range_end, g.limit),
            (key_for(5, 8), key_for(8, 8), 3)
        );
        assert!(k.get(5, 1, false).range_end.is_empty());
    }

    #[test]
    fn values_have_the_requested_size_and_are_not_constant() {
        let v = value_bytes(1024, 1);
        assert_eq!(v.len(), 1024);
        assert!(v.iter().any(|&b| b != v[0]));
        assert!(value_bytes(0, 1).is_empty());
    }

    #[test]
    fn txn_mixed_splits_reads_and_writes_by_ratio() {
        for (ratio, want_writes) in [(1.0, 0.5), (4.0, 0.2), (0.0, 1.0)] {
            let w = TxnMixed::new(&Settings {
                rw_ratio: ratio,
                key_space_size: 100,
                ..Settings::default()
            });
            let writes = (0..100_000).filter(|&i| w.is_write(i)).count() as f64 / 100_000.0;
            assert!(
                (writes - want_writes).abs() < 0.01,
                "ratio {ratio}: {writes}"
            );
        }
    }
}
