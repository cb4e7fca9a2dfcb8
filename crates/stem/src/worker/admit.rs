//! Admission of fetched entries: signature check, decoding, registry
//! lookup, and the status pre-check that keeps a task whose status is
//! already final from running again (duplicate delivery, replayed entry).

use std::sync::Arc;

use crate::broker::{Delivery, Fetched, NewDeadLetter, Receipt};
use crate::canvas::GROUP_HEADER;
use crate::envelope::{TaskError, TaskSpec, TaskState, TaskStatus};
use crate::task::TaskHandler;

use super::{bump, execute, Held, Shared};

struct Reject {
    receipt: Receipt,
    letter: NewDeadLetter,
    status: Option<TaskStatus>,
}

fn failed_status(spec: &TaskSpec, attempt: u32, reason: &str, message: String) -> TaskStatus {
    let mut s = TaskStatus::for_spec(spec, TaskState::Failed, attempt);
    s.error = Some(TaskError {
        kind: reason.to_string(),
        message,
        reason: Some(reason.to_string()),
    });
    s
}

/// Takes a fetched batch into the worker.
pub(super) async fn admit(shared: &Arc<Shared>, batch: Vec<Fetched>) {
    let fresh = take_in(shared, batch);
    admit_held(shared, fresh).await;
}

/// Records a fetched batch as held and not started (so the fetch loop's
/// room is right at once); returns the entries that were not held yet.
pub(super) fn take_in(shared: &Shared, batch: Vec<Fetched>) -> Vec<Fetched> {
    let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
    let fresh: Vec<Fetched> = batch
        .into_iter()
        .filter(|f| {
            if held.contains_key(f.receipt()) {
                return false;
            }
            held.insert(f.receipt().clone(), Held { running: None });
            true
        })
        .collect();
    shared
        .metrics
        .inflight
        .store(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
    shared
        .unstarted
        .fetch_add(fresh.len(), std::sync::atomic::Ordering::Relaxed);
    fresh
}

/// Verifies, decodes and checks entries already taken in, then queues the
/// runnable ones for execution.
pub(super) async fn admit_held(shared: &Arc<Shared>, fresh: Vec<Fetched>) {
    let mut rejects = Vec::new();
    let mut runnable: Vec<(Delivery, Arc<TaskSpec>, Arc<dyn TaskHandler>)> = Vec::new();
    for f in fresh {
        let d = match f {
            Fetched::Malformed(m) => {
                tracing::warn!(queue = %m.receipt.queue, entry = %m.receipt.entry_id, error = %m.error, "malformed entry dead-lettered");
                rejects.push(Reject {
                    receipt: m.receipt,
                    letter: NewDeadLetter {
                        reason: "malformed-envelope".into(),
                        error: Some(m.error),
                        wire: None,
                        raw: Some(m.raw),
                    },
                    status: None,
                });
                continue;
            }
            Fetched::Task(d) => d,
        };
        let parsed = d.wire.spec();
        if let Some(v) = &shared.verifier {
            if let Err(e) = v.verify(
                d.wire.key_id.as_deref(),
                d.wire.signature.as_deref(),
                &d.wire.body,
            ) {
                bump(&shared.metrics.signature_invalid);
                bump(&shared.metrics.failed);
                tracing::warn!(
                    queue = %d.receipt.queue, key_id = d.wire.key_id.as_deref().unwrap_or("-"),
                    task_id = parsed.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
                    error = %e, "signature invalid: task dead-lettered without running"
                );
                let status = parsed
                    .as_ref()
                    .ok()
                    .map(|s| failed_status(s, d.wire.attempt, "signature-invalid", e.to_string()));
                rejects.push(Reject {
                    receipt: d.receipt,
                    letter: NewDeadLetter {
                        reason: "signature-invalid".into(),
                        error: Some(e.to_string()),
                        wire: Some(d.wire),
                        raw: None,
                    },
                    status,
                });
                continue;
            }
        }
        let spec = match parsed {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(queue = %d.receipt.queue, error = %e, "undecodable envelope dead-lettered");
                rejects.push(Reject {
                    receipt: d.receipt,
                    letter: NewDeadLetter {
                        reason: "malformed-envelope".into(),
                        error: Some(e.to_string()),
                        raw: Some(String::from_utf8_lossy(&d.wire.body).into_owned()),
                        wire: None,
                    },
                    status: None,
                });
                continue;
            }
        };
        let Some(handler) = shared.registry.get(&spec.name) else {
            bump(&shared.metrics.failed);
            tracing::warn!(task = %spec.name, task_id = %spec.id, "unregistered task dead-lettered");
            let msg = format!("no task named {:?} is registered on this worker", spec.name);
            rejects.push(Reject {
                status: Some(failed_status(
                    &spec,
                    d.wire.attempt,
                    "unregistered-task",
                    msg.clone(),
                )),
                receipt: d.receipt,
                letter: NewDeadLetter {
                    reason: "unregistered-task".into(),
                    error: Some(msg),
                    wire: Some(d.wire),
                    raw: None,
                },
            });
            continue;
        };
        runnable.push((d, Arc::new(spec), handler));
    }
    shared.left_waiting(rejects.len());
    settle_rejects(shared, rejects).await;
    if runnable.is_empty() {
        return;
    }

    // A task whose status is already final is not run again, unless the
    // delivery is a newer attempt of a failed task (a replay).
    let ids: Vec<String> = runnable.iter().map(|(_, s, _)| s.id.clone()).collect();
    let statuses = match shared.backend.final_states(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "status pre-check failed; running the batch");
            vec![None; ids.len()]
        }
    };
    let mut skipped = Vec::new();
    for ((d, spec, handler), status) in runnable.into_iter().zip(statuses) {
        let done = status.is_some_and(|(state, attempt)| {
            state.is_terminal() && (state != TaskState::Failed || attempt >= d.wire.attempt)
        });
        if done {
            tracing::info!(task_id = %spec.id, "task already finished; acknowledging duplicate delivery");
            skipped.push(d.receipt);
            continue;
        }
        execute::spawn(shared.clone(), d, spec, handler);
    }
    shared.left_waiting(skipped.len());
    if !skipped.is_empty() {
        if let Err(e) = shared.broker.ack(&skipped).await {
            tracing::warn!(error = %e, "ack of finished duplicates failed");
        }
        shared.release(&skipped);
    }
}

async fn settle_rejects(shared: &Arc<Shared>, rejects: Vec<Reject>) {
    if rejects.is_empty() {
        return;
    }
    let statuses: Vec<TaskStatus> = rejects.iter().filter_map(|r| r.status.clone()).collect();
    if let Err(e) = shared.backend.set_statuses(&statuses).await {
        tracing::warn!(error = %e, "could not record failed statuses");
    }
    let group_results: Vec<(String, TaskStatus)> = rejects
        .iter()
        .filter_map(|r| {
            let s = r.status.as_ref()?;
            let spec = r.letter.wire.as_ref()?.spec().ok()?;
            Some((spec.headers.get(GROUP_HEADER)?.clone(), s.clone()))
        })
        .collect();
    if let Err(e) = shared.backend.add_group_results(&group_results).await {
        tracing::warn!(error = %e, "could not record group results");
    }
    let mut receipts = Vec::new();
    for r in rejects {
        bump(&shared.metrics.dead_lettered);
        if let Err(e) = shared.broker.dead_letter(&r.receipt, r.letter).await {
            tracing::warn!(error = %e, "dead-lettering failed; the entry will be redelivered");
        }
        receipts.push(r.receipt);
    }
    shared.release(&receipts);
}
