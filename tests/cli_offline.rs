//! `corekvctl defrag --data-dir` and `corekvctl check db --data-dir` on a stopped member: the
//! packed file is smaller, passes its check, and a server started on it serves exactly the
//! same data and revision; both refuse a data dir a server is running on, a directory that is
//! not a data dir, and a missing flag; `check db` reports a damaged page.

mod support {
    pub mod server;
}
mod cli_support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use cli_support::run;
use corekv::mvcc::{DeleteRangeRequest, RangeRequest};
use serde_json::Value;
use support::server::{with_client, ServerProcess};

const EXIT_ERROR: i32 = 1;
const EXIT_BAD_ARGS: i32 = 128;
const PAGE: u64 = 4096;

/// Keys written and then deleted and compacted away, so their pages become free: 100 MiB of
/// values, so the file outgrows its first 64 MiB growth step and the packed copy does not.
const DELETED_KEYS: usize = 1_000;
/// Size of each deleted value.
const DELETED_VALUE_BYTES: usize = 100 << 10;
/// Keys that stay.
const KEPT_KEYS: usize = 50;

fn defrag_json(dir: &Path) -> Value {
    let out = run(
        &["defrag", "--data-dir", dir.to_str().unwrap(), "-w", "json"],
        None,
    );
    serde_json::from_str(&out.ok()).expect("defrag JSON")
}

fn check_db(dir: &Path) -> String {
    run(&["check", "db", "--data-dir", dir.to_str().unwrap()], None).ok()
}

#[test]
fn defrag_shrinks_the_file_and_keeps_every_key_and_the_revision() {
    let mut srv = ServerProcess::start(&[]);
    let dir = srv.data_dir.clone();
    let (revision, kept) = with_client(&srv.endpoint(), async |c| {
        let big = vec![b'v'; DELETED_VALUE_BYTES];
        for i in 0..DELETED_KEYS {
            c.put_kv(format!("gone/{i:05}"), big.clone()).await.unwrap();
        }
        let mut kept = Vec::new();
        for i in 0..KEPT_KEYS {
            let (k, v) = (format!("keep/{i:03}"), format!("value {i}"));
            c.put_kv(k.clone(), v.clone()).await.unwrap();
            kept.push((k.into_bytes(), v.into_bytes()));
        }
        let (_, h) = c
            .delete_range(DeleteRangeRequest {
                key: b"gone/".to_vec(),
                range_end: b"gone0".to_vec(),
                prev_kv: false,
            })
            .await
            .unwrap();
        c.compact(h.revision, true).await.unwrap();
        (h.revision, kept)
    });

    // While the server runs, both commands refuse the data dir and change nothing.
    let running = run(&["defrag", "--data-dir", dir.to_str().unwrap()], None);
    running.fails(EXIT_ERROR, "in use");
    let running = run(&["check", "db", "--data-dir", dir.to_str().unwrap()], None);
    running.fails(EXIT_ERROR, "in use");
    assert!(srv.stop(), "clean stop");

    assert!(check_db(&dir).starts_with("OK: "));
    let report = defrag_json(&dir);
    let (before, after) = (
        report["dbSizeBefore"].as_u64().unwrap(),
        report["dbSizeAfter"].as_u64().unwrap(),
    );
    let (in_use_before, in_use_after) = (
        report["dbSizeInUseBefore"].as_u64().unwrap(),
        report["dbSizeInUseAfter"].as_u64().unwrap(),
    );
    let file_len = std::fs::metadata(dir.join("db")).unwrap().len();
    assert_eq!(after, file_len, "{report}");
    assert!(in_use_after <= in_use_before, "{report}");
    assert!(
        after < before && after <= 64 << 20,
        "the deleted values' pages are given back: {report}"
    );
    assert!(!dir.join("db.defrag").exists(), "no temporary file left");
    assert!(check_db(&dir).starts_with("OK: "));
    // Twice in a row is fine (nothing left to free).
    defrag_json(&dir);

    srv.start_again(&[]);
    with_client(&srv.endpoint(), async move |c| {
        let (r, h) = c
            .range(RangeRequest {
                key: b"keep/".to_vec(),
                range_end: b"keep0".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(h.revision, revision, "same revision after defrag");
        let got: Vec<(Vec<u8>, Vec<u8>)> = r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(got, kept);
        let (r, _) = c
            .range(RangeRequest {
                key: b"gone/".to_vec(),
                range_end: b"gone0".to_vec(),
                count_only: true,
                ..RangeRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(r.count, 0);
        assert_eq!(c.put_kv("after", "defrag").await.unwrap(), revision + 1);
    });
}

#[test]
fn check_db_reports_a_damaged_page_and_defrag_refuses_to_copy_it() {
    let mut srv = ServerProcess::start(&[]);
    let dir = srv.data_dir.clone();
    with_client(&srv.endpoint(), async |c| {
        for i in 0..200 {
            c.put_kv(format!("k/{i:04}"), vec![b'x'; 300])
                .await
                .unwrap();
        }
    });
    assert!(srv.stop(), "clean stop");
    // Pack the file so every data page is reachable, then damage one in the middle.
    defrag_json(&dir);
    let db = dir.join("db");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .unwrap();
    let report: Value = serde_json::from_str(
        &run(
            &[
                "check",
                "db",
                "--data-dir",
                dir.to_str().unwrap(),
                "-w",
                "json",
            ],
            None,
        )
        .ok(),
    )
    .unwrap();
    let reachable = report["reachablePages"].as_u64().unwrap();
    assert!(reachable >= 4, "{report}");
    let at = (2 + reachable / 2) * PAGE + 100;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    file.sync_all().unwrap();

    let out = run(&["check", "db", "--data-dir", dir.to_str().unwrap()], None);
    out.fails(EXIT_ERROR, "problem");
    assert!(
        out.text().contains("checksum"),
        "the problem names the checksum: {out:?}"
    );
    // defrag cannot read the damaged page: it fails, leaves no partial copy behind, and the
    // backend file is unchanged (still damaged, still detected).
    let len = std::fs::metadata(&db).unwrap().len();
    let out = run(&["defrag", "--data-dir", dir.to_str().unwrap()], None);
    out.fails(EXIT_ERROR, "packed copy");
    assert!(!dir.join("db.defrag").exists(), "partial copy removed");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), len);
    let mut now = [0u8; 1];
    file.read_exact_at(&mut now, at).unwrap();
    assert_eq!(now[0], byte[0] ^ 0x5a);
}

#[test]
fn offline_commands_refuse_what_is_not_a_stopped_data_dir() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_str().unwrap();
    run(&["defrag", "--data-dir", path], None).fails(EXIT_ERROR, "not a corekv data dir");
    run(&["check", "db", "--data-dir", path], None).fails(EXIT_ERROR, "not a corekv data dir");
    run(&["defrag"], None).fails(EXIT_BAD_ARGS, "--data-dir");
    run(&["check", "db"], None).fails(EXIT_BAD_ARGS, "--data-dir");
    run(&["defrag", "--data-dir", path, "-w", "table"], None).fails(4, "table");
}
