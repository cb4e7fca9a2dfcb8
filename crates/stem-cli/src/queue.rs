//! `stem queue list|inspect|purge`: broker counts per queue.

use clap::Subcommand;
use serde::Serialize;
use stem::client::Stem;

use crate::context::Ctx;
use crate::fail::{fail, require_yes, Exit};
use crate::output::{outln, plural, print_json, Format, Table};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
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

pub async fn run(ctx: &Ctx, cmd: QueueCommand) -> anyhow::Result<i32> {
    let stem = ctx.consumer()?;
    match cmd {
        QueueCommand::List(format) => {
            let admin = stem.admin();
            let paused = stem.control().paused_queues().await?;
            let mut rows = Vec::new();
            for q in admin.known_queues().await? {
                rows.push(row(&stem, &q, &paused).await?);
            }
            if format.json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                outln!("No queues yet (a queue is known once a task is published to it or a worker consumes it).");
            } else {
                let mut t =
                    Table::new(&["Queue", "Ready", "Inflight", "Delayed", "Dead", "Paused"])
                        .right(&[1, 2, 3, 4]);
                for r in rows {
                    t.row(vec![
                        r.queue,
                        r.ready.to_string(),
                        r.inflight.to_string(),
                        r.delayed.to_string(),
                        r.dead.to_string(),
                        if r.paused { "yes" } else { "no" }.into(),
                    ]);
                }
                t.print();
            }
            Ok(0)
        }
        QueueCommand::Inspect { queue, format } => {
            known(&stem, &queue).await?;
            let paused = stem.control().paused_queues().await?;
            let counts = row(&stem, &queue, &paused).await?;
            let workers: Vec<String> = stem
                .control()
                .workers()
                .await?
                .into_iter()
                .filter(|w| w.queues.contains(&queue))
                .map(|w| w.name)
                .collect();
            let d = QueueDetail { counts, workers };
            if format.json {
                print_json(&d)?;
            } else {
                let mut t = Table::new(&["Field", "Value"]);
                for (k, v) in [
                    ("Queue", d.counts.queue.clone()),
                    ("Ready", d.counts.ready.to_string()),
                    ("Inflight", d.counts.inflight.to_string()),
                    ("Delayed", d.counts.delayed.to_string()),
                    ("Dead", d.counts.dead.to_string()),
                    ("Paused", if d.counts.paused { "yes" } else { "no" }.into()),
                    (
                        "Workers",
                        if d.workers.is_empty() {
                            "-".into()
                        } else {
                            d.workers.join(", ")
                        },
                    ),
                ] {
                    t.row(vec![k.into(), v]);
                }
                t.print();
            }
            Ok(0)
        }
        QueueCommand::Purge { queue, yes, format } => {
            known(&stem, &queue).await?;
            require_yes(yes, &format!("purging queue {queue:?}"))?;
            let n = stem.admin().purge(&queue).await?;
            if format.json {
                print_json(&serde_json::json!({ "queue": queue, "purged": n }))?;
            } else {
                outln!(
                    "Purged {} from {queue}.",
                    plural(n as usize, "task", "tasks")
                );
            }
            Ok(0)
        }
        QueueCommand::Forget { queue, format } => {
            known(&stem, &queue).await?;
            let forgotten = stem.forget_queue(&queue).await?;
            if format.json {
                print_json(&serde_json::json!({ "queue": queue, "forgotten": forgotten }))?;
            } else {
                outln!("Forgot queue {queue}: it is no longer listed.");
            }
            Ok(0)
        }
    }
}

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

/// Exit 65 for a queue the broker has never seen (a typo, usually).
pub async fn known(stem: &Stem, queue: &str) -> anyhow::Result<()> {
    stem::config::validate_queue_name("queue", queue)
        .map_err(|e| fail(Exit::Data, format!("invalid queue name: {e}")))?;
    let queues = stem.admin().known_queues().await?;
    if queues.iter().any(|q| q == queue) {
        return Ok(());
    }
    Err(fail(
        Exit::Data,
        format!(
            "unknown queue {queue:?} (known: {})",
            if queues.is_empty() {
                "none".to_string()
            } else {
                queues.join(", ")
            }
        ),
    ))
}
