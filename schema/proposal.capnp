@0xd2c8a4f1e97b3a55;
# What the raft log carries: one write request per entry, as proposed by a shard.
# Entries are applied in log order by the single applier; the encoding must stay readable
# by every later version (fields are only added).

using Rpc = import "rpc.capnp";

struct Proposal {
  id @0 :UInt64;
  # Chosen by the proposing member; matches the applied result to the waiting client.
  # 0 for proposals nobody waits on.
  union {
    put @1 :Rpc.PutRequest;
    deleteRange @2 :Rpc.DeleteRangeRequest;
    txn @3 :Rpc.TxnRequest;
    compact @4 :Int64;
    leaseGrant @5 :Rpc.LeaseGrantRequest;
    # The applier picks the id when it is 0 (a persisted counter: never reused).
    leaseRevoke @6 :Int64;
    leaseCheckpoint @7 :List(LeaseCheckpoint);
  }
}

struct LeaseCheckpoint {
  # The remaining TTL of a lease as its owner shard saw it; a restart resumes from it.
  id @0 :Int64;
  remainingTtl @1 :Int64;
}
