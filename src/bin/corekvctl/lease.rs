//! `corekvctl lease grant|revoke|keep-alive|timetolive|list`: etcdctl's lease commands, with
//! its output (ids in 16-digit hex) and exit codes.

use std::time::Duration;

use clap::{Args, Subcommand};
use corekv::api::lease::TimeToLive;
use corekv::api::Header;
use corekv::client::{Client, ClientError};
use corekv::mvcc::ErrorCode;
use serde_json::{Map, Value};

use crate::output::{self, Format};
use crate::requests::parse_lease;
use crate::{exit, request_failed, write_stdout, Failure};

/// Lease commands.
#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds.
    Grant(GrantArgs),
    /// Revoke a lease, deleting every key attached to it.
    Revoke(IdArgs),
    /// Keep a lease alive (until interrupted, or once with --once).
    KeepAlive(KeepAliveArgs),
    /// Print a lease's granted and remaining TTL (and its keys with --keys).
    Timetolive(TimeToLiveArgs),
    /// List every lease.
    List,
}

/// Arguments of `lease grant`.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// TTL in seconds.
    #[arg(allow_negative_numbers = true)]
    pub ttl: i64,
}

/// A lease id argument (hex, as etcdctl prints it).
#[derive(Args, Debug)]
pub struct IdArgs {
    /// Lease ID in hex.
    pub id: String,
}

/// Arguments of `lease keep-alive`.
#[derive(Args, Debug)]
pub struct KeepAliveArgs {
    /// Lease ID in hex.
    pub id: String,
    /// Send one keep-alive and exit.
    #[arg(long)]
    pub once: bool,
}

/// Arguments of `lease timetolive`.
#[derive(Args, Debug)]
pub struct TimeToLiveArgs {
    /// Lease ID in hex.
    pub id: String,
    /// List the keys attached to the lease.
    #[arg(long)]
    pub keys: bool,
}

/// A lease command with its arguments parsed.
#[derive(Debug)]
pub enum LeaseOp {
    Grant(i64),
    Revoke(i64),
    KeepAlive { id: i64, once: bool },
    TimeToLive { id: i64, keys: bool },
    List,
}

/// Parses the ids of `cmd` (hex) before anything is sent.
pub fn prepare(cmd: LeaseCommand) -> Result<LeaseOp, Failure> {
    Ok(match cmd {
        LeaseCommand::Grant(a) => LeaseOp::Grant(a.ttl),
        LeaseCommand::Revoke(a) => LeaseOp::Revoke(parse_lease(&a.id)?),
        LeaseCommand::KeepAlive(a) => LeaseOp::KeepAlive {
            id: parse_lease(&a.id)?,
            once: a.once,
        },
        LeaseCommand::Timetolive(a) => LeaseOp::TimeToLive {
            id: parse_lease(&a.id)?,
            keys: a.keys,
        },
        LeaseCommand::List => LeaseOp::List,
    })
}

fn with_header(h: &Header, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("header".into(), output::json_header(h));
    for (k, v) in fields {
        m.insert(k.into(), v);
    }
    output::json_line(&Value::Object(m))
}

/// etcdctl's simple line for a time-to-live answer.
pub fn simple_time_to_live(t: &TimeToLive, keys: bool) -> String {
    if t.ttl == -1 {
        return format!("lease {:016x} already expired\n", t.id);
    }
    let mut s = format!(
        "lease {:016x} granted with TTL({}s), remaining({}s)",
        t.id, t.granted_ttl, t.ttl
    );
    if keys {
        let names: Vec<String> = t
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        s.push_str(&format!(", attached keys([{}])", names.join(" ")));
        if t.more_keys {
            s.push_str(" (more keys not listed)");
        }
    }
    s.push('\n');
    s
}

/// Runs a lease command on `client`.
pub async fn execute(client: &Client, op: LeaseOp, format: Format) -> Result<(), Failure> {
    let json = format == Format::Json;
    match op {
        LeaseOp::Grant(ttl) => {
            let (id, ttl, h) = client.lease_grant(ttl, 0).await.map_err(request_failed)?;
            write_stdout(&if json {
                with_header(&h, vec![("ID", id.into()), ("TTL", ttl.into())])
            } else {
                format!("lease {id:016x} granted with TTL({ttl}s)\n").into_bytes()
            })
        }
        LeaseOp::Revoke(id) => {
            let h = client.lease_revoke(id).await.map_err(request_failed)?;
            write_stdout(&if json {
                with_header(&h, vec![])
            } else {
                format!("lease {id:016x} revoked\n").into_bytes()
            })
        }
        LeaseOp::KeepAlive { id, once } => loop {
            match client.lease_keep_alive_once(id).await {
                Ok(ttl) => {
                    write_stdout(&if json {
                        output::json_line(&serde_json::json!({ "ID": id, "TTL": ttl }))
                    } else {
                        format!("lease {id:016x} keepalived with TTL({ttl})\n").into_bytes()
                    })?;
                    if once {
                        return Ok(());
                    }
                    let period = Duration::from_secs(ttl.max(1) as u64) / 3;
                    glommio::timer::sleep(period.max(Duration::from_millis(500))).await;
                }
                Err(ClientError::Server(e)) if e.code == ErrorCode::LeaseNotFound => {
                    if once {
                        return Err(Failure::new(
                            exit::ERROR,
                            format!("lease {id:016x} expired or revoked"),
                        ));
                    }
                    write_stdout(format!("lease {id:016x} expired or revoked.\n").as_bytes())?;
                    return Ok(());
                }
                Err(e) => return Err(request_failed(e)),
            }
        },
        LeaseOp::TimeToLive { id, keys } => {
            let (t, h) = client
                .lease_time_to_live(id, keys)
                .await
                .map_err(request_failed)?;
            write_stdout(&if json {
                let mut fields = vec![
                    ("ID", t.id.into()),
                    ("TTL", t.ttl.into()),
                    ("grantedTTL", t.granted_ttl.into()),
                ];
                if keys {
                    let list: Vec<Value> = t
                        .keys
                        .iter()
                        .map(|k| Value::String(output::base64(k)))
                        .collect();
                    fields.push(("keys", Value::Array(list)));
                }
                with_header(&h, fields)
            } else {
                simple_time_to_live(&t, keys).into_bytes()
            })
        }
        LeaseOp::List => {
            let (ids, h) = client.lease_leases().await.map_err(request_failed)?;
            write_stdout(&if json {
                let list: Vec<Value> = ids
                    .iter()
                    .map(|&id| serde_json::json!({ "ID": id }))
                    .collect();
                with_header(&h, vec![("leases", Value::Array(list))])
            } else {
                let mut s = format!("found {} leases\n", ids.len());
                for id in ids {
                    s.push_str(&format!("{id:016x}\n"));
                }
                s.into_bytes()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_live_lines_match_etcdctl() {
        let mut t = TimeToLive {
            id: 0x694d77aa9e38260f,
            ttl: 59,
            granted_ttl: 60,
            keys: vec![b"foo".to_vec(), b"bar".to_vec()],
            more_keys: false,
        };
        assert_eq!(
            simple_time_to_live(&t, false),
            "lease 694d77aa9e38260f granted with TTL(60s), remaining(59s)\n"
        );
        assert_eq!(
            simple_time_to_live(&t, true),
            "lease 694d77aa9e38260f granted with TTL(60s), remaining(59s), attached keys([foo bar])\n"
        );
        t.ttl = -1;
        assert_eq!(
            simple_time_to_live(&t, true),
            "lease 694d77aa9e38260f already expired\n"
        );
    }
}
