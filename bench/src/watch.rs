//! `corekv-bench watch-latency`: put -> event latency at the client with N watchers on the
//! written key (spread over several watch streams / connections), and server memory per
//! idle watcher.
//!
//! For each N in `--watchers`: N watchers watch the key `lat`; then `--puts` puts are made
//! one after another, each waiting until all N events for it arrived; the latency of every
//! event is the time from just before the put was sent to its arrival. With `--server-pid`,
//! `--idle` watchers on distinct never-written keys are created twice; the server's VmRSS
//! before and after the second batch gives bytes per idle watcher (the first batch warms up
//! the allocator with the transient buffers of creating watchers).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv::client::watch::{WatchRequest, WatchStream};
use corekv::client::{Client, ClientOptions, Glommio};
use hdrhistogram::Histogram;

#[derive(Debug)]
struct Settings {
    endpoints: Vec<String>,
    watchers: Vec<usize>,
    streams: usize,
    puts: usize,
    idle: usize,
    server_pid: Option<u32>,
}

fn usage() -> String {
    "usage: corekv-bench watch-latency [--endpoints host:port] [--watchers 1,1000,100000] \
     [--streams 100] [--puts 200] [--idle 100000] [--server-pid PID]"
        .to_string()
}

fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        endpoints: vec!["127.0.0.1:2379".into()],
        watchers: vec![1, 1000, 100_000],
        streams: 100,
        puts: 200,
        idle: 100_000,
        server_pid: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|e| format!("{flag}: {v:?}: {e}"))
        };
        match flag.as_str() {
            "--endpoints" => s.endpoints = value()?.split(',').map(String::from).collect(),
            "--watchers" => {
                s.watchers = value()?
                    .split(',')
                    .map(|v| {
                        v.parse::<usize>()
                            .map_err(|e| format!("--watchers: {v:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--streams" => s.streams = num(value()?)?.max(1),
            "--puts" => s.puts = num(value()?)?.max(1),
            "--idle" => s.idle = num(value()?)?,
            "--server-pid" => s.server_pid = Some(num(value()?)? as u32),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown flag {other:?}\n{}", usage())),
        }
    }
    Ok(s)
}

/// Resident memory of a process, bytes.
fn vm_rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

async fn open_streams(s: &Settings, n: usize) -> Result<Vec<(Client, WatchStream)>, String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let c = Client::connect(&s.endpoints, ClientOptions::default(), Glommio)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let w = c
            .watch_stream()
            .await
            .map_err(|e| format!("watch stream: {e}"))?;
        out.push((c, w));
    }
    Ok(out)
}

/// Creates `n` watchers round-robin over `streams`, `key_of(i)` each, many in flight.
async fn create_many(
    streams: &[(Client, WatchStream)],
    n: usize,
    key_of: impl Fn(usize) -> Vec<u8>,
) -> Result<(), String> {
    const IN_FLIGHT: usize = 512;
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + IN_FLIGHT).min(n))
            .map(|j| {
                let (_, w) = &streams[j % streams.len()];
                w.create(WatchRequest {
                    key: key_of(j),
                    ..WatchRequest::default()
                })
            })
            .collect();
        for r in futures::future::join_all(batch).await {
            r.map_err(|e| format!("create watcher: {e}"))?;
        }
        i += IN_FLIGHT;
    }
    Ok(())
}

async fn latency_run(s: &Settings, n: usize) -> Result<String, String> {
    let streams = open_streams(s, s.streams.min(n)).await?;
    create_many(&streams, n, |_| b"lat".to_vec()).await?;
    let writer = Client::connect(&s.endpoints, ClientOptions::default(), Glommio)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let sent_at: Rc<RefCell<Option<(i64, Instant)>>> = Rc::new(RefCell::new(None));
    let received = Rc::new(RefCell::new(0usize));
    // One reader task per stream: records the latency of each event of the current put.
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for (c, mut w) in streams {
        clients.push(c);
        let hist = hist.clone();
        let sent_at = sent_at.clone();
        let received = received.clone();
        readers.push(glommio::spawn_local(async move {
            while let Some(r) = w.next().await {
                let Ok(r) = r else { return };
                let now = Instant::now();
                for e in &r.events {
                    if let Some((seq, t0)) = *sent_at.borrow() {
                        if e.kv.value == seq.to_string().as_bytes() {
                            let us = now.duration_since(t0).as_micros().max(1) as u64;
                            let _ = hist.borrow_mut().record(us);
                            *received.borrow_mut() += 1;
                        }
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for seq in 0..s.puts as i64 {
        *received.borrow_mut() = 0;
        *sent_at.borrow_mut() = Some((seq, Instant::now()));
        writer
            .put_kv("lat", seq.to_string())
            .await
            .map_err(|e| format!("put: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while *received.borrow() < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "put {seq}: only {} of {n} events within 60 s",
                    received.borrow()
                ));
            }
            glommio::timer::sleep(Duration::from_micros(50)).await;
        }
    }
    let elapsed = started.elapsed();
    for r in readers {
        r.cancel().await;
    }
    drop(clients);
    let h = hist.borrow();
    Ok(format!(
        "watchers={n:>7} streams={:>4} puts={} events={} p50={}us p99={}us max={}us ({:.1}s)",
        s.streams.min(n),
        s.puts,
        h.len(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.max(),
        elapsed.as_secs_f64()
    ))
}

async fn memory_run(s: &Settings, pid: u32) -> Result<String, String> {
    let streams = open_streams(s, s.streams).await?;
    // Warm-up: a first batch of idle watchers, so the transient buffers of creating them
    // (RPC messages, `created` responses) are already allocated (and freed) before the
    // baseline; the second batch then measures what the watchers themselves keep.
    create_many(&streams, s.idle, |i| format!("idle/{i:08}").into_bytes()).await?;
    glommio::timer::sleep(Duration::from_millis(500)).await;
    let before = vm_rss(pid)?;
    create_many(&streams, s.idle, |i| {
        format!("idle/{:08}", s.idle + i).into_bytes()
    })
    .await?;
    glommio::timer::sleep(Duration::from_millis(500)).await;
    let after = vm_rss(pid)?;
    let per = (after.saturating_sub(before)) as f64 / s.idle.max(1) as f64;
    Ok(format!(
        "idle watchers: {} then {} more over {} streams; server VmRSS {:.1} MiB -> {:.1} MiB for the second {}: {per:.0} bytes per idle watcher",
        s.idle,
        s.idle,
        s.streams,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        s.idle
    ))
}

/// Runs `watch-latency`.
pub fn run(args: &[String]) -> Result<(), String> {
    let s = parse(args)?;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            for &n in &s.watchers {
                println!("{}", latency_run(&s, n).await?);
            }
            if let (Some(pid), true) = (s.server_pid, s.idle > 0) {
                println!("{}", memory_run(&s, pid).await?);
            }
            Ok::<(), String>(())
        })
        .map_err(|e| format!("executor: {e}"))?
        .join()
        .map_err(|e| format!("bench thread: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_flags_say_which() {
        let args: Vec<String> = ["--watchers", "1,10", "--puts", "5", "--server-pid", "7"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = parse(&args).unwrap();
        assert_eq!(
            (s.watchers, s.puts, s.server_pid),
            (vec![1, 10], 5, Some(7))
        );
        let bad: Vec<String> = vec!["--puts".into(), "x".into()];
        assert!(parse(&bad).unwrap_err().contains("--puts"));
    }
}
