//! Wire conversions of the Lease API (`schema/rpc.capnp`, "Lease" section) and of the lease
//! proposals (`schema/proposal.capnp`).

use crate::generated::proposal_capnp::lease_checkpoint;
use crate::generated::rpc_capnp as wire;
use crate::mvcc::lease::{LeaseCheckpoint, LeaseGrant};

/// Most ids one keep-alive message may carry: bounds the server's work and answer per
/// message; the client library splits longer lists.
pub const MAX_KEEPALIVE_IDS: usize = 10_000;

/// A lease's time to live, as `timeToLive` answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeToLive {
    /// The lease id.
    pub id: i64,
    /// Remaining seconds (rounded up); -1 if the lease does not exist (as etcd answers).
    pub ttl: i64,
    /// The granted TTL, seconds (0 if the lease does not exist).
    pub granted_ttl: i64,
    /// Attached keys in key order, if requested.
    pub keys: Vec<Vec<u8>>,
    /// The key list was cut at the server's limit.
    pub more_keys: bool,
}

/// Reads a grant request.
pub fn read_grant_request(r: wire::lease_grant_request::Reader<'_>) -> LeaseGrant {
    LeaseGrant {
        id: r.get_id(),
        ttl: r.get_ttl(),
    }
}

/// Writes a grant request.
pub fn write_grant_request(g: &LeaseGrant, mut b: wire::lease_grant_request::Builder<'_>) {
    b.set_id(g.id);
    b.set_ttl(g.ttl);
}

/// Reads the checkpoints of a proposal.
pub fn read_checkpoints(
    list: capnp::struct_list::Reader<'_, lease_checkpoint::Owned>,
) -> Vec<LeaseCheckpoint> {
    list.iter()
        .map(|c| LeaseCheckpoint {
            id: c.get_id(),
            remaining_ttl: c.get_remaining_ttl(),
        })
        .collect()
}

/// Writes the checkpoints of a proposal.
pub fn write_checkpoints(
    cs: &[LeaseCheckpoint],
    mut list: capnp::struct_list::Builder<'_, lease_checkpoint::Owned>,
) {
    for (i, c) in cs.iter().enumerate() {
        let mut b = list.reborrow().get(i as u32);
        b.set_id(c.id);
        b.set_remaining_ttl(c.remaining_ttl);
    }
}

/// Writes a time-to-live answer (without its header).
pub fn write_time_to_live(t: &TimeToLive, mut b: wire::lease_time_to_live_response::Builder<'_>) {
    b.set_id(t.id);
    b.set_ttl(t.ttl);
    b.set_granted_ttl(t.granted_ttl);
    b.set_more_keys(t.more_keys);
    let mut keys = b.init_keys(t.keys.len() as u32);
    for (i, k) in t.keys.iter().enumerate() {
        keys.set(i as u32, k);
    }
}

/// Reads a time-to-live answer (without its header).
pub fn read_time_to_live(
    r: wire::lease_time_to_live_response::Reader<'_>,
) -> capnp::Result<TimeToLive> {
    let mut keys = Vec::new();
    for k in r.get_keys()?.iter() {
        keys.push(k?.to_vec());
    }
    Ok(TimeToLive {
        id: r.get_id(),
        ttl: r.get_ttl(),
        granted_ttl: r.get_granted_ttl(),
        keys,
        more_keys: r.get_more_keys(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{decode_proposal, encode_proposal};
    use crate::mvcc::WriteRequest;

    #[test]
    fn lease_proposals_round_trip() {
        for req in [
            WriteRequest::LeaseGrant(LeaseGrant { id: 0, ttl: 5 }),
            WriteRequest::LeaseGrant(LeaseGrant {
                id: 0x7fff_ffff_ffff_ffff,
                ttl: 9_000_000_000,
            }),
            WriteRequest::LeaseRevoke { id: 42 },
            WriteRequest::LeaseCheckpoint(vec![
                LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 3,
                },
                LeaseCheckpoint {
                    id: 9,
                    remaining_ttl: 100,
                },
            ]),
        ] {
            let bytes = encode_proposal(77, &req);
            assert_eq!(decode_proposal(&bytes).unwrap(), (77, req));
        }
    }
}
