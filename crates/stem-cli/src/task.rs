//! `stem task status|wait|enqueue|revoke`.
//!
//! `task wait` exits 0 when the task succeeded, 1 when it failed or was
//! cancelled, 75 when it is still not finished after `--timeout`, 65 for an
//! unknown id.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};
use stem::client::EnqueueOptions;
use stem::envelope::{TaskState, TaskStatus};
use stem::StemError;

use crate::context::{parse_duration, parse_duration_or_zero, Ctx};
use crate::fail::{fail, Exit};
use crate::output::{or_dash, outln, print_json, Format, Table};

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// A task's status (state, attempt, result, error, progress).
    Status {
        /// Task id.
        id: String,
        #[command(flatten)]
        format: Format,
    },
    /// Wait until a task finishes: exit 0 succeeded, 1 failed or cancelled,
    /// 75 still running after --timeout.
    Wait {
        /// Task id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        format: Format,
    },
    /// Enqueue a task of the demo catalogue, signed with
    /// STEM_SIGNING_ACTIVE_KEY; prints its id.
    Enqueue {
        /// Task name, e.g. greeting.send.
        task: String,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}", value_name = "JSON")]
        args: String,
        /// Queue (default: the task's queue in the catalogue; required for
        /// a task outside it).
        #[arg(short = 'q', long)]
        queue: Option<String>,
        /// Retries after the first attempt, for a task outside the
        /// catalogue (a catalogue task keeps its own budget).
        #[arg(long, value_name = "N")]
        max_retries: Option<u32>,
        /// Priority 0 (default) to 9 (first).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
        priority: Option<u8>,
        /// Delay before the task may start, e.g. 5s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
        countdown: Option<Duration>,
        /// A repeated key within 24 h returns the first task's id.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        format: Format,
    },
    /// Revoke a task: a queued task never runs, a running one is cancelled
    /// at once (persisted; final).
    Revoke {
        /// Task id.
        id: String,
        /// Reason recorded in the task's error.
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
        /// How long to wait for workers to confirm.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        format: Format,
    },
}

pub async fn run(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<i32> {
    match cmd {
        TaskCommand::Status { id, format } => {
            let stem = ctx.consumer()?;
            let status = stem.status(&id).await?.ok_or_else(|| unknown(&id))?;
            show(&status, format)?;
            Ok(0)
        }
        TaskCommand::Wait {
            id,
            timeout,
            format,
        } => {
            let stem = ctx.consumer()?;
            if stem.status(&id).await?.is_none() {
                return Err(unknown(&id));
            }
            match stem.wait(&id, timeout).await {
                Ok(status) => {
                    show(&status, format)?;
                    Ok(match status.state {
                        TaskState::Succeeded => 0,
                        _ => Exit::TaskFailed.code(),
                    })
                }
                Err(StemError::WaitTimedOut(_)) => {
                    let state = stem
                        .status(&id)
                        .await?
                        .map(|s| s.state.as_str())
                        .unwrap_or("unknown");
                    Err(fail(
                        Exit::TempFail,
                        format!(
                            "task {id} is still {state} after {}",
                            crate::output::short_duration(timeout)
                        ),
                    ))
                }
                Err(e) => Err(e.into()),
            }
        }
        TaskCommand::Enqueue {
            task,
            args,
            queue,
            max_retries,
            priority,
            countdown,
            idempotency_key,
            format,
        } => {
            let args: Value = serde_json::from_str(&args)
                .map_err(|e| fail(Exit::Data, format!("--args is not valid JSON: {e}")))?;
            if !args.is_object() {
                return Err(fail(Exit::Data, "--args must be a JSON object"));
            }
            let stem = ctx.producer()?;
            // Any task name may be enqueued: the operator CLI is not tied
            // to the demo catalogue. One outside it has no known queue, so
            // it must be named (a typo would otherwise land in `default`).
            if stem.registry().options(&task).is_none() {
                if queue.is_none() {
                    return Err(fail(
                        Exit::Data,
                        format!(
                            "task {task:?} is not in the catalogue ({}); name its queue with --queue",
                            stem.registry().names().join(", ")
                        ),
                    ));
                }
                eprintln!(
                    "note: {task:?} is not in the catalogue: it runs where a worker of its queue registers it, with {} retries",
                    max_retries.unwrap_or(0)
                );
            }
            if stem.signer().is_none() {
                eprintln!(
                    "warning: no signing key (STEM_SIGNING_KEYS / STEM_SIGNING_PRIVATE_KEYS + STEM_SIGNING_ACTIVE_KEY): \
                     the task is unsigned and workers holding keys will dead-letter it"
                );
            }
            let opts = EnqueueOptions {
                queue,
                max_retries,
                priority,
                countdown: countdown.filter(|c| !c.is_zero()),
                idempotency_key,
                ..Default::default()
            };
            let done = stem.enqueue_raw(&task, args, opts).await?;
            if format.json {
                print_json(&json!({
                    "taskId": done.task_id,
                    "task": task,
                    "duplicate": done.duplicate,
                }))?;
            } else {
                outln!("{}", done.task_id);
                if done.duplicate {
                    eprintln!("note: idempotency key seen before; this is the first task's id");
                }
            }
            Ok(0)
        }
        TaskCommand::Revoke {
            id,
            reason,
            timeout,
            format,
        } => {
            let stem = ctx.operator()?;
            crate::revoke::revoke(&stem, &[id], &reason, &[], timeout, format).await
        }
    }
}

fn unknown(id: &str) -> anyhow::Error {
    fail(
        Exit::Data,
        format!(
            "unknown task id {id:?} (never enqueued, or its status expired after STEM_RESULT_TTL)"
        ),
    )
}

/// Prints a status as JSON (the `GET /tasks/{id}` document) or as a
/// field/value table.
fn show(s: &TaskStatus, format: Format) -> anyhow::Result<()> {
    if format.json {
        return print_json(s);
    }
    let compact = |v: &Value| -> String {
        if v.is_null() {
            "-".into()
        } else if let Some(t) = v.as_str() {
            t.to_string()
        } else {
            v.to_string()
        }
    };
    let mut t = Table::new(&["Field", "Value"]);
    let mut add = |k: &str, v: String| t.row(vec![k.into(), v]);
    add("ID", s.id.clone());
    add("Task", s.task.clone());
    add("Queue", s.queue.clone());
    add("State", s.state.as_str().into());
    add("Attempt", s.attempt.to_string());
    add("Max Retries", s.max_retries.to_string());
    add("Created", s.created_at.clone());
    add("Updated", s.updated_at.clone());
    add("Result", compact(&s.result));
    add(
        "Error",
        or_dash(s.error.as_ref().map(|e| match &e.reason {
            Some(r) => format!("{} ({}, reason {r})", e.message, e.kind),
            None => format!("{} ({})", e.message, e.kind),
        })),
    );
    add(
        "Progress",
        or_dash(
            s.progress
                .as_ref()
                .map(|p| format!("{:.0}%", p.fraction * 100.0)),
        ),
    );
    t.print();
    Ok(())
}
