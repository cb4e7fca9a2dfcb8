//! A result backend wrapper that timestamps the moment each `succeeded`
//! status is stored, for enqueue-to-result latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stem::backend::{GroupProgress, GroupView, ResultBackend};
use stem::envelope::{TaskState, TaskStatus};

pub struct TimingBackend {
    pub inner: Arc<dyn ResultBackend>,
    pub stored: Mutex<HashMap<String, Instant>>,
}

#[stem::async_trait]
impl ResultBackend for TimingBackend {
    async fn set_statuses(&self, statuses: &[TaskStatus]) -> stem::Result<()> {
        self.inner.set_statuses(statuses).await?;
        let now = Instant::now();
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        for s in statuses.iter().filter(|s| s.state == TaskState::Succeeded) {
            stored.insert(s.id.clone(), now);
        }
        Ok(())
    }
    async fn get_statuses(&self, ids: &[String]) -> stem::Result<Vec<Option<TaskStatus>>> {
        self.inner.get_statuses(ids).await
    }
    async fn init_group(&self, id: &str, expected: u64) -> stem::Result<()> {
        self.inner.init_group(id, expected).await
    }
    async fn add_group_results(
        &self,
        results: &[(String, TaskStatus)],
    ) -> stem::Result<Vec<GroupProgress>> {
        self.inner.add_group_results(results).await
    }
    async fn get_group(&self, id: &str) -> stem::Result<Option<GroupView>> {
        self.inner.get_group(id).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> stem::Result<Option<String>> {
        self.inner.put_if_absent(key, value, ttl).await
    }
    async fn put_blob(&self, key: &str, value: &[u8], ttl: Duration) -> stem::Result<()> {
        self.inner.put_blob(key, value, ttl).await
    }
    async fn get_blob(&self, key: &str) -> stem::Result<Option<Vec<u8>>> {
        self.inner.get_blob(key).await
    }
    async fn ping(&self) -> stem::Result<()> {
        self.inner.ping().await
    }
}
