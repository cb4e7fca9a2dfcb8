//! Revocation, shared by `stem task revoke` and `stem worker revoke`:
//! persist `cancelled` (final, so a queued copy is dropped unrun and the
//! revocation survives worker restarts), then send a `revoke` command so
//! running copies are cancelled at once.

use std::time::Duration;

use serde::Serialize;
use stem::client::Stem;
use stem::envelope::TaskState;

use crate::fail::{fail, Exit};
use crate::output::{outln, print_json, Format, Table};
use stem::control::{Answer, RevokeReply};

/// One revoked task in the `revoke` report.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Revoked {
    task_id: String,
    /// State before the revoke (`unknown` for an unknown id).
    previous: String,
    /// State now.
    state: String,
}

#[derive(Serialize)]
struct RevokeReport<'a> {
    tasks: &'a [Revoked],
    workers: &'a [Answer<RevokeReply>],
}

/// Revokes `ids` (persisted: status `cancelled`, final), then tells the
/// addressed workers so running copies stop at once. Unknown ids → exit 65
/// after the others are revoked. Shared by `task revoke`.
pub async fn revoke(
    stem: &Stem,
    ids: &[String],
    reason: &str,
    targets: &[String],
    timeout: Duration,
    format: Format,
) -> anyhow::Result<i32> {
    let mut tasks = Vec::new();
    let mut to_cancel = Vec::new();
    for id in ids {
        match stem.revoke(id, reason).await? {
            None => tasks.push(Revoked {
                task_id: id.clone(),
                previous: "unknown".into(),
                state: "unknown".into(),
            }),
            Some(before) if before.state.is_terminal() => tasks.push(Revoked {
                task_id: id.clone(),
                previous: before.state.as_str().into(),
                state: before.state.as_str().into(),
            }),
            Some(before) => {
                to_cancel.push(id.clone());
                tasks.push(Revoked {
                    task_id: id.clone(),
                    previous: before.state.as_str().into(),
                    state: TaskState::Cancelled.as_str().into(),
                });
            }
        }
    }
    let ex = if to_cancel.is_empty() {
        None
    } else {
        Some(
            stem.workers()
                .only(targets)
                .timeout(timeout)
                .revoke(&to_cancel)
                .await?,
        )
    };
    let answers: &[Answer<RevokeReply>] = ex.as_ref().map(|e| e.answers.as_slice()).unwrap_or(&[]);
    if format.json {
        print_json(&RevokeReport {
            tasks: &tasks,
            workers: answers,
        })?;
    } else {
        let mut t = Table::new(&["Task ID", "Previous", "State"]);
        for r in &tasks {
            t.row(vec![r.task_id.clone(), r.previous.clone(), r.state.clone()]);
        }
        t.print();
        if !answers.is_empty() {
            outln!();
            let mut w = Table::new(&["Worker", "Status", "Cancelled Running"]);
            for a in answers {
                let cancelled = a.reply.clone().map(|r| r.cancelled).unwrap_or_default();
                w.row(vec![
                    a.worker.clone(),
                    a.status.into(),
                    if cancelled.is_empty() {
                        "-".into()
                    } else {
                        cancelled.join(",")
                    },
                ]);
            }
            w.print();
        }
    }
    if let Some(ex) = &ex {
        let missing = ex.missing();
        if !missing.is_empty() {
            eprintln!(
                "no reply from: {} (the revoke is persisted; their running copies stop within about a second)",
                missing.join(", ")
            );
        }
    }
    for r in &tasks {
        if r.previous != "unknown" && r.previous == r.state && r.state != "cancelled" {
            eprintln!("task {} already {}; nothing to revoke", r.task_id, r.state);
        }
    }
    let unknown: Vec<&str> = tasks
        .iter()
        .filter(|r| r.previous == "unknown")
        .map(|r| r.task_id.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(fail(
            Exit::Data,
            format!(
                "unknown task {}: {}",
                if unknown.len() == 1 { "id" } else { "ids" },
                unknown.join(", ")
            ),
        ));
    }
    Ok(0)
}
