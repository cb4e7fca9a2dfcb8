//! Follow-ups of terminal statuses: a group member's result, the next
//! chain step (or the rest of a failed chain), a chord's callback. Each is
//! idempotent (a hash field, or a publish through [`submit_once`] whose
//! marker and publish commit together), because a worker that dies after
//! the status and before the ack has admission redo them on redelivery.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Finishing;
use crate::broker::{Outgoing, SubmitOnce};
use crate::canvas::{
    chain_step_key, chord_callback_key, StoredEnvelope, CANVAS_TTL, CHAIN_HEADER,
    CHAIN_INDEX_HEADER, GROUP_HEADER,
};
use crate::client::submit_once;
use crate::envelope::{TaskError, TaskErrorKind, TaskSpec, TaskState, TaskStatus};
use crate::error::Result;
use crate::worker::Shared;

/// Whether a terminal status of `spec` has steps after it (group result,
/// chain step).
pub(super) fn has_follow_ups(spec: &TaskSpec) -> bool {
    spec.headers.contains_key(GROUP_HEADER) || chain_position(spec).is_some()
}

/// `(chain id, index of the next step)` for a chain step.
fn chain_position(spec: &TaskSpec) -> Option<(String, usize)> {
    let cid = spec.headers.get(CHAIN_HEADER)?;
    let idx: usize = spec.headers.get(CHAIN_INDEX_HEADER)?.parse().ok()?;
    Some((cid.clone(), idx + 1))
}

/// Runs the follow-ups of every item's terminal status; `false` for the
/// items where one of them failed.
pub(super) async fn follow_up(shared: &Shared, items: &[Finishing]) -> Vec<bool> {
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
