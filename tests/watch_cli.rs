//! `corekvctl watch` against the real server: etcdctl's simple output with --prev-kv, --rev
//! replay, --prefix, and the compacted-revision cancel (exit 1 with the reason on stderr).

#[path = "support/server.rs"]
mod server;

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::Ctl;
use server::ServerProcess;

/// Forwards a child's stdout lines to a channel (on a thread).
fn reader(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `n` lines, failing after a deadline.
fn take(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => panic!("only {} of {n} lines: {got:?}", got.len()),
        }
    }
    got
}

fn watch(endpoint: &str, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_corekvctl"))
        .args(["--endpoints", endpoint, "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corekvctl watch")
}

#[test]
fn corekvctl_watch_prints_like_etcdctl() {
    let srv = ServerProcess::start(&[]);
    let ep = srv.endpoint();
    let ctl = Ctl::new(&ep);
    ctl.run(&["put", "foo", "v1"]).ok();
    ctl.run(&["put", "foo", "v2"]).ok();
    // Replay from revision 1 with prev-kv, then a live delete.
    let mut child = watch(&ep, &["foo", "--rev", "1", "--prev-kv"]);
    let rx = reader(&mut child);
    let first = take(&rx, 3 + 4);
    assert_eq!(first, ["PUT", "foo", "v1", "PUT", "foo", "v1", "foo"]);
    // The rest of the second event, then the delete (prev kv first, then the tombstone).
    ctl.run(&["del", "foo"]).ok();
    let more = take(&rx, 1 + 5);
    assert_eq!(more, ["v2", "DELETE", "foo", "v2", "foo", ""]);
    let _ = child.kill();
    let _ = child.wait();

    // --prefix from now.
    let mut child = watch(&ep, &["p/", "--prefix"]);
    // No "created" output: wait until the watcher exists by writing until it shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rx = reader(&mut child);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "p/x") {
        assert!(Instant::now() < deadline, "no event printed: {seen:?}");
        ctl.run(&["put", "p/x", "1"]).ok();
        ctl.run(&["put", "q", "outside"]).ok();
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    assert!(!seen.iter().any(|l| l == "q"), "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();

    // A compacted start revision: canceled, exit 1, reason on stderr.
    ctl.run(&["compaction", "4"]).ok();
    let out = Command::new(env!("CARGO_BIN_EXE_corekvctl"))
        .args(["--endpoints", &ep, "watch", "foo", "--rev", "2"])
        .output()
        .expect("run corekvctl watch");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compacted"), "{err}");
}
