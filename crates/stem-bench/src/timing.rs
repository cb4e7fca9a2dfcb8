//! A broker wrapper that timestamps the moment each `succeeded` status is
//! stored by the worker's co-located settle (statuses and acks in one
//! call, the default path), for enqueue-to-result latency. Every other
//! call is passed through untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stem::broker::{
    Broker, DeadLetter, Fetched, NewDeadLetter, Outgoing, QueueStats, Receipt, SubmitOnce,
};
use stem::envelope::{TaskState, TaskStatus, WireEnvelope};
use stem::Result;

pub struct TimingBroker {
    pub inner: Arc<dyn Broker>,
    pub stored: Mutex<HashMap<String, Instant>>,
}

#[stem::async_trait]
impl Broker for TimingBroker {
    async fn settle_colocated(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<bool> {
        let done = self.inner.settle_colocated(statuses, acks).await?;
        if done {
            let now = Instant::now();
            let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
            for s in statuses.iter().filter(|s| s.state == TaskState::Succeeded) {
                stored.insert(s.id.clone(), now);
            }
        }
        Ok(done)
    }
    async fn submit_colocated(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<bool> {
        self.inner.submit_colocated(statuses, batch).await
    }
    async fn submit_once_colocated(
        &self,
        once: &SubmitOnce<'_>,
        out: &Outgoing,
    ) -> Result<Option<Option<String>>> {
        self.inner.submit_once_colocated(once, out).await
    }
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<()> {
        self.inner.publish(batch).await
    }
    async fn register_queues(&self, queues: &[String]) -> Result<()> {
        self.inner.register_queues(queues).await
    }
    async fn fetch(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        self.inner.fetch(consumer, queues, max, block).await
    }
    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        self.inner.ack(receipts).await
    }
    async fn renew(&self, consumer: &str, receipts: &[Receipt]) -> Result<()> {
        self.inner.renew(consumer, receipts).await
    }
    async fn recover(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.inner.recover(consumer, queues, min_idle, max).await
    }
    async fn retry(
        &self,
        receipt: &Receipt,
        wire: WireEnvelope,
        priority: u8,
        not_before_ms: i64,
    ) -> Result<()> {
        self.inner
            .retry(receipt, wire, priority, not_before_ms)
            .await
    }
    async fn requeue(&self, receipt: &Receipt, wire: WireEnvelope, priority: u8) -> Result<()> {
        self.inner.requeue(receipt, wire, priority).await
    }
    async fn dead_letter(&self, receipt: &Receipt, letter: NewDeadLetter) -> Result<()> {
        self.inner.dead_letter(receipt, letter).await
    }
    async fn promote_due(&self, queues: &[String], now_ms: i64) -> Result<usize> {
        self.inner.promote_due(queues, now_ms).await
    }
    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.inner.list_dead_letters(queue, limit).await
    }
    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>> {
        self.inner.get_dead_letter(queue, id).await
    }
    async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Option<WireEnvelope>> {
        self.inner.replay_dead_letter(queue, id).await
    }
    async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        self.inner.purge_dead_letters(queue).await
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.purge(queue).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.stats(queue).await
    }
    async fn known_queues(&self) -> Result<Vec<String>> {
        self.inner.known_queues().await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}
