//! `stem queue list|inspect|purge`: broker counts per queue.

use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use stem::client::Stem;

use crate::context::Ctx;
use crate::fail::require_yes;
use crate::output::{join_or_dash, outln, plural, yes_no, Format, Table};

#[derive(Subcommand, Debug)]
pub(crate) enum QueueCommand {
    /// Every known queue: ready, inflight, delayed, dead letters, paused.
    List(Format),
    /// One queue's counts and the live workers consuming it.
    Inspect {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        #[command(flatten)]
        format: Format,
    },
    /// Delete every ready and delayed task of a queue (needs --yes).
    /// Tasks being run and dead letters are kept.
    Purge {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Stop listing an empty queue nothing consumes any more (its empty
    /// streams and recent-task index go too). Refused, exit 65, while it
    /// holds any task or a live worker consumes it.
    Forget {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        #[command(flatten)]
        format: Format,
    },
}

/// One row of `queue list` (and the head of `queue inspect`).
#[derive(Serialize)]
struct QueueRow {
    queue: String,
    ready: u64,
    inflight: u64,
    delayed: u64,
    dead: u64,
    paused: bool,
}

#[derive(Serialize)]
struct QueueDetail {
    #[serde(flatten)]
    counts: QueueRow,
    /// Live workers consuming the queue.
    workers: Vec<String>,
}

/// Runs one `stem queue` command.
pub(crate) async fn run(ctx: &Ctx, cmd: QueueCommand) -> anyhow::Result<i32> {
    match cmd {
        QueueCommand::List(format) => list(ctx, format).await,
        QueueCommand::Inspect { queue, format } => inspect(ctx, &queue, format).await,
        QueueCommand::Purge { queue, yes, format } => purge(ctx, &queue, yes, format).await,
        QueueCommand::Forget { queue, format } => forget(ctx, &queue, format).await,
    }
}

/// `queue list`: the counts of every queue the broker knows.
async fn list(ctx: &Ctx, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer()?;
    let paused = stem.control().paused_queues().await?;
    let mut rows = Vec::new();
    for q in stem.admin().known_queues().await? {
        rows.push(row(&stem, &q, &paused).await?);
    }
    format.print(&rows, || {
        if rows.is_empty() {
            outln!("No queues yet (a queue is known once a task is published to it or a worker consumes it).");
            return;
        }
        let mut t = Table::new(&["Queue", "Ready", "Inflight", "Delayed", "Dead", "Paused"])
            .right(&[1, 2, 3, 4]);
        for r in &rows {
            t.row(vec![
                r.queue.clone(),
                r.ready.to_string(),
                r.inflight.to_string(),
                r.delayed.to_string(),
                r.dead.to_string(),
                yes_no(r.paused),
            ]);
        }
        t.print();
    })?;
    Ok(0)
}

/// `queue inspect`: one queue's counts and the live workers consuming it.
async fn inspect(ctx: &Ctx, queue: &str, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    let paused = stem.control().paused_queues().await?;
    let counts = row(&stem, queue, &paused).await?;
    let workers = stem.workers_consuming(queue).await?;
    let d = QueueDetail { counts, workers };
    format.print(&d, || {
        Table::fields([
            ("Queue", d.counts.queue.clone()),
            ("Ready", d.counts.ready.to_string()),
            ("Inflight", d.counts.inflight.to_string()),
            ("Delayed", d.counts.delayed.to_string()),
            ("Dead", d.counts.dead.to_string()),
            ("Paused", yes_no(d.counts.paused)),
            ("Workers", join_or_dash(&d.workers, ", ")),
        ])
        .print()
    })?;
    Ok(0)
}

/// `queue purge`: deletes the ready and delayed tasks of `queue`.
async fn purge(ctx: &Ctx, queue: &str, yes: bool, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    require_yes(yes, &format!("purging queue {queue:?}"))?;
    let n = stem.admin().purge(queue).await?;
    format.print(&json!({ "queue": queue, "purged": n }), || {
        outln!(
            "Purged {} from {queue}.",
            plural(n as usize, "task", "tasks")
        )
    })?;
    Ok(0)
}

/// `queue forget`: stops listing an empty queue nothing consumes; refused,
/// exit 65, while it holds a task or a live worker consumes it.
async fn forget(ctx: &Ctx, queue: &str, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    let forgotten = stem.forget_queue(queue).await?;
    format.print(&json!({ "queue": queue, "forgotten": forgotten }), || {
        outln!("Forgot queue {queue}: it is no longer listed.")
    })?;
    Ok(0)
}

/// The counts of `queue`; `paused` lists the paused queues.
async fn row(stem: &Stem, queue: &str, paused: &[String]) -> anyhow::Result<QueueRow> {
    let s = stem.admin().stats(queue).await?;
    Ok(QueueRow {
        queue: s.queue,
        ready: s.ready,
        inflight: s.inflight,
        delayed: s.delayed,
        dead: s.dead,
        paused: paused.iter().any(|p| p == queue),
    })
}
