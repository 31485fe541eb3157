//! Conversions between the wire types of `schema/rpc.capnp` and the MVCC layer's types.
//!
//! The server reads requests and writes responses with these; the client does the reverse.
//! Every reader returns a `capnp::Error` for a malformed message (unknown enum value, missing
//! union member), never panics; nesting depth and total size are bounded by the reader
//! options the caller sets on the message.

pub mod lease;
pub mod watch;

use capnp::Error as CapnpError;

use crate::generated::proposal_capnp::proposal;
use crate::generated::rpc_capnp as wire;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Error,
    ErrorCode, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse, WriteRequest,
};

/// Nesting depth accepted when decoding messages (transactions nest; capnp's default is 64).
pub const MAX_MESSAGE_NESTING: i32 = 64;

/// Words a proposal needs beyond its keys and values (root, union, structs, list and text
/// headers, padding), with room to spare so a put or delete fits one segment.
const PROPOSAL_OVERHEAD_WORDS: usize = 32;

/// Encodes a write request as a raft log entry payload.
pub fn encode_proposal(id: u64, req: &WriteRequest) -> Vec<u8> {
    // The default first segment is 8 KiB, allocated zeroed: ~113 ns on this machine, a sizeable
    // share of encoding and decoding a small put (400-700 ns). Size it from the payload
    // instead, so a put or a delete of any size is one segment of about its own size.
    let words = match req {
        WriteRequest::Put(q) => (q.key.len() + q.value.len()) / 8 + PROPOSAL_OVERHEAD_WORDS,
        WriteRequest::DeleteRange(q) => {
            (q.key.len() + q.range_end.len()) / 8 + PROPOSAL_OVERHEAD_WORDS
        }
        WriteRequest::Compact { .. } | WriteRequest::LeaseRevoke { .. } => PROPOSAL_OVERHEAD_WORDS,
        // Transactions, grants and checkpoints: the default size, growing as needed.
        _ => capnp::message::SUGGESTED_FIRST_SEGMENT_WORDS as usize,
    };
    let mut msg = capnp::message::Builder::new(
        capnp::message::HeapAllocator::new()
            .first_segment_words(u32::try_from(words).unwrap_or(u32::MAX)),
    );
    {
        let mut p: proposal::Builder<'_> = msg.init_root();
        p.set_id(id);
        match req {
            WriteRequest::Put(q) => write_put_request(q, p.init_put()),
            WriteRequest::DeleteRange(q) => write_delete_request(q, p.init_delete_range()),
            WriteRequest::Txn(q) => write_txn_request(q, p.init_txn()),
            WriteRequest::Compact { revision } => p.set_compact(*revision),
            WriteRequest::LeaseGrant(g) => lease::write_grant_request(g, p.init_lease_grant()),
            WriteRequest::LeaseRevoke { id } => p.set_lease_revoke(*id),
            WriteRequest::LeaseCheckpoint(cs) => {
                lease::write_checkpoints(cs, p.init_lease_checkpoint(cs.len() as u32))
            }
        }
    }
    capnp::serialize::write_message_to_words(&msg)
}

/// Decodes a raft log entry payload written by [`encode_proposal`].
pub fn decode_proposal(mut bytes: &[u8]) -> capnp::Result<(u64, WriteRequest)> {
    let mut options = capnp::message::ReaderOptions::new();
    options.nesting_limit(MAX_MESSAGE_NESTING);
    // Entries were size-checked when proposed; bound the traversal by their own size.
    options.traversal_limit_in_words(Some(bytes.len() / 8 + 1024));
    let reader = capnp::serialize::read_message(&mut bytes, options)?;
    let p: proposal::Reader<'_> = reader.get_root()?;
    use proposal::Which as W;
    let req = match p.which().map_err(|e| not_in_schema("proposal", e))? {
        W::Put(q) => WriteRequest::Put(read_put_request(q?)?),
        W::DeleteRange(q) => WriteRequest::DeleteRange(read_delete_request(q?)?),
        W::Txn(q) => WriteRequest::Txn(read_txn_request(q?)?),
        W::Compact(revision) => WriteRequest::Compact { revision },
        W::LeaseGrant(g) => WriteRequest::LeaseGrant(lease::read_grant_request(g?)),
        W::LeaseRevoke(id) => WriteRequest::LeaseRevoke { id },
        W::LeaseCheckpoint(cs) => WriteRequest::LeaseCheckpoint(lease::read_checkpoints(cs?)),
    };
    Ok((p.get_id(), req))
}

/// The header every response carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Cluster id.
    pub cluster_id: u64,
    /// Id of the member that answered.
    pub member_id: u64,
    /// Store revision when the request was served.
    pub revision: i64,
    /// Raft term of the member.
    pub raft_term: u64,
}

fn not_in_schema(what: &str, e: capnp::NotInSchema) -> CapnpError {
    CapnpError::failed(format!("{what}: value {} is not in the schema", e.0))
}

/// Reads a response header.
pub fn read_header(r: wire::response_header::Reader<'_>) -> Header {
    Header {
        cluster_id: r.get_cluster_id(),
        member_id: r.get_member_id(),
        revision: r.get_revision(),
        raft_term: r.get_raft_term(),
    }
}

/// Writes a response header.
pub fn write_header(h: &Header, mut b: wire::response_header::Builder<'_>) {
    b.set_cluster_id(h.cluster_id);
    b.set_member_id(h.member_id);
    b.set_revision(h.revision);
    b.set_raft_term(h.raft_term);
}

/// Reads a typed error.
pub fn read_error(r: wire::error::Reader<'_>) -> capnp::Result<Error> {
    use wire::ErrorCode as W;
    let code = match r.get_code().map_err(|e| not_in_schema("error code", e))? {
        W::Compacted => ErrorCode::Compacted,
        W::FutureRevision => ErrorCode::FutureRevision,
        W::RequestTooLarge => ErrorCode::RequestTooLarge,
        W::TooManyTxnOps => ErrorCode::TooManyTxnOps,
        W::DuplicateKey => ErrorCode::DuplicateKey,
        W::KeyNotFound => ErrorCode::KeyNotFound,
        W::InvalidRange => ErrorCode::InvalidRange,
        W::InvalidArgument => ErrorCode::InvalidArgument,
        W::LeaseNotFound => ErrorCode::LeaseNotFound,
        W::NoSpace => ErrorCode::NoSpace,
        W::Timeout => ErrorCode::Timeout,
        W::Unavailable => ErrorCode::Unavailable,
        W::LeaseExists => ErrorCode::LeaseExists,
        W::LeaseTtlTooLarge => ErrorCode::LeaseTtlTooLarge,
        W::WatchIdExists => ErrorCode::WatchIdExists,
        W::Internal | W::Unknown => ErrorCode::Internal,
    };
    let message = r
        .get_message()?
        .to_string()
        .map_err(|e| CapnpError::failed(format!("error message: {e}")))?;
    Ok(Error { code, message })
}

/// Writes a typed error.
pub fn write_error(e: &Error, mut b: wire::error::Builder<'_>) {
    use wire::ErrorCode as W;
    b.set_code(match e.code {
        ErrorCode::Compacted => W::Compacted,
        ErrorCode::FutureRevision => W::FutureRevision,
        ErrorCode::RequestTooLarge => W::RequestTooLarge,
        ErrorCode::TooManyTxnOps => W::TooManyTxnOps,
        ErrorCode::DuplicateKey => W::DuplicateKey,
        ErrorCode::KeyNotFound => W::KeyNotFound,
        ErrorCode::InvalidRange => W::InvalidRange,
        ErrorCode::InvalidArgument => W::InvalidArgument,
        ErrorCode::LeaseNotFound => W::LeaseNotFound,
        ErrorCode::NoSpace => W::NoSpace,
        ErrorCode::Timeout => W::Timeout,
        ErrorCode::Unavailable => W::Unavailable,
        ErrorCode::LeaseExists => W::LeaseExists,
        ErrorCode::LeaseTtlTooLarge => W::LeaseTtlTooLarge,
        ErrorCode::WatchIdExists => W::WatchIdExists,
        ErrorCode::Internal => W::Internal,
    });
    b.set_message(e.message.as_str());
}

/// Reads a key-value.
pub fn read_key_value(r: wire::key_value::Reader<'_>) -> capnp::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get_key()?.to_vec(),
        create_revision: r.get_create_revision(),
        mod_revision: r.get_mod_revision(),
        version: r.get_version(),
        value: r.get_value()?.to_vec(),
        lease: r.get_lease(),
    })
}

/// Writes a key-value.
pub fn write_key_value(kv: &KeyValue, mut b: wire::key_value::Builder<'_>) {
    b.set_key(&kv.key);
    b.set_create_revision(kv.create_revision);
    b.set_mod_revision(kv.mod_revision);
    b.set_version(kv.version);
    b.set_value(&kv.value);
    b.set_lease(kv.lease);
}

/// Reads a range request.
pub fn read_range_request(r: wire::range_request::Reader<'_>) -> capnp::Result<RangeRequest> {
    Ok(RangeRequest {
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        limit: r.get_limit(),
        revision: r.get_revision(),
        sort_order: match r
            .get_sort_order()
            .map_err(|e| not_in_schema("sortOrder", e))?
        {
            wire::SortOrder::None => SortOrder::None,
            wire::SortOrder::Ascend => SortOrder::Ascend,
            wire::SortOrder::Descend => SortOrder::Descend,
        },
        sort_target: match r
            .get_sort_target()
            .map_err(|e| not_in_schema("sortTarget", e))?
        {
            wire::SortTarget::Key => SortTarget::Key,
            wire::SortTarget::Version => SortTarget::Version,
            wire::SortTarget::Create => SortTarget::Create,
            wire::SortTarget::Mod => SortTarget::Mod,
            wire::SortTarget::Value => SortTarget::Value,
        },
        serializable: r.get_serializable(),
        keys_only: r.get_keys_only(),
        count_only: r.get_count_only(),
        min_mod_revision: r.get_min_mod_revision(),
        max_mod_revision: r.get_max_mod_revision(),
        min_create_revision: r.get_min_create_revision(),
        max_create_revision: r.get_max_create_revision(),
    })
}

/// Writes a range request.
pub fn write_range_request(q: &RangeRequest, mut b: wire::range_request::Builder<'_>) {
    b.set_key(&q.key);
    b.set_range_end(&q.range_end);
    b.set_limit(q.limit);
    b.set_revision(q.revision);
    b.set_sort_order(match q.sort_order {
        SortOrder::None => wire::SortOrder::None,
        SortOrder::Ascend => wire::SortOrder::Ascend,
        SortOrder::Descend => wire::SortOrder::Descend,
    });
    b.set_sort_target(match q.sort_target {
        SortTarget::Key => wire::SortTarget::Key,
        SortTarget::Version => wire::SortTarget::Version,
        SortTarget::Create => wire::SortTarget::Create,
        SortTarget::Mod => wire::SortTarget::Mod,
        SortTarget::Value => wire::SortTarget::Value,
    });
    b.set_serializable(q.serializable);
    b.set_keys_only(q.keys_only);
    b.set_count_only(q.count_only);
    b.set_min_mod_revision(q.min_mod_revision);
    b.set_max_mod_revision(q.max_mod_revision);
    b.set_min_create_revision(q.min_create_revision);
    b.set_max_create_revision(q.max_create_revision);
}

/// Reads a range response (without its header).
pub fn read_range_response(r: wire::range_response::Reader<'_>) -> capnp::Result<RangeResponse> {
    let list = r.get_kvs()?;
    let mut kvs = Vec::with_capacity(list.len() as usize);
    for kv in list.iter() {
        kvs.push(read_key_value(kv)?);
    }
    Ok(RangeResponse {
        kvs,
        more: r.get_more(),
        count: r.get_count(),
    })
}

/// Writes a range response (the caller writes the header).
pub fn write_range_response(p: &RangeResponse, mut b: wire::range_response::Builder<'_>) {
    b.set_more(p.more);
    b.set_count(p.count);
    let mut list = b.init_kvs(p.kvs.len() as u32);
    for (i, kv) in p.kvs.iter().enumerate() {
        write_key_value(kv, list.reborrow().get(i as u32));
    }
}

/// Reads a put request.
pub fn read_put_request(r: wire::put_request::Reader<'_>) -> capnp::Result<PutRequest> {
    Ok(PutRequest {
        key: r.get_key()?.to_vec(),
        value: r.get_value()?.to_vec(),
        lease: r.get_lease(),
        prev_kv: r.get_prev_kv(),
        ignore_value: r.get_ignore_value(),
        ignore_lease: r.get_ignore_lease(),
    })
}

/// Writes a put request.
pub fn write_put_request(q: &PutRequest, mut b: wire::put_request::Builder<'_>) {
    b.set_key(&q.key);
    b.set_value(&q.value);
    b.set_lease(q.lease);
    b.set_prev_kv(q.prev_kv);
    b.set_ignore_value(q.ignore_value);
    b.set_ignore_lease(q.ignore_lease);
}

/// Reads a put response (without its header).
pub fn read_put_response(r: wire::put_response::Reader<'_>) -> capnp::Result<PutResponse> {
    Ok(PutResponse {
        prev_kv: if r.get_has_prev_kv() {
            Some(read_key_value(r.get_prev_kv()?)?)
        } else {
            None
        },
    })
}

/// Writes a put response (the caller writes the header).
pub fn write_put_response(p: &PutResponse, mut b: wire::put_response::Builder<'_>) {
    if let Some(kv) = &p.prev_kv {
        b.set_has_prev_kv(true);
        write_key_value(kv, b.init_prev_kv());
    }
}

/// Reads a delete-range request.
pub fn read_delete_request(
    r: wire::delete_range_request::Reader<'_>,
) -> capnp::Result<DeleteRangeRequest> {
    Ok(DeleteRangeRequest {
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        prev_kv: r.get_prev_kv(),
    })
}

/// Writes a delete-range request.
pub fn write_delete_request(
    q: &DeleteRangeRequest,
    mut b: wire::delete_range_request::Builder<'_>,
) {
    b.set_key(&q.key);
    b.set_range_end(&q.range_end);
    b.set_prev_kv(q.prev_kv);
}

/// Reads a delete-range response (without its header).
pub fn read_delete_response(
    r: wire::delete_range_response::Reader<'_>,
) -> capnp::Result<DeleteRangeResponse> {
    let list = r.get_prev_kvs()?;
    let mut prev_kvs = Vec::with_capacity(list.len() as usize);
    for kv in list.iter() {
        prev_kvs.push(read_key_value(kv)?);
    }
    Ok(DeleteRangeResponse {
        deleted: r.get_deleted(),
        prev_kvs,
    })
}

/// Writes a delete-range response (the caller writes the header).
pub fn write_delete_response(
    p: &DeleteRangeResponse,
    mut b: wire::delete_range_response::Builder<'_>,
) {
    b.set_deleted(p.deleted);
    let mut list = b.init_prev_kvs(p.prev_kvs.len() as u32);
    for (i, kv) in p.prev_kvs.iter().enumerate() {
        write_key_value(kv, list.reborrow().get(i as u32));
    }
}

/// Reads a compare.
pub fn read_compare(r: wire::compare::Reader<'_>) -> capnp::Result<Compare> {
    use wire::compare::target::Which as T;
    use wire::compare::CompareResult as W;
    let result = match r
        .get_result()
        .map_err(|e| not_in_schema("compare result", e))?
    {
        W::Equal => CompareResult::Equal,
        W::Greater => CompareResult::Greater,
        W::Less => CompareResult::Less,
        W::NotEqual => CompareResult::NotEqual,
    };
    let target = match r
        .get_target()
        .which()
        .map_err(|e| not_in_schema("compare target", e))?
    {
        T::Version(v) => CompareTarget::Version(v),
        T::CreateRevision(v) => CompareTarget::CreateRevision(v),
        T::ModRevision(v) => CompareTarget::ModRevision(v),
        T::Value(v) => CompareTarget::Value(v?.to_vec()),
        T::Lease(v) => CompareTarget::Lease(v),
    };
    Ok(Compare {
        result,
        key: r.get_key()?.to_vec(),
        range_end: r.get_range_end()?.to_vec(),
        target,
    })
}

/// Writes a compare.
pub fn write_compare(c: &Compare, mut b: wire::compare::Builder<'_>) {
    use wire::compare::CompareResult as W;
    b.set_result(match c.result {
        CompareResult::Equal => W::Equal,
        CompareResult::Greater => W::Greater,
        CompareResult::Less => W::Less,
        CompareResult::NotEqual => W::NotEqual,
    });
    b.set_key(&c.key);
    b.set_range_end(&c.range_end);
    let mut t = b.init_target();
    match &c.target {
        CompareTarget::Version(v) => t.set_version(*v),
        CompareTarget::CreateRevision(v) => t.set_create_revision(*v),
        CompareTarget::ModRevision(v) => t.set_mod_revision(*v),
        CompareTarget::Value(v) => t.set_value(v),
        CompareTarget::Lease(v) => t.set_lease(*v),
    }
}

/// Reads a transaction request, nested transactions included.
pub fn read_txn_request(r: wire::txn_request::Reader<'_>) -> capnp::Result<TxnRequest> {
    let mut compare = Vec::new();
    for c in r.get_compare()?.iter() {
        compare.push(read_compare(c)?);
    }
    let read_ops = |list: capnp::struct_list::Reader<'_, wire::request_op::Owned>| {
        let mut ops = Vec::with_capacity(list.len() as usize);
        for op in list.iter() {
            ops.push(read_request_op(op)?);
        }
        Ok::<_, CapnpError>(ops)
    };
    Ok(TxnRequest {
        compare,
        success: read_ops(r.get_success()?)?,
        failure: read_ops(r.get_failure()?)?,
    })
}

fn read_request_op(r: wire::request_op::Reader<'_>) -> capnp::Result<RequestOp> {
    use wire::request_op::Which as W;
    Ok(
        match r.which().map_err(|e| not_in_schema("request op", e))? {
            W::Range(q) => RequestOp::Range(read_range_request(q?)?),
            W::Put(q) => RequestOp::Put(read_put_request(q?)?),
            W::DeleteRange(q) => RequestOp::DeleteRange(read_delete_request(q?)?),
            W::Txn(q) => RequestOp::Txn(read_txn_request(q?)?),
        },
    )
}

/// Writes a transaction request, nested transactions included.
pub fn write_txn_request(q: &TxnRequest, mut b: wire::txn_request::Builder<'_>) {
    let mut compares = b.reborrow().init_compare(q.compare.len() as u32);
    for (i, c) in q.compare.iter().enumerate() {
        write_compare(c, compares.reborrow().get(i as u32));
    }
    let mut success = b.reborrow().init_success(q.success.len() as u32);
    for (i, op) in q.success.iter().enumerate() {
        write_request_op(op, success.reborrow().get(i as u32));
    }
    let mut failure = b.init_failure(q.failure.len() as u32);
    for (i, op) in q.failure.iter().enumerate() {
        write_request_op(op, failure.reborrow().get(i as u32));
    }
}

fn write_request_op(op: &RequestOp, b: wire::request_op::Builder<'_>) {
    match op {
        RequestOp::Range(q) => write_range_request(q, b.init_range()),
        RequestOp::Put(q) => write_put_request(q, b.init_put()),
        RequestOp::DeleteRange(q) => write_delete_request(q, b.init_delete_range()),
        RequestOp::Txn(q) => write_txn_request(q, b.init_txn()),
    }
}

/// Reads a transaction response (without its header).
pub fn read_txn_response(r: wire::txn_response::Reader<'_>) -> capnp::Result<TxnResponse> {
    use wire::response_op::Which as W;
    let list = r.get_responses()?;
    let mut responses = Vec::with_capacity(list.len() as usize);
    for op in list.iter() {
        responses.push(
            match op.which().map_err(|e| not_in_schema("response op", e))? {
                W::Range(p) => ResponseOp::Range(read_range_response(p?)?),
                W::Put(p) => ResponseOp::Put(read_put_response(p?)?),
                W::DeleteRange(p) => ResponseOp::DeleteRange(read_delete_response(p?)?),
                W::Txn(p) => ResponseOp::Txn(read_txn_response(p?)?),
            },
        );
    }
    Ok(TxnResponse {
        succeeded: r.get_succeeded(),
        responses,
    })
}

/// Writes a transaction response (the caller writes the header; nested responses carry
/// the same header revision, as in etcd, and are written with `header`).
pub fn write_txn_response(
    p: &TxnResponse,
    header: &Header,
    mut b: wire::txn_response::Builder<'_>,
) {
    b.set_succeeded(p.succeeded);
    let mut list = b.init_responses(p.responses.len() as u32);
    for (i, op) in p.responses.iter().enumerate() {
        let ob = list.reborrow().get(i as u32);
        match op {
            ResponseOp::Range(r) => {
                let mut rb = ob.init_range();
                write_header(header, rb.reborrow().init_header());
                write_range_response(r, rb);
            }
            ResponseOp::Put(r) => {
                let mut rb = ob.init_put();
                write_header(header, rb.reborrow().init_header());
                write_put_response(r, rb);
            }
            ResponseOp::DeleteRange(r) => {
                let mut rb = ob.init_delete_range();
                write_header(header, rb.reborrow().init_header());
                write_delete_response(r, rb);
            }
            ResponseOp::Txn(r) => {
                let mut rb = ob.init_txn();
                write_header(header, rb.reborrow().init_header());
                write_txn_response(r, header, rb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capnp::message::{Builder, ReaderOptions};

    fn round_trip<T>(
        write: impl FnOnce(&mut Builder<capnp::message::HeapAllocator>),
        read: impl FnOnce(&capnp::message::Reader<capnp::serialize::OwnedSegments>) -> T,
    ) -> T {
        let mut msg = Builder::new_default();
        write(&mut msg);
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        let reader =
            capnp::serialize::read_message(&mut bytes.as_slice(), ReaderOptions::new()).unwrap();
        read(&reader)
    }

    fn sample_txn() -> TxnRequest {
        TxnRequest {
            compare: vec![
                Compare {
                    result: CompareResult::Greater,
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    target: CompareTarget::Value(b"v".to_vec()),
                },
                Compare {
                    result: CompareResult::NotEqual,
                    key: b"k".to_vec(),
                    range_end: vec![],
                    target: CompareTarget::ModRevision(9),
                },
            ],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    lease: 3,
                    prev_kv: true,
                    ignore_value: false,
                    ignore_lease: true,
                }),
                RequestOp::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                        key: b"x".to_vec(),
                        range_end: vec![0],
                        prev_kv: true,
                    })],
                    failure: vec![],
                }),
            ],
            failure: vec![RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                limit: 5,
                revision: 7,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Mod,
                serializable: true,
                keys_only: true,
                count_only: false,
                min_mod_revision: 1,
                max_mod_revision: 2,
                min_create_revision: 3,
                max_create_revision: 4,
            })],
        }
    }

    #[test]
    fn proposals_round_trip() {
        let reqs = [
            WriteRequest::Txn(sample_txn()),
            WriteRequest::Compact { revision: 42 },
            WriteRequest::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![7; 5000],
                ..PutRequest::default()
            }),
            WriteRequest::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                prev_kv: true,
            }),
        ];
        for (i, req) in reqs.iter().enumerate() {
            let bytes = encode_proposal(i as u64 + 1, req);
            assert_eq!(
                decode_proposal(&bytes).unwrap(),
                (i as u64 + 1, req.clone())
            );
        }
        assert!(decode_proposal(&[1, 2, 3]).is_err());
        assert!(decode_proposal(&[]).is_err());
    }

    /// The first segment is sized from the payload: puts and deletes of any size encode as one
    /// segment (with the 8 KiB default first segment, larger ones spilled into a second), no
    /// larger than their payload plus the overhead allowance, and round-trip.
    #[test]
    fn proposals_are_one_segment_sized_to_their_payload() {
        let segments = |bytes: &[u8]| u32::from_le_bytes(bytes[..4].try_into().unwrap()) + 1;
        for (key_len, value_len) in [(1, 0), (16, 256), (300, 3), (1000, 20_000), (40, 200_000)] {
            let req = WriteRequest::Put(PutRequest {
                key: vec![b'k'; key_len],
                value: vec![7; value_len],
                lease: 5,
                prev_kv: true,
                ..PutRequest::default()
            });
            let bytes = encode_proposal(9, &req);
            assert_eq!(segments(&bytes), 1, "put of {key_len}+{value_len} bytes");
            assert!(bytes.len() <= key_len + value_len + 8 * PROPOSAL_OVERHEAD_WORDS);
            assert_eq!(decode_proposal(&bytes).unwrap(), (9, req));
        }
        let delete = WriteRequest::DeleteRange(DeleteRangeRequest {
            key: vec![b'a'; 3000],
            range_end: vec![b'z'; 3000],
            prev_kv: true,
        });
        let bytes = encode_proposal(10, &delete);
        assert_eq!(segments(&bytes), 1);
        assert_eq!(decode_proposal(&bytes).unwrap(), (10, delete));
    }

    #[test]
    fn txn_request_round_trips_with_nesting() {
        let txn = sample_txn();
        let back = round_trip(
            |m| write_txn_request(&txn, m.init_root()),
            |r| read_txn_request(r.get_root().unwrap()).unwrap(),
        );
        assert_eq!(back, txn);
    }

    #[test]
    fn txn_response_round_trips() {
        let kv = KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"v".to_vec(),
            lease: 0,
        };
        let resp = TxnResponse {
            succeeded: true,
            responses: vec![
                ResponseOp::Put(PutResponse {
                    prev_kv: Some(kv.clone()),
                }),
                ResponseOp::Put(PutResponse { prev_kv: None }),
                ResponseOp::Range(RangeResponse {
                    kvs: vec![kv.clone()],
                    more: true,
                    count: 4,
                }),
                ResponseOp::Txn(TxnResponse {
                    succeeded: false,
                    responses: vec![ResponseOp::DeleteRange(DeleteRangeResponse {
                        deleted: 1,
                        prev_kvs: vec![kv],
                    })],
                }),
            ],
        };
        let header = Header {
            cluster_id: 1,
            member_id: 2,
            revision: 5,
            raft_term: 3,
        };
        let back = round_trip(
            |m| write_txn_response(&resp, &header, m.init_root()),
            |r| read_txn_response(r.get_root().unwrap()).unwrap(),
        );
        assert_eq!(back, resp);
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in [
            ErrorCode::Compacted,
            ErrorCode::FutureRevision,
            ErrorCode::RequestTooLarge,
            ErrorCode::TooManyTxnOps,
            ErrorCode::DuplicateKey,
            ErrorCode::KeyNotFound,
            ErrorCode::InvalidRange,
            ErrorCode::InvalidArgument,
            ErrorCode::LeaseNotFound,
            ErrorCode::NoSpace,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::LeaseExists,
            ErrorCode::LeaseTtlTooLarge,
            ErrorCode::WatchIdExists,
            ErrorCode::Internal,
        ] {
            let e = Error::new(code, "which field, which limit");
            let back = round_trip(
                |m| write_error(&e, m.init_root()),
                |r| read_error(r.get_root().unwrap()).unwrap(),
            );
            assert_eq!(back, e);
        }
    }

    #[test]
    fn unknown_enum_value_is_an_error_not_a_panic() {
        let mut msg = Builder::new_default();
        {
            let mut q: wire::range_request::Builder<'_> = msg.init_root();
            q.set_key(b"a");
        }
        // Patch sortOrder (the first 16-bit field after limit and revision) to 99.
        let mut words = capnp::serialize::write_message_to_words(&msg);
        // Segment table (8 bytes) + root pointer (8 bytes) + data section: limit (8),
        // revision (8), sortOrder (2 bytes at offset 16).
        let at = 8 + 8 + 16;
        words[at] = 99;
        let reader =
            capnp::serialize::read_message(&mut words.as_slice(), ReaderOptions::new()).unwrap();
        let err = read_range_request(reader.get_root().unwrap()).unwrap_err();
        assert!(err.to_string().contains("sortOrder"), "{err}");
    }
}
