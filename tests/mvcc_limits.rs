//! Per-request limits on changes, and atomicity when a request fails part-way: a txn whose
//! later op exceeds a limit leaves no write behind (no key, no history event, no revision).

use corekv::backend::{Backend, Options};
use corekv::mvcc::store::MAX_CHANGE_BYTES_PER_REQUEST;
use corekv::mvcc::{
    self, DeleteRangeRequest, ErrorCode, Limits, PutRequest, RangeRequest, RequestOp, SnapshotView,
    TxnRequest, WriteBatch, WriteRequest,
};

fn put(key: &str, len: usize) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: vec![b'v'; len],
        ..PutRequest::default()
    }
}

#[test]
fn a_request_over_its_limits_fails_whole_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let backend = Backend::open(&path, Options::default()).await.unwrap();
            let big = MAX_CHANGE_BYTES_PER_REQUEST / 3 + 1;
            let mut w = backend.begin_write().unwrap();
            {
                let mut b = WriteBatch::begin(&mut w, Limits::default()).unwrap();
                for k in ["big/1", "big/2", "big/3"] {
                    b.apply(&WriteRequest::Put(put(k, big))).0.unwrap();
                }
                let before = b.revision();

                // A txn whose first put succeeds and whose second exceeds the byte budget.
                let txn = TxnRequest {
                    success: vec![
                        RequestOp::Put(put("small", 10)),
                        RequestOp::Put(put("huge", MAX_CHANGE_BYTES_PER_REQUEST)),
                    ],
                    ..TxnRequest::default()
                };
                let (r, rev) = b.apply(&WriteRequest::Txn(txn));
                assert_eq!(r.unwrap_err().code, ErrorCode::RequestTooLarge);
                assert_eq!(rev, before, "a failed request takes no revision");

                // Deleting with prev_kv would hold more than the budget: refused whole.
                let del = DeleteRangeRequest {
                    key: b"big/".to_vec(),
                    range_end: b"big0".to_vec(),
                    prev_kv: true,
                };
                let (r, rev) = b.apply(&WriteRequest::DeleteRange(del));
                assert_eq!(r.unwrap_err().code, ErrorCode::RequestTooLarge);
                assert_eq!(rev, before);
                assert!(b.take_events().iter().all(|e| e.kv.mod_revision <= before));

                // The next request gets the next revision, cleanly.
                let (r, rev) = b.apply(&WriteRequest::Put(put("after", 1)));
                r.unwrap();
                assert_eq!(rev, before + 1);
            }
            w.publish().await.unwrap();
            assert!(backend.check().unwrap().problems.is_empty());

            let rtxn = backend.begin_read().unwrap();
            let mut view = SnapshotView::new(&rtxn).unwrap();
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                keys_only: true,
                ..RangeRequest::default()
            };
            let keys: Vec<Vec<u8>> = mvcc::range(&mut view, &all)
                .unwrap()
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            assert_eq!(
                keys,
                vec![
                    b"after".to_vec(),
                    b"big/1".to_vec(),
                    b"big/2".to_vec(),
                    b"big/3".to_vec()
                ]
            );
            let history = rtxn.tree(mvcc::encoding::HISTORY_TREE).unwrap().unwrap();
            assert_eq!(
                history.count(..).unwrap(),
                4,
                "no history event of the failed requests remains"
            );
        });
}
