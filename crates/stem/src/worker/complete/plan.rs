//! Sorting a batch of finished outcomes into what settling does with
//! each: the statuses to write first, then plain acks, follow-ups, retries,
//! dead letters and hand-backs. Pure but for the counters and the log, so
//! a table test (`tests.rs`) covers every branch without a store.

use std::sync::Arc;

use serde_json::Value;

use super::follow_up::has_follow_ups;
use super::{Final, Finishing};
use crate::broker::{DeadLetterReason, NewDeadLetter, Receipt};
use crate::envelope::{
    now_ms, TaskError, TaskErrorKind, TaskSpec, TaskState, TaskStatus, WireEnvelope,
};
use crate::task::TaskFailure;
use crate::worker::metrics::SeriesHandle;
use crate::worker::{backoff, Outcome, WorkerMetrics};

/// A failed delivery to publish again, due at `not_before`.
pub(super) struct Retry {
    pub receipt: Receipt,
    pub task_id: String,
    pub wire: WireEnvelope,
    pub priority: u8,
    pub not_before: i64,
}

/// A batch sorted for settling.
#[derive(Default)]
pub(super) struct Plan {
    pub statuses: Vec<TaskStatus>,
    /// Succeeded tasks with nothing to follow: acknowledged with the
    /// statuses when co-located.
    pub plain_acks: Vec<Receipt>,
    /// Their envelopes, in the same order (moved, not copied), for the
    /// rare dead letter of a result Redis refuses to store.
    pub plain_wires: Vec<WireEnvelope>,
    /// Terminal outcomes with follow-ups or a dead letter.
    pub finishing: Vec<Finishing>,
    pub retries: Vec<Retry>,
    pub requeues: Vec<(Receipt, WireEnvelope, u8)>,
}

/// One finished delivery, taken apart.
struct Done {
    receipt: Receipt,
    spec: Arc<TaskSpec>,
    wire: WireEnvelope,
    series: SeriesHandle,
}

/// Sorts finished outcomes into what settling does with each: a status,
/// and then a plain ack, follow-ups, a retry or a dead letter.
pub(super) fn plan(metrics: &WorkerMetrics, batch: Vec<Outcome>) -> Plan {
    let mut p = Plan::default();
    for o in batch {
        match o {
            Outcome::Requeue {
                receipt,
                wire,
                priority,
            } => p.requeues.push((receipt, wire, priority)),
            Outcome::Finished {
                receipt,
                spec,
                wire,
                result,
                budget,
            } => {
                let attempt = wire.attempt;
                let done = Done {
                    series: metrics.series(&spec),
                    receipt,
                    spec,
                    wire,
                };
                match result {
                    Ok(value) => p.succeeded(metrics, done, value),
                    Err(failure) if failure.retryable && attempt < budget => {
                        p.retry(metrics, done, &failure)
                    }
                    Err(failure) => p.dead(metrics, done, failure),
                }
            }
        }
    }
    p
}

impl Plan {
    /// A success: its status, then a plain ack, or follow-ups (group
    /// result, next chain step) before the ack.
    fn succeeded(&mut self, metrics: &WorkerMetrics, d: Done, value: Value) {
        metrics.succeeded(&d.series);
        tracing::debug!(task = %d.spec.name, task_id = %d.spec.id, "task succeeded");
        let mut s = TaskStatus::for_spec(&d.spec, TaskState::Succeeded, d.wire.attempt);
        s.result = value;
        if has_follow_ups(&d.spec) {
            self.statuses.push(s.clone());
            self.finishing.push(Finishing {
                receipt: d.receipt,
                spec: Some(d.spec),
                status: Some(s),
                fin: Final::Ack,
                wire: Some(d.wire),
            });
        } else {
            self.statuses.push(s);
            self.plain_acks.push(d.receipt);
            self.plain_wires.push(d.wire);
        }
    }

    /// A retryable failure within its budget: a `retried` status and the
    /// envelope republished one attempt later, after the backoff.
    fn retry(&mut self, metrics: &WorkerMetrics, d: Done, failure: &TaskFailure) {
        let (spec, attempt) = (&d.spec, d.wire.attempt);
        metrics.retried(&d.series);
        let delay = backoff::retry_delay(attempt);
        tracing::info!(
            task = %spec.name, task_id = %spec.id, attempt, retry_in_ms = delay.as_millis() as u64,
            error = %failure.message, "task failed; retrying"
        );
        // The retry republishes this very envelope (attempt aside, which
        // the fingerprint leaves out): the status says so, so a worker
        // that cannot verify it fails the task.
        let mut s = TaskStatus::for_spec(spec, TaskState::Retried, attempt).waiting_on(&d.wire);
        s.error = Some(TaskError::new(TaskErrorKind::TaskError, &failure.message));
        self.statuses.push(s);
        let mut next = d.wire;
        next.attempt += 1;
        self.retries.push(Retry {
            receipt: d.receipt,
            task_id: spec.id.clone(),
            wire: next,
            priority: spec.priority,
            not_before: now_ms() + delay.as_millis() as i64,
        });
    }

    /// A failure for good (not retryable, or out of retries): a `failed`
    /// status, the rest of a chain failed with it, and a dead letter.
    fn dead(&mut self, metrics: &WorkerMetrics, d: Done, failure: TaskFailure) {
        let (spec, attempt) = (&d.spec, d.wire.attempt);
        metrics.failed(&d.series);
        metrics.dead_lettered(&d.series);
        let reason = if failure.retryable {
            DeadLetterReason::MaxRetriesExhausted
        } else {
            DeadLetterReason::NonRetryable
        };
        tracing::warn!(
            task = %spec.name, task_id = %spec.id, attempt, %reason, error = %failure.message,
            "task failed; dead-lettered"
        );
        let mut s = TaskStatus::for_spec(spec, TaskState::Failed, attempt);
        s.error =
            Some(TaskError::new(TaskErrorKind::TaskError, &failure.message).dead_lettered(reason));
        self.statuses.push(s.clone());
        self.finishing.push(Finishing {
            receipt: d.receipt,
            spec: Some(d.spec),
            status: Some(s),
            fin: Final::Dead(NewDeadLetter {
                reason,
                error: Some(failure.message),
                wire: Some(d.wire),
                raw: None,
            }),
            wire: None,
        });
    }
}
