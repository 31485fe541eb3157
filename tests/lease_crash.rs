//! Crash test: clients grant leases, attach keys and revoke leases while the real server is
//! killed with SIGKILL at a random moment. After the restart the leases and attached keys are
//! consistent with what was acknowledged (an acknowledged grant exists with its acknowledged
//! keys unless a revoke of it was attempted; an acknowledged revoke left neither lease nor
//! keys), and the lease→keys index agrees exactly with the keys' own lease fields.
//! `COREKV_LEASE_CRASH_ITERS` raises the number of kill/restart rounds (default 2).

mod support {
    pub mod etcd_model;
    pub mod gen;
    pub mod server;
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv::client::{Client, ClientOptions, Glommio};
use corekv::mvcc::{PutRequest, RangeRequest};
use support::gen::{env_u64, Rng};
use support::server::{with_client, ServerProcess};

const FLAGS: &[&str] = &["--shards", "2", "--lease-checkpoint-interval", "200ms"];
const TASKS: usize = 8;
const KEYS_PER_LEASE: usize = 3;
const MIN_ACKS_BEFORE_KILL: usize = 40;
const DEADLINE: Duration = Duration::from_secs(60);

/// What the clients saw acknowledged for one lease.
#[derive(Clone, Debug, Default)]
struct Acked {
    /// Keys whose put with this lease was acknowledged.
    keys: Vec<String>,
    /// A revoke was sent (acknowledged or not).
    revoke_attempted: bool,
    /// The revoke was acknowledged.
    revoked: bool,
}

type Model = Arc<Mutex<BTreeMap<i64, Acked>>>;

fn run_clients(endpoint: String, round: u64, seed: u64, model: Model, acks: Arc<AtomicUsize>) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let endpoint = endpoint.clone();
                let model = model.clone();
                let acks = acks.clone();
                tasks.push(glommio::spawn_local(async move {
                    let options = ClientOptions {
                        request_timeout: Duration::from_secs(5),
                        ..ClientOptions::default()
                    };
                    let Ok(c) = Client::connect(&[endpoint], options, Glommio).await else {
                        return;
                    };
                    let mut rng = Rng(seed ^ ((task as u64 + 1) * 0x9E37_79B9));
                    for seq in 0.. {
                        // Long TTLs: nothing expires during the test.
                        let Ok((id, _, _)) = c.lease_grant(600, 0).await else {
                            return;
                        };
                        model.lock().unwrap().insert(id, Acked::default());
                        acks.fetch_add(1, Ordering::Relaxed);
                        for k in 0..KEYS_PER_LEASE {
                            let key = format!("r{round}/t{task}/{seq:05}/{k}");
                            let put = PutRequest {
                                key: key.clone().into_bytes(),
                                value: b"v".to_vec(),
                                lease: id,
                                ..PutRequest::default()
                            };
                            if c.put(put).await.is_err() {
                                return;
                            }
                            model.lock().unwrap().get_mut(&id).unwrap().keys.push(key);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        if rng.chance(50) {
                            model.lock().unwrap().get_mut(&id).unwrap().revoke_attempted = true;
                            if c.lease_revoke(id).await.is_err() {
                                return;
                            }
                            model.lock().unwrap().get_mut(&id).unwrap().revoked = true;
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
        });
}

#[test]
fn leases_and_attached_keys_survive_sigkill_consistently() {
    let iters = env_u64("COREKV_LEASE_CRASH_ITERS", 2);
    let mut rng = Rng(env_u64("COREKV_LEASE_CRASH_SEED", 0x1EA5E));
    let mut srv = ServerProcess::start(FLAGS);
    let model: Model = Arc::new(Mutex::new(BTreeMap::new()));
    for round in 0..iters {
        let acks = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (endpoint, model, acks) = (srv.endpoint(), model.clone(), acks.clone());
            let seed = rng.next();
            std::thread::spawn(move || run_clients(endpoint, round, seed, model, acks))
        };
        let start = Instant::now();
        while acks.load(Ordering::Relaxed) < MIN_ACKS_BEFORE_KILL {
            assert!(
                start.elapsed() < DEADLINE,
                "round {round}: writes did not start"
            );
            assert!(srv.is_running(), "round {round}: server died on its own");
            std::thread::yield_now();
        }
        // A random moment of the load, not a waited-for condition.
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        srv.kill();
        writer.join().expect("writer thread");

        srv.start_again(FLAGS);
        let expected = model.lock().unwrap().clone();
        let revoked = expected.values().filter(|a| a.revoked).count();
        eprintln!(
            "round {round}: {} leases acknowledged ({revoked} revoked), checking after SIGKILL",
            expected.len()
        );
        assert!(
            expected.len() > 1,
            "round {round}: too little load to test anything"
        );
        with_client(&srv.endpoint(), async move |c| {
            let (ids, _) = c.lease_leases().await.unwrap();
            let ids: BTreeSet<i64> = ids.into_iter().collect();
            let (all, _) = c
                .range(RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    ..RangeRequest::default()
                })
                .await
                .unwrap();
            let mut by_lease: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
            let mut present: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for kv in &all.kvs {
                present.insert(kv.key.clone(), kv.lease);
                if kv.lease != 0 {
                    assert!(
                        ids.contains(&kv.lease),
                        "round {round}: key {:?} is attached to lease {:x}, which does not exist",
                        String::from_utf8_lossy(&kv.key),
                        kv.lease
                    );
                    by_lease.entry(kv.lease).or_default().push(kv.key.clone());
                }
            }
            // The index served by timeToLive agrees exactly with the keys' lease fields.
            for &id in &ids {
                let (t, _) = c.lease_time_to_live(id, true).await.unwrap();
                assert!(t.ttl > 0 && t.granted_ttl == 600, "round {round}: {t:?}");
                let expect = by_lease.remove(&id).unwrap_or_default();
                assert_eq!(t.keys, expect, "round {round}: keys of lease {id:x}");
            }
            for (id, acked) in &expected {
                if acked.revoked {
                    assert!(
                        !ids.contains(id),
                        "round {round}: revoked lease {id:x} is back"
                    );
                    for k in &acked.keys {
                        assert!(
                            !present.contains_key(k.as_bytes()),
                            "round {round}: key {k} of revoked lease {id:x} survived"
                        );
                    }
                } else if !acked.revoke_attempted {
                    assert!(
                        ids.contains(id),
                        "round {round}: acknowledged lease {id:x} lost"
                    );
                    for k in &acked.keys {
                        assert_eq!(
                            present.get(k.as_bytes()),
                            Some(id),
                            "round {round}: acknowledged key {k} of lease {id:x}"
                        );
                    }
                } else if ids.contains(id) {
                    // The revoke may or may not have been applied: all or nothing.
                    for k in &acked.keys {
                        assert_eq!(present.get(k.as_bytes()), Some(id), "round {round}: {k}");
                    }
                } else {
                    for k in &acked.keys {
                        assert!(!present.contains_key(k.as_bytes()), "round {round}: {k}");
                    }
                }
            }
        });
    }
    assert!(srv.stop(), "clean shutdown at the end");
}
