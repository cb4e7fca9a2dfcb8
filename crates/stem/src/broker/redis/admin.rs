//! The operator's view of the Redis broker ([`QueueAdmin`]): counts,
//! purges, dead letters and the recent-task index, for the CLI and the
//! dashboard. Workers never
//! call these.

use ::redis::streams::StreamRangeReply;
use ::redis::AsyncCommands;
use async_trait::async_trait;

use super::scripts::{FIRST_READY, FORGET_QUEUE, PURGE_READY, REPLAY};
use super::{dead, entry, recent, RedisBroker, GROUP};
use crate::broker::{held_tasks, DeadLetter, QueueAdmin, QueueStats, RecentTask, LANES};
use crate::envelope::WireEnvelope;
use crate::error::{Result, StemError};
use crate::keys;

#[async_trait]
impl QueueAdmin for RedisBroker {
    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let reply: StreamRangeReply = self
            .conn()
            .xrevrange_count(keys::dead(queue), "+", "-", limit)
            .await?;
        Ok(reply.ids.iter().map(|e| dead::decode(queue, e)).collect())
    }

    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>> {
        let reply: StreamRangeReply = match self.conn().xrange(keys::dead(queue), id, id).await {
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
        // The recent-task index goes with the queue's tasks (a purge is
        // how an operator drops a queue's contents, listings included).
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .zcard(keys::delayed(queue))
            .del(keys::delayed(queue))
            .ignore()
            .del(keys::recent(queue))
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
                let ms = first.as_deref().and_then(entry::entry_ms);
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

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        let mut conn = self.conn();
        if !conn.sismember::<_, _, bool>(keys::QUEUES, queue).await? {
            return Ok(false);
        }
        // What it holds, for the refusal's message; the script below is
        // what decides, atomically on the queue's slot.
        held_tasks(&self.stats(queue).await?)?;
        let mut forget = FORGET_QUEUE.prepare_invoke();
        for lane in 0..LANES {
            forget.key(keys::lane(queue, lane));
        }
        forget
            .key(keys::dead(queue))
            .key(keys::delayed(queue))
            .key(keys::recent(queue));
        let held: u64 = forget.invoke_async(&mut conn).await?;
        if held > 0 {
            return Err(StemError::InvalidArgument(format!(
                "queue {queue:?} received tasks while it was being forgotten ({held} now); nothing was deleted"
            )));
        }
        // A task published after the script recreates its stream and its
        // producer names the queue again within a minute: nothing is lost,
        // only the listing lags.
        let _: () = conn.srem(keys::QUEUES, queue).await?;
        self.forget_locally(queue);
        Ok(true)
    }

    async fn recent_tasks(
        &self,
        queue: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<RecentTask>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let end = match before {
            Some(c) => format!("({}", stream_id(c)?),
            None => "+".to_string(),
        };
        let reply: StreamRangeReply = self
            .conn()
            .xrevrange_count(keys::recent(queue), end, "-", count)
            .await?;
        Ok(reply.ids.iter().flat_map(recent::decode_entry).collect())
    }

    async fn find_recent(&self, queue: &str, id: &str, near_ms: i64) -> Result<Option<RecentTask>> {
        // Entry ids start with the ms Redis added them, a moment after the
        // producer stamped `enqueued_at` (clocks of different hosts may
        // disagree by a little): read forward from a minute before.
        let mut start = format!("{}", (near_ms - FIND_WINDOW_MS).max(0));
        let mut conn = self.conn();
        loop {
            let reply: StreamRangeReply = conn
                .xrange_count(keys::recent(queue), &start, "+", FIND_CHUNK)
                .await?;
            for e in &reply.ids {
                if entry::entry_ms(&e.id).unwrap_or(0) > near_ms + FIND_WINDOW_MS {
                    return Ok(None);
                }
                // The id appears in a body as text; only a hit is decoded.
                let holds = e.map.values().any(|v| {
                    matches!(v, ::redis::Value::BulkString(b)
                        if b.windows(id.len()).any(|w| w == id.as_bytes()))
                });
                if holds {
                    if let Some(found) = recent::decode_entry(e).into_iter().find(|r| r.id == id) {
                        return Ok(Some(found));
                    }
                }
            }
            match reply.ids.last() {
                Some(last) if reply.ids.len() == FIND_CHUNK => start = format!("({}", last.id),
                _ => return Ok(None),
            }
        }
    }
}

/// How far around a task's `enqueued_at` [`QueueAdmin::find_recent`] looks.
const FIND_WINDOW_MS: i64 = 60_000;
/// Index entries read per round trip while looking for one task.
const FIND_CHUNK: usize = 500;

/// `cursor` when it is a stream entry id (`<ms>-<seq>`), so a cursor from
/// a URL cannot smuggle another range into the command.
fn stream_id(cursor: &str) -> Result<&str> {
    let ok = cursor.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(cursor)
    } else {
        Err(StemError::InvalidArgument(format!(
            "{cursor:?} is not a recent-task cursor"
        )))
    }
}
