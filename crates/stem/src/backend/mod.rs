//! The [`ResultBackend`] trait: task statuses (monotonic), groups for the
//! canvas, and small claim/blob records (idempotency keys, chord claims,
//! chain steps). Redis and in-memory implementations share the contract
//! suite.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::{TaskState, TaskStatus};
use crate::error::Result;

/// Aggregated view of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupView {
    /// Group id (`grp-` or `chord-` and a UUID).
    pub id: String,
    /// How many tasks the group has.
    pub expected: u64,
    /// Terminal results recorded so far, by task id.
    pub results: BTreeMap<String, TaskStatus>,
}

/// Where a group stands after a result was added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupProgress {
    /// Group id.
    pub group_id: String,
    /// Tasks of the group with a terminal result recorded so far.
    pub completed: u64,
    /// How many tasks the group has.
    pub expected: u64,
}

/// Stores what happened to tasks.
///
/// ```
/// use std::time::Duration;
/// use stem::backend::{get_status, memory::MemoryBackend, ResultBackend};
/// use stem::envelope::{new_task_id, now_ms, TaskSpec, TaskState, TaskStatus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> stem::Result<()> {
/// let backend = MemoryBackend::new(Duration::from_secs(3600));
/// let spec = TaskSpec {
///     id: new_task_id(), name: "emails.send".into(), queue: "emails".into(),
///     args: serde_json::json!({}), headers: Default::default(), meta: Default::default(),
///     enqueued_at: now_ms(), max_retries: 3, priority: 0,
/// };
/// let mut done = TaskStatus::for_spec(&spec, TaskState::Succeeded, 0);
/// done.result = serde_json::json!("sent");
/// backend.set_statuses(&[done]).await?;
/// // A late `running` write ranks below the final state and is dropped.
/// backend.set_statuses(&[TaskStatus::for_spec(&spec, TaskState::Running, 0)]).await?;
/// let now = get_status(&backend, &spec.id).await?.expect("stored");
/// assert_eq!(now.state, TaskState::Succeeded);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// Writes statuses in one round trip. A write whose
    /// [`rank`](TaskStatus::rank) is lower than the stored one is dropped,
    /// so a status never moves backwards.
    async fn set_statuses(&self, statuses: &[TaskStatus]) -> Result<()>;

    /// Writes terminal `status` (a revocation) only while the task has no
    /// terminal status, keeping it for `ttl`; returns whether it was
    /// written. A revocation never replaces a result that landed first.
    async fn record_revocation(&self, status: &TaskStatus, ttl: Duration) -> Result<bool>;

    /// Fails tasks whose envelope a worker rejected (`signature-invalid`),
    /// but only the task that envelope really is: each `failed` status is
    /// written, atomically per task, only where the stored status still
    /// waits on an envelope of the same [fingerprint](TaskStatus::fingerprint)
    /// (`queued` or `retried`, at an attempt no later than the status's).
    /// A status that has moved on (running, finished, a newer attempt) or
    /// carries another fingerprint or none is left as it is, so a forged
    /// or altered copy claiming a real task's id changes nothing.
    ///
    /// Answers, per status, whether the task's status is now that failure:
    /// `true` also when an earlier call already wrote it (a redelivery of
    /// the rejected entry), so its follow-ups can be redone. A status
    /// without a fingerprint is never written (`false`).
    async fn fail_rejected(&self, failures: &[TaskStatus]) -> Result<Vec<bool>>;

    /// Reads statuses in one round trip (`None` for unknown or expired ids).
    async fn get_statuses(&self, ids: &[String]) -> Result<Vec<Option<TaskStatus>>>;

    /// The terminal state and attempt of each task (`None` while it has
    /// not finished, and for unknown ids), in one round trip: the worker's
    /// admission check, which needs neither the result nor the metadata.
    async fn final_states(&self, ids: &[String]) -> Result<Vec<Option<(TaskState, u32)>>> {
        Ok(self
            .get_statuses(ids)
            .await?
            .into_iter()
            .map(|s| {
                s.filter(|s| s.state.is_terminal())
                    .map(|s| (s.state, s.attempt))
            })
            .collect())
    }

    /// The state of each task now (`None` for unknown or expired ids),
    /// in one round trip: the cheap read behind listing tasks by state.
    async fn states(&self, ids: &[String]) -> Result<Vec<Option<TaskState>>> {
        Ok(self
            .get_statuses(ids)
            .await?
            .into_iter()
            .map(|s| s.map(|s| s.state))
            .collect())
    }

    /// Creates group `id` expecting `expected` results.
    async fn init_group(&self, id: &str, expected: u64) -> Result<()>;

    /// Records terminal results of group members. Unknown or expired
    /// groups are skipped (no entry in the answer).
    async fn add_group_results(
        &self,
        results: &[(String, TaskStatus)],
    ) -> Result<Vec<GroupProgress>>;

    /// The group and its results, or `None` when unknown or expired.
    async fn get_group(&self, id: &str) -> Result<Option<GroupView>>;

    /// Stores a blob (chain steps, chord callbacks).
    async fn put_blob(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()>;

    /// Reads a blob.
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<()>;
}

/// Whether a stored status carrying a rejected envelope's fingerprint
/// still waits on that envelope delivered at `attempt`, so the rejection
/// may fail it: it is `queued` (by its producer, or by a replay) or
/// `retried`, and not for a later attempt. The Redis script
/// (`backend/redis.rs`, `FAIL_REJECTED`) applies the same rule.
pub(crate) fn rejected_may_fail(stored: &TaskStatus, attempt: u32) -> bool {
    matches!(stored.state, TaskState::Queued | TaskState::Retried) && stored.attempt <= attempt
}

/// Convenience: one status.
pub async fn get_status(backend: &dyn ResultBackend, id: &str) -> Result<Option<TaskStatus>> {
    Ok(backend
        .get_statuses(&[id.to_string()])
        .await?
        .into_iter()
        .next()
        .flatten())
}
