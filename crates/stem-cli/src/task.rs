//! `stem task status|wait|enqueue|revoke`.
//!
//! `task wait` exits 0 when the task succeeded, 1 when it failed or was
//! cancelled, 75 when it is still not finished after `--timeout`, 65 for an
//! unknown id.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use stem::client::{EnqueueOptions, Stem};
use stem::envelope::{TaskState, TaskStatus};
use stem::StemError;

use crate::context::{parse_duration, parse_duration_or_zero, Ctx};
use crate::fail::{fail, Exit};
use crate::output::{or_dash, outln, print_json, short_duration, Format, Table};

#[derive(Subcommand, Debug)]
pub(crate) enum TaskCommand {
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
    Enqueue(EnqueueArgs),
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

/// The flags of `task enqueue`.
#[derive(Args, Debug)]
pub(crate) struct EnqueueArgs {
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
}

/// Runs one `stem task` command.
pub(crate) async fn run(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<i32> {
    match cmd {
        TaskCommand::Status { id, format } => status(ctx, &id, format).await,
        TaskCommand::Wait {
            id,
            timeout,
            format,
        } => wait(ctx, &id, timeout, format).await,
        TaskCommand::Enqueue(args) => enqueue(ctx, args).await,
        TaskCommand::Revoke {
            id,
            reason,
            timeout,
            format,
        } => revoke(ctx, id, &reason, timeout, format).await,
    }
}

/// `task status`: the task's status now.
async fn status(ctx: &Ctx, id: &str, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer()?;
    let status = stem.status(id).await?.ok_or_else(|| unknown(id))?;
    show(&status, format)?;
    Ok(0)
}

/// `task wait`: the task's status once it finished; exit 0 when it
/// succeeded, 1 when it failed or was cancelled, 75 after `timeout`.
async fn wait(ctx: &Ctx, id: &str, timeout: Duration, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer()?;
    if stem.status(id).await?.is_none() {
        return Err(unknown(id));
    }
    match stem.wait(id, timeout).await {
        Ok(status) => {
            show(&status, format)?;
            Ok(match status.state {
                TaskState::Succeeded => 0,
                _ => Exit::TaskFailed.code(),
            })
        }
        Err(StemError::WaitTimedOut(_)) => {
            let state = stem
                .status(id)
                .await?
                .map(|s| s.state.as_str())
                .unwrap_or("unknown");
            Err(fail(
                Exit::TempFail,
                format!(
                    "task {id} is still {state} after {}",
                    short_duration(timeout)
                ),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `task enqueue`: publishes one task (signed when a key is configured)
/// and prints its id.
async fn enqueue(ctx: &Ctx, a: EnqueueArgs) -> anyhow::Result<i32> {
    let args: Value = serde_json::from_str(&a.args)
        .map_err(|e| fail(Exit::Data, format!("--args is not valid JSON: {e}")))?;
    if !args.is_object() {
        return Err(fail(Exit::Data, "--args must be a JSON object"));
    }
    let stem = ctx.producer()?;
    check_catalogue(&stem, &a.task, a.queue.is_some(), a.max_retries)?;
    if stem.signer().is_none() {
        eprintln!(
            "warning: no signing key (STEM_SIGNING_KEYS / STEM_SIGNING_PRIVATE_KEYS + STEM_SIGNING_ACTIVE_KEY): \
             the task is unsigned and workers holding keys will dead-letter it"
        );
    }
    let opts = EnqueueOptions {
        queue: a.queue,
        max_retries: a.max_retries,
        priority: a.priority,
        countdown: a.countdown.filter(|c| !c.is_zero()),
        idempotency_key: a.idempotency_key,
        ..Default::default()
    };
    let done = stem.enqueue_raw(&a.task, args, opts).await?;
    let doc = json!({
        "taskId": done.task_id,
        "task": a.task,
        "duplicate": done.duplicate,
    });
    a.format.print(&doc, || {
        outln!("{}", done.task_id);
        if done.duplicate {
            eprintln!("note: idempotency key seen before; this is the first task's id");
        }
    })?;
    Ok(0)
}

/// Any task name may be enqueued: the operator CLI is not tied to the demo
/// catalogue. One outside it has no known queue, so it must be named (a
/// typo would otherwise land in `default`): exit 65 without `--queue`, a
/// note on stderr with it.
fn check_catalogue(
    stem: &Stem,
    task: &str,
    has_queue: bool,
    max_retries: Option<u32>,
) -> anyhow::Result<()> {
    if stem.registry().options(task).is_some() {
        return Ok(());
    }
    if !has_queue {
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
    Ok(())
}

/// `task revoke`: revokes one task and tells every live worker.
async fn revoke(
    ctx: &Ctx,
    id: String,
    reason: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<i32> {
    let stem = ctx.operator()?;
    crate::revoke::revoke(&stem, &[id], reason, &[], timeout, format).await
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
    let error = s.error.as_ref().map(|e| match &e.reason {
        Some(r) => format!("{} ({}, reason {r})", e.message, e.kind),
        None => format!("{} ({})", e.message, e.kind),
    });
    let progress = s
        .progress
        .as_ref()
        .map(|p| format!("{:.0}%", p.fraction * 100.0));
    Table::fields([
        ("ID", s.id.clone()),
        ("Task", s.task.clone()),
        ("Queue", s.queue.clone()),
        ("State", s.state.as_str().into()),
        ("Attempt", s.attempt.to_string()),
        ("Max Retries", s.max_retries.to_string()),
        ("Created", s.created_at.clone()),
        ("Updated", s.updated_at.clone()),
        ("Result", compact(&s.result)),
        ("Error", or_dash(error)),
        ("Progress", or_dash(progress)),
    ])
    .print();
    Ok(())
}
