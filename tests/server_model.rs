//! Randomized model test of the whole server: thousands of random put/delete/txn/range/
//! compact requests sent through the client to the real `corekv` binary (restarted once
//! halfway), each answer — response, error code and header revision — equal to the
//! reference model's. `COREKV_SERVER_MODEL_OPS` raises the request count (default 2000),
//! `COREKV_SERVER_MODEL_SEED` picks the seed.

mod support {
    pub mod etcd_model;
    pub mod gen;
    pub mod server;
}

use corekv::client::{Client, ClientError};
use corekv::mvcc::{ErrorCode, WriteRequest, WriteResponse};
use support::etcd_model::EtcdModel;
use support::gen::{env_u64, gen_range, gen_write, Rng, MAX_TXN_OPS};
use support::server::{with_client, ServerProcess};

async fn send(
    c: &Client,
    req: &WriteRequest,
    physical: bool,
) -> (Result<WriteResponse, ErrorCode>, Option<i64>) {
    let out: Result<(WriteResponse, i64), ClientError> = match req {
        WriteRequest::Put(p) => c
            .put(p.clone())
            .await
            .map(|(r, h)| (WriteResponse::Put(r), h.revision)),
        WriteRequest::DeleteRange(d) => c
            .delete_range(d.clone())
            .await
            .map(|(r, h)| (WriteResponse::DeleteRange(r), h.revision)),
        WriteRequest::Txn(t) => c
            .txn(t.clone())
            .await
            .map(|(r, h)| (WriteResponse::Txn(r), h.revision)),
        WriteRequest::Compact { revision } => c
            .compact(*revision, physical)
            .await
            .map(|h| (WriteResponse::Compact, h.revision)),
        WriteRequest::LeaseGrant(g) => c
            .lease_grant(g.ttl, g.id)
            .await
            .map(|(id, ttl, h)| (WriteResponse::LeaseGrant { id, ttl }, h.revision)),
        WriteRequest::LeaseRevoke { id } => c
            .lease_revoke(*id)
            .await
            .map(|h| (WriteResponse::LeaseRevoke, h.revision)),
        WriteRequest::LeaseCheckpoint(_) => {
            panic!("checkpoints are proposed by the server's lease shards, not by clients")
        }
    };
    match out {
        Ok((r, rev)) => (Ok(r), Some(rev)),
        Err(ClientError::Server(e)) => (Err(e.code), None),
        Err(other) => panic!("transport failure: {other}"),
    }
}

#[test]
fn server_matches_the_etcd_model() {
    let ops = env_u64("COREKV_SERVER_MODEL_OPS", 2000);
    let seed = env_u64("COREKV_SERVER_MODEL_SEED", 0x5EED);
    let max_txn_ops = MAX_TXN_OPS.to_string();
    let args = ["--max-txn-ops", max_txn_ops.as_str()];
    let mut srv = ServerProcess::start(&args);
    let mut state = (Rng(seed), EtcdModel::new(MAX_TXN_OPS));
    for half in 0..2 {
        let (rng, model) = state;
        state = with_client(&srv.endpoint(), async move |c| {
            let (mut rng, mut model) = (rng, model);
            for i in 0..ops / 2 {
                if rng.chance(30) {
                    let r = gen_range(&mut rng, &model);
                    let got = c.range(r.clone()).await;
                    match got {
                        Ok((resp, header)) => {
                            assert_eq!(
                                Ok(resp),
                                model.range(&r),
                                "seed {seed} half {half} op {i}: {r:?}"
                            );
                            assert_eq!(
                                header.revision, model.revision,
                                "header revision of a read is the current one"
                            );
                        }
                        Err(ClientError::Server(e)) => {
                            assert_eq!(Err(e.code), model.range(&r), "op {i}: {r:?}")
                        }
                        Err(other) => panic!("transport failure: {other}"),
                    }
                } else {
                    let req = gen_write(&mut rng, &model);
                    let physical = rng.chance(50);
                    let (got, got_rev) = send(&c, &req, physical).await;
                    let (want, want_rev) = model.apply(&req);
                    assert_eq!(got, want, "seed {seed} half {half} op {i}: {req:?}");
                    if let Some(rev) = got_rev {
                        assert_eq!(
                            rev, want_rev,
                            "seed {seed} half {half} op {i}: header revision of {req:?}"
                        );
                    }
                }
            }
            (rng, model)
        });
        if half == 0 {
            // Everything acknowledged survives a clean restart.
            srv.restart(&args);
        }
    }
}
