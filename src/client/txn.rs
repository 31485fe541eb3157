//! A transaction builder: `Txn::new().when(..).and_then(..).or_else(..)`, with constructors
//! for compares and ops that read like etcd's clientv3.

use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

/// Builds a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    request: TxnRequest,
}

impl Txn {
    /// An empty transaction (no compares: the success branch runs).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds guards; the success branch runs only if all hold.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.request.compare.extend(compares);
        self
    }

    /// Adds ops to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Txn {
        self.request.success.extend(ops);
        self
    }

    /// Adds ops to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Txn {
        self.request.failure.extend(ops);
        self
    }
}

impl From<Txn> for TxnRequest {
    fn from(t: Txn) -> TxnRequest {
        t.request
    }
}

fn compare(key: impl Into<Vec<u8>>, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        key: key.into(),
        range_end: Vec::new(),
        target,
    }
}

impl Compare {
    /// Compares the key's value.
    pub fn value(
        key: impl Into<Vec<u8>>,
        result: CompareResult,
        value: impl Into<Vec<u8>>,
    ) -> Compare {
        compare(key, result, CompareTarget::Value(value.into()))
    }
    /// Compares the key's version (0: absent).
    pub fn version(key: impl Into<Vec<u8>>, result: CompareResult, version: i64) -> Compare {
        compare(key, result, CompareTarget::Version(version))
    }
    /// Compares the key's create revision (0: absent).
    pub fn create_revision(key: impl Into<Vec<u8>>, result: CompareResult, rev: i64) -> Compare {
        compare(key, result, CompareTarget::CreateRevision(rev))
    }
    /// Compares the key's mod revision (0: absent).
    pub fn mod_revision(key: impl Into<Vec<u8>>, result: CompareResult, rev: i64) -> Compare {
        compare(key, result, CompareTarget::ModRevision(rev))
    }
    /// Compares the key's lease (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, result: CompareResult, lease: i64) -> Compare {
        compare(key, result, CompareTarget::Lease(lease))
    }
    /// Applies the compare to every key in `[key, range_end)` instead of one key.
    pub fn with_range_end(mut self, range_end: impl Into<Vec<u8>>) -> Compare {
        self.range_end = range_end.into();
        self
    }
}

impl RequestOp {
    /// A put op.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
    }
    /// A single-key read op.
    pub fn get(key: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp::Range(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })
    }
    /// A single-key delete op.
    pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        })
    }
}

/// The end of the range of every key starting with `prefix` (etcd's prefix convention;
/// `[0]` = "to the end" when the prefix is all 0xff bytes or empty).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_every_branch() {
        let t: TxnRequest = Txn::new()
            .when([Compare::value("k", CompareResult::Equal, "v")])
            .and_then([RequestOp::put("k", "w")])
            .or_else([RequestOp::get("k"), RequestOp::delete("j")])
            .into();
        assert_eq!(t.compare.len(), 1);
        assert_eq!(t.success.len(), 1);
        assert_eq!(t.failure.len(), 2);
    }

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
