//! In-process broker: the same semantics as the Redis broker (leases by idle
//! time, delayed set, priority bands and their due lanes, dead letters) behind a mutex. Used by
//! `stem dev` and by embedders who want no Redis; covered by the contract
//! suite.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so tests of leases and TTLs can run on paused time.
use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    due_lane, lanes_in_fetch_order, Broker, DeadLetter, Delivery, Fetched, NewDeadLetter, Outgoing,
    QueueAdmin, QueueStats, Receipt, RecentTask, SubmitOnce, LANES,
};
use crate::envelope::{now_ms, WireEnvelope, MAX_PRIORITY};
use crate::error::{Result, StemError};

struct Pending {
    lane: u8,
    wire: WireEnvelope,
    consumer: String,
    touched: Instant,
    deliveries: u32,
}

#[derive(Default)]
struct MemQueue {
    /// Ready entries by lane (see [`LANES`]): id, when it became ready
    /// (epoch ms), envelope.
    ready: [VecDeque<(u64, i64, WireEnvelope)>; LANES as usize],
    pending: BTreeMap<u64, Pending>,
    delayed: BTreeMap<(i64, u64), (u8, WireEnvelope)>,
    dead: BTreeMap<u64, DeadLetter>,
    /// The recent-task index, oldest first: id, epoch ms, spec body.
    recent: VecDeque<(u64, i64, bytes::Bytes)>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, MemQueue>,
    next_id: u64,
    /// Lease each consumer declared (its visibility timeout).
    leases: HashMap<String, Duration>,
    /// Entries kept per queue in the recent-task index.
    recent_cap: usize,
    /// How long an index outlives its last write.
    recent_ttl: Duration,
    /// Publish-once markers: (queue, marker) → (value, expiry epoch ms).
    markers: HashMap<(String, String), (String, i64)>,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
    /// Appends `wire` to priority band `band` (above 9 counts as 9).
    fn push_ready(&mut self, queue: &str, band: u8, wire: WireEnvelope) {
        self.push_lane(queue, band.min(MAX_PRIORITY), wire);
    }
    /// Appends `wire` to the due lane of band `band`.
    fn push_due(&mut self, queue: &str, band: u8, wire: WireEnvelope) {
        self.push_lane(queue, due_lane(band), wire);
    }
    fn push_lane(&mut self, queue: &str, lane: u8, wire: WireEnvelope) {
        let id = self.id();
        self.queues.entry(queue.to_string()).or_default().ready[lane as usize].push_back((
            id,
            crate::envelope::now_ms(),
            wire,
        ));
    }
    /// Adds `wire`'s body to `queue`'s recent-task index.
    fn push_recent(&mut self, queue: &str, wire: &WireEnvelope) {
        if self.recent_cap == 0 {
            return;
        }
        let Some(body) = crate::task_index::index_body(&wire.body) else {
            return;
        };
        let (id, cap, ttl) = (self.id(), self.recent_cap, self.recent_ttl);
        let recent = &mut self.queues.entry(queue.to_string()).or_default().recent;
        // As on Redis, where the whole stream expires `ttl` after its last
        // write: an index written to again within `ttl` keeps its entries.
        if index_expired(recent, ttl) {
            recent.clear();
        }
        recent.push_back((id, now_ms(), body));
        while recent.len() > cap {
            recent.pop_front();
        }
    }
    fn take_pending(&mut self, r: &Receipt) -> Option<Pending> {
        let id: u64 = r.entry_id.parse().ok()?;
        self.queues.get_mut(&r.queue)?.pending.remove(&id)
    }
}

/// The in-memory broker. Clones share state.
#[derive(Clone)]
pub struct MemoryBroker {
    state: Arc<parking_lot::Mutex<State>>,
    notify: Arc<Notify>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self {
            state: Arc::new(parking_lot::Mutex::new(State {
                recent_cap: super::DEFAULT_RECENT_TASKS,
                recent_ttl: super::DEFAULT_RECENT_TTL,
                ..State::default()
            })),
            notify: Arc::default(),
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `cap` entries per queue in the recent-task index (0 turns the
    /// index off); [`super::DEFAULT_RECENT_TASKS`] unless set.
    pub fn with_recent_tasks(self, cap: usize) -> Self {
        self.lock().recent_cap = cap;
        self
    }

    /// Lets each queue's recent-task index expire `ttl` after its last
    /// write, as on Redis; [`super::DEFAULT_RECENT_TTL`] unless set.
    pub fn with_recent_ttl(self, ttl: Duration) -> Self {
        self.lock().recent_ttl = ttl;
        self
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

fn delivery(queue: &str, lane: u8, id: u64, wire: WireEnvelope, deliveries: u32) -> Fetched {
    Fetched::Task(Delivery {
        receipt: Receipt {
            queue: queue.to_string(),
            lane,
            entry_id: id.to_string(),
        },
        wire,
        deliveries,
    })
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<()> {
        let now = now_ms();
        {
            let mut st = self.lock();
            for o in batch {
                st.push_recent(&o.queue, &o.wire);
                match o.not_before_ms {
                    Some(t) if t > now => {
                        let id = st.id();
                        st.queues
                            .entry(o.queue)
                            .or_default()
                            .delayed
                            .insert((t, id), (o.priority.min(MAX_PRIORITY), o.wire));
                    }
                    _ => st.push_ready(&o.queue, o.priority, o.wire),
                }
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn publish_once(&self, once: &SubmitOnce<'_>, out: Outgoing) -> Result<Option<String>> {
        let now = now_ms();
        let key = (out.queue.clone(), once.marker.to_string());
        {
            let mut st = self.lock();
            st.markers.retain(|_, (_, expires)| *expires > now);
            if let Some((value, _)) = st.markers.get(&key) {
                return Ok(Some(value.clone()));
            }
            let ttl = i64::try_from(once.ttl.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let expires = now.saturating_add(ttl);
            st.markers.insert(key, (once.value.to_string(), expires));
        }
        self.publish(vec![out]).await?;
        Ok(None)
    }

    async fn register_queues(&self, queues: &[String]) -> Result<()> {
        let mut st = self.lock();
        for q in queues {
            st.queues.entry(q.clone()).or_default();
        }
        Ok(())
    }

    async fn fetch(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        let deadline = Instant::now() + block;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let mut out = Vec::new();
                for q in queues {
                    let Some(mq) = st.queues.get_mut(q) else {
                        continue;
                    };
                    for lane in lanes_in_fetch_order() {
                        while out.len() < max {
                            let Some((id, _, wire)) = mq.ready[lane as usize].pop_front() else {
                                break;
                            };
                            mq.pending.insert(
                                id,
                                Pending {
                                    lane,
                                    wire: wire.clone(),
                                    consumer: consumer.to_string(),
                                    touched: Instant::now(),
                                    deliveries: 1,
                                },
                            );
                            out.push(delivery(q, lane, id, wire, 1));
                        }
                    }
                }
                if !out.is_empty() || max == 0 {
                    return Ok(out);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        let mut st = self.lock();
        for r in receipts {
            st.take_pending(r);
        }
        Ok(())
    }

    async fn renew(&self, consumer: &str, receipts: &[Receipt]) -> Result<()> {
        let mut st = self.lock();
        for r in receipts {
            let Ok(id) = r.entry_id.parse::<u64>() else {
                continue;
            };
            if let Some(p) = st
                .queues
                .get_mut(&r.queue)
                .and_then(|q| q.pending.get_mut(&id))
            {
                p.consumer = consumer.to_string();
                p.touched = Instant::now();
            }
        }
        Ok(())
    }

    async fn declare_lease(&self, consumer: &str, lease: Duration) -> Result<()> {
        self.lock().leases.insert(consumer.to_string(), lease);
        Ok(())
    }

    async fn withdraw_lease(&self, consumer: &str) -> Result<()> {
        self.lock().leases.remove(consumer);
        Ok(())
    }

    async fn recover(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        let mut st = self.lock();
        let leases = st.leases.clone();
        let mut out = Vec::new();
        for q in queues {
            let Some(mq) = st.queues.get_mut(q) else {
                continue;
            };
            for (id, p) in mq.pending.iter_mut() {
                if out.len() >= max {
                    break;
                }
                let lease = leases.get(&p.consumer).copied().unwrap_or_default();
                if p.touched.elapsed() >= min_idle.max(lease) {
                    p.consumer = consumer.to_string();
                    p.touched = Instant::now();
                    p.deliveries += 1;
                    out.push(delivery(q, p.lane, *id, p.wire.clone(), p.deliveries));
                }
            }
        }
        Ok(out)
    }

    async fn retry(
        &self,
        receipt: &Receipt,
        wire: WireEnvelope,
        priority: u8,
        not_before_ms: i64,
    ) -> Result<()> {
        {
            let mut st = self.lock();
            st.take_pending(receipt);
            let id = st.id();
            st.queues
                .entry(receipt.queue.clone())
                .or_default()
                .delayed
                .insert((not_before_ms, id), (priority.min(MAX_PRIORITY), wire));
        }
        Ok(())
    }

    async fn requeue(&self, receipt: &Receipt, wire: WireEnvelope, priority: u8) -> Result<()> {
        {
            let mut st = self.lock();
            st.take_pending(receipt);
            st.push_ready(&receipt.queue, priority, wire);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, receipt: &Receipt, letter: NewDeadLetter) -> Result<()> {
        let mut st = self.lock();
        st.take_pending(receipt);
        let id = st.id();
        st.queues
            .entry(receipt.queue.clone())
            .or_default()
            .dead
            .insert(
                id,
                DeadLetter {
                    id: id.to_string(),
                    queue: receipt.queue.clone(),
                    reason: letter.reason.to_string(),
                    error: letter.error,
                    dead_at_ms: now_ms(),
                    wire: letter.wire,
                    raw: letter.raw,
                },
            );
        Ok(())
    }

    async fn promote_due(&self, queues: &[String], now_ms: i64) -> Result<usize> {
        let mut moved = 0;
        {
            let mut st = self.lock();
            for q in queues {
                let due: Vec<(u8, WireEnvelope)> = {
                    let Some(mq) = st.queues.get_mut(q) else {
                        continue;
                    };
                    let later = mq.delayed.split_off(&(now_ms + 1, 0));
                    let due = std::mem::replace(&mut mq.delayed, later);
                    due.into_values().collect()
                };
                for (band, wire) in due {
                    st.push_due(q, band, wire);
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            self.notify.notify_waiters();
        }
        Ok(moved)
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl QueueAdmin for MemoryBroker {
    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let st = self.lock();
        Ok(st
            .queues
            .get(queue)
            .map(|q| q.dead.values().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>> {
        let st = self.lock();
        let Ok(id) = id.parse::<u64>() else {
            return Ok(None);
        };
        Ok(st.queues.get(queue).and_then(|q| q.dead.get(&id)).cloned())
    }

    async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Option<WireEnvelope>> {
        let Ok(num) = id.parse::<u64>() else {
            return Ok(None);
        };
        let replayed = {
            let mut st = self.lock();
            let Some(letter) = st.queues.get_mut(queue).and_then(|q| q.dead.remove(&num)) else {
                return Ok(None);
            };
            let Some(mut wire) = letter.wire else {
                return Ok(None);
            };
            wire.attempt += 1;
            let band = wire.spec().map(|s| s.priority).unwrap_or(0);
            st.push_ready(queue, band, wire.clone());
            wire
        };
        self.notify.notify_waiters();
        Ok(Some(replayed))
    }

    async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        let mut st = self.lock();
        Ok(st
            .queues
            .get_mut(queue)
            .map(|q| std::mem::take(&mut q.dead).len() as u64)
            .unwrap_or(0))
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut st = self.lock();
        let Some(q) = st.queues.get_mut(queue) else {
            return Ok(0);
        };
        let mut n = std::mem::take(&mut q.delayed).len() as u64;
        for lane in q.ready.iter_mut() {
            n += std::mem::take(lane).len() as u64;
        }
        q.recent.clear();
        Ok(n)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        Ok(stats_of(&self.lock(), queue))
    }

    async fn known_queues(&self) -> Result<Vec<String>> {
        let st = self.lock();
        let mut v: Vec<String> = st.queues.keys().cloned().collect();
        v.sort();
        Ok(v)
    }

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        // Checked and removed under one lock: a publish cannot land in
        // between and go with the queue.
        let mut st = self.lock();
        if !st.queues.contains_key(queue) {
            return Ok(false);
        }
        super::held_tasks(&stats_of(&st, queue))?;
        Ok(st.queues.remove(queue).is_some())
    }

    async fn recent_tasks(
        &self,
        queue: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<RecentTask>> {
        let before = match before {
            None => u64::MAX,
            Some(c) => c.parse::<u64>().map_err(|_| {
                StemError::InvalidArgument(format!("{c:?} is not a recent-task cursor"))
            })?,
        };
        let st = self.lock();
        let Some(q) = st
            .queues
            .get(queue)
            .filter(|q| !index_expired(&q.recent, st.recent_ttl))
        else {
            return Ok(Vec::new());
        };
        Ok(q.recent
            .iter()
            .rev()
            .filter(|(id, _, _)| *id < before)
            .filter_map(recent_entry)
            .take(count)
            .collect())
    }

    async fn find_recent(
        &self,
        queue: &str,
        id: &str,
        _near_ms: i64,
    ) -> Result<Option<RecentTask>> {
        let st = self.lock();
        let Some(q) = st
            .queues
            .get(queue)
            .filter(|q| !index_expired(&q.recent, st.recent_ttl))
        else {
            return Ok(None);
        };
        Ok(q.recent
            .iter()
            .rev()
            .filter_map(recent_entry)
            .find(|r| r.id == id))
    }
}

/// One index entry, when its body decodes.
/// `queue`'s counts in `st`.
fn stats_of(st: &State, queue: &str) -> QueueStats {
    let mut s = QueueStats {
        queue: queue.to_string(),
        ..Default::default()
    };
    if let Some(q) = st.queues.get(queue) {
        s.ready = q.ready.iter().map(|b| b.len() as u64).sum();
        s.oldest_ready_ms = q
            .ready
            .iter()
            .filter_map(|lane| lane.front().map(|(_, at, _)| *at))
            .min();
        s.inflight = q.pending.len() as u64;
        s.delayed = q.delayed.len() as u64;
        s.dead = q.dead.len() as u64;
    }
    s
}

/// Whether a queue's index outlived `ttl` since its last write (and so
/// would be gone on Redis).
fn index_expired(recent: &VecDeque<(u64, i64, bytes::Bytes)>, ttl: Duration) -> bool {
    recent.back().is_some_and(|(_, at, _)| {
        now_ms() - at > i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
    })
}

fn recent_entry((id, at_ms, body): &(u64, i64, bytes::Bytes)) -> Option<RecentTask> {
    RecentTask::decode(id.to_string(), *at_ms, body.clone())
}
