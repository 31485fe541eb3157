//! A restart (here a SIGKILL) resumes each lease from its checkpointed remaining TTL, not a
//! fresh TTL: with `--lease-checkpoint-interval 500ms`, a lease with TTL 20 s that ran for
//! about 5 s comes back with about 15 s left; its keys and its id stay.

mod support {
    pub mod server;
}

use std::time::{Duration, Instant};

use corekv::mvcc::PutRequest;
use support::server::{with_client, ServerProcess};

const FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--min-lease-ttl",
    "1",
    "--lease-checkpoint-interval",
    "500ms",
];
const TTL: i64 = 20;
/// Remaining TTL to wait for before the kill.
const RUN_DOWN_TO: i64 = 15;
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn restart_resumes_leases_from_the_checkpointed_remaining_ttl() {
    let mut srv = ServerProcess::start(FLAGS);
    let (id, before) = with_client(&srv.endpoint(), async |c| {
        let (id, _, _) = c.lease_grant(TTL, 0).await.unwrap();
        c.put(PutRequest {
            key: b"svc/a".to_vec(),
            value: b"1".to_vec(),
            lease: id,
            ..PutRequest::default()
        })
        .await
        .unwrap();
        let start = Instant::now();
        loop {
            let (t, _) = c.lease_time_to_live(id, false).await.unwrap();
            if t.ttl <= RUN_DOWN_TO {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the lease does not run down: {t:?}"
            );
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        // Let at least two checkpoint intervals pass at this remaining TTL.
        let mark = Instant::now();
        while mark.elapsed() < Duration::from_millis(1200) {
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        let (t, _) = c.lease_time_to_live(id, false).await.unwrap();
        (id, t.ttl)
    });
    assert!(before > 0 && before <= RUN_DOWN_TO, "{before}");
    srv.kill();
    srv.start_again(FLAGS);
    let after = with_client(&srv.endpoint(), async move |c| {
        let (t, _) = c.lease_time_to_live(id, true).await.unwrap();
        assert_eq!(t.granted_ttl, TTL);
        assert_eq!(t.keys, vec![b"svc/a".to_vec()]);
        t.ttl
    });
    // Resumed from a checkpoint taken at most an interval (plus scheduling slack) before the
    // kill, so never a fresh TTL, and never more than the remaining TTL then plus slack.
    assert!(after >= 1, "resumed lease has {after} s left");
    assert!(
        after <= RUN_DOWN_TO + 2,
        "resumed with {after} s left, more than the {before} s left at the kill allows: a fresh TTL?"
    );
    assert!(srv.stop());
}
