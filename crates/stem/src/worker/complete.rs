//! The completer: settles finished deliveries in batches. Order per batch:
//!
//! 1. statuses (one round trip; when the backend shares the broker's Redis,
//!    the acks of tasks with nothing to follow go in the same `MULTI`);
//! 2. follow-ups of terminal statuses: group results, the next chain step
//!    or the rest of a failed chain, the chord callback;
//! 3. acknowledgements, retries, dead letters and hand-backs.
//!
//! The result is always written before the entry is acknowledged, and the
//! follow-ups too: if the worker dies after the status, the entry is
//! redelivered and admission (`admit.rs`) redoes the follow-ups of the
//! finished task before acknowledging it. Every follow-up is idempotent:
//! a group result is a hash field, a chain step or a chord callback is
//! published through [`submit_once`] (marker and publish in one atomic
//! step), a failed chain or chord only writes statuses. When a follow-up
//! fails, the entry is left unacknowledged for redelivery. If the status
//! write cannot be made, nothing is acknowledged and the entries are
//! redelivered after the lease expires.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::broker::{DeadLetterReason, NewDeadLetter, Outgoing, Receipt, SubmitOnce};
use crate::canvas::{
    chain_step_key, chord_callback_key, StoredEnvelope, CANVAS_TTL, CHAIN_HEADER,
    CHAIN_INDEX_HEADER, GROUP_HEADER,
};
use crate::client::submit_once;
use crate::envelope::{
    now_ms, TaskError, TaskErrorKind, TaskSpec, TaskState, TaskStatus, WireEnvelope,
};
use crate::error::Result;

use super::{backoff, Outcome, Shared};

/// Most outcomes settled in one call.
pub(super) const MAX_BATCH: usize = 512;

struct Retry {
    receipt: Receipt,
    task_id: String,
    wire: WireEnvelope,
    priority: u8,
    not_before: i64,
}

/// How an entry whose task reached a terminal status leaves the stream.
pub(super) enum Final {
    Ack,
    Dead(NewDeadLetter),
}

/// An entry to finalise once its follow-ups are done.
pub(super) struct Finishing {
    pub receipt: Receipt,
    /// The authentic spec (`None` for entries that never authenticated).
    pub spec: Option<Arc<TaskSpec>>,
    /// The task's terminal status, whose follow-ups are due.
    pub status: Option<TaskStatus>,
    pub fin: Final,
    /// The envelope of a success, kept in case its status turns out to be
    /// unwritable and the entry has to be dead-lettered instead.
    pub wire: Option<WireEnvelope>,
}

#[derive(Default)]
struct Plan {
    statuses: Vec<TaskStatus>,
    /// Succeeded tasks with nothing to follow: acknowledged with the
    /// statuses when co-located.
    plain_acks: Vec<Receipt>,
    /// Their envelopes, in the same order (moved, not copied), for the
    /// rare dead letter of a result Redis refuses to store.
    plain_wires: Vec<WireEnvelope>,
    /// Terminal outcomes with follow-ups or a dead letter.
    finishing: Vec<Finishing>,
    retries: Vec<Retry>,
    requeues: Vec<(Receipt, WireEnvelope, u8)>,
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

/// Sorts finished outcomes into what settling does with each: a status,
/// and then a plain ack, follow-ups, a retry or a dead letter. Pure but
/// for the counters, so a table test covers every branch.
fn plan(metrics: &super::WorkerMetrics, batch: Vec<Outcome>) -> Plan {
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
        let series = metrics.series(&spec);
        match result {
            Ok(value) => {
                metrics.succeeded(&series);
                tracing::debug!(task = %spec.name, task_id = %spec.id, "task succeeded");
                let mut s = TaskStatus::for_spec(&spec, TaskState::Succeeded, attempt);
                s.result = value;
                if has_follow_ups(&spec) {
                    p.statuses.push(s.clone());
                    p.finishing.push(Finishing {
                        receipt,
                        spec: Some(spec),
                        status: Some(s),
                        fin: Final::Ack,
                        wire: Some(wire),
                    });
                } else {
                    p.statuses.push(s);
                    p.plain_acks.push(receipt);
                    p.plain_wires.push(wire);
                }
            }
            Err(failure) if failure.retryable && attempt < budget => {
                metrics.retried(&series);
                let delay = backoff::retry_delay(attempt);
                tracing::info!(
                    task = %spec.name, task_id = %spec.id, attempt, retry_in_ms = delay.as_millis() as u64,
                    error = %failure.message, "task failed; retrying"
                );
                // The retry republishes this very envelope (attempt aside,
                // which the fingerprint leaves out): the status says so,
                // so a worker that cannot verify it fails the task.
                let mut s =
                    TaskStatus::for_spec(&spec, TaskState::Retried, attempt).waiting_on(&wire);
                s.error = Some(TaskError::new(TaskErrorKind::TaskError, &failure.message));
                p.statuses.push(s);
                let mut next = wire.clone();
                next.attempt += 1;
                p.retries.push(Retry {
                    receipt,
                    task_id: spec.id.clone(),
                    wire: next,
                    priority: spec.priority,
                    not_before: now_ms() + delay.as_millis() as i64,
                });
            }
            Err(failure) => {
                metrics.failed(&series);
                metrics.dead_lettered(&series);
                let reason = if failure.retryable {
                    DeadLetterReason::MaxRetriesExhausted
                } else {
                    DeadLetterReason::NonRetryable
                };
                tracing::warn!(
                    task = %spec.name, task_id = %spec.id, attempt, %reason, error = %failure.message,
                    "task failed; dead-lettered"
                );
                let mut s = TaskStatus::for_spec(&spec, TaskState::Failed, attempt);
                s.error = Some(
                    TaskError::new(TaskErrorKind::TaskError, &failure.message)
                        .dead_lettered(reason),
                );
                p.statuses.push(s.clone());
                p.finishing.push(Finishing {
                    receipt,
                    spec: Some(spec),
                    status: Some(s),
                    fin: Final::Dead(NewDeadLetter {
                        reason,
                        error: Some(failure.message.clone()),
                        wire: Some(wire),
                        raw: None,
                    }),
                    wire: None,
                });
            }
        }
    }
    p
}

/// Whether a terminal status of `spec` has steps after it (group result,
/// chain step).
fn has_follow_ups(spec: &TaskSpec) -> bool {
    spec.headers.contains_key(GROUP_HEADER) || chain_position(spec).is_some()
}

/// `(chain id, index of the next step)` for a chain step.
fn chain_position(spec: &TaskSpec) -> Option<(String, usize)> {
    let cid = spec.headers.get(CHAIN_HEADER)?;
    let idx: usize = spec.headers.get(CHAIN_INDEX_HEADER)?.parse().ok()?;
    Some((cid.clone(), idx + 1))
}

async fn settle(shared: &Arc<Shared>, batch: Vec<Outcome>) {
    let mut p = plan(&shared.metrics, batch);

    // 1. Statuses first. Without them nothing is acknowledged. When the
    // backend shares the broker's Redis, the acks of tasks with nothing to
    // follow go in the same transaction.
    let mut acked = false;
    let mut failures = 0u32;
    loop {
        let written = match &shared.atomic {
            Some(atomic) => atomic
                .settle(&p.statuses, &p.plain_acks)
                .await
                .inspect(|()| acked = true),
            None => shared.backend.set_statuses(&p.statuses).await,
        };
        let Err(e) = written else { break };
        if !e.is_transient() {
            // Retrying the batch would fail the same way for ever (a status
            // key of the wrong type): find the items Redis refuses.
            tracing::error!(error = %e, "storing a batch of results failed for a reason that retrying will not change; storing them one by one");
            p = write_one_by_one(shared, p).await;
            break;
        }
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
                .plain_acks
                .iter()
                .cloned()
                .chain(p.finishing.iter().map(|f| f.receipt.clone()))
                .chain(p.retries.iter().map(|r| r.receipt.clone()))
                .chain(p.requeues.iter().map(|r| r.0.clone()))
                .collect();
            shared.inflight.release(&all);
            return;
        }
        tokio::time::sleep(backoff::outage_delay(failures)).await;
    }

    // 2. Acks of plain successes (when not done with the statuses),
    // retries and hand-backs: each atomic with its ack.
    let mut settled: Vec<Receipt> = Vec::new();
    if !acked && !p.plain_acks.is_empty() {
        if let Err(e) = shared.broker.ack(&p.plain_acks).await {
            tracing::warn!(error = %e, "ack failed; entries will be redelivered and skipped as finished");
        }
    }
    settled.extend(p.plain_acks.iter().cloned());
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
    for (receipt, wire, priority) in p.requeues {
        if let Err(e) = shared.broker.requeue(&receipt, wire, priority).await {
            tracing::warn!(error = %e, "hand-back failed; the entry will be redelivered after its lease");
        }
        settled.push(receipt);
    }
    shared.inflight.release(&settled);

    // 3. Terminal outcomes with follow-ups or dead letters.
    follow_up_and_finalize(shared, p.finishing).await;
}

/// After a deterministic error on a batch: writes each status alone. An
/// item whose status Redis refuses for good (e.g. `WRONGTYPE` on its key)
/// is dead-lettered as `result-unwritable` with the error, so the task is
/// neither lost nor run again and again; an item that meets a passing
/// error is left for redelivery; the rest settle as usual. Statuses are
/// written here, so the caller acknowledges separately.
async fn write_one_by_one(shared: &Shared, p: Plan) -> Plan {
    let mut refused: std::collections::HashMap<String, String> = Default::default();
    let mut unsure: std::collections::HashSet<String> = Default::default();
    for s in &p.statuses {
        match shared.backend.set_statuses(std::slice::from_ref(s)).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                unsure.insert(s.id.clone());
            }
            Err(e) => {
                tracing::error!(task_id = %s.id, error = %e, "result refused by Redis; the entry is dead-lettered as result-unwritable");
                refused.insert(s.id.clone(), e.to_string());
            }
        }
    }
    let unwritable = |receipt: Receipt, id: &str, wire: Option<WireEnvelope>| Finishing {
        receipt,
        spec: None,
        status: None,
        fin: Final::Dead(NewDeadLetter {
            reason: DeadLetterReason::ResultUnwritable,
            error: refused.get(id).cloned(),
            wire,
            raw: None,
        }),
        wire: None,
    };
    let mut out = Plan {
        requeues: p.requeues,
        ..Plan::default()
    };
    let mut left = Vec::new();
    for (receipt, wire) in p.plain_acks.into_iter().zip(p.plain_wires) {
        let id = wire.spec().map(|s| s.id).unwrap_or_default();
        if unsure.contains(&id) {
            left.push(receipt);
        } else if refused.contains_key(&id) {
            out.finishing.push(unwritable(receipt, &id, Some(wire)));
        } else {
            out.plain_acks.push(receipt);
            out.plain_wires.push(wire);
        }
    }
    for r in p.retries {
        if unsure.contains(&r.task_id) {
            left.push(r.receipt);
        } else if refused.contains_key(&r.task_id) {
            let id = r.task_id.clone();
            out.finishing.push(unwritable(r.receipt, &id, Some(r.wire)));
        } else {
            out.retries.push(r);
        }
    }
    for f in p.finishing {
        let id = f.status.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        if unsure.contains(&id) {
            left.push(f.receipt);
        } else if refused.contains_key(&id) {
            let wire = match f.fin {
                Final::Dead(letter) => letter.wire,
                Final::Ack => f.wire,
            };
            out.finishing.push(unwritable(f.receipt, &id, wire));
        } else {
            out.finishing.push(f);
        }
    }
    shared.inflight.release(&left);
    out
}

/// Does the follow-ups of each item's terminal status, then acknowledges
/// or dead-letters the items whose follow-ups all landed. An item whose
/// follow-up failed stays unacknowledged: it is released and redelivered
/// after its lease, and admission redoes the follow-ups then.
pub(super) async fn follow_up_and_finalize(shared: &Arc<Shared>, items: Vec<Finishing>) {
    if items.is_empty() {
        return;
    }
    let ok = follow_up(shared, &items).await;
    let mut acks = Vec::new();
    let mut settled = Vec::new();
    let mut left = Vec::new();
    for (item, ok) in items.into_iter().zip(ok) {
        if !ok {
            left.push(item.receipt);
            continue;
        }
        match item.fin {
            Final::Ack => acks.push(item.receipt),
            Final::Dead(letter) => {
                if let Err(e) = shared.broker.dead_letter(&item.receipt, letter).await {
                    tracing::warn!(error = %e, "dead-lettering failed; the entry will be redelivered");
                }
                settled.push(item.receipt);
            }
        }
    }
    if !acks.is_empty() {
        if let Err(e) = shared.broker.ack(&acks).await {
            tracing::warn!(error = %e, "ack failed; entries will be redelivered and skipped as finished");
        }
        settled.extend(acks);
    }
    if !left.is_empty() {
        tracing::warn!(
            entries = left.len(),
            "follow-ups of finished tasks failed; the entries will be redelivered after their lease and the follow-ups redone"
        );
    }
    settled.extend(left);
    shared.inflight.release(&settled);
}

/// Runs the follow-ups of every item's terminal status; `false` for the
/// items where one of them failed.
async fn follow_up(shared: &Shared, items: &[Finishing]) -> Vec<bool> {
    let mut ok = vec![true; items.len()];
    let with_status = || {
        items.iter().enumerate().filter_map(|(i, f)| {
            let (spec, status) = (f.spec.as_ref()?, f.status.as_ref()?);
            Some((i, spec, status))
        })
    };

    // Groups: one round trip for every member of the batch.
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut results = Vec::new();
    for (i, spec, status) in with_status() {
        if let Some(gid) = spec.headers.get(GROUP_HEADER) {
            members.entry(gid.clone()).or_default().push(i);
            results.push((gid.clone(), status.clone()));
        }
    }
    match shared.backend.add_group_results(&results).await {
        Ok(progress) => {
            // One answer per member: several members of one chord in a
            // batch must settle it once.
            let done: std::collections::BTreeSet<String> = progress
                .into_iter()
                .filter(|g| g.completed >= g.expected && g.group_id.starts_with("chord-"))
                .map(|g| g.group_id)
                .collect();
            for gid in done {
                if let Err(e) = settle_chord(shared, &gid).await {
                    tracing::warn!(chord = %gid, error = %e, "could not settle a chord");
                    for i in members.get(&gid).into_iter().flatten() {
                        ok[*i] = false;
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record group results");
            for i in members.values().flatten() {
                ok[*i] = false;
            }
        }
    }

    // Chains: the next step after a success, the rest cancelled after a
    // failure.
    for (i, spec, status) in with_status() {
        let Some((cid, next)) = chain_position(spec) else {
            continue;
        };
        let done = match status.state {
            TaskState::Succeeded => publish_next_step(shared, &cid, next).await,
            TaskState::Failed => abort_chain(shared, &cid, next, &spec.id).await,
            _ => Ok(()),
        };
        if let Err(e) = done {
            tracing::warn!(chain = %cid, error = %e, "could not continue a chain");
            ok[i] = false;
        }
    }
    ok
}

async fn load_stored(shared: &Shared, key: &str) -> Result<Option<StoredEnvelope>> {
    Ok(match shared.backend.get_blob(key).await? {
        Some(raw) => serde_json::from_slice(&raw).ok(),
        None => None,
    })
}

/// Publishes a stored, producer-signed envelope once per `marker`.
async fn publish_stored_once(shared: &Shared, stored: StoredEnvelope, marker: &str) -> Result<()> {
    let out = Outgoing {
        queue: stored.queue.clone(),
        priority: stored.priority,
        not_before_ms: None,
        wire: stored.wire(),
    };
    let once = SubmitOnce {
        marker,
        value: &shared.opts.name,
        ttl: CANVAS_TTL,
        status: None,
    };
    submit_once(
        shared.broker.as_ref(),
        shared.backend.as_ref(),
        shared.atomic.as_deref(),
        once,
        out,
    )
    .await?;
    Ok(())
}

/// Publishes step `idx` of chain `cid` (at most once).
async fn publish_next_step(shared: &Shared, cid: &str, idx: usize) -> Result<()> {
    let key = chain_step_key(cid, idx);
    let Some(stored) = load_stored(shared, &key).await? else {
        return Ok(()); // the last step, or the chain expired
    };
    publish_stored_once(shared, stored, &format!("published:{key}")).await
}

async fn abort_chain(shared: &Shared, cid: &str, mut idx: usize, failed_id: &str) -> Result<()> {
    let mut cancelled = Vec::new();
    while let Some(stored) = load_stored(shared, &chain_step_key(cid, idx)).await? {
        if let Ok(spec) = stored.wire().spec() {
            let mut s = TaskStatus::for_spec(&spec, TaskState::Cancelled, 0);
            s.error = Some(TaskError::new(
                TaskErrorKind::ChainAborted,
                format!("an earlier step ({failed_id}) failed"),
            ));
            cancelled.push(s);
        }
        idx += 1;
    }
    shared.backend.set_statuses(&cancelled).await
}

/// A chord whose header is complete: publishes the callback (at most once)
/// when every member succeeded, else marks the callback failed, naming the
/// members that did not succeed.
async fn settle_chord(shared: &Shared, gid: &str) -> Result<()> {
    let Some(group) = shared.backend.get_group(gid).await? else {
        return Ok(());
    };
    let Some(stored) = load_stored(shared, &chord_callback_key(gid)).await? else {
        return Ok(());
    };
    let failed: Vec<String> = group
        .results
        .values()
        .filter(|s| s.state != TaskState::Succeeded)
        .map(|s| {
            let why = s
                .error
                .as_ref()
                .map(|e| e.reason.clone().unwrap_or_else(|| e.kind.to_string()))
                .unwrap_or_default();
            format!("{} ({}) {} {why}", s.id, s.task, s.state.as_str())
                .trim_end()
                .to_string()
        })
        .collect();
    if failed.is_empty() {
        return publish_stored_once(shared, stored, &format!("chord-claim:{gid}")).await;
    }
    let Ok(spec) = stored.wire().spec() else {
        return Ok(());
    };
    let mut s = TaskStatus::for_spec(&spec, TaskState::Failed, 0);
    s.result = Value::Null;
    s.error = Some(TaskError::new(
        TaskErrorKind::ChordFailed,
        format!(
            "header tasks of the chord did not succeed: {}",
            failed.join(", ")
        ),
    ));
    shared.backend.set_statuses(&[s]).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use super::*;
    use crate::envelope::TaskSpec;
    use crate::task::TaskFailure;

    fn spec(group: bool) -> Arc<TaskSpec> {
        let mut headers = BTreeMap::new();
        if group {
            headers.insert(GROUP_HEADER.to_string(), "grp-1".to_string());
        }
        Arc::new(TaskSpec {
            id: crate::envelope::new_task_id(),
            name: "t".into(),
            queue: "q".into(),
            args: json!({}),
            headers,
            meta: Default::default(),
            enqueued_at: 0,
            max_retries: 2,
            priority: 3,
        })
    }

    fn finished(
        spec: &Arc<TaskSpec>,
        attempt: u32,
        result: std::result::Result<Value, TaskFailure>,
    ) -> Outcome {
        Outcome::Finished {
            receipt: Receipt {
                queue: "q".into(),
                lane: 3,
                entry_id: format!("{attempt}-0"),
            },
            spec: spec.clone(),
            wire: WireEnvelope {
                body: spec.to_body().expect("body"),
                key_id: None,
                signature: None,
                attempt,
            },
            result,
            budget: 2,
        }
    }

    /// (outcome, expected status, where it goes)
    #[test]
    fn every_outcome_is_planned_as_documented() {
        let (plain, grouped) = (spec(false), spec(true));
        let cases: Vec<(Outcome, Option<TaskState>, &str)> = vec![
            (
                finished(&plain, 0, Ok(json!(1))),
                Some(TaskState::Succeeded),
                "plain ack",
            ),
            (
                finished(&grouped, 0, Ok(json!(1))),
                Some(TaskState::Succeeded),
                "follow-up, then ack",
            ),
            (
                finished(&plain, 1, Err(TaskFailure::new("boom"))),
                Some(TaskState::Retried),
                "retry",
            ),
            (
                finished(&plain, 2, Err(TaskFailure::new("boom"))),
                Some(TaskState::Failed),
                "max-retries-exhausted",
            ),
            (
                finished(&plain, 0, Err(TaskFailure::fatal("no"))),
                Some(TaskState::Failed),
                "non-retryable",
            ),
            (
                Outcome::Requeue {
                    receipt: Receipt {
                        queue: "q".into(),
                        lane: 3,
                        entry_id: "9-0".into(),
                    },
                    wire: WireEnvelope {
                        body: plain.to_body().expect("body"),
                        key_id: None,
                        signature: None,
                        attempt: 0,
                    },
                    priority: 3,
                },
                None,
                "requeue",
            ),
        ];
        for (outcome, state, route) in cases {
            let metrics = super::super::WorkerMetrics::default();
            let p = plan(&metrics, vec![outcome]);
            assert_eq!(p.statuses.first().map(|s| s.state), state, "{route}");
            let got = match (
                &p.plain_acks[..],
                &p.finishing[..],
                &p.retries[..],
                &p.requeues[..],
            ) {
                ([_], [], [], []) => "plain ack".to_string(),
                ([], [f], [], []) => match &f.fin {
                    Final::Ack => "follow-up, then ack".into(),
                    Final::Dead(l) => l.reason.as_str().into(),
                },
                ([], [], [r], []) => {
                    assert_eq!(r.wire.attempt, 2, "a retry raises the attempt");
                    assert_eq!(r.priority, 3, "and keeps the priority");
                    "retry".into()
                }
                ([], [], [], [_]) => "requeue".into(),
                _ => "several".into(),
            };
            assert_eq!(got, route);
            let counted = [
                metrics.succeeded.load(Ordering::Relaxed),
                metrics.retried.load(Ordering::Relaxed),
                metrics.failed.load(Ordering::Relaxed),
                metrics.dead_lettered.load(Ordering::Relaxed),
            ];
            let want = match route {
                "plain ack" | "follow-up, then ack" => [1, 0, 0, 0],
                "retry" => [0, 1, 0, 0],
                "requeue" => [0, 0, 0, 0],
                _ => [0, 0, 1, 1],
            };
            assert_eq!(counted, want, "{route}");
        }
    }
}
