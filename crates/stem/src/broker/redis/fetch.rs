//! Fetching: one `XREADGROUP` over every lane of the asked queues, in
//! fetch order, or on a Redis Cluster (where queues live on different
//! slots) one read per queue in turn; blocking reads on their own pooled
//! connections so a blocked worker never holds up the shared multiplexed
//! one; a queue whose streams are missing or of the wrong type reported
//! as broken instead of failing every fetch.

use std::time::Duration;

use ::redis::Value;

use super::{entry, is_nogroup, RedisBroker, GROUP};
use crate::broker::Fetched;
use crate::error::{Result, StemError};
use crate::keys;
use crate::lanes::{lane_rank, lanes_in_fetch_order, LANES};
use crate::redis_conn::{connection, Conn, COMMAND_TIMEOUT};

/// Longest block on one queue while a cluster fetch of several queues
/// waits (see `RedisBroker::fetch_each`).
const CLUSTER_BLOCK_SLICE: Duration = Duration::from_millis(100);

impl RedisBroker {
    /// One `XREADGROUP` over every lane of `queues` (which a cluster
    /// serves from one slot only when they are one queue).
    pub(super) async fn read(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        let mut keys = Vec::with_capacity(queues.len() * LANES as usize);
        for q in queues {
            keys.extend(lanes_in_fetch_order().map(|lane| keys::lane(q, lane)));
        }
        let ids = vec![">"; keys.len()];
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&keys).arg(&ids);
        let mut conn = self.take_blocking(block)?;
        let reply: ::redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        self.give_blocking(conn);
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                self.create_groups(queues).await?;
                return Ok(Vec::new());
            }
            // A stream deleted while we were blocked on it: the next read
            // recreates its group.
            Err(e) if e.to_string().contains("UNBLOCKED") => return Ok(Vec::new()),
            Err(e) if !StemError::from(e.clone()).is_transient() => {
                return Err(self.broken_queue(queues, e).await);
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(max);
        entry::from_read_reply(reply, &mut out);
        // Highest band first, its due lane before it; within a lane,
        // stream order.
        out.sort_by_key(|f| std::cmp::Reverse(lane_rank(f.receipt().lane)));
        Ok(out)
    }

    /// [`Broker::fetch`] of several queues on a Redis Cluster, where one
    /// read cannot span them (each queue has a slot of its own): every
    /// queue is read without blocking, starting with a different one each
    /// time; when all are empty, the read blocks on one queue after
    /// another for at most [`CLUSTER_BLOCK_SLICE`] each until `block` is
    /// over. A task published to one queue while the read blocks on
    /// another waits at most one slice. (Blocking on all at once would
    /// leave the reads not taken still waiting in Redis, and what they
    /// receive later would be leased to this consumer with no one to run
    /// it until its lease ran out.)
    pub(super) async fn fetch_each(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        let start = self
            .rotation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % queues.len();
        let order: Vec<&String> = queues
            .iter()
            .cycle()
            .skip(start)
            .take(queues.len())
            .collect();
        let mut out = Vec::new();
        for q in &order {
            let one = std::slice::from_ref(*q);
            out.extend(self.read(consumer, one, max, Duration::ZERO).await?);
        }
        if !out.is_empty() || block.is_zero() {
            out.sort_by_key(|f| std::cmp::Reverse(lane_rank(f.receipt().lane)));
            return Ok(out);
        }
        let deadline = std::time::Instant::now() + block;
        for q in order.iter().cycle() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let one = std::slice::from_ref(*q);
            let got = self
                .read(consumer, one, max, left.min(CLUSTER_BLOCK_SLICE))
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        Ok(Vec::new())
    }

    /// After a read of `queues` failed with `error` (one `XREADGROUP`
    /// names every lane of every queue, so one bad key fails it all):
    /// finds a queue whose lane key is not a stream, so the caller can set
    /// that queue aside. Falls back to `error` when every key looks right.
    async fn broken_queue(&self, queues: &[String], error: ::redis::RedisError) -> StemError {
        let mut pipe = ::redis::pipe();
        let mut keys = Vec::new();
        for q in queues {
            for lane in 0..LANES {
                let key = keys::lane(q, lane);
                pipe.cmd("TYPE").arg(&key);
                keys.push((q, key));
            }
        }
        let types: Vec<String> = match pipe.query_async(&mut self.conn()).await {
            Ok(t) => t,
            Err(_) => return error.into(),
        };
        for ((queue, key), kind) in keys.into_iter().zip(types) {
            if kind != "stream" && kind != "none" {
                return StemError::BrokenQueue {
                    queue: queue.clone(),
                    reason: format!("{key} holds a {kind}, not a stream ({error})"),
                };
            }
        }
        error.into()
    }

    fn take_blocking(&self, block: Duration) -> Result<Conn> {
        let pooled = self.blocking.lock().pop();
        match pooled {
            Some(c) => Ok(c),
            None => connection(self.endpoint.clone(), block + COMMAND_TIMEOUT),
        }
    }

    fn give_blocking(&self, c: Conn) {
        self.blocking.lock().push(c);
    }
}
