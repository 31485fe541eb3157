//! `loopback-rtt`: the round trip of a 1-byte message over loopback TCP between two
//! threads of this process (Nagle off): the floor under any request's latency in a
//! loopback comparison. (The disk's floor, write + fdatasync, is `corekv-bench wal`'s `raw`
//! row.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::report::Series;

/// Default round trips.
const DEFAULT_ROUND_TRIPS: u64 = 20_000;
/// Most round trips one run may do.
const MAX_ROUND_TRIPS: u64 = 100_000_000;

fn io(what: &str, e: std::io::Error) -> String {
    format!("loopback-rtt: {what}: {e}")
}

/// Measures `n` round trips; returns their latencies.
pub fn measure(n: u64) -> Result<Series, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| io("bind", e))?;
    let addr = listener.local_addr().map_err(|e| io("local address", e))?;
    let echo = std::thread::Builder::new()
        .name("rtt-echo".into())
        .spawn(move || -> Result<(), String> {
            let (mut s, _) = listener.accept().map_err(|e| io("accept", e))?;
            s.set_nodelay(true).map_err(|e| io("nodelay", e))?;
            let mut b = [0u8; 1];
            loop {
                match s.read(&mut b) {
                    Ok(0) => return Ok(()),
                    Ok(_) => s.write_all(&b).map_err(|e| io("echo write", e))?,
                    Err(e) => return Err(io("echo read", e)),
                }
            }
        })
        .map_err(|e| io("start echo thread", e))?;
    let mut c = TcpStream::connect(addr).map_err(|e| io("connect", e))?;
    c.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    let mut series = Series::new("rtt");
    let mut b = [7u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&b).map_err(|e| io("write", e))?;
        c.read_exact(&mut b).map_err(|e| io("read", e))?;
        series.record(t.elapsed());
    }
    drop(c);
    echo.join()
        .map_err(|_| "loopback-rtt: echo thread panicked".to_string())??;
    Ok(series)
}

/// Entry point of `corekv-bench loopback-rtt [--total N] [--json]`.
pub fn run(argv: &[String]) -> Result<(), String> {
    let mut n = DEFAULT_ROUND_TRIPS;
    let mut json = false;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--total" => {
                let v = it.next().ok_or("--total needs a value")?;
                n = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ROUND_TRIPS).contains(n))
                    .ok_or_else(|| format!("--total: {v:?} is not in 1..={MAX_ROUND_TRIPS}"))?;
            }
            "--json" => json = true,
            other => {
                return Err(format!(
                    "unknown flag {other:?}\nusage: corekv-bench loopback-rtt [--total N] [--json]"
                ))
            }
        }
    }
    let began = Instant::now();
    let s = measure(n)?;
    let m = s.summary(began.elapsed().max(Duration::from_nanos(1)));
    if json {
        println!(
            "{}",
            serde_json::json!({"round_trips": m.ok, "p50_us": m.p50_us, "p99_us": m.p99_us, "max_us": m.max_us})
        );
    } else {
        println!(
            "loopback TCP round trip ({} trips): p50 {} µs, p99 {} µs, max {} µs",
            m.ok, m.p50_us, m.p99_us, m.max_us
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_all_counted() {
        let s = measure(100).unwrap();
        assert_eq!(s.ok(), 100);
        assert_eq!(s.failed(), 0);
    }
}
