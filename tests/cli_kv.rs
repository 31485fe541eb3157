//! `corekvctl put/get/del/txn/compaction` against the real server binary: etcdctl's output
//! formats, flags, error messages and exit codes.

#[path = "support/server.rs"]
mod server;

mod cli_support;

use cli_support::Ctl;
use serde_json::Value;
use server::ServerProcess;

const EXIT_ERROR: i32 = 1;
const EXIT_INVALID_INPUT: i32 = 3;
const EXIT_BAD_FEATURE: i32 = 4;
const EXIT_BAD_ARGS: i32 = 128;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn b64(s: &str) -> Value {
    Value::String(base64(s.as_bytes()))
}

/// Independent base64 for checking the client's (standard alphabet, padded).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = String::new();
    for b in bytes {
        bits.push_str(&format!("{b:08b}"));
    }
    while !bits.len().is_multiple_of(6) {
        bits.push('0');
    }
    let mut out: String = bits
        .as_bytes()
        .chunks(6)
        .map(|c| A[usize::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap()] as char)
        .collect();
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

fn revision(ctl: &Ctl) -> i64 {
    let v = json(&ctl.run(&["get", "-w", "json", "any"]).ok());
    v["header"]["revision"].as_i64().expect("header revision")
}

#[test]
fn put_and_get_follow_etcdctl() {
    let srv = ServerProcess::start(&[]);
    let ctl = Ctl::new(&srv.endpoint());

    assert_eq!(ctl.run(&["put", "foo", "bar"]).ok(), "OK\n");
    let first = revision(&ctl);
    assert_eq!(ctl.run(&["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        ctl.run(&["put", "foo", "baz", "--prev-kv"]).ok(),
        "OK\nfoo\nbar\n"
    );
    assert_eq!(
        ctl.run(&["get", "missing"]).ok(),
        "",
        "absent key: no output"
    );

    // Value from stdin, bytes unchanged (trailing newline included, as etcdctl stores it).
    let out = ctl.run_with_stdin(&["put", "from-stdin"], Some(b"line 1\nline 2\n"));
    assert_eq!(out.ok(), "OK\n");
    assert_eq!(
        ctl.run(&["get", "from-stdin", "--print-value-only"]).ok(),
        "line 1\nline 2\n\n"
    );
    ctl.run(&["put", "from-stdin"])
        .fails(EXIT_BAD_ARGS, "needs 1 argument and input from stdin");
    // A value starting with '-' after "--".
    assert_eq!(ctl.run(&["put", "dash", "--", "-v"]).ok(), "OK\n");
    assert_eq!(ctl.run(&["get", "dash"]).ok(), "dash\n-v\n");

    // --ignore-value keeps the value but takes a revision; refused on a missing key.
    assert_eq!(ctl.run(&["put", "foo", "--ignore-value"]).ok(), "OK\n");
    assert_eq!(ctl.run(&["get", "foo"]).ok(), "foo\nbaz\n");
    ctl.run(&["put", "foo", "x", "--ignore-value"])
        .fails(EXIT_BAD_ARGS, "ignore-value");
    ctl.run(&["put", "nope", "--ignore-value"])
        .fails(EXIT_ERROR, "KeyNotFound");
    ctl.run(&["put", "nope", "v", "--ignore-lease"])
        .fails(EXIT_ERROR, "KeyNotFound");
    ctl.run(&["put", "nope", "v", "--lease=1f"])
        .fails(EXIT_ERROR, "lease");
    ctl.run(&["put", "nope", "v", "--lease=xyz"])
        .fails(EXIT_BAD_ARGS, "expecting ID in hex");
    assert_eq!(ctl.run(&["put", "leased", "v", "--lease=0"]).ok(), "OK\n");

    // Ranges.
    for (k, v) in [
        ("a/1", "3"),
        ("a/2", "1"),
        ("a/3", "2"),
        ("b/1", "x"),
        ("c", "y"),
    ] {
        assert_eq!(ctl.run(&["put", k, v]).ok(), "OK\n");
    }
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix"]).ok(),
        "a/1\n3\na/2\n1\na/3\n2\n"
    );
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix", "--keys-only"]).ok(),
        "a/1\n\na/2\n\na/3\n\n"
    );
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix", "--count-only"]).ok(),
        "3\n"
    );
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix", "--limit", "2"]).ok(),
        "a/1\n3\na/2\n1\n"
    );
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix", "--print-value-only"])
            .ok(),
        "3\n1\n2\n"
    );
    assert_eq!(ctl.run(&["get", "a/1", "a/3"]).ok(), "a/1\n3\na/2\n1\n");
    assert_eq!(
        ctl.run(&["get", "b", "--from-key", "--keys-only"]).ok(),
        "b/1\n\nc\n\ndash\n\nfoo\n\nfrom-stdin\n\nleased\n\n"
    );
    assert_eq!(
        ctl.run(&["get", "", "--prefix", "--count-only"]).ok(),
        "9\n",
        "an empty prefix means every key"
    );
    assert_eq!(
        ctl.run(&["get", "", "--from-key", "--count-only"]).ok(),
        "9\n"
    );
    assert_eq!(
        ctl.run(&[
            "get",
            "a/",
            "--prefix",
            "--sort-by=VALUE",
            "--print-value-only"
        ])
        .ok(),
        "1\n2\n3\n",
        "a sort target without an order sorts ascending"
    );
    assert_eq!(
        ctl.run(&[
            "get",
            "a/",
            "--prefix",
            "--sort-by=value",
            "--order=descend",
            "--print-value-only"
        ])
        .ok(),
        "3\n2\n1\n"
    );
    assert_eq!(
        ctl.run(&["get", "a/", "--prefix", "--order=DESCEND", "--keys-only"])
            .ok(),
        "a/3\n\na/2\n\na/1\n\n"
    );
    for target in ["MODIFY", "CREATE", "VERSION", "KEY"] {
        assert_eq!(
            ctl.run(&[
                "get",
                "a/",
                "--prefix",
                "--keys-only",
                &format!("--sort-by={target}"),
                "--order=ASCEND"
            ])
            .ok(),
            "a/1\n\na/2\n\na/3\n\n",
            "{target}: created and modified in key order"
        );
    }
    assert_eq!(
        ctl.run(&["get", "c", "--consistency=s"]).ok(),
        "c\ny\n",
        "serializable read"
    );
    assert_eq!(
        ctl.run(&["get", "foo", &format!("--rev={first}")]).ok(),
        "foo\nbar\n",
        "historical read"
    );
    assert_eq!(
        ctl.run(&["get", "c", "--hex"]).ok(),
        "\\x63\n\\x79\n",
        "--hex escapes every byte"
    );

    // JSON: etcd's field names, base64 bytes, zero fields omitted.
    let v = json(
        &ctl.run(&["get", "a/", "--prefix", "--limit=1", "-w", "json"])
            .ok(),
    );
    assert_eq!(v["count"], 3);
    assert_eq!(v["more"], true);
    assert_eq!(v["kvs"].as_array().unwrap().len(), 1);
    let kv = &v["kvs"][0];
    assert_eq!((&kv["key"], &kv["value"]), (&b64("a/1"), &b64("3")));
    assert_eq!(kv["version"], 1);
    assert_eq!(kv["create_revision"], kv["mod_revision"]);
    assert!(kv.get("lease").is_none(), "zero lease omitted: {kv}");
    let h = &v["header"];
    assert!(h["cluster_id"].as_u64().unwrap() > 0 && h["member_id"].as_u64().unwrap() > 0);
    assert!(h["revision"].as_i64().unwrap() > first && h["raft_term"].as_u64().unwrap() >= 1);
    let v = json(
        &ctl.run(&["get", "a/", "--prefix", "--count-only", "--write-out=json"])
            .ok(),
    );
    assert_eq!((v["count"].as_i64(), v.get("kvs")), (Some(3), None));
    let v = json(&ctl.run(&["put", "c", "z", "--prev-kv", "-w", "json"]).ok());
    assert_eq!(v["prev_kv"]["value"], b64("y"));
    assert!(v["header"]["revision"].as_i64().is_some());

    // Usage and request errors.
    ctl.run(&["get"]).fails(EXIT_BAD_ARGS, "required");
    ctl.run(&["get", "a", "--bogus"])
        .fails(EXIT_BAD_ARGS, "--bogus");
    ctl.run(&["get", "a", "--prefix", "--from-key"])
        .fails(EXIT_BAD_ARGS, "cannot be set at the same time");
    ctl.run(&["get", "a", "z", "--prefix"])
        .fails(EXIT_BAD_ARGS, "too many arguments");
    ctl.run(&["get", "a", "--keys-only", "--count-only"])
        .fails(EXIT_BAD_ARGS, "cannot be set at the same time");
    ctl.run(&["get", "a", "--sort-by=SIZE"])
        .fails(EXIT_BAD_FEATURE, "bad sort target");
    ctl.run(&["get", "a", "--order=UP"])
        .fails(EXIT_BAD_FEATURE, "bad sort order");
    ctl.run(&["get", "a", "--consistency=x"])
        .fails(EXIT_BAD_FEATURE, "consistency");
    ctl.run(&["get", "a", "-w", "table"])
        .fails(EXIT_BAD_FEATURE, "table is not supported");
    ctl.run(&["get", "a", "-w", "yaml"])
        .fails(EXIT_BAD_ARGS, "yaml");
    ctl.run(&["get", "a", "--print-value-only", "-w", "json"])
        .fails(EXIT_BAD_ARGS, "print-value-only");
    ctl.run(&["get", "a", "--limit=-1"])
        .fails(EXIT_ERROR, "limit");
    ctl.run(&["get", "foo", "--rev=1000000"])
        .fails(EXIT_ERROR, "FutureRevision");
    ctl.run(&["get", ""]).fails(EXIT_ERROR, "InvalidRange");
    ctl.run(&["put", "", "v"]).fails(EXIT_ERROR, "InvalidRange");
    let help = ctl.run(&["--help"]).ok();
    assert!(
        help.contains("Exit codes:") && help.contains("128"),
        "{help}"
    );
}

#[test]
fn del_follows_etcdctl() {
    let srv = ServerProcess::start(&[]);
    let ctl = Ctl::new(&srv.endpoint());
    for k in ["a/1", "a/2", "a/3", "b", "c", "d"] {
        ctl.run(&["put", k, &format!("v{k}")]).ok();
    }
    assert_eq!(ctl.run(&["del", "a/1"]).ok(), "1\n");
    assert_eq!(ctl.run(&["del", "a/1"]).ok(), "0\n");
    assert_eq!(
        ctl.run(&["del", "a/", "--prefix", "--prev-kv"]).ok(),
        "2\na/2\nva/2\na/3\nva/3\n"
    );
    let v = json(&ctl.run(&["del", "b", "c", "--prev-kv", "-w", "json"]).ok());
    assert_eq!(v["deleted"], 1);
    assert_eq!(v["prev_kvs"][0]["key"], b64("b"));
    assert_eq!(ctl.run(&["del", "c", "--from-key"]).ok(), "2\n");
    assert_eq!(
        ctl.run(&["get", "", "--prefix", "--count-only"]).ok(),
        "0\n"
    );
    let v = json(&ctl.run(&["del", "zzz", "-w", "json"]).ok());
    assert!(v.get("deleted").is_none(), "zero deleted omitted: {v}");
    ctl.run(&["del"]).fails(EXIT_BAD_ARGS, "required");
    ctl.run(&["del", "a", "--prefix", "--from-key"])
        .fails(EXIT_BAD_ARGS, "cannot be set at the same time");
    ctl.run(&["del", "a", "b", "c"])
        .fails(EXIT_BAD_ARGS, "unexpected argument");
}

#[test]
fn txn_reads_etcdctl_syntax_from_stdin() {
    let srv = ServerProcess::start(&[]);
    let ctl = Ctl::new(&srv.endpoint());
    ctl.run(&["put", "key1", "v1"]).ok();

    // Success branch (the README's example, with its trailing blank lines).
    let input = b"mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\nget key1\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n";
    assert_eq!(
        ctl.run_with_stdin(&["txn"], Some(input)).ok(),
        "SUCCESS\n\nOK\n\nkey1\noverwrote-key1\n"
    );
    // Failure branch; end of input may stand for the last blank line.
    let input = b"val(\"key1\") = \"nope\"\nver(\"key1\") < \"3\"\n\nput key1 x\n\nput key2 \"from failure\" --prev-kv\ndel key1 --prev-kv";
    assert_eq!(
        ctl.run_with_stdin(&["txn"], Some(input)).ok(),
        "FAILURE\n\nOK\n\n1\nkey1\noverwrote-key1\n"
    );
    assert_eq!(ctl.run(&["get", "key2"]).ok(), "key2\nfrom failure\n");
    // Every compare target.
    let input = b"create(\"key1\") = \"0\"\nlease(\"key2\") = \"0\"\nc(\"key2\") > \"0\"\nm(\"key2\") > \"0\"\nversion(\"key2\") = \"1\"\nvalue(\"key2\") != \"x\"\n\nget key2 --print-value-only\n";
    ctl.run_with_stdin(&["txn"], Some(input))
        .fails(EXIT_INVALID_INPUT, "line 8");
    let input = b"create(\"key1\") = \"0\"\nlease(\"key2\") = \"0\"\nc(\"key2\") > \"0\"\nm(\"key2\") > \"0\"\nversion(\"key2\") = \"1\"\nvalue(\"key2\") != \"x\"\n\nget key2 --keys-only\n\n";
    assert_eq!(
        ctl.run_with_stdin(&["txn"], Some(input)).ok(),
        "SUCCESS\n\nkey2\n\n"
    );

    // Interactive: prompts before each section.
    let out = ctl
        .run_with_stdin(&["txn", "-i"], Some(b"\nput k3 v3\n\n\n"))
        .ok();
    assert_eq!(
        out,
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n"
    );

    // JSON.
    let v = json(
        &ctl.run_with_stdin(&["txn", "-w", "json"], Some(b"\nget k3\ndel k3\n\n\n"))
            .ok(),
    );
    assert_eq!(v["succeeded"], true);
    let range = &v["responses"][0]["Response"]["response_range"];
    assert_eq!(range["kvs"][0]["value"], b64("v3"));
    assert_eq!(range["count"], 1);
    assert_eq!(
        v["responses"][1]["Response"]["response_delete_range"]["deleted"],
        1
    );
    let v = json(
        &ctl.run_with_stdin(&["txn", "-w", "json"], Some(b"val(\"k3\") = \"v3\"\n"))
            .ok(),
    );
    assert!(v.get("succeeded").is_none(), "false omitted: {v}");

    // Malformed input: exit 3 naming the line, and nothing is applied.
    let before = ctl.run(&["get", "", "--prefix", "-w", "json"]).ok();
    for (input, needle) in [
        (
            &b"mod(key1) > \"0\"\n\nput a b\n"[..],
            "line 1: malformed comparison",
        ),
        (b"mod(\"key1\") >= \"0\"\n", "unknown relation"),
        (b"size(\"key1\") = \"1\"\n", "unknown target"),
        (b"ver(\"key1\") = \"one\"\n", "not a decimal integer"),
        (b"\nput a\n", "line 2: invalid txn request"),
        (b"\nput a b\n\nwatch a\n", "line 4: invalid txn request"),
        (b"\nput \"a b\n", "unterminated"),
        (b"\nput a b --lease=zz\n", "hex"),
    ] {
        ctl.run_with_stdin(&["txn"], Some(input))
            .fails(EXIT_INVALID_INPUT, needle);
    }
    assert_eq!(ctl.run(&["get", "", "--prefix", "-w", "json"]).ok(), before);
    ctl.run(&["txn", "extra"])
        .fails(EXIT_BAD_ARGS, "unexpected argument");
    // A request the server refuses: exit 1.
    ctl.run_with_stdin(&["txn"], Some(b"\nput d 1\nput d 2\n\n"))
        .fails(EXIT_ERROR, "DuplicateKey");
    ctl.run_with_stdin(&["txn", "-w", "table"], Some(b"\n"))
        .fails(EXIT_BAD_FEATURE, "table");
}

#[test]
fn compaction_makes_old_revisions_unreadable() {
    let srv = ServerProcess::start(&[]);
    let ctl = Ctl::new(&srv.endpoint());
    ctl.run(&["put", "k", "v1"]).ok();
    let r1 = revision(&ctl);
    ctl.run(&["put", "k", "v2"]).ok();
    ctl.run(&["put", "k", "v3"]).ok();
    let r3 = revision(&ctl);
    assert_eq!(
        ctl.run(&["compaction", &(r3 - 1).to_string()]).ok(),
        format!("compacted revision {}\n", r3 - 1)
    );
    ctl.run(&["get", "k", &format!("--rev={r1}")])
        .fails(EXIT_ERROR, "compacted");
    assert_eq!(
        ctl.run(&["get", "k", &format!("--rev={}", r3 - 1)]).ok(),
        "k\nv2\n",
        "the compaction revision itself stays readable"
    );
    assert_eq!(
        ctl.run(&["compaction", &r3.to_string(), "--physical"]).ok(),
        format!("compacted revision {r3}\n")
    );
    ctl.run(&["compaction", &r1.to_string()])
        .fails(EXIT_ERROR, "compacted");
    ctl.run(&["compaction", "1000000"])
        .fails(EXIT_ERROR, "FutureRevision");
    ctl.run(&["put", "k", "v4"]).ok();
    let r4 = revision(&ctl);
    assert_eq!(
        ctl.run(&["compaction", &r4.to_string(), "-w", "table"])
            .ok(),
        format!("compacted revision {r4}\n"),
        "compaction prints its line whatever the format, as etcdctl"
    );
    ctl.run(&["compaction"]).fails(EXIT_BAD_ARGS, "required");
    ctl.run(&["compaction", "ten"]).fails(EXIT_BAD_ARGS, "ten");
}
