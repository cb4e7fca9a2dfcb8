//! `stem worker list|ping|stats|inspect|revoke|shutdown|pause|resume`:
//! heartbeats and control commands. Every worker listens whatever its
//! namespace; `-w NAME` (repeatable) addresses only those workers.
//!
//! Exit codes: `ping`, `stats`, `inspect` and `shutdown` exit 75 when an
//! addressed worker (named, or every live one) did not answer within
//! `--timeout`, or when no worker is alive. `revoke`, `pause` and `resume`
//! are persisted before the command is sent, so they exit 0 even when
//! nobody answers (workers apply them at their next status poll or
//! heartbeat).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use stem::client::Stem;
use stem::envelope::now_ms;

use crate::context::{check_queue_name, parse_duration, Ctx};
use crate::fail::{fail, require_yes, Exit};
use crate::output::{age, join_or_dash, outln, print_json, Format, Table};
use crate::revoke::revoke;
use stem::control::{Exchange, Workers};

/// Which workers, and how long to wait for them.
#[derive(Args, Debug, Clone)]
pub(crate) struct Targets {
    /// Address only this worker (repeatable); default: every live worker.
    #[arg(short = 'w', long = "worker", value_name = "NAME")]
    workers: Vec<String>,
    /// How long to wait for replies.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

impl Targets {
    /// The handle that sends commands to these workers.
    fn of(&self, stem: &Stem) -> Workers {
        stem.workers().only(&self.workers).timeout(self.timeout)
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum WorkerCommand {
    /// Live workers from their heartbeats (no command is sent).
    List(Format),
    /// Ask workers to answer; exit 75 if an addressed worker does not.
    Ping {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
    /// Counters and settings reported by each worker.
    Stats {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
    /// The tasks each worker is running now.
    Inspect {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
    /// Revoke tasks: persisted (queued copies never run) and running
    /// copies are cancelled at once.
    Revoke {
        /// Task ids.
        #[arg(required = true, value_name = "TASK_ID")]
        task_ids: Vec<String>,
        /// Reason recorded in the task's error.
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
    /// Stop workers gracefully, as SIGTERM does (needs --yes).
    Shutdown {
        #[command(flatten)]
        targets: Targets,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Pause queues (persisted, for every worker; -w only limits who is
    /// told at once, the others follow at their next heartbeat).
    Pause {
        /// Queue to pause (repeatable).
        #[arg(short = 'q', long = "queue", value_name = "QUEUE", required = true)]
        queues: Vec<String>,
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
    /// Resume paused queues.
    Resume {
        /// Queue to resume (repeatable).
        #[arg(short = 'q', long = "queue", value_name = "QUEUE", required = true)]
        queues: Vec<String>,
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        format: Format,
    },
}

/// Runs one `stem worker` command.
pub(crate) async fn run(ctx: &Ctx, cmd: WorkerCommand) -> anyhow::Result<i32> {
    let stem = ctx.operator()?;
    match cmd {
        WorkerCommand::List(format) => list(&stem, format).await,
        WorkerCommand::Ping { targets, format } => ping(&stem, &targets, format).await,
        WorkerCommand::Stats { targets, format } => stats(&stem, &targets, format).await,
        WorkerCommand::Inspect { targets, format } => inspect(&stem, &targets, format).await,
        WorkerCommand::Revoke {
            task_ids,
            reason,
            targets,
            format,
        } => {
            revoke(
                &stem,
                &task_ids,
                &reason,
                &targets.workers,
                targets.timeout,
                format,
            )
            .await
        }
        WorkerCommand::Shutdown {
            targets,
            yes,
            format,
        } => shutdown(&stem, &targets, yes, format).await,
        WorkerCommand::Pause {
            queues,
            targets,
            format,
        } => pause(&stem, true, &queues, &targets, format).await,
        WorkerCommand::Resume {
            queues,
            targets,
            format,
        } => pause(&stem, false, &queues, &targets, format).await,
    }
}

/// `worker ping`: who answers, and when.
async fn ping(stem: &Stem, targets: &Targets, format: Format) -> anyhow::Result<i32> {
    let ex = alive(targets.of(stem).ping().await?, "ping")?;
    let mut t = Table::new(&["Worker", "Status", "Answered At"]);
    for a in &ex.answers {
        t.row(vec![
            a.worker.clone(),
            a.status.into(),
            a.reply.clone().map_or_else(|| "-".into(), |r| r.timestamp),
        ]);
    }
    finish(&ex, format, t, true)
}

/// `worker stats`: each worker's settings and counters.
async fn stats(stem: &Stem, targets: &Targets, format: Format) -> anyhow::Result<i32> {
    let ex = alive(targets.of(stem).stats().await?, "stats")?;
    let mut t = Table::new(&[
        "Worker",
        "Status",
        "Namespace",
        "Queues",
        "Paused",
        "Concurrency",
        "Inflight",
        "Started",
        "Succeeded",
        "Failed",
        "Retried",
        "Running Since",
    ])
    .right(&[5, 6, 7, 8, 9, 10]);
    for a in &ex.answers {
        let mut row = vec![a.worker.clone(), a.status.into()];
        match a.reply.clone() {
            Some(i) => row.extend([
                i.namespace,
                i.queues.join(","),
                join_or_dash(&i.paused, ","),
                i.concurrency.to_string(),
                i.inflight.to_string(),
                i.started.to_string(),
                i.succeeded.to_string(),
                i.failed.to_string(),
                i.retried.to_string(),
                age(i.started_at, now_ms()),
            ]),
            None => row.extend(std::iter::repeat_n("-".to_string(), 10)),
        }
        t.row(row);
    }
    finish(&ex, format, t, true)
}

/// `worker inspect`: the tasks each worker is running, a row per task (one
/// row of dashes for a worker running none).
async fn inspect(stem: &Stem, targets: &Targets, format: Format) -> anyhow::Result<i32> {
    let ex = alive(targets.of(stem).inspect().await?, "inspect")?;
    let mut t = Table::new(&[
        "Worker",
        "Status",
        "Held",
        "Task ID",
        "Task",
        "Queue",
        "Attempt",
        "Running For",
    ])
    .right(&[2, 6]);
    for a in &ex.answers {
        let inspect = a.reply.clone();
        let held = inspect
            .as_ref()
            .map_or_else(|| "-".into(), |r| r.held.to_string());
        let active = inspect.map(|r| r.active).unwrap_or_default();
        if active.is_empty() {
            let mut row = vec![a.worker.clone(), a.status.into(), held.clone()];
            row.extend(std::iter::repeat_n("-".to_string(), 5));
            t.row(row);
        }
        for task in active {
            t.row(vec![
                a.worker.clone(),
                a.status.into(),
                held.clone(),
                task.id,
                task.task,
                task.queue,
                task.attempt.to_string(),
                format!("{:.1}s", task.runtime_ms as f64 / 1000.0),
            ]);
        }
    }
    finish(&ex, format, t, true)
}

/// `worker shutdown`: asks workers to stop gracefully.
async fn shutdown(
    stem: &Stem,
    targets: &Targets,
    yes: bool,
    format: Format,
) -> anyhow::Result<i32> {
    let who = if targets.workers.is_empty() {
        "shutting down every live worker".to_string()
    } else {
        format!("shutting down {}", targets.workers.join(", "))
    };
    require_yes(yes, &who)?;
    let ex = alive(targets.of(stem).shutdown().await?, "shutdown")?;
    let mut t = Table::new(&["Worker", "Status", "Reply", "Active Tasks"]).right(&[3]);
    for a in &ex.answers {
        let (status, active) = a.reply.clone().map_or(("-".into(), "-".into()), |r| {
            (r.status, r.active.to_string())
        });
        t.row(vec![a.worker.clone(), a.status.into(), status, active]);
    }
    finish(&ex, format, t, true)
}

/// Exits 75 at once when no worker was alive to `what`.
fn alive<T>(ex: Exchange<T>, what: &str) -> anyhow::Result<Exchange<T>> {
    if ex.nobody_alive {
        return Err(fail(
            Exit::TempFail,
            format!("no live workers to {what} (none is heartbeating)"),
        ));
    }
    Ok(ex)
}

/// Prints the exchange (table or JSON) and picks the exit code: 75 when an
/// addressed worker did not answer and `strict`, 70 when one answered with
/// an error.
fn finish<T: serde::Serialize>(
    ex: &Exchange<T>,
    format: Format,
    table: Table,
    strict: bool,
) -> anyhow::Result<i32> {
    if format.json {
        print_json(&ex.answers)?;
    } else {
        table.print();
    }
    let missing = ex.missing();
    if !missing.is_empty() {
        eprintln!("no reply from: {}", missing.join(", "));
        if strict {
            return Ok(Exit::TempFail.code());
        }
    }
    if let Some(a) = ex.answered().find(|a| a.status == "error") {
        eprintln!(
            "error from {}: {}",
            a.worker,
            a.error.as_deref().unwrap_or("unknown")
        );
        return Ok(Exit::Software.code());
    }
    Ok(0)
}

/// `worker list`: live workers from their heartbeats (no command is sent).
async fn list(stem: &Stem, format: Format) -> anyhow::Result<i32> {
    let workers = stem.control().workers().await?;
    if format.json {
        print_json(&workers)?;
        return Ok(0);
    }
    if workers.is_empty() {
        outln!("No live workers.");
        return Ok(0);
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "Worker",
        "Namespace",
        "Queues",
        "Paused",
        "Host",
        "PID",
        "Concurrency",
        "Inflight",
        "Succeeded",
        "Failed",
        "Heartbeat",
    ])
    .right(&[5, 6, 7, 8, 9]);
    for w in workers {
        t.row(vec![
            w.name,
            w.namespace,
            w.queues.join(","),
            join_or_dash(&w.paused, ","),
            w.host,
            w.pid.to_string(),
            w.concurrency.to_string(),
            w.inflight.to_string(),
            w.succeeded.to_string(),
            w.failed.to_string(),
            age(w.heartbeat_at, now),
        ]);
    }
    t.print();
    Ok(0)
}

/// `worker pause` (`paused`) and `worker resume`: persists the change for
/// every worker, then tells the addressed live ones.
async fn pause(
    stem: &Stem,
    paused: bool,
    queues: &[String],
    targets: &Targets,
    format: Format,
) -> anyhow::Result<i32> {
    for q in queues {
        check_queue_name(q)?;
    }
    let workers = targets.of(stem);
    let ex = if paused {
        workers.pause(queues).await?
    } else {
        workers.resume(queues).await?
    };
    let now_paused = stem.control().paused_queues().await?;
    format.print(
        &json!({
            "paused": now_paused,
            "workers": ex.answers,
        }),
        || {
            outln!(
                "{} {} (persisted). Paused now: {}",
                if paused { "Paused" } else { "Resumed" },
                queues.join(", "),
                join_or_dash(&now_paused, ", ")
            );
            if ex.nobody_alive {
                outln!("No live workers; workers apply it when they start.");
                return;
            }
            let mut t = Table::new(&["Worker", "Status", "Paused Queues"]);
            for a in &ex.answers {
                let list = a.reply.clone().map(|r| r.paused).unwrap_or_default();
                t.row(vec![
                    a.worker.clone(),
                    a.status.into(),
                    join_or_dash(&list, ","),
                ]);
            }
            t.print();
        },
    )?;
    let missing = ex.missing();
    if !missing.is_empty() {
        eprintln!(
            "no reply from: {} (they apply it at their next heartbeat)",
            missing.join(", ")
        );
    }
    Ok(0)
}
