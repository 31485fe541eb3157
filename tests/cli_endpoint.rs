//! `corekvctl endpoint status/health` in every output format, and what scripts see when an
//! endpoint is down or does not answer: a clear error, the documented exit code, no hang.

#[path = "support/server.rs"]
mod server;

mod cli_support;

use std::net::TcpListener;

use cli_support::Ctl;
use serde_json::Value;
use server::ServerProcess;

const EXIT_ERROR: i32 = 1;
const EXIT_BAD_CONNECTION: i32 = 2;

/// An address nothing listens on (connections are refused at once).
fn refused_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr.to_string()
}

#[test]
fn endpoint_status_in_every_format() {
    let srv = ServerProcess::start(&[]);
    let ep = srv.endpoint();
    let ctl = Ctl::new(&ep);
    ctl.run(&["put", "k", "v"]).ok();

    let v: Value = serde_json::from_str(&ctl.run(&["endpoint", "status", "-w", "json"]).ok())
        .expect("status JSON");
    let list = v.as_array().expect("a JSON array, one entry per endpoint");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["Endpoint"], ep.as_str());
    let s = &list[0]["Status"];
    let member = s["header"]["member_id"].as_u64().expect("member_id");
    assert_eq!(s["leader"].as_u64(), Some(member), "a single member leads");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["dbSize"].as_i64().unwrap() > 0 && s["dbSizeInUse"].as_i64().unwrap() > 0);
    assert!(s["raftTerm"].as_u64().unwrap() >= 1);
    let applied = s["raftAppliedIndex"].as_u64().unwrap();
    assert!(applied > 0 && s["raftIndex"].as_u64().unwrap() >= applied);
    assert!(
        s["header"]["revision"].as_i64().unwrap() >= 1,
        "one put was applied"
    );
    assert!(s.get("errors").is_none(), "no alarms: {s}");

    // simple: endpoint, ID, version, db size, is leader, is learner, term, index, applied,
    // errors (empty, so the line ends with ", ").
    let line = ctl.run(&["endpoint", "status"]).ok();
    let fields: Vec<&str> = line.trim_end_matches('\n').split(", ").collect();
    assert_eq!(fields.len(), 10, "{line:?}");
    assert_eq!(fields[0], ep);
    assert_eq!(fields[1], format!("{member:x}"));
    assert_eq!(fields[2], env!("CARGO_PKG_VERSION"));
    assert!(fields[3].ends_with("B"), "humanized size: {line}");
    assert_eq!((fields[4], fields[5]), ("true", "false"));
    assert!(fields[6].parse::<u64>().unwrap() >= 1);
    assert!(fields[8].parse::<u64>().unwrap() >= applied);
    assert_eq!(fields[9], "");

    let table = ctl.run(&["endpoint", "status", "--write-out=table"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("+-") && lines[2] == lines[0] && lines[4] == lines[0]);
    let header: Vec<&str> = lines[1].split('|').map(str::trim).collect();
    assert_eq!(
        header,
        [
            "",
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
            ""
        ]
    );
    let row: Vec<&str> = lines[3].split('|').map(str::trim).collect();
    assert_eq!(row[1], ep);
    assert_eq!(row[2], format!("{member:x}"));
    assert_eq!(row[5], "true");
    assert_eq!(lines[1].len(), lines[3].len(), "columns line up");

    // One endpoint down: the others are still printed; exit 1 and a line on stderr.
    let down = refused_endpoint();
    let both = Ctl::new(&format!("{ep},{down}"));
    let out = both.run(&["endpoint", "status"]);
    assert_eq!(out.code, EXIT_ERROR, "{out:?}");
    assert!(out.text().starts_with(&format!("{ep}, ")), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("Failed to get the status of endpoint {down}")),
        "{out:?}"
    );
}

#[test]
fn endpoint_health_in_every_format() {
    let srv = ServerProcess::start(&[]);
    let ep = srv.endpoint();
    let ctl = Ctl::new(&ep);

    let out = ctl.run(&["endpoint", "health"]).ok();
    let prefix = format!("{ep} is healthy: successfully committed proposal: took = ");
    assert!(out.starts_with(&prefix) && out.ends_with("s\n"), "{out:?}");

    let v: Value = serde_json::from_str(&ctl.run(&["endpoint", "health", "-w", "json"]).ok())
        .expect("health JSON");
    assert_eq!(v[0]["endpoint"], ep.as_str());
    assert_eq!(v[0]["health"], true);
    assert!(v[0]["took"].as_str().unwrap().ends_with('s'), "{v}");
    assert!(v[0].get("error").is_none(), "{v}");

    let table = ctl.run(&["endpoint", "health", "-w", "table"]).ok();
    let header: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(header, ["", "ENDPOINT", "HEALTH", "TOOK", "ERROR", ""]);
    let row: Vec<&str> = table
        .lines()
        .nth(3)
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        (row[1], row[2], row[4]),
        (ep.as_str(), "true", ""),
        "{table}"
    );

    // One healthy, one down: both reported, exit 1.
    let down = refused_endpoint();
    let out = Ctl::new(&format!("{ep},{down}")).run(&["endpoint", "health"]);
    assert!(out.text().starts_with(&prefix), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("{down} is unhealthy: failed to commit proposal: ")),
        "{out:?}"
    );
    out.fails(EXIT_ERROR, "unhealthy cluster");
    let out = Ctl::new(&down).run(&["endpoint", "health", "-w", "json"]);
    assert_eq!(out.code, EXIT_ERROR, "{out:?}");
    let v: Value = serde_json::from_str(&out.text()).expect("health JSON");
    assert_eq!(v[0]["health"], false);
    assert!(!v[0]["error"].as_str().unwrap().is_empty());
}

#[test]
fn unreachable_endpoints_fail_fast_with_exit_2() {
    let down = refused_endpoint();
    let ctl = Ctl::new(&down);
    ctl.run(&["get", "k"])
        .fails(EXIT_BAD_CONNECTION, "no endpoint reachable");
    ctl.run(&["put", "k", "v"])
        .fails(EXIT_BAD_CONNECTION, &down);
    let out = ctl.run(&["endpoint", "status"]);
    assert_eq!(out.code, EXIT_BAD_CONNECTION, "{out:?}");
    assert!(out.stderr.contains("Failed to get the status"), "{out:?}");
    Ctl::new("no-port-here")
        .run(&["get", "k"])
        .fails(EXIT_BAD_CONNECTION, "bad endpoint");

    // A peer that accepts the TCP connection but never answers: the dial timeout ends it
    // (the watchdog in cli_support fails the test if the client hangs instead).
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_ep = silent.local_addr().unwrap().to_string();
    Ctl::new(&silent_ep)
        .run(&["--dial-timeout=300ms", "get", "k"])
        .fails(EXIT_BAD_CONNECTION, "timed out");
    let out = Ctl::new(&silent_ep).run(&["--dial-timeout=300ms", "endpoint", "health"]);
    out.fails(EXIT_ERROR, "unhealthy cluster");
    drop(silent);

    // No command at all: the help on stderr, usage exit code.
    let out = cli_support::run(&[], None);
    assert_eq!(out.code, 128, "{out:?}");
    assert!(out.stderr.contains("Usage: corekvctl"), "{out:?}");

    // Input errors are found before any connection is tried.
    let out = ctl.run_with_stdin(&["txn"], Some(b"bogus\n"));
    out.fails(3, "malformed comparison");
    ctl.run(&["--dial-timeout=0s", "get", "k"])
        .fails(128, "must be positive");
}
