//! The lease calls of [`Client`], and [`KeepAlive`], a handle that keeps leases alive.
//!
//! Keep-alives travel on the connection's one keep-alive stream; each message carries up to
//! [`MAX_KEEPALIVE_IDS`] ids, and a longer list is split into messages that are all sent at
//! once (pipelined) and awaited together.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::{ClientError, Result};
use crate::api::lease::{read_time_to_live, write_grant_request, TimeToLive, MAX_KEEPALIVE_IDS};
use crate::api::{self, Header};
use crate::mvcc::lease::LeaseGrant;
use crate::mvcc::{Error, ErrorCode};

use super::Client;

/// The answer to a batch of keep-alives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAliveReport {
    /// TTL per id, in order; 0 = the lease does not exist.
    pub ttls: Vec<i64>,
    /// Ids the server forwarded to their owner on another shard.
    pub forwarded: usize,
}

/// The shortest pause of a [`KeepAlive`] loop between two rounds.
pub const MIN_KEEPALIVE_PERIOD: Duration = Duration::from_millis(200);

impl Client {
    /// Grants a lease of `ttl` seconds (raised to the server's minimum); `id` 0 lets the server
    /// pick the id. Returns (id, granted TTL, header).
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<(i64, i64, Header)> {
        self.call(async |c| {
            let mut q = c.lease.grant_request();
            write_grant_request(&LeaseGrant { id, ttl }, q.get().init_request());
            let reply = q.send().promise.await?;
            let r = ok_reply!(reply, lease_grant_result);
            Ok((r.get_id(), r.get_ttl(), api::read_header(r.get_header()?)))
        })
        .await
    }

    /// Revokes lease `id`, deleting every key attached to it (in one revision).
    pub async fn lease_revoke(&self, id: i64) -> Result<Header> {
        self.call(async |c| {
            let mut q = c.lease.revoke_request();
            q.get().init_request().set_id(id);
            let reply = q.send().promise.await?;
            let r = ok_reply!(reply, lease_revoke_result);
            Ok(api::read_header(r.get_header()?))
        })
        .await
    }

    /// Sends one keep-alive for every id (split into messages of at most
    /// [`MAX_KEEPALIVE_IDS`], sent together); returns each lease's TTL in order, 0 for a
    /// lease that does not exist.
    pub async fn lease_keep_alive_ids(&self, ids: &[i64]) -> Result<Vec<i64>> {
        Ok(self
            .lease_keep_alive_report(ids, MAX_KEEPALIVE_IDS)
            .await?
            .ttls)
    }

    /// Like [`Client::lease_keep_alive_ids`], with messages of at most `per_message` ids
    /// (the server refuses more than [`MAX_KEEPALIVE_IDS`]), and reports how many ids the
    /// server forwarded to another shard.
    pub async fn lease_keep_alive_report(
        &self,
        ids: &[i64],
        per_message: usize,
    ) -> Result<KeepAliveReport> {
        let per_message = per_message.max(1);
        self.call(async |c| {
            let mut pending = Vec::new();
            for chunk in ids.chunks(per_message) {
                let mut q = c.keep_alive.keep_alive_request();
                let mut list = q.get().init_ids(chunk.len() as u32);
                for (i, &id) in chunk.iter().enumerate() {
                    list.set(i as u32, id);
                }
                pending.push(q.send().promise);
            }
            let mut out = Vec::with_capacity(ids.len());
            let mut forwarded = 0usize;
            for p in pending {
                let reply = p.await?;
                let r = ok_reply!(reply, lease_keep_alive_result);
                forwarded += r.get_forwarded() as usize;
                out.extend(r.get_ttls()?.iter());
            }
            if out.len() != ids.len() {
                return Err(ClientError::Transport(format!(
                    "keep-alive answered {} TTLs for {} ids",
                    out.len(),
                    ids.len()
                )));
            }
            Ok(KeepAliveReport {
                ttls: out,
                forwarded,
            })
        })
        .await
    }

    /// One keep-alive of lease `id`; returns its TTL, or `LeaseNotFound` if it does not exist
    /// (revoked or expired).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        let ttls = self.lease_keep_alive_ids(&[id]).await?;
        match ttls.first().copied() {
            Some(ttl) if ttl > 0 => Ok(ttl),
            _ => Err(ClientError::Server(Error::new(
                ErrorCode::LeaseNotFound,
                format!("lease {id:x} expired or revoked"),
            ))),
        }
    }

    /// The remaining and granted TTL of lease `id` (remaining -1: it does not exist), with
    /// its attached keys if `keys`.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<(TimeToLive, Header)> {
        self.call(async |c| {
            let mut q = c.lease.time_to_live_request();
            let mut r = q.get().init_request();
            r.set_id(id);
            r.set_keys(keys);
            let reply = q.send().promise.await?;
            let r = ok_reply!(reply, lease_time_to_live_result);
            Ok((read_time_to_live(r)?, api::read_header(r.get_header()?)))
        })
        .await
    }

    /// Every lease id in the store, ascending.
    pub async fn lease_leases(&self) -> Result<(Vec<i64>, Header)> {
        self.call(async |c| {
            let reply = c.lease.leases_request().send().promise.await?;
            let r = ok_reply!(reply, lease_leases_result);
            Ok((
                r.get_leases()?.iter().collect(),
                api::read_header(r.get_header()?),
            ))
        })
        .await
    }

    /// Keeps `ids` alive in the background until the returned handle is stopped or dropped:
    /// every round sends one batched keep-alive for all of them, then waits a third of the
    /// smallest TTL (as etcd's client does). A lease answered "not found" is dropped and
    /// reported by [`KeepAlive::lost`]; a failed round (connection lost) is retried.
    pub fn keep_alive(self: &Rc<Self>, ids: &[i64]) -> KeepAlive {
        let state = Rc::new(RefCell::new(KeepAliveState {
            ttls: ids.iter().map(|&id| (id, 0)).collect(),
            lost: Vec::new(),
            rounds: 0,
            last_error: None,
            stopped: false,
        }));
        let client = self.clone();
        let shared = state.clone();
        self.runtime.spawn_local(Box::pin(async move {
            loop {
                let ids: Vec<i64> = {
                    let s = shared.borrow();
                    if s.stopped {
                        return;
                    }
                    s.ttls.keys().copied().collect()
                };
                let mut period = MIN_KEEPALIVE_PERIOD;
                if !ids.is_empty() {
                    let result = client.lease_keep_alive_ids(&ids).await;
                    let mut s = shared.borrow_mut();
                    if s.stopped {
                        return;
                    }
                    s.rounds += 1;
                    match result {
                        Ok(ttls) => {
                            s.last_error = None;
                            for (id, ttl) in ids.into_iter().zip(ttls) {
                                if ttl > 0 {
                                    if let Some(t) = s.ttls.get_mut(&id) {
                                        *t = ttl;
                                    }
                                } else if s.ttls.remove(&id).is_some() {
                                    s.lost.push(id);
                                }
                            }
                        }
                        Err(e) => s.last_error = Some(e),
                    }
                    let min_ttl = s.ttls.values().copied().filter(|&t| t > 0).min();
                    if let Some(t) = min_ttl {
                        period = (Duration::from_secs(t as u64) / 3).max(MIN_KEEPALIVE_PERIOD);
                    }
                }
                client.runtime.sleep(period).await;
            }
        }));
        KeepAlive { state }
    }
}

struct KeepAliveState {
    ttls: BTreeMap<i64, i64>,
    lost: Vec<i64>,
    rounds: u64,
    last_error: Option<ClientError>,
    stopped: bool,
}

/// Keeps a set of leases alive in the background (see [`Client::keep_alive`]); dropping it
/// stops the loop.
pub struct KeepAlive {
    state: Rc<RefCell<KeepAliveState>>,
}

impl KeepAlive {
    /// Starts keeping `id` alive too (from the next round).
    pub fn add(&self, id: i64) {
        self.state.borrow_mut().ttls.entry(id).or_insert(0);
    }

    /// Stops keeping `id` alive.
    pub fn remove(&self, id: i64) {
        self.state.borrow_mut().ttls.remove(&id);
    }

    /// The TTL the last answer gave `id` (0 before the first answer), `None` if it is not
    /// kept alive (never added, removed, or lost).
    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.state.borrow().ttls.get(&id).copied()
    }

    /// Leases the server answered "not found" (revoked or expired), in the order seen.
    pub fn lost(&self) -> Vec<i64> {
        self.state.borrow().lost.clone()
    }

    /// Rounds completed (answered or failed).
    pub fn rounds(&self) -> u64 {
        self.state.borrow().rounds
    }

    /// The error of the last round, if it failed.
    pub fn last_error(&self) -> Option<ClientError> {
        self.state.borrow().last_error.clone()
    }

    /// Stops the loop (also done on drop).
    pub fn stop(&self) {
        self.state.borrow_mut().stopped = true;
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop();
    }
}
