//! The completer: settles finished deliveries in batches. Order per batch:
//! statuses (one round trip), group results, then acknowledgements, retries
//! and dead letters, then canvas follow-ups (next chain step, chord
//! callback). The result is always written before the entry is
//! acknowledged; if the status write cannot be made, nothing is
//! acknowledged and the entries are redelivered after the lease expires.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::broker::{NewDeadLetter, Outgoing, Receipt};
use crate::canvas::{
    chain_step_key, chord_callback_key, StoredEnvelope, CHAIN_HEADER, CHAIN_INDEX_HEADER,
    GROUP_HEADER,
};
use crate::envelope::{now_ms, TaskError, TaskSpec, TaskState, TaskStatus, WireEnvelope};

use super::{backoff, bump, Outcome, Shared};

/// Most outcomes settled in one call.
pub(super) const MAX_BATCH: usize = 512;

struct Retry {
    receipt: Receipt,
    wire: WireEnvelope,
    priority: u8,
    not_before: i64,
}

#[derive(Default)]
struct Plan {
    statuses: Vec<TaskStatus>,
    groups: Vec<(String, TaskStatus)>,
    acks: Vec<Receipt>,
    retries: Vec<Retry>,
    dead: Vec<(Receipt, NewDeadLetter)>,
    requeues: Vec<(Receipt, WireEnvelope, u8)>,
    chain_next: Vec<(String, usize)>,
    chain_abort: Vec<(String, usize, String)>,
}

/// Settle calls in flight at once: while one batch is in Redis the next
/// one is being planned and sent, so neither side waits on the other.
const SETTLES_IN_FLIGHT: u32 = 2;

pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: UnboundedReceiver<Outcome>,
    stop: tokio_util::sync::CancellationToken,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(SETTLES_IN_FLIGHT as usize));
    loop {
        let first = tokio::select! {
            o = rx.recv() => o,
            _ = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            settle(&shared, batch).await;
            drop(permit);
        });
    }
    // Wait for the settles still in flight.
    let _ = in_flight.acquire_many(SETTLES_IN_FLIGHT).await;
}

fn task_error(kind: &str, message: &str, reason: Option<&str>) -> TaskError {
    TaskError {
        kind: kind.to_string(),
        message: message.to_string(),
        reason: reason.map(str::to_string),
    }
}

fn plan(shared: &Shared, batch: Vec<Outcome>) -> Plan {
    let mut p = Plan::default();
    for o in batch {
        let (receipt, spec, wire, result, budget) = match o {
            Outcome::Requeue {
                receipt,
                wire,
                priority,
            } => {
                p.requeues.push((receipt, wire, priority));
                continue;
            }
            Outcome::Finished {
                receipt,
                spec,
                wire,
                result,
                budget,
            } => (receipt, spec, wire, result, budget),
        };
        let attempt = wire.attempt;
        let status = match result {
            Ok(value) => {
                bump(&shared.metrics.succeeded);
                tracing::debug!(task = %spec.name, task_id = %spec.id, "task succeeded");
                let mut s = TaskStatus::for_spec(&spec, TaskState::Succeeded, attempt);
                s.result = value;
                p.acks.push(receipt);
                if let Some(next) = chain_position(&spec) {
                    p.chain_next.push(next);
                }
                s
            }
            Err(failure) if failure.retryable && attempt < budget => {
                bump(&shared.metrics.retried);
                let delay = backoff::retry_delay(attempt);
                tracing::info!(
                    task = %spec.name, task_id = %spec.id, attempt, retry_in_ms = delay.as_millis() as u64,
                    error = %failure.message, "task failed; retrying"
                );
                let mut s = TaskStatus::for_spec(&spec, TaskState::Retried, attempt);
                s.error = Some(task_error("task-error", &failure.message, None));
                let mut next = wire.clone();
                next.attempt += 1;
                p.retries.push(Retry {
                    receipt,
                    wire: next,
                    priority: spec.priority,
                    not_before: now_ms() + delay.as_millis() as i64,
                });
                s
            }
            Err(failure) => {
                bump(&shared.metrics.failed);
                bump(&shared.metrics.dead_lettered);
                let reason = if failure.retryable {
                    "max-retries-exhausted"
                } else {
                    "non-retryable"
                };
                tracing::warn!(
                    task = %spec.name, task_id = %spec.id, attempt, reason, error = %failure.message,
                    "task failed; dead-lettered"
                );
                let mut s = TaskStatus::for_spec(&spec, TaskState::Failed, attempt);
                s.error = Some(task_error("task-error", &failure.message, Some(reason)));
                p.dead.push((
                    receipt,
                    NewDeadLetter {
                        reason: reason.into(),
                        error: Some(failure.message.clone()),
                        wire: Some(wire),
                        raw: None,
                    },
                ));
                if let Some((cid, idx)) = chain_position(&spec) {
                    p.chain_abort.push((cid, idx, spec.id.clone()));
                }
                s
            }
        };
        if status.state.is_terminal() {
            if let Some(gid) = spec.headers.get(GROUP_HEADER) {
                p.groups.push((gid.clone(), status.clone()));
            }
        }
        p.statuses.push(status);
    }
    p
}

/// `(chain id, index of the next step)` for a chain step.
fn chain_position(spec: &TaskSpec) -> Option<(String, usize)> {
    let cid = spec.headers.get(CHAIN_HEADER)?;
    let idx: usize = spec.headers.get(CHAIN_INDEX_HEADER)?.parse().ok()?;
    Some((cid.clone(), idx + 1))
}

async fn settle(shared: &Arc<Shared>, batch: Vec<Outcome>) {
    let p = plan(shared, batch);
    let mut settled: Vec<Receipt> = Vec::new();

    // 1. Statuses first. Without them nothing is acknowledged. When the
    // backend shares the broker's Redis and no group result has to land in
    // between, statuses and acks go in one transaction.
    let colocated = p.groups.is_empty();
    let mut acked = false;
    let mut failures = 0u32;
    loop {
        let written = match colocated {
            true => match shared.broker.settle_colocated(&p.statuses, &p.acks).await {
                Ok(true) => {
                    acked = true;
                    Ok(())
                }
                Ok(false) => shared.backend.set_statuses(&p.statuses).await,
                Err(e) => Err(e),
            },
            false => shared.backend.set_statuses(&p.statuses).await,
        };
        let Err(e) = written else { break };
        if failures == 0 {
            tracing::error!(error = %e, "result backend unavailable; holding results until it answers");
        }
        failures += 1;
        if shared.stopping.is_cancelled() && failures > 5 {
            tracing::error!(
                tasks = p.statuses.len(),
                "giving up on unrecorded results; they will be redelivered"
            );
            let all: Vec<Receipt> = p
                .acks
                .iter()
                .cloned()
                .chain(p.retries.iter().map(|r| r.receipt.clone()))
                .chain(p.dead.iter().map(|d| d.0.clone()))
                .chain(p.requeues.iter().map(|r| r.0.clone()))
                .collect();
            shared.release(&all);
            return;
        }
        tokio::time::sleep(backoff::outage_delay(failures)).await;
    }

    // 2. Groups, and chords whose last header task just finished.
    let mut chords = Vec::new();
    match shared.backend.add_group_results(&p.groups).await {
        Ok(progress) => {
            for g in progress {
                if g.completed >= g.expected && g.group_id.starts_with("chord-") {
                    chords.push(g.group_id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not record group results"),
    }

    // 3. Broker: acks in one round trip; retries and dead letters each atomic.
    if !acked && !p.acks.is_empty() {
        if let Err(e) = shared.broker.ack(&p.acks).await {
            tracing::warn!(error = %e, "ack failed; entries will be redelivered and skipped as finished");
        }
    }
    settled.extend(p.acks.iter().cloned());
    for r in p.retries {
        if let Err(e) = shared
            .broker
            .retry(&r.receipt, r.wire, r.priority, r.not_before)
            .await
        {
            tracing::warn!(error = %e, "scheduling a retry failed; the entry will be redelivered");
        }
        settled.push(r.receipt);
    }
    for (receipt, letter) in p.dead {
        if let Err(e) = shared.broker.dead_letter(&receipt, letter).await {
            tracing::warn!(error = %e, "dead-lettering failed; the entry will be redelivered");
        }
        settled.push(receipt);
    }
    for (receipt, wire, priority) in p.requeues {
        if let Err(e) = shared.broker.requeue(&receipt, wire, priority).await {
            tracing::warn!(error = %e, "hand-back failed; the entry will be redelivered after its lease");
        }
        settled.push(receipt);
    }
    shared.release(&settled);

    // 4. Canvas follow-ups: publish envelopes signed by the producer.
    for (cid, idx) in p.chain_next {
        publish_stored(shared, &chain_step_key(&cid, idx)).await;
    }
    for (cid, idx, failed_id) in p.chain_abort {
        abort_chain(shared, &cid, idx, &failed_id).await;
    }
    for gid in chords {
        fire_chord(shared, &gid).await;
    }
}

async fn load_stored(shared: &Shared, key: &str) -> Option<StoredEnvelope> {
    match shared.backend.get_blob(key).await {
        Ok(Some(raw)) => serde_json::from_slice(&raw).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(key, error = %e, "could not read stored envelope");
            None
        }
    }
}

async fn publish_stored(shared: &Shared, key: &str) {
    let Some(stored) = load_stored(shared, key).await else {
        return;
    };
    let out = Outgoing {
        queue: stored.queue.clone(),
        priority: stored.priority,
        not_before_ms: None,
        wire: stored.wire(),
    };
    if let Err(e) = shared.broker.publish(vec![out]).await {
        tracing::error!(key, error = %e, "could not publish the next canvas step");
    }
}

async fn abort_chain(shared: &Shared, cid: &str, mut idx: usize, failed_id: &str) {
    let mut cancelled = Vec::new();
    while let Some(stored) = load_stored(shared, &chain_step_key(cid, idx)).await {
        if let Ok(spec) = stored.wire().spec() {
            let mut s = TaskStatus::for_spec(&spec, TaskState::Cancelled, 0);
            s.error = Some(task_error(
                "chain-aborted",
                &format!("an earlier step ({failed_id}) failed"),
                None,
            ));
            cancelled.push(s);
        }
        idx += 1;
    }
    if let Err(e) = shared.backend.set_statuses(&cancelled).await {
        tracing::warn!(error = %e, "could not cancel the rest of a failed chain");
    }
}

async fn fire_chord(shared: &Shared, gid: &str) {
    let group = match shared.backend.get_group(gid).await {
        Ok(Some(g)) => g,
        _ => return,
    };
    let claim = shared
        .backend
        .put_if_absent(
            &format!("chord-claim:{gid}"),
            &shared.opts.name,
            crate::client::IDEMPOTENCY_WINDOW,
        )
        .await;
    if !matches!(claim, Ok(None)) {
        return; // another worker fired it, or the claim could not be made
    }
    let all_ok = group
        .results
        .values()
        .all(|s| s.state == TaskState::Succeeded);
    if all_ok {
        publish_stored(shared, &chord_callback_key(gid)).await;
        return;
    }
    let Some(stored) = load_stored(shared, &chord_callback_key(gid)).await else {
        return;
    };
    if let Ok(spec) = stored.wire().spec() {
        let mut s = TaskStatus::for_spec(&spec, TaskState::Failed, 0);
        s.result = Value::Null;
        s.error = Some(task_error(
            "chord-failed",
            "a header task of the chord failed",
            None,
        ));
        if let Err(e) = shared.backend.set_statuses(&[s]).await {
            tracing::warn!(error = %e, "could not mark the chord callback failed");
        }
    }
}
