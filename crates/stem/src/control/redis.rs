//! Redis control plane. Keys:
//!
//! | key | type | lifetime |
//! | --- | --- | --- |
//! | `stem:{workers}` | sorted set: worker name, score = last heartbeat ms | pruned when a worker's info key has expired |
//! | `stem:{workers}:<name>` | string: [`WorkerInfo`] JSON | 3 × heartbeat interval |
//! | `stem:control` | pub/sub channel of [`ControlCommand`] JSON | — |
//! | `stem:control:reply:<id>` | list of [`ControlReply`] JSON | 60 s |
//! | `stem:paused` | set of paused queue names | until resumed |

use std::time::Duration;

use ::redis::{AsyncCommands, Client};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{
    minutes_between, CommandBus, ControlCommand, ControlReply, QueuePauses, Throughput,
    ThroughputLog, WorkerInfo, WorkerRegistry, THROUGHPUT_TTL,
};
use crate::error::Result;
use crate::keys;
use crate::redis_conn::{connection, AnyNode, Conn, Endpoint, COMMAND_TIMEOUT};

/// The Redis control plane.
#[derive(Clone)]
pub struct RedisControl {
    channel: Channel,
    conn: Conn,
}

/// Where commands are published and subscribed to.
#[derive(Clone)]
enum Channel {
    /// The one server (boxed: a client is large beside an `Arc`).
    Single(Box<Client>),
    /// Any live node of a cluster, which delivers every `PUBLISH` to the
    /// subscribers of every node.
    Cluster(std::sync::Arc<AnyNode>),
}

impl RedisControl {
    /// A control plane on `endpoint` (a server's [`Client`] or an
    /// [`Endpoint`]); connects lazily.
    pub fn new(endpoint: impl Into<Endpoint>) -> Result<Self> {
        let endpoint = endpoint.into();
        Ok(RedisControl {
            conn: connection(endpoint.clone(), COMMAND_TIMEOUT)?,
            channel: match endpoint {
                Endpoint::Single(client) => Channel::Single(Box::new(client)),
                Endpoint::Cluster(c) => Channel::Cluster(std::sync::Arc::new(AnyNode::new(c))),
            },
        })
    }
}

/// Deletes worker record KEYS[1] and its member ARGV[1] of the live set
/// KEYS[2] when the record's `startedAt` is ARGV[2] (or the record has
/// expired); a record of another process under the same name stays.
static FORGET: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, info = pcall(cjson.decode, v)
  if ok and info['startedAt'] ~= tonumber(ARGV[2]) then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#,
    )
});

#[async_trait]
impl WorkerRegistry for RedisControl {
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(keys::worker(&info.name))
            .arg(serde_json::to_vec(info)?)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .ignore()
            .zadd(keys::WORKERS, &info.name, info.heartbeat_at)
            .ignore();
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn forget(&self, worker: &str, started_at: i64) -> Result<()> {
        // One script: a worker that started under this name between a
        // read and a delete would otherwise lose its record.
        FORGET
            .key(keys::worker(worker))
            .key(keys::WORKERS)
            .arg(worker)
            .arg(started_at)
            .invoke_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let names: Vec<String> = conn.zrange(keys::WORKERS, 0, -1).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| keys::worker(n)).collect();
        let raw: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (name, r) in names.into_iter().zip(raw) {
            match r.and_then(|b| serde_json::from_slice::<WorkerInfo>(&b).ok()) {
                Some(info) => out.push(info),
                None => gone.push(name),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.zrem(keys::WORKERS, &gone).await?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[async_trait]
impl CommandBus for RedisControl {
    async fn send(&self, command: &ControlCommand) -> Result<()> {
        let payload = serde_json::to_vec(command)?;
        match &self.channel {
            Channel::Single(_) => {
                let _: i64 = self.conn.clone().publish(keys::CONTROL, payload).await?;
            }
            Channel::Cluster(nodes) => nodes.publish(keys::CONTROL, &payload).await?,
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, ControlCommand>> {
        let messages = match &self.channel {
            Channel::Single(client) => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(keys::CONTROL).await?;
                pubsub.into_on_message().boxed()
            }
            Channel::Cluster(nodes) => nodes.subscribe(keys::CONTROL).await?,
        };
        Ok(messages
            .filter_map(|msg| async move {
                serde_json::from_slice::<ControlCommand>(msg.get_payload_bytes()).ok()
            })
            .boxed())
    }

    async fn reply(&self, id: &str, reply: &ControlReply) -> Result<()> {
        let key = keys::control_reply(id);
        let mut pipe = ::redis::pipe();
        pipe.rpush(&key, serde_json::to_vec(reply)?)
            .ignore()
            .pexpire(&key, 60_000)
            .ignore();
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn replies(
        &self,
        id: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>> {
        let key = keys::control_reply(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        while out.len() < expected {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            // Poll the list rather than BLPOP so the shared multiplexed
            // connection is never blocked.
            let items: Vec<Vec<u8>> = ::redis::cmd("LPOP")
                .arg(&key)
                .arg(expected - out.len())
                .query_async::<Option<Vec<Vec<u8>>>>(&mut conn)
                .await?
                .unwrap_or_default();
            if items.is_empty() {
                tokio::time::sleep(Duration::from_millis(25).min(deadline - now)).await;
                continue;
            }
            out.extend(
                items
                    .iter()
                    .filter_map(|b| serde_json::from_slice::<ControlReply>(b).ok()),
            );
        }
        let _: () = conn.del(&key).await?;
        Ok(out)
    }
}

#[async_trait]
impl QueuePauses for RedisControl {
    async fn paused_queues(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.conn.clone().smembers(keys::PAUSED).await?;
        v.sort();
        Ok(v)
    }

    async fn set_paused(&self, queues: &[String], paused: bool) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        if paused {
            let _: () = conn.sadd(keys::PAUSED, queues).await?;
        } else {
            let _: () = conn.srem(keys::PAUSED, queues).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ThroughputLog for RedisControl {
    async fn add_throughput(&self, minute_ms: i64, counts: &Throughput) -> Result<()> {
        let key = keys::throughput(minute_ms);
        let mut pipe = ::redis::pipe();
        for (field, n) in [
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("retried", counts.retried),
        ] {
            if n > 0 {
                pipe.hincr(&key, field, n).ignore();
            }
        }
        pipe.pexpire(&key, THROUGHPUT_TTL.as_millis() as i64)
            .ignore();
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn throughput(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Throughput)>> {
        let minutes = minutes_between(from_ms, to_ms);
        let mut pipe = ::redis::pipe();
        for m in &minutes {
            pipe.cmd("HMGET")
                .arg(keys::throughput(*m))
                .arg(&["succeeded", "failed", "retried"]);
        }
        let rows: Vec<[Option<u64>; 3]> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(minutes
            .into_iter()
            .zip(rows)
            .map(|(m, [succeeded, failed, retried])| {
                (
                    m,
                    Throughput {
                        succeeded: succeeded.unwrap_or(0),
                        failed: failed.unwrap_or(0),
                        retried: retried.unwrap_or(0),
                    },
                )
            })
            .collect())
    }
}
