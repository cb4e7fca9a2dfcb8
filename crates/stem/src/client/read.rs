//! Reading and steering tasks after they were published: a task's status,
//! waiting for it to finish, finding tasks through the recent-task index,
//! revoking one, forgetting a queue.

use std::time::Duration;

use crate::backend::get_status;
use crate::envelope::{now_ms, TaskErrorKind, TaskState, TaskStatus};
use crate::error::{Result, StemError};

use super::{Stem, REVOCATION_TTL};

impl Stem {
    /// The status of task `id`.
    pub async fn status(&self, id: &str) -> Result<Option<TaskStatus>> {
        get_status(self.stores.backend.as_ref(), id).await
    }

    /// The names of the live workers that consume `queue`.
    pub async fn workers_consuming(&self, queue: &str) -> Result<Vec<String>> {
        Ok(self
            .control()
            .workers()
            .await?
            .into_iter()
            .filter(|w| w.queues.iter().any(|q| q == queue))
            .map(|w| w.name)
            .collect())
    }

    /// Forgets `queue` ([`QueueAdmin::forget_queue`](crate::broker::QueueAdmin::forget_queue): it stops being
    /// listed and polled) when it holds no task and no live worker
    /// consumes it — a worker would name it again. `Ok(false)` for a queue
    /// that was not known; [`StemError::InvalidArgument`] saying why not
    /// otherwise. The CLI's `queue forget` and the dashboard's queue page.
    pub async fn forget_queue(&self, queue: &str) -> Result<bool> {
        let serving = self.workers_consuming(queue).await?;
        if !serving.is_empty() {
            return Err(StemError::InvalidArgument(format!(
                "queue {queue:?} is consumed by live workers ({}); stop them or give them other queues first",
                serving.join(", ")
            )));
        }
        self.admin().forget_queue(queue).await
    }

    /// Recent tasks matching `query`, newest first, from the recent-task
    /// index (see [`crate::recent`]).
    pub async fn find_tasks(
        &self,
        query: &crate::recent::TaskQuery,
    ) -> Result<crate::recent::TaskListing> {
        crate::recent::find_tasks(
            self.stores.admin.as_ref(),
            self.stores.backend.as_ref(),
            query,
        )
        .await
    }

    /// Revokes task `id`: a queued task will not run, a running task is
    /// cancelled through its context within about a second. Revocation is
    /// final and lasts [`REVOCATION_TTL`], longer than any countdown. A task
    /// that finished first keeps its result: the revocation is only written
    /// while no terminal status exists. Returns the status before
    /// revocation (the terminal one when the task finished first), `None`
    /// for unknown ids.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Option<TaskStatus>> {
        let Some(before) = self.status(id).await? else {
            return Ok(None);
        };
        if before.state.is_terminal() {
            return Ok(Some(before));
        }
        let mut cancelled = before.clone();
        cancelled.state = TaskState::Cancelled;
        // `reason: revoked` is not a dead-letter reason; it tells readers
        // of the error alone why the task stopped.
        let mut error = crate::envelope::TaskError::new(TaskErrorKind::Revoked, reason);
        error.reason = Some("revoked".into());
        cancelled.error = Some(error);
        cancelled.updated_at = crate::envelope::format_ms(now_ms());
        if !self
            .stores
            .backend
            .record_revocation(&cancelled, REVOCATION_TTL)
            .await?
        {
            // The task finished between the read and the write.
            return self.status(id).await;
        }
        Ok(Some(before))
    }

    /// Polls until task `id` reaches a terminal state or `timeout` passes.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(s) = self.status(id).await? {
                if s.state.is_terminal() {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StemError::WaitTimedOut(format!(
                    "task {id} not finished after {timeout:?}"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}
