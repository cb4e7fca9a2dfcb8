//! The operator's view of the Redis broker ([`QueueAdmin`]): counts,
//! purges and dead letters, for the CLI and the dashboard. Workers never
//! call these.

use ::redis::AsyncCommands;
use async_trait::async_trait;

use super::scripts::{FIRST_READY, PURGE_READY, REPLAY};
use super::{dead, entry, RedisBroker, GROUP};
use crate::broker::{DeadLetter, QueueAdmin, QueueStats, LANES};
use crate::envelope::WireEnvelope;
use crate::error::Result;
use crate::keys;

#[async_trait]
impl QueueAdmin for RedisBroker {
    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let reply: ::redis::streams::StreamRangeReply = self
            .conn()
            .xrevrange_count(keys::dead(queue), "+", "-", limit)
            .await?;
        Ok(reply.ids.iter().map(|e| dead::decode(queue, e)).collect())
    }

    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>> {
        let reply: ::redis::streams::StreamRangeReply =
            match self.conn().xrange(keys::dead(queue), id, id).await {
                Ok(r) => r,
                Err(e)
                    if e.kind()
                        == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ResponseError) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
        Ok(reply.ids.first().map(|e| dead::decode(queue, e)))
    }

    async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Option<WireEnvelope>> {
        let Some(letter) = self.get_dead_letter(queue, id).await? else {
            return Ok(None);
        };
        let Some(mut wire) = letter.wire else {
            return Ok(None);
        };
        wire.attempt += 1;
        let band = wire.spec().map(|s| s.priority).unwrap_or(0);
        let replayed: u64 = REPLAY
            .key(keys::dead(queue))
            .key(keys::band(queue, band))
            .arg(id)
            .arg(entry::pack(&wire))
            .invoke_async(&mut self.conn())
            .await?;
        Ok((replayed == 1).then_some(wire))
    }

    async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .xlen(keys::dead(queue))
            .del(keys::dead(queue))
            .ignore();
        let (n,): (u64,) = pipe.query_async(&mut self.conn()).await?;
        Ok(n)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        // Ready entries are those after the group's last-delivered id; the
        // script reads that id and deletes what follows it in one atomic
        // step, so an entry a worker fetches meanwhile (in flight, maybe
        // about to be recovered) is never deleted. Chunks of 1000 keep each
        // script call short; the delayed set goes with one ZCARD + DEL.
        let mut conn = self.conn();
        let mut removed = 0u64;
        for lane in 0..LANES {
            loop {
                let n: u64 = PURGE_READY
                    .key(keys::lane(queue, lane))
                    .arg(GROUP)
                    .arg(1000)
                    .invoke_async(&mut conn)
                    .await?;
                removed += n;
                if n < 1000 {
                    break;
                }
            }
        }
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .zcard(keys::delayed(queue))
            .del(keys::delayed(queue))
            .ignore();
        let (delayed,): (u64,) = pipe.query_async(&mut conn).await?;
        Ok(removed + delayed)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut pipe = ::redis::pipe();
        for lane in 0..LANES {
            pipe.xlen(keys::lane(queue, lane));
        }
        pipe.zcard(keys::delayed(queue)).xlen(keys::dead(queue));
        let mut conn = self.conn();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let lanes = LANES as usize;
        let mut stats = QueueStats {
            queue: queue.to_string(),
            delayed: counts.get(lanes).copied().unwrap_or(0),
            dead: counts.get(lanes + 1).copied().unwrap_or(0),
            ..Default::default()
        };
        let mut total = 0u64;
        let mut inflight = 0u64;
        for lane in 0..LANES {
            let len = counts.get(lane as usize).copied().unwrap_or(0);
            if len == 0 {
                continue;
            }
            total += len;
            let pending: ::redis::RedisResult<::redis::streams::StreamPendingReply> =
                conn.xpending(keys::lane(queue, lane), GROUP).await;
            let held = pending.map(|p| p.count() as u64).unwrap_or(0);
            inflight += held;
            if len > held {
                // Stream ids start with the ms the entry was added.
                let first: Option<String> = FIRST_READY
                    .key(keys::lane(queue, lane))
                    .arg(GROUP)
                    .invoke_async(&mut conn)
                    .await?;
                let ms = first.and_then(|id| id.split('-').next()?.parse::<i64>().ok());
                stats.oldest_ready_ms = match (stats.oldest_ready_ms, ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        stats.inflight = inflight;
        stats.ready = total.saturating_sub(inflight);
        Ok(stats)
    }

    async fn known_queues(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.conn().smembers(keys::QUEUES).await?;
        v.sort();
        Ok(v)
    }
}
