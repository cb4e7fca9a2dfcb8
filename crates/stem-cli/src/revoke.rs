//! Revocation, shared by `stem task revoke` and `stem worker revoke`:
//! persist `cancelled` (final, so a queued copy is dropped unrun and the
//! revocation survives worker restarts), then send a `revoke` command so
//! running copies are cancelled at once.

use std::time::Duration;

use serde::Serialize;
use stem::client::Stem;
use stem::envelope::TaskState;

use crate::fail::{fail, Exit};
use crate::output::{join_or_dash, outln, Format, Table};
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
pub(crate) async fn revoke(
    stem: &Stem,
    ids: &[String],
    reason: &str,
    targets: &[String],
    timeout: Duration,
    format: Format,
) -> anyhow::Result<i32> {
    let (tasks, to_cancel) = persist(stem, ids, reason).await?;
    // Only a task not finished before the revoke can have a running copy;
    // when there is none, no command is sent and no worker is waited for.
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
    print_report(&tasks, answers, format)?;
    if let Some(ex) = &ex {
        let missing = ex.missing();
        if !missing.is_empty() {
            eprintln!(
                "no reply from: {} (the revoke is persisted; their running copies stop within about a second)",
                missing.join(", ")
            );
        }
    }
    outcome(&tasks)
}

/// Persists the revocation of each id, in order. Returns a report row per
/// id and the ids that were not finished yet (their running copies must be
/// cancelled).
async fn persist(
    stem: &Stem,
    ids: &[String],
    reason: &str,
) -> anyhow::Result<(Vec<Revoked>, Vec<String>)> {
    let mut tasks = Vec::new();
    let mut to_cancel = Vec::new();
    for id in ids {
        let row = |previous: &str, state: &str| Revoked {
            task_id: id.clone(),
            previous: previous.into(),
            state: state.into(),
        };
        match stem.revoke(id, reason).await? {
            None => tasks.push(row("unknown", "unknown")),
            Some(before) if before.state.is_terminal() => {
                tasks.push(row(before.state.as_str(), before.state.as_str()))
            }
            Some(before) => {
                to_cancel.push(id.clone());
                tasks.push(row(before.state.as_str(), TaskState::Cancelled.as_str()));
            }
        }
    }
    Ok((tasks, to_cancel))
}

/// Prints the tasks and the workers' answers (JSON, or two tables).
fn print_report(
    tasks: &[Revoked],
    answers: &[Answer<RevokeReply>],
    format: Format,
) -> anyhow::Result<()> {
    format.print(
        &RevokeReport {
            tasks,
            workers: answers,
        },
        || {
            let mut t = Table::new(&["Task ID", "Previous", "State"]);
            for r in tasks {
                t.row(vec![r.task_id.clone(), r.previous.clone(), r.state.clone()]);
            }
            t.print();
            if answers.is_empty() {
                return;
            }
            outln!();
            let mut w = Table::new(&["Worker", "Status", "Cancelled Running"]);
            for a in answers {
                let cancelled = a.reply.clone().map(|r| r.cancelled).unwrap_or_default();
                w.row(vec![
                    a.worker.clone(),
                    a.status.into(),
                    join_or_dash(&cancelled, ","),
                ]);
            }
            w.print();
        },
    )
}

/// Notes tasks that had already finished; exit 65 naming the unknown ids.
fn outcome(tasks: &[Revoked]) -> anyhow::Result<i32> {
    for r in tasks {
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
