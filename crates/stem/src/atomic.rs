//! Publishing and settling together with the result backend, where the
//! broker and the backend share one Redis.
//!
//! Two writes that must not be torn apart span both stores: a task's
//! first status and its publish (a reader must never see a queued status
//! without the entry, nor a marker without the task), and a result and the
//! ack of its delivery (an ack without its result would lose the result on
//! a crash). On one Redis both go in one round trip, atomically. Stores on
//! different servers cannot promise that; the caller falls back to separate
//! steps ordered so a crash repeats work instead of losing it (status
//! before publish, result before ack).
//!
//! The capability is resolved once, when the stores are built
//! ([`crate::client::Stem::connect`]): [`AtomicStore`] is present or not,
//! and no hot-path call asks "are you co-located?". It depends on both
//! adapters; neither depends on the other.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;

use crate::backend::redis::{status_value, StatusWriter};
use crate::broker::redis::entry::{delayed_member, pack, push_outgoing, Placement};
use crate::broker::redis::RedisBroker;
use crate::broker::{Outgoing, Receipt, SubmitOnce};
use crate::envelope::TaskStatus;
use crate::error::Result;
use crate::keys;

/// Writes that span the broker and the result backend, each atomic.
#[async_trait]
pub trait AtomicStore: Send + Sync + 'static {
    /// Records the `queued` statuses (only where none exists) and publishes
    /// `batch`, in one round trip.
    async fn submit(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<()>;

    /// Publishes `out` unless `once.marker` is already set, setting the
    /// marker and writing `once.status` (a first record, only where none
    /// exists) in the same atomic step. `None`: published; `Some(v)`: the
    /// marker already held `v`, nothing was published.
    async fn submit_once(&self, once: &SubmitOnce<'_>, out: &Outgoing) -> Result<Option<String>>;

    /// Writes `statuses` (with the backend's never-backwards rule) and
    /// then acknowledges `acks`, in one transaction, so no ack lands
    /// without its result.
    async fn settle(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<()>;
}

/// Publishes one envelope unless its marker exists, atomically: the
/// marker (an idempotency key, a chain step's or a chord's "published"
/// record), the task's first status (when given) and the `XADD` or `ZADD`
/// commit together, so a crash or a cut connection leaves either all of
/// them or none; the task's entry in its queue's recent-task index goes
/// with them. KEYS = marker, status key, target (band stream or delayed
/// set), recent-task index. ARGV = marker value, marker ttl ms, status
/// value ('' for none), status ttl ms, 'x' (XADD) or 'z' (ZADD), entry or
/// member, score, index cap (0: no index), spec body.
/// Returns the marker's existing value, or nil when this call published.
static SUBMIT_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4])
end
if ARGV[5] == 'x' then
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[6])
else
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
end
if ARGV[8] ~= '0' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', '0', ARGV[9])
end
return false
"#,
    )
});

/// [`AtomicStore`] on the Redis that holds both the broker's and the
/// backend's keys.
#[derive(Clone)]
pub struct RedisAtomicStore {
    broker: RedisBroker,
    writer: StatusWriter,
}

impl RedisAtomicStore {
    /// Over `broker`'s connection, for a backend keeping statuses `ttl`.
    pub fn new(broker: RedisBroker, ttl: Duration) -> Self {
        RedisAtomicStore {
            broker,
            writer: StatusWriter::new(ttl),
        }
    }
}

#[async_trait]
impl AtomicStore for RedisAtomicStore {
    async fn submit(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.broker.remember(batch.iter().map(|o| &o.queue)).await?;
        let mut pipe = ::redis::pipe();
        self.writer.push_queued(&mut pipe, statuses)?;
        push_outgoing(&mut pipe, batch);
        self.broker.index_recent(&mut pipe, batch);
        pipe.exec_async(&mut self.broker.conn()).await?;
        Ok(())
    }

    async fn submit_once(&self, once: &SubmitOnce<'_>, out: &Outgoing) -> Result<Option<String>> {
        self.broker.remember(std::iter::once(&out.queue)).await?;
        let status = match once.status {
            Some(s) => status_value(s)?,
            None => Vec::new(),
        };
        let task_id = once.status.map(|s| s.id.as_str()).unwrap_or("");
        let (target, mode, payload, score) = match Placement::of(out) {
            Placement::Delayed(t) => (
                keys::delayed(&out.queue),
                "z",
                delayed_member(out.priority, &out.wire),
                t,
            ),
            Placement::Ready => (
                keys::band(&out.queue, out.priority),
                "x",
                pack(&out.wire),
                0,
            ),
        };
        let mut inv = SUBMIT_ONCE.prepare_invoke();
        inv.key(keys::kv(once.marker))
            .key(keys::status(task_id))
            .key(target)
            .key(keys::recent(&out.queue))
            .arg(once.value)
            .arg(once.ttl.as_millis().max(1) as u64)
            .arg(status)
            .arg(self.writer.ttl_ms())
            .arg(mode)
            .arg(payload)
            .arg(score)
            .arg(self.broker.recent_cap())
            .arg(out.wire.body.as_ref());
        Ok(inv.invoke_async(&mut self.broker.conn()).await?)
    }

    async fn settle(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<()> {
        self.writer
            .write(
                &mut self.broker.conn(),
                statuses,
                RedisBroker::ack_cmds(acks),
            )
            .await
    }
}
