//! The [`Broker`] trait: how envelopes move between producers and workers;
//! [`QueueAdmin`]: what operators do to queues.
//!
//! Two implementations share one contract suite (`tests/broker_contract.rs`):
//! [`redis::RedisBroker`] on Redis Streams and [`memory::MemoryBroker`] in
//! process. The broker owns delivery state (leases, delayed sets, dead
//! letters); it never looks inside the signed body except to route.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::{TaskSpec, TaskStatus, WireEnvelope};
use crate::error::Result;

pub use crate::lanes::{due_lane, lane_band, lane_rank, lanes_in_fetch_order, LANES};

/// Identifies one delivery so it can be acknowledged, renewed or retried.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// Queue the entry was read from.
    pub queue: String,
    /// The lane (see [`LANES`]) the entry was read from.
    pub lane: u8,
    /// Broker-specific entry id (a stream id on Redis).
    pub entry_id: String,
}

/// A delivered envelope, leased to the consumer that fetched it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Identifies this delivery for ack, renewal, retry or dead-lettering.
    pub receipt: Receipt,
    /// The envelope as stored (its signature not yet verified).
    pub wire: WireEnvelope,
    /// How many times this entry has been handed to a consumer, this time
    /// included: 1 for a first read, more after recoveries. A task that
    /// keeps killing its workers shows here (see `STEM_MAX_DELIVERIES`).
    pub deliveries: u32,
}

/// An entry that could not be decoded as an envelope.
#[derive(Clone, Debug)]
pub struct MalformedEntry {
    /// Identifies the entry, so it can be dead-lettered.
    pub receipt: Receipt,
    /// The raw entry, as text, for the dead-letter record.
    pub raw: String,
    /// Why the entry did not decode.
    pub error: String,
}

/// One fetched entry.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// An entry that decoded as an envelope.
    Task(Delivery),
    /// An entry that did not decode; the worker dead-letters it.
    Malformed(MalformedEntry),
}

impl Fetched {
    /// The entry's receipt.
    pub fn receipt(&self) -> &Receipt {
        match self {
            Fetched::Task(d) => &d.receipt,
            Fetched::Malformed(m) => &m.receipt,
        }
    }
}

/// An envelope to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Queue to publish to.
    pub queue: String,
    /// Priority band, 0 to [`MAX_PRIORITY`](crate::envelope::MAX_PRIORITY); it picks the lane.
    pub priority: u8,
    /// Epoch ms before which the task must not start (countdown, retry).
    pub not_before_ms: Option<i64>,
    /// The signed envelope.
    pub wire: WireEnvelope,
}

pub use crate::envelope::DeadLetterReason;

/// What a dead-letter record holds.
#[derive(Clone, Debug)]
pub struct NewDeadLetter {
    /// Why the entry is dead-lettered.
    pub reason: DeadLetterReason,
    /// The last error message, when there is one.
    pub error: Option<String>,
    /// The envelope, when it decoded.
    pub wire: Option<WireEnvelope>,
    /// The raw entry, when it did not.
    pub raw: Option<String>,
}

/// A stored dead letter.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Dead-letter entry id (for show/replay).
    pub id: String,
    /// Queue whose dead-letter stream holds the record.
    pub queue: String,
    /// The stored reason, as written; [`DeadLetter::reason_kind`] reads it
    /// as a [`DeadLetterReason`] (a record written by hand or by a newer
    /// release may hold another).
    pub reason: String,
    /// The last error message, when one was recorded.
    pub error: Option<String>,
    /// When the entry was dead-lettered, in epoch milliseconds (0 when the
    /// record lacks it).
    pub dead_at_ms: i64,
    /// The envelope, when it decoded.
    pub wire: Option<WireEnvelope>,
    /// The raw entry as text, when it did not decode.
    pub raw: Option<String>,
}

impl DeadLetter {
    /// The reason, when it is one this release knows.
    pub fn reason_kind(&self) -> Option<DeadLetterReason> {
        self.reason.parse().ok()
    }

    /// The task id inside the envelope, when it decodes.
    pub fn task_id(&self) -> Option<String> {
        self.wire.as_ref().and_then(|w| w.spec().ok()).map(|s| s.id)
    }
}

/// Counts for one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue counted.
    pub queue: String,
    /// Ready and not yet delivered.
    pub ready: u64,
    /// Delivered and not yet acknowledged.
    pub inflight: u64,
    /// Waiting for their not-before time.
    pub delayed: u64,
    /// Dead letters the queue keeps.
    pub dead: u64,
    /// When the oldest ready entry became ready (published, or promoted
    /// when due), in epoch milliseconds; `None` when nothing is ready.
    pub oldest_ready_ms: Option<i64>,
}

/// How many published tasks the recent-task index keeps per queue by
/// default (`STEM_RECENT_TASKS`); see [`crate::recent`].
pub const DEFAULT_RECENT_TASKS: usize = 10_000;

/// `Err` naming what `stats`' queue still holds, when it holds any task
/// (for [`QueueAdmin::forget_queue`]).
pub(crate) fn held_tasks(stats: &QueueStats) -> Result<()> {
    let held = [
        (stats.ready, "ready"),
        (stats.inflight, "in flight"),
        (stats.delayed, "delayed"),
        (stats.dead, "dead letters"),
    ];
    let parts: Vec<String> = held
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    Err(crate::error::StemError::InvalidArgument(format!(
        "queue {:?} still holds tasks ({}); purge it and its dead letters, and let running tasks finish, first",
        stats.queue,
        parts.join(", ")
    )))
}

/// How long a queue's recent-task index outlives its last write unless
/// set (the default `STEM_RESULT_TTL`, one day).
pub const DEFAULT_RECENT_TTL: Duration = Duration::from_secs(86_400);

/// One task in a queue's recent-task index, as it was published. Only
/// what listing needs is read from the body up front (id, name, enqueue
/// time, where its args are); [`RecentTask::spec`] decodes the rest when
/// a page shows the task, so a query that reads thousands of entries does
/// not build thousands of specs.
#[derive(Clone, Debug)]
pub struct RecentTask {
    /// Where the entry sits in its queue's index (a stream entry id on
    /// Redis): pass it as `before` to read the entries older than it.
    pub cursor: String,
    /// When the entry was written, in epoch milliseconds.
    pub at_ms: i64,
    /// The task's id.
    pub id: String,
    /// The task's name.
    pub name: String,
    /// When the producer enqueued it, in epoch milliseconds.
    pub enqueued_at: i64,
    /// `Some(size of the whole spec body)` when the index keeps only a
    /// preview of it (args cut, as a JSON string; see
    /// [`crate::task_index::index_body`]).
    pub truncated: Option<u64>,
    /// The spec's bytes as the producer signed them (the signature is not
    /// kept: the index is for reading, never for running), or their
    /// preview.
    body: bytes::Bytes,
    /// Where the args' JSON text sits in `body`.
    args: std::ops::Range<usize>,
}

/// The fields of a spec body that listing reads, borrowed from it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecHead<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    args: &'a serde_json::value::RawValue,
    enqueued_at: i64,
    #[serde(default)]
    index_truncated: Option<u64>,
}

impl RecentTask {
    /// The entry at `cursor`, written at `at_ms`, when `body` is a spec.
    pub(crate) fn decode(cursor: String, at_ms: i64, body: bytes::Bytes) -> Option<Self> {
        let head: SpecHead<'_> = serde_json::from_slice(&body).ok()?;
        let raw = head.args.get();
        let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
        Some(RecentTask {
            cursor,
            at_ms,
            id: head.id.into_owned(),
            name: head.name.into_owned(),
            enqueued_at: head.enqueued_at,
            truncated: head.index_truncated,
            args: start..start + raw.len(),
            body,
        })
    }

    /// The whole spec.
    pub fn spec(&self) -> Result<TaskSpec> {
        TaskSpec::from_body(&self.body)
    }

    /// The args as the producer wrote them (JSON text).
    pub fn args_json(&self) -> &str {
        std::str::from_utf8(self.body.get(self.args.clone()).unwrap_or_default()).unwrap_or("")
    }
}

/// A publish that must happen at most once per marker: an idempotency
/// key, a chain step, a chord callback.
#[derive(Clone, Copy, Debug)]
pub struct SubmitOnce<'a> {
    /// The marker that records the publish (`idem:<key>`, …), kept in the
    /// target queue's tag (`crate::keys::once`).
    pub marker: &'a str,
    /// Value stored under the marker (the task id).
    pub value: &'a str,
    /// How long the marker is kept.
    pub ttl: Duration,
    /// The task's first status (`queued`), written only where none exists.
    pub status: Option<&'a TaskStatus>,
}

/// Moves envelopes between producers and workers: the hot path. What
/// operators do to queues is [`QueueAdmin`]; publishing and settling
/// together with the result backend, where both share one Redis, is
/// [`crate::atomic::AtomicStore`].
///
/// One delivery's life on the in-memory broker (the Redis one behaves the
/// same; the contract suite checks both):
///
/// ```
/// use std::time::Duration;
/// use stem::broker::{memory::MemoryBroker, Broker, Fetched, Outgoing};
/// use stem::envelope::{new_task_id, now_ms, TaskSpec, WireEnvelope};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> stem::Result<()> {
/// let broker = MemoryBroker::new();
/// let queues = ["emails".to_string()];
/// broker.register_queues(&queues).await?;
/// let spec = TaskSpec {
///     id: new_task_id(), name: "emails.send".into(), queue: "emails".into(),
///     args: serde_json::json!({}), headers: Default::default(), meta: Default::default(),
///     enqueued_at: now_ms(), max_retries: 3, priority: 0,
/// };
/// let wire = WireEnvelope { body: spec.to_body()?, key_id: None, signature: None, attempt: 0 };
/// broker.publish(vec![Outgoing { queue: "emails".into(), priority: 0, not_before_ms: None, wire }]).await?;
///
/// // A worker leases it, runs it, acknowledges it.
/// let fetched = broker.fetch("worker-1", &queues, 10, Duration::from_millis(100)).await?;
/// let Some(Fetched::Task(delivery)) = fetched.first() else { panic!("one task") };
/// assert_eq!(delivery.wire.spec()?.id, spec.id);
/// broker.ack(&[delivery.receipt.clone()]).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes a batch (one round trip on Redis). Envelopes with a future
    /// `not_before_ms` go to the delayed set.
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<()>;

    /// Publishes `out` unless its queue holds the marker `once.marker`,
    /// setting the marker (to `once.value`, kept `once.ttl`) in the same
    /// atomic step, so a crash or a cut connection leaves both or neither.
    /// `None`: published; `Some(v)`: the marker already held `v` and
    /// nothing was published. `once.status` is not the broker's: the
    /// caller writes it first.
    async fn publish_once(&self, once: &SubmitOnce<'_>, out: Outgoing) -> Result<Option<String>>;

    /// Prepares `queues` for consumption (consumer groups on Redis).
    async fn register_queues(&self, queues: &[String]) -> Result<()>;

    /// Leases up to `max` ready entries, highest priority first, waiting up
    /// to `block` when none is ready.
    async fn fetch(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>>;

    /// Acknowledges and deletes delivered entries.
    async fn ack(&self, receipts: &[Receipt]) -> Result<()>;

    /// Renews the leases of entries `consumer` holds (resets their idle time).
    async fn renew(&self, consumer: &str, receipts: &[Receipt]) -> Result<()>;

    /// Declares that `consumer` renews its leases within `lease` (its
    /// visibility timeout), so recovery by workers with a shorter timeout
    /// leaves its live entries alone.
    async fn declare_lease(&self, _consumer: &str, _lease: Duration) -> Result<()> {
        Ok(())
    }

    /// Withdraws `consumer`'s [`Broker::declare_lease`] (a worker stopping
    /// for good): entries it still holds are then recovered on the
    /// recovering worker's own timeout, and the declaration does not
    /// outlive the worker (one per worker lifetime would pile up).
    async fn withdraw_lease(&self, _consumer: &str) -> Result<()> {
        Ok(())
    }

    /// Takes over up to `max` entries whose lease has been idle for
    /// `min_idle` and for the lease their holder declared (their consumer
    /// died), scanning each queue's whole pending list.
    async fn recover(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>>;

    /// Acknowledges `receipt` and schedules `wire` (attempt already raised)
    /// for `not_before_ms`, atomically.
    async fn retry(
        &self,
        receipt: &Receipt,
        wire: WireEnvelope,
        priority: u8,
        not_before_ms: i64,
    ) -> Result<()>;

    /// Acknowledges `receipt` and makes `wire` ready again at once
    /// (graceful shutdown hands back work this way).
    async fn requeue(&self, receipt: &Receipt, wire: WireEnvelope, priority: u8) -> Result<()>;

    /// Acknowledges `receipt` and records a dead letter, atomically.
    async fn dead_letter(&self, receipt: &Receipt, letter: NewDeadLetter) -> Result<()>;

    /// Moves due delayed entries of `queues` to ready. Returns how many.
    async fn promote_due(&self, queues: &[String], now_ms: i64) -> Result<usize>;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<()>;
}

/// The operator's view of queues: counts, purges, dead letters. The CLI
/// and the dashboard use it; producers and workers never do, so the hot
/// path ([`Broker`]) stays small and a decorator of it (timing, tracing)
/// wraps twelve methods, not twenty.
///
/// ```
/// # async fn demo(stem: &stem::Stem) -> stem::Result<()> {
/// let admin = stem.admin();
/// for queue in admin.known_queues().await? {
///     let s = admin.stats(&queue).await?;
///     println!("{queue}: {} ready, {} running, {} dead", s.ready, s.inflight, s.dead);
/// }
/// # Ok(()) }
/// ```
#[async_trait]
pub trait QueueAdmin: Send + Sync + 'static {
    /// Newest dead letters first, at most `limit`.
    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// One dead letter by id.
    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>>;

    /// Removes dead letter `id` and publishes its envelope again with
    /// `attempt + 1` (same task id, same signature). Returns the republished
    /// envelope, or `None` when the id is unknown or the entry was malformed.
    async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Option<WireEnvelope>>;

    /// Deletes every dead letter of `queue`; returns how many.
    async fn purge_dead_letters(&self, queue: &str) -> Result<u64>;

    /// Deletes every ready and delayed entry of `queue`; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64>;

    /// Counts for `queue`.
    async fn stats(&self, queue: &str) -> Result<QueueStats>;

    /// Queues this broker has seen published to or consumed from.
    async fn known_queues(&self) -> Result<Vec<String>>;

    /// Drops `queue` from [`QueueAdmin::known_queues`], with its
    /// recent-task index and its empty streams, when it holds no task
    /// (ready, delayed, in flight or dead): a queue nothing uses any more
    /// stops being listed and polled. `Ok(false)` when it was not known;
    /// [`crate::error::StemError::InvalidArgument`] saying what it still holds
    /// otherwise. A producer still publishing to it names it again within
    /// a minute, and its tasks are never touched.
    async fn forget_queue(&self, queue: &str) -> Result<bool>;

    /// `queue`'s recent-task index, newest first: the tasks of at most
    /// `count` index entries older than the entry at cursor `before`
    /// (from the newest when `None`). An entry holds the tasks one write
    /// indexed together (one on the memory broker, up to 100 on Redis),
    /// all with the entry's cursor; bodies that do not decode are
    /// skipped. An empty answer means the index holds nothing older.
    async fn recent_tasks(
        &self,
        queue: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<RecentTask>>;

    /// The index entry of task `id`, published to `queue` around
    /// `near_ms` (its `enqueued_at`), when the index still holds it.
    async fn find_recent(&self, queue: &str, id: &str, near_ms: i64) -> Result<Option<RecentTask>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_names() {
        for r in DeadLetterReason::ALL {
            assert_eq!(r.as_str().parse::<DeadLetterReason>(), Ok(r));
            assert_eq!(serde_json::to_value(r).ok(), Some(r.as_str().into()));
        }
        assert!("boom".parse::<DeadLetterReason>().is_err());
    }

    #[test]
    fn lanes_are_read_band_by_band_each_due_lane_first() {
        let order: Vec<u8> = lanes_in_fetch_order().collect();
        assert_eq!(order.len(), LANES as usize);
        assert_eq!(&order[..4], &[19, 9, 18, 8]);
        assert_eq!(&order[order.len() - 2..], &[10, 0]);
        let ranks: Vec<u8> = order.iter().map(|l| lane_rank(*l)).collect();
        assert!(ranks.windows(2).all(|w| w[0] > w[1]), "{ranks:?}");
    }
}
