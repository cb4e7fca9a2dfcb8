//! Admission of fetched entries: signature check, decoding, queue and
//! attempt checks, registry lookup, and the status pre-check that keeps a
//! task whose status is already final from running again (duplicate
//! delivery, replayed entry).
//!
//! What an entry that fails a check may touch is the point of this module.
//! An entry that cannot be authenticated (bad or missing signature), that
//! sits in a stream its signed spec does not name, or whose unsigned
//! attempt is out of range is dead-lettered with its bytes and a reason,
//! and **nothing else** that it merely claims: the task id it names may
//! belong to an authentic task. Only an authentic, well-placed entry of a
//! task this worker does not know (`unregistered-task`) records a `failed`
//! status and group result, as a task failure would.
//!
//! One exception, which claims nothing: an entry rejected as
//! `signature-invalid` that is byte for byte the envelope its producer
//! recorded. The producer's `queued` status (and a `retried` one) carries
//! the envelope's fingerprint (key id, signature, body); the rejection
//! fails that status through [`ResultBackend::fail_rejected`], a
//! compare-and-set on the fingerprint, so a misconfigured producer's task
//! ends `failed` instead of waiting for ever, while a forged or altered
//! copy (another body, another signature) matches nothing and changes
//! nothing. A match is the genuine envelope, so its failure then counts as
//! an authentic one (group result, chain aborted).
//!
//! [`ResultBackend::fail_rejected`]: crate::backend::ResultBackend::fail_rejected
//!
//! A redelivered entry whose task already has a terminal status is not run
//! again; the steps that follow a terminal status (group result, next
//! chain step, chord callback, dead letter) are redone instead, since the
//! worker that stored the status may have died before them.

use std::sync::Arc;

use crate::broker::{DeadLetterReason, Delivery, Fetched, NewDeadLetter, Receipt};
use crate::envelope::{TaskError, TaskErrorKind, TaskSpec, TaskState, TaskStatus};
use crate::task::TaskHandler;

use super::complete::{self, Final};
use super::{execute, Shared};

/// Dead-letter replays a task may go through beyond its retry budget. The
/// attempt is delivery state, not signed: a stream writer could set it to
/// anything, and a huge attempt would outrank every status of the task.
pub(super) const MAX_REPLAYS: u32 = 100;

/// A rejected entry: dead-lettered; `authentic` is only set for authentic
/// entries (`unregistered-task`, `delivery-limit`), whose task fails.
struct Reject {
    receipt: Receipt,
    letter: NewDeadLetter,
    authentic: Option<(Arc<TaskSpec>, TaskStatus)>,
    /// A `signature-invalid` entry's claimed spec and the `failed` status
    /// (with the entry's fingerprint) written only where the stored status
    /// waits on an envelope of that fingerprint.
    claimed: Option<(Arc<TaskSpec>, TaskStatus)>,
}

impl Reject {
    /// A reject that touches nothing but the dead-letter stream.
    fn dead_only(receipt: Receipt, letter: NewDeadLetter) -> Self {
        Reject {
            receipt,
            letter,
            authentic: None,
            claimed: None,
        }
    }

    /// A reject dead-lettering the delivery's envelope as `reason` with
    /// `error`, touching nothing else.
    fn dead_with_wire(d: Delivery, reason: DeadLetterReason, error: String) -> Self {
        Reject::dead_only(
            d.receipt,
            NewDeadLetter {
                reason,
                error: Some(error),
                wire: Some(d.wire),
                raw: None,
            },
        )
    }
}

fn failed_status(
    spec: &TaskSpec,
    attempt: u32,
    reason: DeadLetterReason,
    message: String,
) -> TaskStatus {
    let mut s = TaskStatus::for_spec(spec, TaskState::Failed, attempt);
    s.error = Some(TaskError::new(TaskErrorKind::Rejected(reason), message).dead_lettered(reason));
    s
}

/// Takes a fetched batch into the worker.
pub(super) async fn admit(shared: &Arc<Shared>, batch: Vec<Fetched>) {
    let fresh = shared.inflight.take_in(batch);
    admit_held(shared, fresh).await;
}

/// A delivery that passed admission's checks, with what it takes to run it.
type Runnable = (Delivery, Arc<TaskSpec>, Arc<dyn TaskHandler>);

/// Checks one delivery: what it takes to run it, or the reject.
fn check(shared: &Shared, d: Delivery) -> Result<Runnable, Box<Reject>> {
    let parsed = d.wire.spec();
    if let Some(v) = &shared.verifier {
        if let Err(e) = v.verify(
            d.wire.key_id.as_deref(),
            d.wire.signature.as_deref(),
            &d.wire.body,
        ) {
            return Err(signature_reject(shared, d, parsed, e.to_string()));
        }
    }
    let spec = match parsed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(queue = %d.receipt.queue, error = %e, "undecodable envelope dead-lettered");
            return Err(Box::new(Reject::dead_only(
                d.receipt,
                NewDeadLetter {
                    reason: DeadLetterReason::MalformedEnvelope,
                    error: Some(e.to_string()),
                    raw: Some(String::from_utf8_lossy(&d.wire.body).into_owned()),
                    wire: None,
                },
            )));
        }
    };
    if spec.queue != d.receipt.queue {
        let msg = format!(
            "the envelope names queue {:?} but was read from queue {:?}",
            spec.queue, d.receipt.queue
        );
        tracing::warn!(task_id = %spec.id, task = %spec.name, error = %msg, "envelope in the wrong queue dead-lettered; no status written");
        return Err(Box::new(Reject::dead_with_wire(
            d,
            DeadLetterReason::WrongQueue,
            msg,
        )));
    }
    let handler = shared.registry.get(&spec.name);
    if attempt_over(shared, &spec, d.wire.attempt) {
        let budget = budget_of(shared, &spec);
        let msg = format!(
            "attempt {} is above the retry budget {budget} plus {MAX_REPLAYS} replays",
            d.wire.attempt
        );
        tracing::warn!(task_id = %spec.id, error = %msg, "entry with an out-of-range attempt dead-lettered; no status written");
        return Err(Box::new(Reject::dead_with_wire(
            d,
            DeadLetterReason::AttemptOutOfRange,
            msg,
        )));
    }
    let Some(handler) = handler else {
        shared.metrics.failed(&shared.metrics.series(&spec));
        tracing::warn!(task = %spec.name, task_id = %spec.id, "unregistered task dead-lettered");
        let msg = format!("no task named {:?} is registered on this worker", spec.name);
        let status = failed_status(
            &spec,
            d.wire.attempt,
            DeadLetterReason::UnregisteredTask,
            msg.clone(),
        );
        return Err(Box::new(Reject {
            receipt: d.receipt,
            letter: NewDeadLetter {
                reason: DeadLetterReason::UnregisteredTask,
                error: Some(msg),
                wire: Some(d.wire),
                raw: None,
            },
            authentic: Some((Arc::new(spec), status)),
            claimed: None,
        }));
    };
    Ok((d, Arc::new(spec), handler))
}

/// The reject of a delivery whose signature does not verify: dead-lettered
/// as `signature-invalid`, no status of its own written. What the entry
/// claims is kept for the fingerprint's compare-and-set only, and only
/// where its producer would have delivered it: from the queue its spec
/// names (a stream writer could copy a genuine envelope into a queue whose
/// workers hold other keys, and so fail a task its own workers would run),
/// at an attempt within the budget.
fn signature_reject(
    shared: &Shared,
    d: Delivery,
    parsed: crate::error::Result<TaskSpec>,
    error: String,
) -> Box<Reject> {
    let series = shared.metrics.series_of(None, &d.receipt.queue);
    shared.metrics.signature_invalid(&series);
    tracing::warn!(
        queue = %d.receipt.queue, entry = %d.receipt.entry_id,
        key_id = d.wire.key_id.as_deref().unwrap_or("-"),
        claimed_task_id = parsed.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
        error = %error, "signature invalid: entry dead-lettered without running"
    );
    let claimed = parsed
        .ok()
        .filter(|spec| spec.queue == d.receipt.queue && !attempt_over(shared, spec, d.wire.attempt))
        .map(|spec| {
            let mut status = failed_status(
                &spec,
                d.wire.attempt,
                DeadLetterReason::SignatureInvalid,
                error.clone(),
            );
            status.fingerprint = Some(d.wire.fingerprint());
            (Arc::new(spec), status)
        });
    let mut reject = Reject::dead_with_wire(d, DeadLetterReason::SignatureInvalid, error);
    reject.claimed = claimed;
    Box::new(reject)
}

/// The retry budget of `spec`'s task: the catalogue's, or the spec's when
/// higher (or when the task is not registered here).
fn budget_of(shared: &Shared, spec: &TaskSpec) -> u32 {
    match shared.registry.get(&spec.name) {
        Some(h) => h.options().max_retries.max(spec.max_retries),
        None => spec.max_retries,
    }
}

/// Whether `attempt` is beyond the task's retry budget plus
/// [`MAX_REPLAYS`]. The spec's budget settles the common case without
/// building the handler's options; the catalogue's can only raise it.
fn attempt_over(shared: &Shared, spec: &TaskSpec, attempt: u32) -> bool {
    let over = |budget: u32| attempt > budget.saturating_add(MAX_REPLAYS);
    over(spec.max_retries) && over(budget_of(shared, spec))
}

/// Verifies, decodes and checks entries already taken in, then queues the
/// runnable ones for execution.
pub(super) async fn admit_held(shared: &Arc<Shared>, fresh: Vec<Fetched>) {
    let mut rejects = Vec::new();
    let mut runnable: Vec<Runnable> = Vec::new();
    for f in fresh {
        match f {
            Fetched::Malformed(m) => {
                tracing::warn!(queue = %m.receipt.queue, entry = %m.receipt.entry_id, error = %m.error, "malformed entry dead-lettered");
                rejects.push(Reject::dead_only(
                    m.receipt,
                    NewDeadLetter {
                        reason: DeadLetterReason::MalformedEnvelope,
                        error: Some(m.error),
                        wire: None,
                        raw: Some(m.raw),
                    },
                ));
            }
            Fetched::Task(d) => match check(shared, d) {
                Ok(r) => runnable.push(r),
                Err(reject) => rejects.push(*reject),
            },
        }
    }
    shared.inflight.left_waiting(rejects.len());
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
    let mut finished = Vec::new();
    let mut over_limit = Vec::new();
    for ((d, spec, handler), status) in runnable.into_iter().zip(statuses) {
        let done = status.is_some_and(|(state, attempt)| {
            state.is_terminal() && (state != TaskState::Failed || attempt >= d.wire.attempt)
        });
        if done {
            finished.push((d, spec));
        } else if d.deliveries > shared.opts.max_deliveries {
            over_limit.push(delivery_limit(shared, d, spec));
        } else {
            execute::spawn(shared.clone(), d, spec, handler);
        }
    }
    shared
        .inflight
        .left_waiting(finished.len() + over_limit.len());
    settle_rejects(shared, over_limit).await;
    if !finished.is_empty() {
        redo_finished(shared, finished).await;
    }
}

/// A task whose runs keep killing their worker (abort, OOM, a wedged
/// process) is not handed out again: it fails as `delivery-limit`.
fn delivery_limit(shared: &Shared, d: Delivery, spec: Arc<TaskSpec>) -> Reject {
    shared.metrics.failed(&shared.metrics.series(&spec));
    let msg = format!(
        "delivered {} times without finishing (STEM_MAX_DELIVERIES = {}): its runs may be killing their workers",
        d.deliveries, shared.opts.max_deliveries
    );
    tracing::error!(task = %spec.name, task_id = %spec.id, error = %msg, "entry dead-lettered at the delivery limit");
    let status = failed_status(
        &spec,
        d.wire.attempt,
        DeadLetterReason::DeliveryLimit,
        msg.clone(),
    );
    Reject {
        receipt: d.receipt,
        letter: NewDeadLetter {
            reason: DeadLetterReason::DeliveryLimit,
            error: Some(msg),
            wire: Some(d.wire),
            raw: None,
        },
        authentic: Some((spec, status)),
        claimed: None,
    }
}

/// Redeliveries of finished tasks: redo what follows the terminal status,
/// then acknowledge (or dead-letter, when the dead letter is what was
/// missing).
async fn redo_finished(shared: &Arc<Shared>, finished: Vec<(Delivery, Arc<TaskSpec>)>) {
    let ids: Vec<String> = finished.iter().map(|(_, s)| s.id.clone()).collect();
    let statuses = match shared.backend.get_statuses(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the statuses of finished tasks; they will be redelivered");
            let receipts: Vec<Receipt> = finished.into_iter().map(|(d, _)| d.receipt).collect();
            shared.inflight.release(&receipts);
            return;
        }
    };
    let mut items = Vec::with_capacity(finished.len());
    for ((d, spec), status) in finished.into_iter().zip(statuses) {
        // Expired between the two reads: nothing left to redo.
        let Some(status) = status.filter(|s| s.state.is_terminal()) else {
            items.push(complete::Finishing {
                receipt: d.receipt,
                spec: Some(spec),
                status: None,
                fin: Final::Ack,
                wire: None,
            });
            continue;
        };
        let fin = match dead_letter_missing(&status, d.wire.attempt) {
            Some(reason) => {
                tracing::info!(task_id = %spec.id, %reason, "task already failed; writing its missing dead letter");
                Final::Dead(NewDeadLetter {
                    reason,
                    error: status.error.as_ref().map(|e| e.message.clone()),
                    wire: Some(d.wire),
                    raw: None,
                })
            }
            None => {
                tracing::info!(task_id = %spec.id, state = status.state.as_str(), "task already finished; redoing its follow-ups and acknowledging the duplicate delivery");
                Final::Ack
            }
        };
        items.push(complete::Finishing {
            receipt: d.receipt,
            spec: Some(spec),
            status: Some(status),
            fin,
            wire: None,
        });
    }
    complete::follow_up_and_finalize(shared, items).await;
}

/// The dead-letter reason when `status` is this very attempt's failure:
/// its dead letter and its ack are one atomic step, so the entry being
/// here means the dead letter was never written.
fn dead_letter_missing(status: &TaskStatus, attempt: u32) -> Option<DeadLetterReason> {
    if status.state != TaskState::Failed || status.attempt != attempt {
        return None;
    }
    let reason = status.error.as_ref()?.reason.as_deref()?.parse().ok()?;
    matches!(
        reason,
        DeadLetterReason::NonRetryable
            | DeadLetterReason::MaxRetriesExhausted
            | DeadLetterReason::DeliveryLimit
    )
    .then_some(reason)
}

/// Dead-letters rejected entries. Authentic ones (`unregistered-task`)
/// first get their `failed` status, group result and canvas follow-ups;
/// when the status cannot be written they are left for redelivery, so the
/// result still lands before the ack. A `signature-invalid` entry fails
/// the task it claims only where its fingerprint matches the stored
/// status (see the module's comment); a match is then settled as an
/// authentic failure, anything else as a bare dead letter.
async fn settle_rejects(shared: &Arc<Shared>, rejects: Vec<Reject>) {
    if rejects.is_empty() {
        return;
    }
    let statuses: Vec<TaskStatus> = rejects
        .iter()
        .filter_map(|r| r.authentic.as_ref().map(|(_, s)| s.clone()))
        .collect();
    let claims: Vec<TaskStatus> = rejects
        .iter()
        .filter_map(|r| r.claimed.as_ref().map(|(_, s)| s.clone()))
        .collect();
    let mut items = Vec::with_capacity(rejects.len());
    let mut unrecorded = Vec::new();
    let recorded = match shared.backend.set_statuses(&statuses).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not record failed statuses; the entries will be redelivered");
            false
        }
    };
    // `None`: the compare-and-set could not be made; those entries are
    // redelivered, so a genuine envelope's failure still lands before its
    // dead letter.
    let mut matched = match claims.is_empty() {
        true => Some(Vec::new().into_iter()),
        false => match shared.backend.fail_rejected(&claims).await {
            Ok(m) => Some(m.into_iter()),
            Err(e) => {
                tracing::warn!(error = %e, "could not check rejected envelopes against their tasks' statuses; the entries will be redelivered");
                None
            }
        },
    };
    for mut r in rejects {
        if r.authentic.is_some() && !recorded {
            unrecorded.push(r.receipt);
            continue;
        }
        if let Some((spec, status)) = r.claimed.take() {
            let Some(hit) = matched.as_mut().map(|m| m.next().unwrap_or(false)) else {
                unrecorded.push(r.receipt);
                continue;
            };
            if hit {
                shared.metrics.failed(&shared.metrics.series(&spec));
                tracing::warn!(
                    task = %spec.name, task_id = %spec.id,
                    "the rejected envelope is the one its producer recorded: task failed as signature-invalid"
                );
                r.authentic = Some((spec, status));
            } else {
                tracing::info!(
                    task_id = %spec.id,
                    "no status of the claimed task waits on this envelope: left untouched"
                );
            }
        }
        let (spec, status) = r.authentic.unzip();
        let task = spec.as_ref().map(|s| s.name.as_str());
        shared
            .metrics
            .dead_lettered(&shared.metrics.series_of(task, &r.receipt.queue));
        items.push(complete::Finishing {
            receipt: r.receipt,
            spec,
            status,
            fin: Final::Dead(r.letter),
            wire: None,
        });
    }
    shared.inflight.release(&unrecorded);
    complete::follow_up_and_finalize(shared, items).await;
}
