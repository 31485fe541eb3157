//! The servers a load runs against, behind one connection type.
//!
//! Both targets run on the same executor (a tokio current-thread runtime with a `LocalSet`
//! per load thread, see `load.rs`): corekv through its own client on its `Tokio` runtime,
//! etcd through the `etcd-client` crate (gRPC over tonic; one `etcd_client::Client` is one
//! HTTP/2 connection). A [`Conn`] is one connection; cloning it shares that connection, as
//! several etcd benchmark clients share one gRPC connection.

use std::rc::Rc;
use std::time::Duration;

use corekv::client::{Client, ClientError, ClientOptions, Tokio};
use corekv::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Which server a run talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// corekv, through `corekv::client`.
    Corekv,
    /// etcd v3, through its gRPC API (`etcd-client`; needs the `etcd` cargo feature).
    Etcd,
}

impl Target {
    /// Parses `corekv` or `etcd`; `etcd` is refused with a clear message when the binary was
    /// built without the `etcd` feature.
    pub fn parse(s: &str) -> Result<Target, String> {
        match s {
            "corekv" => Ok(Target::Corekv),
            "etcd" if cfg!(feature = "etcd") => Ok(Target::Etcd),
            "etcd" => Err(
                "--target etcd: this corekv-bench was built without the `etcd` \
                 feature; rebuild with `cargo build --release -p corekv-bench --features etcd` \
                 (needs protoc: apt-get install protobuf-compiler)"
                    .into(),
            ),
            other => Err(format!("--target: {other:?} is not corekv or etcd")),
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Corekv => "corekv",
            Target::Etcd => "etcd",
        }
    }
}

/// Why a request failed, as a short stable label ("timeout", "transport", "server:<code>",
/// "grpc:<code>", "check:<what>"), so that reports can count failures by kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ErrorKind(pub String);

impl ErrorKind {
    /// A failed consistency check of a response (the server answered, but wrongly).
    pub fn check(what: &str) -> ErrorKind {
        ErrorKind(format!("check:{what}"))
    }
}

impl From<ClientError> for ErrorKind {
    fn from(e: ClientError) -> ErrorKind {
        ErrorKind(match e {
            ClientError::Server(e) => format!("server:{:?}", e.code),
            ClientError::Transport(_) => "transport".into(),
            ClientError::Timeout(_) => "timeout".into(),
            ClientError::BadEndpoint(_) => "bad-endpoint".into(),
        })
    }
}

#[cfg(feature = "etcd")]
impl From<etcd_client::Error> for ErrorKind {
    fn from(e: etcd_client::Error) -> ErrorKind {
        use etcd_client::Error as E;
        ErrorKind(match e {
            // tonic is not a direct dependency; its status codes' Debug names are stable.
            E::GRpcStatus(s) => match format!("{:?}", s.code()).as_str() {
                "DeadlineExceeded" | "Cancelled" => "timeout".into(),
                "Unavailable" => "transport".into(),
                code => format!("grpc:{code}"),
            },
            E::TransportError(_) | E::IoError(_) => "transport".into(),
            other => format!("etcd-client:{}", variant_name(&format!("{other:?}"))),
        })
    }
}

#[cfg(feature = "etcd")]
fn variant_name(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// One read in a request: `[key, range_end)` (empty `range_end`: just `key`), at most `limit`
/// keys (0: no limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, exclusive; empty for a single key.
    pub range_end: Vec<u8>,
    /// Most keys returned (0: all).
    pub limit: u64,
    /// Serializable (local) read instead of linearizable.
    pub serializable: bool,
    /// Return only keys (cleanup scans).
    pub keys_only: bool,
}

impl Get {
    /// A linearizable or serializable read of one key.
    pub fn key(key: Vec<u8>, serializable: bool) -> Get {
        Get {
            key,
            range_end: Vec::new(),
            limit: 0,
            serializable,
            keys_only: false,
        }
    }
}

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A put.
    Put(Vec<u8>, Vec<u8>),
    /// A read.
    Get(Get),
}

/// One connection to the target; clones share it.
#[derive(Clone)]
pub enum Conn {
    /// A corekv client (one Cap'n Proto connection).
    Corekv(Rc<Client>),
    /// An etcd KV client (one HTTP/2 connection); boxed, it is 50 times the other's size.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

/// A freshly connected client of either server.
pub enum AnyClient {
    /// A corekv client (one Cap'n Proto connection).
    Corekv(Client),
    /// An etcd client (one HTTP/2 connection); boxed, it is 35 times the other's size.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

/// Connects to `target` at the first reachable of `endpoints`, with `timeout` per request.
/// Must run inside a tokio `LocalSet` (both clients spawn their connection tasks locally).
pub async fn connect_any(
    target: Target,
    endpoints: &[String],
    timeout: Duration,
) -> Result<AnyClient, String> {
    match target {
        Target::Corekv => {
            let options = ClientOptions {
                request_timeout: timeout,
                ..ClientOptions::default()
            };
            let client = Client::connect(endpoints, options, Tokio)
                .await
                .map_err(|e| format!("connect to corekv at {endpoints:?}: {e}"))?;
            Ok(AnyClient::Corekv(client))
        }
        #[cfg(feature = "etcd")]
        Target::Etcd => {
            let options = etcd_client::ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_secs(3));
            let client = etcd_client::Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| format!("connect to etcd at {endpoints:?}: {e}"))?;
            Ok(AnyClient::Etcd(Box::new(client)))
        }
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => Err(Target::parse("etcd").unwrap_err()),
    }
}

/// Connects a KV connection (see [`connect_any`]).
pub async fn connect(
    target: Target,
    endpoints: &[String],
    timeout: Duration,
) -> Result<Conn, String> {
    Ok(match connect_any(target, endpoints, timeout).await? {
        AnyClient::Corekv(client) => Conn::Corekv(Rc::new(client)),
        #[cfg(feature = "etcd")]
        AnyClient::Etcd(client) => Conn::Etcd(Box::new(client.kv_client())),
    })
}

fn corekv_range(g: Get) -> RangeRequest {
    RangeRequest {
        key: g.key,
        range_end: g.range_end,
        limit: g.limit as i64,
        serializable: g.serializable,
        keys_only: g.keys_only,
        ..RangeRequest::default()
    }
}

#[cfg(feature = "etcd")]
fn etcd_get_options(g: &Get) -> etcd_client::GetOptions {
    let mut o = etcd_client::GetOptions::new();
    if !g.range_end.is_empty() {
        o = o.with_range(g.range_end.clone());
    }
    if g.limit > 0 {
        o = o.with_limit(g.limit as i64);
    }
    if g.serializable {
        o = o.with_serializable();
    }
    if g.keys_only {
        o = o.with_keys_only();
    }
    o
}

impl Conn {
    /// Writes `key` = `value`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), ErrorKind> {
        match self {
            Conn::Corekv(c) => {
                c.put(PutRequest {
                    key,
                    value,
                    ..PutRequest::default()
                })
                .await?;
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                c.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Reads `g`; returns the keys found, in order.
    pub async fn get(&mut self, g: Get) -> Result<Vec<Vec<u8>>, ErrorKind> {
        match self {
            Conn::Corekv(c) => {
                let (r, _) = c.range(corekv_range(g)).await?;
                Ok(r.kvs.into_iter().map(|kv| kv.key).collect())
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                let o = etcd_get_options(&g);
                let mut r = c.get(g.key, Some(o)).await?;
                Ok(r.take_kvs()
                    .into_iter()
                    .map(|kv| kv.key().to_vec())
                    .collect())
            }
        }
    }

    /// Runs `ops` as one transaction without compares; returns the keys each read found.
    pub async fn txn(&mut self, ops: Vec<TxnOp>) -> Result<Vec<usize>, ErrorKind> {
        match self {
            Conn::Corekv(c) => {
                let success = ops
                    .into_iter()
                    .map(|op| match op {
                        TxnOp::Put(key, value) => RequestOp::Put(PutRequest {
                            key,
                            value,
                            ..PutRequest::default()
                        }),
                        TxnOp::Get(g) => RequestOp::Range(corekv_range(g)),
                    })
                    .collect();
                let (r, _) = c
                    .txn(TxnRequest {
                        success,
                        ..TxnRequest::default()
                    })
                    .await?;
                Ok(r.responses
                    .iter()
                    .filter_map(|r| match r {
                        corekv::mvcc::ResponseOp::Range(r) => Some(r.kvs.len()),
                        _ => None,
                    })
                    .collect())
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                let ops: Vec<etcd_client::TxnOp> = ops
                    .into_iter()
                    .map(|op| match op {
                        TxnOp::Put(key, value) => etcd_client::TxnOp::put(key, value, None),
                        TxnOp::Get(g) => {
                            let o = etcd_get_options(&g);
                            etcd_client::TxnOp::get(g.key, Some(o))
                        }
                    })
                    .collect();
                let r = c.txn(etcd_client::Txn::new().and_then(ops)).await?;
                Ok(r.op_responses()
                    .into_iter()
                    .filter_map(|r| match r {
                        etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().len()),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// Deletes `[key, range_end)`; returns how many keys it deleted.
    pub async fn delete_range(
        &mut self,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<u64, ErrorKind> {
        match self {
            Conn::Corekv(c) => {
                let (r, _) = c
                    .delete_range(DeleteRangeRequest {
                        key,
                        range_end,
                        ..DeleteRangeRequest::default()
                    })
                    .await?;
                Ok(r.deleted as u64)
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                let o = etcd_client::DeleteOptions::new().with_range(range_end);
                let r = c.delete(key, Some(o)).await?;
                Ok(r.deleted() as u64)
            }
        }
    }
}

/// Runs `f` on a fresh single-thread runtime with one connection to the target: for the
/// set-up and clean-up steps around a timed run (checks, deletes, readiness probes).
pub fn with_conn<T, F, Fut>(
    target: Target,
    endpoints: &[String],
    timeout: Duration,
    f: F,
) -> Result<T, String>
where
    F: FnOnce(Conn) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start a tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let conn = connect(target, endpoints, timeout).await?;
        f(conn).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_round_trip() {
        assert_eq!(Target::parse("corekv").unwrap().name(), "corekv");
        assert!(Target::parse("redis").unwrap_err().contains("redis"));
        if cfg!(feature = "etcd") {
            assert_eq!(Target::parse("etcd").unwrap(), Target::Etcd);
        } else {
            assert!(Target::parse("etcd")
                .unwrap_err()
                .contains("--features etcd"));
        }
    }

    #[test]
    fn client_errors_map_to_stable_kinds() {
        assert_eq!(
            ErrorKind::from(ClientError::Transport("x".into())).0,
            "transport"
        );
        assert_eq!(
            ErrorKind::from(ClientError::Timeout(Duration::from_secs(1))).0,
            "timeout"
        );
        assert_eq!(ErrorKind::check("short read").0, "check:short read");
    }
}
