//! Recovery: taking over entries whose holder died, and forgetting dead
//! consumers. A lease is an entry's idle time in the group's pending list;
//! live workers reset it (`renew`), so an entry idle past its holder's
//! declared lease (`stem:leases`) belongs to a worker that is gone.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::streams::{StreamPendingCountReply, StreamPendingId};
use ::redis::{AsyncCommands, Value};

use super::entry::{self, elements, id_and_fields};
use super::{is_nogroup, RedisBroker, GROUP, RECOVER_SCAN};
use crate::broker::{lanes_in_fetch_order, Fetched, LANES};
use crate::error::Result;
use crate::keys;
use crate::redis_conn::Conn;

impl RedisBroker {
    /// Takes over up to `max` entries of `queues` idle for `min_idle` and
    /// for the lease their holder declared (see [`crate::broker::Broker::recover`]).
    pub(super) async fn recover_idle(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.prune_consumers(queues, min_idle).await;
        // XPENDING with IDLE walks the whole pending list of a lane and
        // lists only entries idle for at least our timeout, with their
        // holder and delivery count: live workers' renewed entries at the
        // head no longer hide a dead worker's behind them, whatever room we
        // have. Each candidate is then claimed with XCLAIM, whose own
        // min-idle check loses to a renewal that landed in between.
        let mut out = Vec::new();
        let mut conn = self.conn();
        let min_ms = min_idle.as_millis() as u64;
        let mut leases: Option<HashMap<String, u64>> = None;
        for q in queues {
            for lane in lanes_in_fetch_order() {
                if out.len() >= max {
                    return Ok(out);
                }
                let key = keys::lane(q, lane);
                let Some(pending) = idle_pending(&mut conn, &key, min_ms).await else {
                    continue;
                };
                if leases.is_none() {
                    leases = Some(conn.hgetall(keys::LEASES).await.unwrap_or_default());
                }
                let lane = Lane {
                    queue: q,
                    lane,
                    key: &key,
                };
                let room = max - out.len();
                let claim = Claim::of(pending, leases.as_ref(), min_ms, room);
                out.extend(lane.claim(&mut conn, consumer, claim).await);
            }
        }
        Ok(out)
    }

    /// Removes consumers that hold nothing and have not read for ten
    /// visibility timeouts (at least 10 s) from the groups of `queues`, at
    /// most every half of that: every restart of a worker named
    /// `worker-<host>-<pid>` would otherwise leave ten consumers per queue
    /// behind for good. A consumer with pending entries is never removed
    /// (its entries are recovered first), and a live worker reads at least
    /// every second, so only the dead qualify.
    async fn prune_consumers(&self, queues: &[String], vt: Duration) {
        let stale = (vt * 10).max(Duration::from_secs(10));
        {
            let mut last = self.pruned.lock();
            if last.is_some_and(|t| t.elapsed() < stale / 2) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let mut conn = self.conn();
        let stale_ms = stale.as_millis() as i64;
        for q in queues {
            for lane in 0..LANES {
                let key = keys::lane(q, lane);
                let info: ::redis::RedisResult<::redis::streams::StreamInfoConsumersReply> =
                    conn.xinfo_consumers(&key, GROUP).await;
                let Ok(info) = info else { continue };
                for c in info.consumers {
                    if c.pending == 0 && c.idle as i64 > stale_ms {
                        let removed: ::redis::RedisResult<i64> = ::redis::cmd("XGROUP")
                            .arg("DELCONSUMER")
                            .arg(&key)
                            .arg(GROUP)
                            .arg(&c.name)
                            .query_async(&mut conn)
                            .await;
                        if removed.is_ok() {
                            tracing::debug!(key, consumer = %c.name, "stale consumer removed");
                        }
                    }
                }
            }
        }
        // Lease declarations of workers whose record expired (no
        // heartbeat for three intervals: dead, or cut off) go too; one
        // field per worker lifetime would otherwise pile up. A live worker
        // declares its lease again with every heartbeat, so one removed by
        // mistake (a worker cut off for a while) is back within a
        // heartbeat.
        if let Err(e) = self.prune_leases(&mut conn).await {
            tracing::debug!(error = %e, "lease declarations not pruned; tried again later");
        }
    }

    /// Removes the lease declarations whose worker has no record and
    /// which are older than the lease they declare. A live worker
    /// declares again with every heartbeat, so only one that has written
    /// nothing for a whole lease qualifies — and by then every entry it
    /// held was reclaimable on its own lease anyway: removing the
    /// declaration cannot let another worker take a task early.
    async fn prune_leases(&self, conn: &mut crate::redis_conn::Conn) -> ::redis::RedisResult<()> {
        let declared: Vec<String> = conn.hkeys(keys::LEASES).await?;
        if declared.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for name in &declared {
            pipe.exists(keys::worker(name))
                .hget(keys::LEASES, name)
                .hget(keys::LEASES_AT, name);
        }
        let facts: Vec<(bool, Option<u64>, Option<i64>)> = {
            let flat: Vec<::redis::Value> = pipe.query_async(conn).await?;
            flat.chunks(3)
                .map(|c| {
                    let alive = ::redis::from_redis_value_ref::<bool>(&c[0]).unwrap_or(true);
                    let lease = ::redis::from_redis_value_ref::<Option<u64>>(&c[1])
                        .ok()
                        .flatten();
                    let at = ::redis::from_redis_value_ref::<Option<i64>>(&c[2])
                        .ok()
                        .flatten();
                    (alive, lease, at)
                })
                .collect()
        };
        let now = crate::envelope::now_ms();
        let gone: Vec<&String> = declared
            .iter()
            .zip(facts)
            .filter(|(_, (alive, lease, at))| {
                // A declaration from before declarations were dated counts
                // as old.
                !alive && now - at.unwrap_or(0) > lease.unwrap_or(0) as i64
            })
            .map(|(name, _)| name)
            .collect();
        if !gone.is_empty() {
            let mut pipe = ::redis::pipe();
            pipe.hdel(keys::LEASES, &gone)
                .ignore()
                .hdel(keys::LEASES_AT, &gone)
                .ignore();
            pipe.exec_async(conn).await?;
            tracing::debug!(workers = ?gone, "lease declarations of gone workers removed");
        }
        Ok(())
    }
}

/// The entries of lane stream `key` idle for at least `min_ms` (up to
/// [`RECOVER_SCAN`]), or `None` when there are none or the stream cannot
/// be read: one broken key must not stop recovery of the others, nor drop
/// what was claimed already.
async fn idle_pending(conn: &mut Conn, key: &str, min_ms: u64) -> Option<Vec<StreamPendingId>> {
    let pending: ::redis::RedisResult<StreamPendingCountReply> = ::redis::cmd("XPENDING")
        .arg(key)
        .arg(GROUP)
        .arg("IDLE")
        .arg(min_ms)
        .arg("-")
        .arg("+")
        .arg(RECOVER_SCAN)
        .query_async(conn)
        .await;
    match pending {
        Ok(p) if p.ids.is_empty() => None,
        Ok(p) => Some(p.ids),
        Err(e) if is_nogroup(&e) => None,
        Err(e) => {
            tracing::warn!(key, error = %e, "recovery skipped a stream it cannot read");
            None
        }
    }
}

/// The idle entries of one lane to take over, each with the lease it must
/// have been idle for and how often it was delivered before.
struct Claim {
    entries: Vec<(String, u64, u32)>,
}

impl Claim {
    /// Of `pending`, at most `room` entries idle past the lease their
    /// holder declared in `leases` (at least `min_ms`). Our own entries
    /// count too: a worker restarted under the same name recovers what its
    /// previous life held.
    fn of(
        pending: Vec<StreamPendingId>,
        leases: Option<&HashMap<String, u64>>,
        min_ms: u64,
        room: usize,
    ) -> Self {
        let mut entries = Vec::new();
        for p in pending {
            if entries.len() >= room {
                break;
            }
            let lease = leases
                .and_then(|l| l.get(&p.consumer))
                .copied()
                .unwrap_or(0)
                .max(min_ms);
            if (p.last_delivered_ms as u64) < lease {
                continue;
            }
            entries.push((p.id, lease, p.times_delivered as u32));
        }
        Claim { entries }
    }
}

/// One lane stream of one queue.
struct Lane<'a> {
    queue: &'a str,
    lane: u8,
    key: &'a str,
}

impl Lane<'_> {
    /// Claims `claim`'s entries for `consumer` in one pipeline of `XCLAIM`s
    /// (each with its lease as min-idle, so a renewal that landed in
    /// between wins) and returns what was taken over.
    async fn claim(&self, conn: &mut Conn, consumer: &str, claim: Claim) -> Vec<Fetched> {
        if claim.entries.is_empty() {
            return Vec::new();
        }
        let mut pipe = ::redis::pipe();
        for (id, lease, _) in &claim.entries {
            pipe.cmd("XCLAIM")
                .arg(self.key)
                .arg(GROUP)
                .arg(consumer)
                .arg(*lease)
                .arg(id);
        }
        let claimed: Vec<Value> = match pipe.query_async(conn).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(key = self.key, error = %e, "recovery could not claim entries");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (reply, (_, _, before)) in claimed.into_iter().zip(claim.entries) {
            let Some(entry) = elements(reply).into_iter().next() else {
                continue; // renewed meanwhile, or deleted
            };
            let Some((id, fields)) = id_and_fields(entry) else {
                continue;
            };
            let mut f = entry::to_fetched(self.queue, self.lane, id, fields);
            if let Fetched::Task(d) = &mut f {
                d.deliveries = before.saturating_add(1);
            }
            out.push(f);
        }
        out
    }
}
