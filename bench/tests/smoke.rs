//! Short runs of every load subcommand of the real `corekv-bench` binary against a real
//! `corekv` started by the test (on a free loopback port, fresh data dir). They check that
//! the runs complete without errors and that the JSON report is complete and consistent;
//! they never assert on timing (the machine is shared).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `corekv` binary of this workspace, next to `corekv-bench` in the target dir.
/// `cargo test --workspace` builds it (the corekv package has integration tests).
fn corekv_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_corekv-bench"));
    let path = bench.with_file_name("corekv");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p corekv` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// A `corekv` child process, killed on drop.
struct Server {
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(dir);
        s._tmp = Some(tmp);
        s
    }

    fn start_in(data_dir: PathBuf) -> Server {
        let mut child = Command::new(corekv_binary())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", "127.0.0.1:0", "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn corekv");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening for clients on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let endpoint = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("corekv exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "corekv did not start in time");
        };
        Server {
            child,
            endpoint,
            data_dir,
            _tmp: None,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bench(args: &[&str]) -> Output {
    bench_env(args, &[])
}

/// Runs `corekv-bench args...` with extra environment variables.
fn bench_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corekv-bench"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run corekv-bench")
}

/// Runs `corekv-bench args... --endpoints <server> --json`, expects success, returns the
/// JSON report.
fn run_json(server: &Server, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--endpoints", &server.endpoint, "--json"]);
    let out = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "corekv-bench {all:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Checks a report's series: `ok` successes per series name and no errors.
fn assert_clean(report: &Value, expected: &[(&str, u64)]) {
    let series = report["series"].as_array().expect("series");
    assert_eq!(series.len(), expected.len(), "{report}");
    for (s, (name, ok)) in series.iter().zip(expected) {
        assert_eq!(s["name"], *name, "{report}");
        assert_eq!(s["ok"], *ok, "{report}");
        assert_eq!(s["failed"], 0, "{report}");
        let l = &s["latency_us"];
        if *ok > 0 {
            assert!(l["p50"].as_u64() <= l["p99"].as_u64(), "{report}");
            assert!(l["p99"].as_u64() <= l["max"].as_u64(), "{report}");
            let counted: u64 = s["histogram"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["count"].as_u64().unwrap())
                .sum();
            assert_eq!(
                counted, *ok,
                "histogram buckets hold every request: {report}"
            );
        }
    }
    assert_eq!(report["target"], "corekv");
}

#[test]
fn kv_subcommands_complete_without_errors() {
    let server = Server::start();
    let common = [
        "--clients",
        "8",
        "--conns",
        "2",
        "--threads",
        "2",
        "--no-progress",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = extra.to_vec();
        v.extend(common);
        v
    };
    let r = run_json(
        &server,
        &with(&["put", "--total", "300", "--key-space-size", "100"]),
    );
    assert_clean(&r, &[("put", 300)]);
    assert_eq!(r["config"]["clients"], "8");

    for consistency in ["l", "s"] {
        let r = run_json(
            &server,
            &with(&[
                "range",
                "--total",
                "300",
                "--key-space-size",
                "200",
                "--consistency",
                consistency,
            ]),
        );
        assert_clean(&r, &[("range", 300)]);
        assert_eq!(r["config"]["consistency"], consistency);
        assert!(r["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("preloaded 200 keys"));
    }
    // Multi-key ranges check that every preloaded key of the span comes back.
    let r = run_json(
        &server,
        &with(&[
            "range",
            "--total",
            "50",
            "--key-space-size",
            "200",
            "--limit",
            "50",
        ]),
    );
    assert_clean(&r, &[("range", 50)]);

    let r = run_json(
        &server,
        &with(&[
            "txn-put",
            "--total",
            "100",
            "--txn-ops",
            "4",
            "--key-space-size",
            "100",
        ]),
    );
    assert_clean(&r, &[("txn-put", 100)]);

    let r = run_json(
        &server,
        &with(&[
            "txn-mixed",
            "--total",
            "400",
            "--rw-ratio",
            "3",
            "--key-space-size",
            "100",
            "--limit",
            "5",
        ]),
    );
    let series = r["series"].as_array().unwrap();
    let (reads, writes) = (
        series[0]["ok"].as_u64().unwrap(),
        series[1]["ok"].as_u64().unwrap(),
    );
    assert_eq!(reads + writes, 400, "{r}");
    assert!(reads > writes, "3 reads per write: {r}");
    assert_eq!(series[0]["failed"], 0);
    assert_eq!(series[1]["failed"], 0);

    // A duration-bound, rate-limited run stops on time with some requests done.
    let r = run_json(
        &server,
        &with(&["put", "--duration", "0.5", "--rate", "200"]),
    );
    let ok = r["series"][0]["ok"].as_u64().unwrap();
    assert!(ok > 0 && r["series"][0]["failed"] == 0, "{r}");

    // Text output names the throughput and the histogram.
    let out = bench(&[
        "put",
        "--total",
        "20",
        "--endpoints",
        &server.endpoint,
        "--no-progress",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[put] 20 ok, 0 failed") && text.contains("histogram"),
        "{text}"
    );
}

#[test]
fn check_perf_runs_the_load_and_cleans_up() {
    let server = Server::start();
    let args = [
        "check-perf",
        "--load",
        "s",
        "--duration",
        "1",
        "--clients",
        "10",
        "--conns",
        "10",
        "--no-progress",
        "--json",
        "--endpoints",
    ];
    let mut all = args.to_vec();
    all.push(&server.endpoint);
    // Twice: the second run finds the prefix empty only if the first cleaned up. The first
    // cleans up 7 keys per step, so resuming each step after the last is exercised.
    for batch in ["7", "10000"] {
        let out = bench_env(&all, &[("COREKV_CHECK_PERF_CLEANUP_BATCH", batch)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // PASS or FAIL depends on the machine; the report must be complete either way.
        let r: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        assert_eq!(
            out.status.success(),
            r["passed"].as_bool().unwrap(),
            "{r}\n{stderr}"
        );
        assert_eq!(r["workload"], "check-perf --load s");
        assert_eq!(r["checks"].as_array().unwrap().len(), 4, "{r}");
        let ok = r["series"][0]["ok"].as_u64().unwrap();
        assert!(ok > 0, "{r}");
        let notes: Vec<&str> = r["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(
            notes.contains(&format!("deleted {ok} keys under the prefix afterwards").as_str()),
            "{r}"
        );
        assert!(notes.iter().any(|n| n.contains("non-standard")), "{r}");
    }
}

#[test]
fn first_read_waits_for_a_restarted_server() {
    let mut server = Server::start();
    let r = run_json(
        &server,
        &["put", "--total", "1", "--sequential-keys", "--no-progress"],
    );
    assert_clean(&r, &[("put", 1)]);
    server.kill();
    let dir = server.data_dir.clone();
    let tmp = server._tmp.take();
    let server = Server::start_in(dir);
    let out = bench(&["first-read", "--endpoints", &server.endpoint, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(r["first_read_seconds"].as_f64().unwrap() >= 0.0);
    assert!(r["attempts"].as_u64().unwrap() >= 1);
    drop(server);
    drop(tmp);
}

#[test]
fn unreachable_servers_and_bad_flags_fail_with_clear_messages() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let out = bench(&[
        "put",
        "--total",
        "1",
        "--endpoints",
        &endpoint,
        "--timeout",
        "2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect to corekv"), "{err}");

    let out = bench(&["range", "--txn-ops", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag \"--txn-ops\" for range"));
    let out = bench(&["nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown subcommand"));
    let out = bench(&["check-perf", "--load", "xxl"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not s, m, l or xl"));
}

/// Finds a metric of a report.
fn metric(report: &Value, name: &str) -> f64 {
    report["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric {name}: {report}"))
}

/// Runs `corekv-bench args... --endpoints <server> --json` for a subcommand that prints one
/// JSON object per line; returns them all.
fn run_json_lines(server: &Server, args: &[&str]) -> Vec<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--endpoints", &server.endpoint, "--json"]);
    let out = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "corekv-bench {all:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn watch_creates_watchers_and_receives_every_event() {
    let server = Server::start();
    // 3 streams x 4 watchers, all on the one key of the default key space: each of the 60
    // puts reaches all 12 watchers.
    let r = run_json(
        &server,
        &[
            "watch",
            "--streams",
            "3",
            "--watchers-per-stream",
            "4",
            "--conns",
            "2",
            "--total",
            "60",
            "--clients",
            "4",
            "--no-progress",
        ],
    );
    assert_eq!(r["workload"], "watch");
    assert_clean(&r, &[("create", 12), ("put", 60), ("event", 720)]);
    assert_eq!(metric(&r, "expected_events"), 720.0, "{r}");
    assert_eq!(metric(&r, "received_events"), 720.0, "{r}");
    assert!(metric(&r, "events_per_sec") > 0.0, "{r}");
    assert_eq!(r["config"]["watchers_per_stream"], "4");

    // Watchers on distinct keys (sequential): each put reaches exactly the one watcher of
    // its key.
    let r = run_json(
        &server,
        &[
            "watch",
            "--streams",
            "2",
            "--watchers-per-stream",
            "5",
            "--key-space-size",
            "10",
            "--sequential-keys",
            "--total",
            "30",
            "--rate",
            "500",
            "--no-progress",
        ],
    );
    assert_clean(&r, &[("create", 10), ("put", 30), ("event", 30)]);
}

#[test]
fn watch_latency_measures_every_event_and_memory() {
    let server = Server::start();
    let pid = server.child.id().to_string();
    let reports = run_json_lines(
        &server,
        &[
            "watch-latency",
            "--watchers",
            "1,20",
            "--streams",
            "4",
            "--puts",
            "10",
            "--idle",
            "100",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_clean(&reports[0], &[("create", 1), ("put", 10), ("event", 10)]);
    assert_clean(&reports[1], &[("create", 20), ("put", 10), ("event", 200)]);
    assert_eq!(reports[1]["config"]["streams"], "4");
    assert_eq!(reports[1]["config"]["lockstep"], "true");
    assert_eq!(reports[2]["workload"], "watch-memory");
    assert!(metric(&reports[2], "bytes_per_idle_watcher") >= 0.0);
}

#[test]
fn watch_latency_trace_times_every_put_and_stream() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("trace.csv");
    let r = run_json(
        &server,
        &[
            "watch-latency",
            "--watchers",
            "20",
            "--streams",
            "4",
            "--puts",
            "10",
            "--rate",
            "200",
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    assert_clean(&r, &[("create", 20), ("put", 10), ("event", 200)]);
    let puts = std::fs::read_to_string(&trace).expect("per-put trace written");
    let mut lines = puts.lines();
    assert_eq!(
        lines.next(),
        Some("put,sent_us,reply_us,first_event_us,last_event_us")
    );
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().expect(l)).collect())
        .collect();
    assert_eq!(rows.len(), 10, "{puts}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i as u64);
        assert!(row[3] <= row[4], "first event after the last: {puts}");
    }
    // --rate 200: puts at least ~5 ms apart (the pacer's slots), so the last starts >= 40 ms in.
    assert!(rows[9][1] >= 40_000, "{puts}");
    let streams = std::fs::read_to_string(dir.path().join("trace.streams.csv"))
        .expect("per-stream trace written");
    let per: Vec<Vec<u64>> = streams
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().expect(l)).collect())
        .collect();
    assert_eq!(per.len(), 4, "{streams}");
    assert_eq!(per.iter().map(|s| s[1]).sum::<u64>(), 200, "{streams}");
}

#[test]
fn lease_keepalive_refreshes_every_lease_without_losses() {
    let server = Server::start();
    for batch in ["1", "25"] {
        let r = run_json(
            &server,
            &[
                "lease-keepalive",
                "--leases",
                "100",
                "--conns",
                "2",
                "--inflight",
                "2",
                "--batch",
                batch,
                "--duration",
                "0.5",
            ],
        );
        assert_eq!(r["workload"], "lease-keepalive");
        let rounds = r["series"][0]["ok"].as_u64().unwrap();
        assert!(rounds > 0, "{r}");
        assert_eq!(r["series"][0]["failed"], 0, "{r}");
        assert_eq!(metric(&r, "lost"), 0.0, "{r}");
        assert_eq!(
            metric(&r, "refreshed"),
            (rounds * batch.parse::<u64>().unwrap()) as f64,
            "every id of every round refreshed: {r}"
        );
        assert_eq!(metric(&r, "ids_per_message"), batch.parse::<f64>().unwrap());
    }
}
