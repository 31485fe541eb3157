//! `corekvctl lease ...` and `put --lease` against the real server binary: etcdctl's lines,
//! hex ids, and exit codes.

#[path = "support/server.rs"]
mod server;

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::Ctl;
use server::ServerProcess;

const EXIT_ERROR: i32 = 1;
const EXIT_BAD_ARGS: i32 = 128;

/// The hex id out of "lease <id> granted with TTL(<n>s)".
fn granted_id(line: &str) -> String {
    let rest = line
        .strip_prefix("lease ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (id, tail) = rest.split_once(' ').unwrap();
    assert_eq!(id.len(), 16, "16 hex digits, as etcdctl: {line:?}");
    assert!(tail.starts_with("granted with TTL("), "{line:?}");
    id.to_string()
}

#[test]
fn lease_commands_print_as_etcdctl() {
    let srv = ServerProcess::start(&["--min-lease-ttl", "1"]);
    let ctl = Ctl::new(&srv.endpoint());
    let out = ctl.run(&["lease", "grant", "60"]).ok();
    let id = granted_id(out.trim_end());
    assert_eq!(out, format!("lease {id} granted with TTL(60s)\n"));

    assert_eq!(
        ctl.run(&["put", "--lease", &id, "svc/a", "up"]).ok(),
        "OK\n"
    );
    assert_eq!(
        ctl.run(&["put", "--lease", &id, "svc/b", "up"]).ok(),
        "OK\n"
    );
    let ttl = ctl.run(&["lease", "timetolive", &id]).ok();
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    let keys = ctl.run(&["lease", "timetolive", &id, "--keys"]).ok();
    assert!(keys.ends_with(", attached keys([svc/a svc/b])\n"), "{keys}");
    assert_eq!(
        ctl.run(&["lease", "keep-alive", "--once", &id]).ok(),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        ctl.run(&["lease", "list"]).ok(),
        format!("found 1 leases\n{id}\n")
    );
    let json = ctl.run(&["-w", "json", "lease", "grant", "5"]).ok();
    assert!(json.contains("\"TTL\":5"), "{json}");

    assert_eq!(
        ctl.run(&["lease", "revoke", &id]).ok(),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl.run(&["get", "svc/", "--prefix"]).ok(), "");
    assert_eq!(
        ctl.run(&["lease", "timetolive", &id]).ok(),
        format!("lease {id} already expired\n")
    );
    // A lost lease: keep-alive says so; revoke and put fail with etcdctl's exit code.
    assert_eq!(
        ctl.run(&["lease", "keep-alive", &id]).ok(),
        format!("lease {id} expired or revoked.\n")
    );
    ctl.run(&["lease", "keep-alive", "--once", &id])
        .fails(EXIT_ERROR, "expired or revoked");
    ctl.run(&["lease", "revoke", &id])
        .fails(EXIT_ERROR, "not found");
    ctl.run(&["put", "--lease", &id, "k", "v"])
        .fails(EXIT_ERROR, "not found");
    ctl.run(&["lease", "revoke", "xyz"])
        .fails(EXIT_BAD_ARGS, "expecting ID in hex");
    ctl.run(&["lease", "grant", "99999999999"])
        .fails(EXIT_ERROR, "exceeds the maximum");
}
