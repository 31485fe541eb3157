//! The Lease service: grant, revoke, keep-alive streams, time-to-live and list.
//!
//! Grant and revoke are proposed through raft like any write. Keep-alives never touch the
//! log: [`crate::lease::LeaseShard::keep_alive`] refreshes each lease on its owner shard.
//! Time-to-live and list pass the read barrier first (linearizable, as in etcd), then read the
//! published backend state; the remaining TTL comes from the owner shard's table.

use std::rc::Rc;

use crate::api::lease::{self as wire_lease, TimeToLive, MAX_KEEPALIVE_IDS};
use crate::api::{self, Header};
use crate::generated::rpc_capnp::{lease, lease_keep_alive_stream};
use crate::mvcc::lease::{check_id, check_ttl, LeaseGrant};
use crate::mvcc::{self, Error, ErrorCode, SnapshotView, WriteRequest, WriteResponse};

use super::service::{malformed, mismatched, ShardContext};

/// The Lease service of one connection.
pub struct LeaseService {
    ctx: Rc<ShardContext>,
}

impl LeaseService {
    /// The service on the shard of `ctx`.
    pub fn new(ctx: Rc<ShardContext>) -> LeaseService {
        LeaseService { ctx }
    }
}

/// Raises `ttl` to the server's minimum (etcd's rule) and checks the maximum.
fn effective_ttl(ttl: i64, min_ttl: i64) -> mvcc::Result<i64> {
    check_ttl(ttl.max(min_ttl))?;
    Ok(ttl.max(min_ttl))
}

/// The header of an answer that reads the current state (keep-alive, time-to-live, list).
fn current_header(ctx: &ShardContext) -> mvcc::Result<Header> {
    let rtxn = ctx.reader.begin_read()?;
    let mut view = SnapshotView::new(&rtxn)?;
    let (current, _) = mvcc::read::revisions(&mut view)?;
    Ok(ctx.header(current))
}

impl lease::Server for LeaseService {
    async fn grant(
        self: Rc<Self>,
        params: lease::GrantParams,
        mut results: lease::GrantResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            self.ctx.check_size(p.total_size())?;
            let mut g = wire_lease::read_grant_request(p.get_request().map_err(malformed)?);
            if g.id < 0 {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("lease grant: lease id {} is negative", g.id),
                ));
            }
            g.ttl = effective_ttl(g.ttl, self.ctx.leases.config().min_ttl)?;
            Ok(self
                .ctx
                .write(
                    WriteRequest::LeaseGrant(LeaseGrant {
                        id: g.id,
                        ttl: g.ttl,
                    }),
                    false,
                )
                .await)
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::LeaseGrant { id, ttl }), header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                ok.set_id(id);
                ok.set_ttl(ttl);
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn revoke(
        self: Rc<Self>,
        params: lease::RevokeParams,
        mut results: lease::RevokeResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            let id = p.get_request().map_err(malformed)?.get_id();
            check_id("lease revoke", id)?;
            Ok::<_, Error>(
                self.ctx
                    .write(WriteRequest::LeaseRevoke { id }, false)
                    .await,
            )
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((Ok(WriteResponse::LeaseRevoke), header)) => {
                api::write_header(&header, r.init_ok().init_header());
            }
            Ok((Ok(other), _)) => api::write_error(&mismatched(&other), r.init_err()),
            Ok((Err(e), _)) | Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn keep_alive_stream(
        self: Rc<Self>,
        _: lease::KeepAliveStreamParams,
        mut results: lease::KeepAliveStreamResults,
    ) -> Result<(), capnp::Error> {
        results
            .get()
            .set_stream(capnp_rpc::new_client(KeepAliveStream {
                ctx: self.ctx.clone(),
            }));
        Ok(())
    }

    async fn time_to_live(
        self: Rc<Self>,
        params: lease::TimeToLiveParams,
        mut results: lease::TimeToLiveResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            let req = p.get_request().map_err(malformed)?;
            let (id, with_keys) = (req.get_id(), req.get_keys());
            check_id("lease timetolive", id)?;
            self.ctx.read_barrier().await?;
            let (record, keys, header) = {
                let rtxn = self.ctx.reader.begin_read()?;
                let mut view = SnapshotView::new(&rtxn)?;
                let (current, _) = mvcc::read::revisions(&mut view)?;
                let record = mvcc::lease::read(&rtxn, id)?;
                let keys = match (&record, with_keys) {
                    (Some(_), true) => mvcc::lease::read_keys(&rtxn, id)?,
                    _ => (Vec::new(), false),
                };
                (record, keys, self.ctx.header(current))
            };
            let Some(record) = record else {
                return Ok((
                    TimeToLive {
                        id,
                        ttl: -1,
                        ..TimeToLive::default()
                    },
                    header,
                ));
            };
            // The owner's table has it unless it was revoked since the snapshot was read.
            let ttl = match self.ctx.leases.remaining(id).await? {
                Some((_, remaining)) => remaining,
                None => -1,
            };
            Ok::<_, Error>((
                TimeToLive {
                    id,
                    ttl,
                    granted_ttl: record.ttl,
                    keys: keys.0,
                    more_keys: keys.1,
                },
                header,
            ))
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((t, header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                wire_lease::write_time_to_live(&t, ok);
            }
            Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }

    async fn leases(
        self: Rc<Self>,
        _: lease::LeasesParams,
        mut results: lease::LeasesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            self.ctx.read_barrier().await?;
            let rtxn = self.ctx.reader.begin_read()?;
            let mut view = SnapshotView::new(&rtxn)?;
            let (current, _) = mvcc::read::revisions(&mut view)?;
            let ids: Vec<i64> = mvcc::lease::read_all(&rtxn)?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            Ok::<_, Error>((ids, self.ctx.header(current)))
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((ids, header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                let mut list = ok.init_leases(ids.len() as u32);
                for (i, id) in ids.into_iter().enumerate() {
                    list.set(i as u32, id);
                }
            }
            Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }
}

/// One keep-alive stream: answers each message's ids from their owner shards.
struct KeepAliveStream {
    ctx: Rc<ShardContext>,
}

impl lease_keep_alive_stream::Server for KeepAliveStream {
    async fn keep_alive(
        self: Rc<Self>,
        params: lease_keep_alive_stream::KeepAliveParams,
        mut results: lease_keep_alive_stream::KeepAliveResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(malformed)?;
            let list = p.get_ids().map_err(malformed)?;
            if list.len() as usize > MAX_KEEPALIVE_IDS {
                return Err(Error::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "lease keep-alive: {} ids exceed MAX_KEEPALIVE_IDS ({MAX_KEEPALIVE_IDS}) per message",
                        list.len()
                    ),
                ));
            }
            let ids: Vec<i64> = list.iter().collect();
            let (ttls, forwarded) = self.ctx.leases.keep_alive(&ids).await?;
            Ok((ttls, forwarded, current_header(&self.ctx)?))
        }
        .await;
        let r = results.get().init_result();
        match outcome {
            Ok((ttls, forwarded, header)) => {
                let mut ok = r.init_ok();
                api::write_header(&header, ok.reborrow().init_header());
                ok.set_forwarded(forwarded as u32);
                let mut list = ok.init_ttls(ttls.len() as u32);
                for (i, ttl) in ttls.into_iter().enumerate() {
                    list.set(i as u32, ttl);
                }
            }
            Err(e) => api::write_error(&e, r.init_err()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_raised_to_the_minimum_and_capped() {
        assert_eq!(effective_ttl(0, 2).unwrap(), 2);
        assert_eq!(effective_ttl(-5, 2).unwrap(), 2);
        assert_eq!(effective_ttl(60, 2).unwrap(), 60);
        assert_eq!(
            effective_ttl(mvcc::lease::MAX_LEASE_TTL + 1, 2)
                .unwrap_err()
                .code,
            ErrorCode::LeaseTtlTooLarge
        );
    }
}
