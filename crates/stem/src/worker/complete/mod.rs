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

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::broker::{DeadLetterReason, NewDeadLetter, Receipt};
use crate::envelope::{TaskSpec, TaskStatus, WireEnvelope};

use super::{backoff, Outcome, Shared};
use follow_up::follow_up;
use plan::{plan, Plan};

mod follow_up;
mod plan;
#[cfg(test)]
mod tests;

/// Most outcomes settled in one call.
pub(super) const MAX_BATCH: usize = 512;

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
