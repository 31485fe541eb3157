//! A watch client that never reads: the server's memory stays bounded (its watchers fall back
//! to catch-up instead of buffering), writers finish, and another client's watcher still gets
//! every event. Then the stalled client starts reading and gets everything too.
//!
//! Size: `COREKV_WATCH_STALL_ITERS` puts of 8 KiB (default 3000, ~24 MiB of events per watcher, far
//! beyond the 1 MiB stream buffer).

#[path = "support/server.rs"]
mod server;
#[path = "support/watch.rs"]
mod watch;

use std::time::Duration;

use corekv::client::txn::prefix_end;
use server::{with_client, ServerProcess};
use watch::{connect, event_count, next, until};

fn iters() -> usize {
    std::env::var("COREKV_WATCH_STALL_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Anonymous resident memory of a process, bytes (file-backed mmap pages of the backend are
/// not counted: they are page cache, not buffering).
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("RssAnon value");
    kb * 1024
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_server() {
    let srv = ServerProcess::start(&["--shards", "2"]);
    let pid = srv.pid();
    let endpoint = srv.endpoint();
    with_client(&endpoint.clone(), async move |c| {
        let n = iters();
        // The stalled client: several watchers on the prefix, never reading (yet).
        let stalled_client = connect(&endpoint).await;
        let mut stalled = stalled_client.watch_stream().await.unwrap();
        for _ in 0..4 {
            stalled.watch("s/", prefix_end(b"s/"), 0).await.unwrap();
        }
        // A healthy watcher on another connection.
        let mut healthy = c.watch_stream().await.unwrap();
        healthy.watch("s/", prefix_end(b"s/"), 0).await.unwrap();
        assert!(next(&mut healthy).await.created);
        let before = rss_anon(pid);
        let value = vec![b'v'; 8 << 10];
        let mut last = 0;
        let mut seen = 0;
        for i in 0..n {
            last = c
                .put_kv(format!("s/{:05}", i % 500), value.clone())
                .await
                .unwrap();
            // Keep the healthy reader current so it is not the one buffering.
            while let Some(r) = watch::next_within(&mut healthy, Duration::ZERO).await {
                seen += r.events.len();
            }
        }
        let got = until(&mut healthy, |g| seen + event_count(g) >= n).await;
        seen += event_count(&got);
        assert_eq!(seen, n, "the healthy watcher got every event");
        let after = rss_anon(pid);
        let growth = after.saturating_sub(before);
        eprintln!(
            "stalled client: {n} x 8 KiB events ({} MiB x 4 watchers); server anonymous RSS {} -> {} MiB",
            (n * 8) >> 10,
            before >> 20,
            after >> 20
        );
        // 4 watchers x n x 8 KiB would be ~94 MiB at the default size if buffered; the
        // stream buffer is 1 MiB plus the connection window.
        assert!(
            growth < 40 << 20,
            "server anonymous memory grew by {} MiB with a stalled watch client",
            growth >> 20
        );
        // Now the stalled client reads: every watcher gets every event, in order.
        let mut per_watcher: std::collections::HashMap<i64, Vec<i64>> = Default::default();
        until(&mut stalled, |g| {
            if let Some(r) = g.last() {
                for e in &r.events {
                    per_watcher
                        .entry(r.watch_id)
                        .or_default()
                        .push(e.kv.mod_revision);
                }
            }
            per_watcher.len() == 4 && per_watcher.values().all(|v| v.last() == Some(&last))
        })
        .await;
        for revs in per_watcher.values() {
            assert_eq!(revs.len(), n);
            assert!(
                revs.windows(2).all(|w| w[1] == w[0] + 1),
                "ordered, no gaps"
            );
        }
    });
}
