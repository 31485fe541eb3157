@0xbeb325433b059cbf;
# corekv client API.
#
# Semantics follow etcd v3 (rpc.proto, api_guarantees): the same revisions, ranges,
# compares and transactions, carried over Cap'n Proto RPC. Differences in form, not meaning:
# - Every call returns a result union: either the response or a typed Error. Cap'n Proto
#   exceptions are reserved for transport failures (disconnects), never for request errors.
# - Byte strings are Data; an empty rangeEnd means "single key", as in etcd.
#
# Compatibility: fields and methods are only ever added (new ordinals), never renumbered.
# The bootstrap interface `CoreKv` gains `watch`, `lease`, `cluster` and `auth` services as
# they are built.

# ---------------------------------------------------------------- common

struct ResponseHeader {
  clusterId @0 :UInt64;
  memberId @1 :UInt64;
  revision @2 :Int64;
  # The store revision when the request was applied (for reads: the revision read at).
  raftTerm @3 :UInt64;
}

enum ErrorCode {
  unknown @0;
  compacted @1;           # requested revision is below the compacted revision
  futureRevision @2;      # requested revision is above the current revision
  requestTooLarge @3;     # encoded request exceeds --max-request-bytes
  tooManyTxnOps @4;       # a txn branch has more ops than --max-txn-ops
  duplicateKey @5;        # a txn modifies the same key twice
  keyNotFound @6;         # ignoreValue / ignoreLease on a key that does not exist
  invalidRange @7;        # malformed key / rangeEnd combination or empty key
  noSpace @8;             # backend quota (--quota-backend-bytes) exhausted
  timeout @9;             # the request did not complete within its deadline
  unavailable @10;        # no leader / shutting down; the request may be retried
  invalidArgument @11;    # any other bad field; the message names it
  leaseNotFound @12;
  leaseExists @13;
  leaseTtlTooLarge @14;
  watchIdExists @15;
  internal @16;           # a server bug or storage failure; the message says what
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;       # human-readable: which limit, which field
}

struct KeyValue {
  key @0 :Data;
  createRevision @1 :Int64;
  modRevision @2 :Int64;
  version @3 :Int64;      # 1 at creation, +1 per modification, reset by delete
  value @4 :Data;
  lease @5 :Int64;        # 0 = no lease
}

# ---------------------------------------------------------------- KV

enum SortOrder {
  none @0;
  ascend @1;
  descend @2;
}

enum SortTarget {
  key @0;
  version @1;
  create @2;
  mod @3;
  value @4;
}

struct RangeRequest {
  key @0 :Data;
  rangeEnd @1 :Data;
  # Empty: the single key `key`. "\0": every key >= key (or all keys if key is "\0").
  # Otherwise the half-open range [key, rangeEnd); a prefix p is [p, p+1).
  limit @2 :Int64;        # 0 = no limit
  revision @3 :Int64;     # <= 0 = current revision
  sortOrder @4 :SortOrder;
  sortTarget @5 :SortTarget;
  serializable @6 :Bool;  # true: served from the local applied state without a quorum round
  keysOnly @7 :Bool;
  countOnly @8 :Bool;
  minModRevision @9 :Int64;
  maxModRevision @10 :Int64;
  minCreateRevision @11 :Int64;
  maxCreateRevision @12 :Int64;
}

struct RangeResponse {
  header @0 :ResponseHeader;
  kvs @1 :List(KeyValue);
  more @2 :Bool;          # more keys matched than `limit` returned
  count @3 :Int64;        # keys in the range (before limit)
}

struct PutRequest {
  key @0 :Data;
  value @1 :Data;
  lease @2 :Int64;
  prevKv @3 :Bool;
  ignoreValue @4 :Bool;   # keep the current value; fails with keyNotFound if the key is absent
  ignoreLease @5 :Bool;   # keep the current lease; fails with keyNotFound if the key is absent
}

struct PutResponse {
  header @0 :ResponseHeader;
  prevKv @1 :KeyValue;    # set only if requested and the key existed
  hasPrevKv @2 :Bool;
}

struct DeleteRangeRequest {
  key @0 :Data;
  rangeEnd @1 :Data;      # same conventions as RangeRequest.rangeEnd
  prevKv @2 :Bool;
}

struct DeleteRangeResponse {
  header @0 :ResponseHeader;
  deleted @1 :Int64;
  prevKvs @2 :List(KeyValue);
}

struct RequestOp {
  union {
    range @0 :RangeRequest;
    put @1 :PutRequest;
    deleteRange @2 :DeleteRangeRequest;
    txn @3 :TxnRequest;
  }
}

struct ResponseOp {
  union {
    range @0 :RangeResponse;
    put @1 :PutResponse;
    deleteRange @2 :DeleteRangeResponse;
    txn @3 :TxnResponse;
  }
}

struct Compare {
  enum CompareResult {
    equal @0;
    greater @1;
    less @2;
    notEqual @3;
  }
  result @0 :CompareResult;
  key @1 :Data;
  rangeEnd @2 :Data;      # compare every key in the range; all must satisfy it
  target :union {
    version @3 :Int64;
    createRevision @4 :Int64;
    modRevision @5 :Int64;
    value @6 :Data;
    lease @7 :Int64;
  }
}

struct TxnRequest {
  compare @0 :List(Compare);
  success @1 :List(RequestOp);
  failure @2 :List(RequestOp);
}

struct TxnResponse {
  header @0 :ResponseHeader;
  succeeded @1 :Bool;
  responses @2 :List(ResponseOp);
}

struct CompactionRequest {
  revision @0 :Int64;
  physical @1 :Bool;      # reply only once history below `revision` is removed from the backend
}

struct CompactionResponse {
  header @0 :ResponseHeader;
}

struct RangeResult { union { ok @0 :RangeResponse; err @1 :Error; } }
struct PutResult { union { ok @0 :PutResponse; err @1 :Error; } }
struct DeleteRangeResult { union { ok @0 :DeleteRangeResponse; err @1 :Error; } }
struct TxnResult { union { ok @0 :TxnResponse; err @1 :Error; } }
struct CompactionResult { union { ok @0 :CompactionResponse; err @1 :Error; } }

interface KV {
  range @0 (request :RangeRequest) -> (result :RangeResult);
  put @1 (request :PutRequest) -> (result :PutResult);
  deleteRange @2 (request :DeleteRangeRequest) -> (result :DeleteRangeResult);
  txn @3 (request :TxnRequest) -> (result :TxnResult);
  compact @4 (request :CompactionRequest) -> (result :CompactionResult);
}

# ---------------------------------------------------------------- Maintenance

struct StatusResponse {
  header @0 :ResponseHeader;
  version @1 :Text;       # server version
  dbSize @2 :Int64;       # backend file size, bytes
  dbSizeInUse @3 :Int64;  # bytes in pages reachable from the current state
  leader @4 :UInt64;      # member id of the raft leader, 0 if none
  raftIndex @5 :UInt64;   # last raft log index
  raftTerm @6 :UInt64;
  raftAppliedIndex @7 :UInt64;
  errors @8 :List(Text);  # active alarms, if any
  isLearner @9 :Bool;
}

struct StatusResult { union { ok @0 :StatusResponse; err @1 :Error; } }

interface Maintenance {
  status @0 () -> (result :StatusResult);
}

# ---------------------------------------------------------------- Watch
#
# A client opens one watch stream per connection, handing the server a WatchSink; the server
# pushes every response to it with Cap'n Proto streaming (flow-controlled: the server never
# sends faster than the connection's window allows). One stream carries many watchers.
# Semantics follow etcd's WatchCreateRequest / WatchResponse: ordered, unique, reliable,
# atomic (one revision is never split unless `fragment`), resumable, bookmarkable.

enum WatchFilter {
  noPut @0;               # drop put events
  noDelete @1;            # drop delete events
}

struct WatchCreateRequest {
  key @0 :Data;
  rangeEnd @1 :Data;      # same conventions as RangeRequest.rangeEnd
  startRevision @2 :Int64;  # <= 0: from the next revision; otherwise from this one (may be past)
  progressNotify @3 :Bool;  # periodic empty responses while synced (--watch-progress-notify-interval)
  filters @4 :List(WatchFilter);
  prevKv @5 :Bool;        # events carry the key's previous version (if still available)
  watchId @6 :Int64;      # 0: server-assigned; otherwise unique per stream (watchIdExists)
  fragment @7 :Bool;      # split a revision larger than the response limit across responses
}

enum WatchEventType {
  put @0;
  delete @1;
}

struct WatchEvent {
  type @0 :WatchEventType;
  kv @1 :KeyValue;        # delete: key and modRevision (the delete's revision) only
  prevKv @2 :KeyValue;    # set only if the watcher asked for it and the key existed
  hasPrevKv @3 :Bool;
}

struct WatchResponse {
  header @0 :ResponseHeader;
  # revision: for events, the revision of the last event; for a progress notification,
  # every event up to it has been delivered.
  watchId @1 :Int64;      # -1 on a stream-wide progress response (requestProgress)
  created @2 :Bool;       # the watcher exists; always precedes its events
  canceled @3 :Bool;      # the watcher is gone; no response for it follows
  compactRevision @4 :Int64;  # set with `canceled` when the start revision was compacted
  cancelReason @5 :Text;
  fragment @6 :Bool;      # more fragments of this revision follow
  events @7 :List(WatchEvent);
  moreWatchIds @8 :List(Int64);
  # Other watchers of the same stream this identical response is also for (same events,
  # prev_kv and fragment settings): the server sends it once; the client library hands each
  # watcher its own copy with its own watchId, so a client-API user sees etcd's responses.
}

interface WatchSink {
  # Implemented by the client; the server streams responses into it.
  send @0 (response :WatchResponse) -> stream;
  sendBatch @1 (responses :List(WatchResponse)) -> stream;
  # Several responses, in order: the server sends what is queued for a stream in one call
  # (bounded), so many watchers' events cost one call instead of one each.
}

struct WatchCreateResult { union { ok @0 :Int64; err @1 :Error; } }   # ok: the watch id
struct WatchCancelResult { union { ok @0 :Void; err @1 :Error; } }

interface WatchStream {
  create @0 (request :WatchCreateRequest) -> (result :WatchCreateResult);
  # The result answers the call; the sink also receives a `created` response before any event.
  cancel @1 (watchId :Int64) -> (result :WatchCancelResult);
  # The sink receives a `canceled` response after the watcher's last event.
  requestProgress @2 () -> ();
  # The sink receives a progress response (watchId -1) once every watcher of the stream is synced.
}

interface Watch {
  open @0 (sink :WatchSink) -> (stream :WatchStream);
  # Dropping the returned stream cancels all its watchers.
}

# ---------------------------------------------------------------- Lease
#
# etcd's lease API. TTLs are in seconds. A lease id is a positive Int64 (0 = none). Lease
# state is partitioned across the server's shards by id; keep-alives refresh it in memory on
# the owner shard (no log write per keep-alive); grant, revoke and periodic checkpoints of
# the remaining TTLs go through the log.

struct LeaseGrantRequest {
  ttl @0 :Int64;          # requested TTL; raised to the server's minimum, > 9e9 s is refused
  id @1 :Int64;           # 0: the server picks a fresh id (never one used before)
}

struct LeaseGrantResponse {
  header @0 :ResponseHeader;
  id @1 :Int64;
  ttl @2 :Int64;          # the TTL granted (after raising to the minimum)
}

struct LeaseRevokeRequest {
  id @0 :Int64;
}

struct LeaseRevokeResponse {
  header @0 :ResponseHeader;
}

struct LeaseKeepAliveResponse {
  header @0 :ResponseHeader;
  ttls @1 :List(Int64);
  # One per requested id, in order: the lease's granted TTL after the refresh, or 0 if the
  # lease does not exist (revoked or expired), as etcd answers a keep-alive of a lost lease.
  forwarded @2 :UInt32;
  # How many of the ids are owned by another shard than the one serving this stream (their
  # keep-alives were forwarded there): a diagnostic of the partitioning.
}

struct LeaseTimeToLiveRequest {
  id @0 :Int64;
  keys @1 :Bool;          # also list the keys attached to the lease
}

struct LeaseTimeToLiveResponse {
  header @0 :ResponseHeader;
  id @1 :Int64;
  ttl @2 :Int64;          # remaining seconds; -1 if the lease does not exist (as etcd)
  grantedTtl @3 :Int64;
  keys @4 :List(Data);    # attached keys in key order (if requested), bounded in size
  moreKeys @5 :Bool;      # the key list was cut at the server's limit
}

struct LeaseLeasesResponse {
  header @0 :ResponseHeader;
  leases @1 :List(Int64); # every lease id, ascending
}

struct LeaseGrantResult { union { ok @0 :LeaseGrantResponse; err @1 :Error; } }
struct LeaseRevokeResult { union { ok @0 :LeaseRevokeResponse; err @1 :Error; } }
struct LeaseKeepAliveResult { union { ok @0 :LeaseKeepAliveResponse; err @1 :Error; } }
struct LeaseTimeToLiveResult { union { ok @0 :LeaseTimeToLiveResponse; err @1 :Error; } }
struct LeaseLeasesResult { union { ok @0 :LeaseLeasesResponse; err @1 :Error; } }

interface LeaseKeepAliveStream {
  # One keep-alive stream (etcd's LeaseKeepAlive): a client keeps all its leases alive over
  # one stream. Calls may be pipelined; each carries many ids (at most the server's
  # per-message limit) and is answered in order of the ids.
  keepAlive @0 (ids :List(Int64)) -> (result :LeaseKeepAliveResult);
}

interface Lease {
  grant @0 (request :LeaseGrantRequest) -> (result :LeaseGrantResult);
  revoke @1 (request :LeaseRevokeRequest) -> (result :LeaseRevokeResult);
  # Deletes every key attached to the lease, in one revision.
  keepAliveStream @2 () -> (stream :LeaseKeepAliveStream);
  timeToLive @3 (request :LeaseTimeToLiveRequest) -> (result :LeaseTimeToLiveResult);
  leases @4 () -> (result :LeaseLeasesResult);
}

# ---------------------------------------------------------------- bootstrap

interface CoreKv {
  # The capability a client receives on connect; each method hands out one service.
  kv @0 () -> (kv :KV);
  maintenance @1 () -> (maintenance :Maintenance);
  watch @2 () -> (watch :Watch);
  lease @3 () -> (lease :Lease);
}
