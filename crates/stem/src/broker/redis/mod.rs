//! The Redis Streams broker: [`RedisBroker`] implements [`Broker`] (the
//! hot path) and [`QueueAdmin`](crate::broker::QueueAdmin) (the operator's view). Its keys, each with
//! the queue's hash tag `{q}` so a queue lives on one Redis Cluster slot,
//! are built in [`crate::keys`]:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `stem:{q}:p<n>` | stream | ready + in-flight entries of priority band n (0–9), consumer group `stem` |
//! | `stem:{q}:p<n>:due` | stream | band n's delayed and retried entries, moved here when due and read before `p<n>` (the band's due lane, see [`super::LANES`]) |
//! | `stem:{q}:delayed` | sorted set | delayed and retried entries, score = not-before epoch ms |
//! | `stem:{q}:dead` | stream | dead letters, capped at `STEM_DEAD_LETTER_MAXLEN` |
//! | `stem:{q}:recent` | stream | the recent-task index: fields `0`, `1`, …, the spec bodies of up to 100 tasks written together, about `STEM_RECENT_TASKS` tasks (see `recent.rs`) |
//! | `stem:queues` | set | every queue name seen |
//! | `stem:leases` | hash | consumer → the visibility timeout (ms) it renews within |
//!
//! A lease is the entry's idle time in the group's pending list: the owner
//! resets it with `XCLAIM … JUSTID`; recovery lists entries idle past the
//! visibility timeout with `XPENDING … IDLE` and claims them with `XCLAIM`,
//! respecting the lease each holder declared in `stem:leases`.
//! Acknowledged entries are deleted (`XACK` + `XDEL`), so streams stay
//! small; streams are never trimmed by `MAXLEN`.
//!
//! The parts: this file (connections, consumer groups, the hot path),
//! `entry.rs` (how an envelope is stored and read back), `recovery.rs`
//! (claiming a dead worker's entries), `admin.rs` (`QueueAdmin`),
//! `dead.rs` (the dead-letter record), `recent.rs` (the recent-task
//! index), `scripts.rs` (the Lua scripts).

mod admin;
mod dead;
pub(crate) mod entry;
mod fetch;
pub(crate) mod recent;
mod recovery;
mod scripts;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands;
use async_trait::async_trait;

use super::{due_lane, Broker, Fetched, NewDeadLetter, Outgoing, Receipt, SubmitOnce, LANES};
use crate::envelope::{WireEnvelope, MAX_PRIORITY};
use crate::error::Result;
use crate::keys;
use crate::redis_conn::{connection, Conn, Endpoint, COMMAND_TIMEOUT};
use entry::{delayed_member, pack, push_entry, push_outgoing, Placement};
use scripts::{PROMOTE, SUBMIT_ONCE};

/// The consumer group of every lane stream.
const GROUP: &str = "stem";
/// Most pending entries one recovery scan lists per lane stream.
const RECOVER_SCAN: usize = 1000;
/// Most delayed entries one promotion script call moves.
const PROMOTE_BATCH: usize = 512;

/// Most promotion calls per queue per promoter tick.
const PROMOTE_ROUNDS: usize = 20;

fn is_nogroup(e: &::redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// How often a process names a queue it publishes to in `stem:queues`
/// again (see [`RedisBroker::remember`]).
const REMEMBER_AGAIN: Duration = Duration::from_secs(60);

/// The Redis Streams broker.
#[derive(Clone)]
pub struct RedisBroker {
    endpoint: Endpoint,
    conn: Conn,
    /// Connections for blocking reads, one per concurrent fetch.
    blocking: Arc<Mutex<Vec<Conn>>>,
    /// Queues this process named in `stem:queues`, and when.
    known: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    dead_maxlen: usize,
    /// This process's writes to the recent-task index.
    recent: Arc<recent::RecentLog>,
    /// When recovery last removed stale consumers.
    pruned: Arc<Mutex<Option<std::time::Instant>>>,
    /// Which queue a cluster fetch of several queues reads first.
    rotation: Arc<std::sync::atomic::AtomicUsize>,
}

impl RedisBroker {
    /// A broker on `endpoint` (a server's [`::redis::Client`] or an
    /// [`Endpoint`]); connects lazily.
    pub fn new(endpoint: impl Into<Endpoint>, dead_letter_maxlen: usize) -> Result<Self> {
        let endpoint = endpoint.into();
        Ok(RedisBroker {
            conn: connection(endpoint.clone(), COMMAND_TIMEOUT)?,
            endpoint,
            blocking: Arc::new(Mutex::new(Vec::new())),
            known: Arc::new(Mutex::new(HashMap::new())),
            dead_maxlen: dead_letter_maxlen,
            recent: recent::RecentLog::new(super::DEFAULT_RECENT_TASKS, super::DEFAULT_RECENT_TTL),
            pruned: Arc::new(Mutex::new(None)),
            rotation: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Keeps `cap` entries per queue in the recent-task index (0 turns the
    /// index off); [`super::DEFAULT_RECENT_TASKS`] unless set.
    pub fn with_recent_tasks(mut self, cap: usize) -> Self {
        self.recent = recent::RecentLog::new(cap, self.recent.ttl());
        self
    }

    /// Lets each queue's recent-task index expire `ttl` after its last
    /// write (`STEM_RESULT_TTL`: the statuses it points to are gone by
    /// then); [`super::DEFAULT_RECENT_TTL`] unless set.
    pub fn with_recent_ttl(mut self, ttl: Duration) -> Self {
        self.recent = recent::RecentLog::new(self.recent.cap(), ttl);
        self
    }

    /// Tasks kept per queue in the recent-task index.
    pub(crate) fn recent_cap(&self) -> usize {
        self.recent.cap()
    }

    /// Indexes `batch` in the recent-task index: in `pipe`, or soon after
    /// by the flusher (see `recent.rs`).
    pub(crate) fn index_recent(&self, pipe: &mut ::redis::Pipeline, batch: &[Outgoing]) {
        self.recent.record(pipe, batch, &self.conn);
    }

    /// Runs the submit-once script: publishes `out` unless its queue holds
    /// the marker `once.marker`, setting the marker and, when `status` is
    /// given (key, value, ttl ms: only on one server, where the status key
    /// may sit in another slot), the task's first status in the same step.
    pub(crate) async fn run_submit_once(
        &self,
        once: &SubmitOnce<'_>,
        out: &Outgoing,
        status: Option<(String, Vec<u8>, u64)>,
    ) -> Result<Option<String>> {
        self.remember(std::iter::once(&out.queue)).await?;
        let marker = keys::once(&out.queue, once.marker);
        let (status_key, status_value, status_ttl) =
            status.unwrap_or_else(|| (marker.clone(), Vec::new(), 0));
        let indexed =
            crate::task_index::index_body(&out.wire.body).filter(|_| self.recent_cap() > 0);
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
        inv.key(marker)
            .key(status_key)
            .key(target)
            .key(keys::recent(&out.queue))
            .arg(once.value)
            .arg(once.ttl.as_millis().max(1) as u64)
            .arg(status_value)
            .arg(status_ttl)
            .arg(mode)
            .arg(payload)
            .arg(score)
            .arg(if indexed.is_some() {
                self.recent_cap()
            } else {
                0
            })
            .arg(indexed.as_deref().unwrap_or_default())
            .arg(recent::ttl_ms(self.recent.ttl()));
        Ok(inv.invoke_async(&mut self.conn()).await?)
    }

    /// The shared multiplexed connection (cheap clone).
    pub(crate) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Names queues in `stem:queues`, once per process per queue and
    /// [`REMEMBER_AGAIN`]: a queue an operator forgot (`stem queue
    /// forget`) while this process still publishes to it is known again
    /// within that time.
    pub(crate) async fn remember(&self, queues: impl Iterator<Item = &String>) -> Result<()> {
        let new: Vec<String> = {
            let mut known = self.known.lock();
            let now = std::time::Instant::now();
            queues
                .filter(|q| match known.get_mut(q.as_str()) {
                    Some(at) if now.duration_since(*at) < REMEMBER_AGAIN => false,
                    Some(at) => {
                        *at = now;
                        true
                    }
                    None => {
                        known.insert((*q).clone(), now);
                        true
                    }
                })
                .cloned()
                .collect()
        };
        if !new.is_empty() {
            let _: () = self.conn().sadd(keys::QUEUES, &new).await?;
        }
        Ok(())
    }

    /// Lets the next publish to `queue` name it in `stem:queues` again.
    pub(crate) fn forget_locally(&self, queue: &str) {
        self.known.lock().remove(queue);
    }

    /// Creates the consumer group of every lane of `queues` (with its
    /// stream). A group that exists answers `BUSYGROUP`, and a pipeline
    /// reports only its first error, so each `CREATE` is sent on its own
    /// after a pipelined attempt fails that way.
    async fn create_groups(&self, queues: &[String]) -> Result<()> {
        let creates: Vec<::redis::Cmd> = queues
            .iter()
            .flat_map(|q| (0..LANES).map(move |lane| keys::lane(q, lane)))
            .map(|key| {
                let mut c = ::redis::cmd("XGROUP");
                c.arg("CREATE").arg(key).arg(GROUP).arg("0").arg("MKSTREAM");
                c
            })
            .collect();
        let busy = |e: &::redis::RedisError| {
            e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP")
        };
        let mut pipe = ::redis::pipe();
        for c in &creates {
            pipe.add_command(c.clone()).ignore();
        }
        let mut conn = self.conn();
        match pipe.exec_async(&mut conn).await {
            Ok(()) => Ok(()),
            Err(e) if busy(&e) => {
                for c in creates {
                    match c.query_async::<()>(&mut conn).await {
                        Err(e) if !busy(&e) => return Err(e.into()),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Entry ids of `receipts` by lane stream key.
    fn by_stream<'a>(
        receipts: impl IntoIterator<Item = &'a Receipt>,
    ) -> BTreeMap<String, Vec<&'a str>> {
        let mut by_key: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for r in receipts {
            by_key
                .entry(keys::lane(&r.queue, r.lane))
                .or_default()
                .push(r.entry_id.as_str());
        }
        by_key
    }

    /// `XACK` and `XDEL` of `receipts`, two commands per lane stream.
    pub(crate) fn ack_cmds<'a>(
        receipts: impl IntoIterator<Item = &'a Receipt>,
    ) -> Vec<::redis::Cmd> {
        let by_key = Self::by_stream(receipts);
        let mut cmds = Vec::with_capacity(by_key.len() * 2);
        for (key, ids) in by_key {
            let mut ack = ::redis::cmd("XACK");
            ack.arg(&key).arg(GROUP).arg(&ids);
            let mut del = ::redis::cmd("XDEL");
            del.arg(&key).arg(&ids);
            cmds.extend([ack, del]);
        }
        cmds
    }

    fn ack_into(pipe: &mut ::redis::Pipeline, receipts: &[&Receipt]) {
        for cmd in Self::ack_cmds(receipts.iter().copied()) {
            pipe.add_command(cmd).ignore();
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.remember(batch.iter().map(|o| &o.queue)).await?;
        let mut pipe = ::redis::pipe();
        push_outgoing(&mut pipe, &batch);
        self.index_recent(&mut pipe, &batch);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn publish_once(&self, once: &SubmitOnce<'_>, out: Outgoing) -> Result<Option<String>> {
        self.run_submit_once(once, &out, None).await
    }

    async fn register_queues(&self, queues: &[String]) -> Result<()> {
        self.create_groups(queues).await?;
        self.remember(queues.iter()).await
    }

    async fn fetch(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        if self.conn.is_cluster() && queues.len() > 1 {
            return self.fetch_each(consumer, queues, max, block).await;
        }
        self.read(consumer, queues, max, block).await
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        let refs: Vec<&Receipt> = receipts.iter().collect();
        Self::ack_into(&mut pipe, &refs);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn renew(&self, consumer: &str, receipts: &[Receipt]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (key, ids) in Self::by_stream(receipts) {
            pipe.cmd("XCLAIM")
                .arg(key)
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .ignore();
        }
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn declare_lease(&self, consumer: &str, lease: Duration) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.hset(keys::LEASES, consumer, lease.as_millis() as u64)
            .ignore()
            .hset(keys::LEASES_AT, consumer, crate::envelope::now_ms())
            .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn withdraw_lease(&self, consumer: &str) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.hdel(keys::LEASES, consumer)
            .ignore()
            .hdel(keys::LEASES_AT, consumer)
            .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn recover(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.recover_idle(consumer, queues, min_idle, max).await
    }

    async fn retry(
        &self,
        receipt: &Receipt,
        wire: WireEnvelope,
        priority: u8,
        not_before_ms: i64,
    ) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        pipe.zadd(
            keys::delayed(&receipt.queue),
            entry::delayed_member(priority, &wire),
            not_before_ms,
        )
        .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn requeue(&self, receipt: &Receipt, wire: WireEnvelope, priority: u8) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        push_entry(&mut pipe, &receipt.queue, priority, &wire);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn dead_letter(&self, receipt: &Receipt, letter: NewDeadLetter) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        pipe.cmd("XADD")
            .arg(keys::dead(&receipt.queue))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.dead_maxlen)
            .arg("*")
            .arg(dead::fields(&letter))
            .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn promote_due(&self, queues: &[String], now_ms: i64) -> Result<usize> {
        let mut moved = 0usize;
        let mut conn = self.conn();
        let mut failure = None;
        for q in queues {
            let mut inv = PROMOTE.key(keys::delayed(q));
            for band in 0..=MAX_PRIORITY {
                inv.key(keys::lane(q, due_lane(band)));
            }
            inv.arg(now_ms).arg(PROMOTE_BATCH);
            // A burst falling due at once moves in full batches until the
            // due part is empty (each call is short, so other clients
            // interleave); the cap bounds one tick.
            for _ in 0..PROMOTE_ROUNDS {
                // One queue's broken key must not hold back the others.
                match inv.invoke_async::<usize>(&mut conn).await {
                    Ok(n) => {
                        moved += n;
                        if n < PROMOTE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        match failure {
            Some(e) if moved == 0 => Err(e.into()),
            _ => Ok(moved),
        }
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }
}
