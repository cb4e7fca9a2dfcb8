//! An [`AtomicStore`] wrapper that timestamps the moment each `succeeded`
//! status is stored by the worker's settle (statuses and acks in one call,
//! the default path when broker and backend share a Redis), for
//! enqueue-to-result latency. The other calls pass through untouched.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use stem::atomic::AtomicStore;
use stem::broker::{Outgoing, Receipt, SubmitOnce};
use stem::envelope::{TaskState, TaskStatus};
use stem::Result;

pub struct TimingAtomic {
    pub inner: Arc<dyn AtomicStore>,
    pub stored: Mutex<HashMap<String, Instant>>,
}

#[stem::async_trait]
impl AtomicStore for TimingAtomic {
    async fn settle(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<()> {
        self.inner.settle(statuses, acks).await?;
        let now = Instant::now();
        let mut stored = self.stored.lock();
        for s in statuses.iter().filter(|s| s.state == TaskState::Succeeded) {
            stored.insert(s.id.clone(), now);
        }
        Ok(())
    }
    async fn submit(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<()> {
        self.inner.submit(statuses, batch).await
    }
    async fn submit_once(&self, once: &SubmitOnce<'_>, out: &Outgoing) -> Result<Option<String>> {
        self.inner.submit_once(once, out).await
    }
}
