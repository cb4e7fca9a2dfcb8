//! `stem dlq list|show|replay|purge`: dead letters of one queue. An entry
//! is named by its dead-letter id (`1718000000000-0`, from `dlq list`) or
//! by the task id inside it.
//!
//! Replay republishes the stored envelope with `attempt + 1`: same task id,
//! same signature (the signed body never changes), so a worker holding the
//! key verifies and runs it. The task's status is set to `queued` for the
//! new attempt, which outranks the old `failed`, unless the letter was
//! never authenticated (`stem::replay`).

use clap::Subcommand;
use serde::Serialize;
use serde_json::{json, Value};
use stem::broker::DeadLetter;
use stem::client::Stem;
use stem::envelope::format_ms;
use stem::replay::ReplayReport;

use crate::context::Ctx;
use crate::fail::{fail, require_yes, Exit};
use crate::output::{or_dash, outln, plural, print_json, Format, Table};

#[derive(Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// Newest dead letters first.
    List {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        format: Format,
    },
    /// One dead letter as JSON: reason, error, envelope.
    Show {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        /// Dead-letter id or task id.
        id: String,
        /// Accepted for uniformity: the output is always JSON.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Run dead-lettered tasks again (same id, same signature). More than
    /// one entry, or --all, needs --yes.
    Replay {
        /// Queue name.
        #[arg(short = 'q', long = "queue")]
        queue: String,
        /// Dead-letter ids or task ids.
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Replay every dead letter of the queue.
        #[arg(long)]
        all: bool,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Delete every dead letter of a queue (needs --yes).
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
}

/// One dead letter, for `list` and `show`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LetterRow {
    id: String,
    queue: String,
    task_id: Option<String>,
    task: Option<String>,
    attempt: Option<u32>,
    reason: String,
    error: Option<String>,
    dead_at: String,
}

impl LetterRow {
    fn of(l: &DeadLetter) -> Self {
        let spec = l.wire.as_ref().and_then(|w| w.spec().ok());
        LetterRow {
            id: l.id.clone(),
            queue: l.queue.clone(),
            task_id: spec.as_ref().map(|s| s.id.clone()),
            task: spec.as_ref().map(|s| s.name.clone()),
            attempt: l.wire.as_ref().map(|w| w.attempt),
            reason: l.reason.clone(),
            error: l.error.clone(),
            dead_at: format_ms(l.dead_at_ms),
        }
    }
}

/// How many dead letters `--all` and task-id look-ups read at most.
const SCAN: usize = 1_000_000;

/// Runs one `stem dlq` command.
pub(crate) async fn run(ctx: &Ctx, cmd: DlqCommand) -> anyhow::Result<i32> {
    match cmd {
        DlqCommand::List {
            queue,
            limit,
            format,
        } => list(ctx, &queue, limit, format).await,
        DlqCommand::Show { queue, id, .. } => show(ctx, &queue, &id).await,
        DlqCommand::Replay {
            queue,
            ids,
            all,
            yes,
            format,
        } => replay(ctx, &queue, &ids, all, yes, format).await,
        DlqCommand::Purge { queue, yes, format } => purge(ctx, &queue, yes, format).await,
    }
}

/// `dlq list`: the newest `limit` dead letters of `queue`, saying so when
/// there are more.
async fn list(ctx: &Ctx, queue: &str, limit: usize, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    let letters = stem.admin().list_dead_letters(queue, limit).await?;
    let rows: Vec<LetterRow> = letters.iter().map(LetterRow::of).collect();
    if format.json {
        print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("No dead letters in {queue}.");
        return Ok(0);
    }
    let mut t = Table::new(&[
        "ID", "Task ID", "Task", "Attempt", "Reason", "Dead At", "Error",
    ])
    .right(&[3]);
    for r in rows {
        t.row(vec![
            r.id,
            or_dash(r.task_id),
            or_dash(r.task),
            or_dash(r.attempt),
            r.reason,
            r.dead_at,
            or_dash(r.error.map(|e| e.replace('\n', " "))),
        ]);
    }
    t.print();
    let total = stem.admin().stats(queue).await?.dead;
    if total as usize > limit {
        outln!("Showing the newest {limit} of {total}; use --limit to see more.");
    }
    Ok(0)
}

/// `dlq show`: one dead letter as JSON, with its signing details, the
/// decoded envelope and the raw stored entry.
async fn show(ctx: &Ctx, queue: &str, id: &str) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    let l = resolve(&stem, queue, id).await?;
    let mut doc = serde_json::to_value(LetterRow::of(&l))?;
    if let Value::Object(m) = &mut doc {
        let wire = l.wire.as_ref();
        m.insert("keyId".into(), json!(wire.and_then(|w| w.key_id.clone())));
        m.insert(
            "signed".into(),
            json!(wire.is_some_and(|w| w.signature.is_some())),
        );
        m.insert(
            "envelope".into(),
            wire.and_then(|w| w.spec().ok())
                .map(serde_json::to_value)
                .transpose()?
                .unwrap_or(Value::Null),
        );
        m.insert("raw".into(), json!(l.raw));
    }
    print_json(&doc)?;
    Ok(0)
}

/// `dlq replay`: republishes the named dead letters, or every one with
/// `--all`. A named entry that could not be replayed makes it exit 65.
async fn replay(
    ctx: &Ctx,
    queue: &str,
    ids: &[String],
    all: bool,
    yes: bool,
    format: Format,
) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    if all {
        require_yes(yes, &format!("replaying every dead letter of {queue}"))?;
    } else if ids.len() > 1 {
        require_yes(yes, &format!("replaying {} dead letters", ids.len()))?;
    }
    let ReplayReport { replayed, skipped } = if all {
        stem.replay_dead_letters(queue, SCAN).await?
    } else {
        replay_each(&stem, queue, ids).await?
    };
    for r in replayed.iter().filter(|r| r.revoked) {
        eprintln!(
            "note: task {} was revoked; workers will drop the replayed copy without running it",
            r.task_id
        );
    }
    format.print(&json!({ "replayed": replayed, "skipped": skipped }), || {
        outln!(
            "Replayed {} from {queue}.",
            plural(replayed.len(), "dead letter", "dead letters")
        );
        if !replayed.is_empty() {
            let mut t = Table::new(&["ID", "Task ID", "Task", "Attempt"]).right(&[3]);
            for r in &replayed {
                t.row(vec![
                    r.id.clone(),
                    r.task_id.clone(),
                    r.task.clone(),
                    r.attempt.to_string(),
                ]);
            }
            t.print();
        }
    })?;
    if !skipped.is_empty() {
        eprintln!(
            "not replayed (malformed, or replayed meanwhile): {}",
            skipped.join(", ")
        );
        if !all {
            return Err(fail(
                Exit::Data,
                format!(
                    "{} could not be replayed",
                    plural(skipped.len(), "entry", "entries")
                ),
            ));
        }
    }
    Ok(0)
}

/// Replays the dead letters named by `ids`, in order; exit 65 at the first
/// id naming none (the ones before it are replayed).
async fn replay_each(stem: &Stem, queue: &str, ids: &[String]) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport::default();
    for id in ids {
        let l = resolve(stem, queue, id).await?;
        match stem.replay_dead_letter(queue, &l).await? {
            Some(r) => report.replayed.push(r),
            None => report.skipped.push(l.id.clone()),
        }
    }
    Ok(report)
}

/// `dlq purge`: deletes every dead letter of `queue`.
async fn purge(ctx: &Ctx, queue: &str, yes: bool, format: Format) -> anyhow::Result<i32> {
    let stem = ctx.consumer_on(queue).await?;
    require_yes(yes, &format!("purging the dead letters of {queue}"))?;
    let n = stem.admin().purge_dead_letters(queue).await?;
    format.print(&json!({ "queue": queue, "purged": n }), || {
        outln!(
            "Removed {} from {queue}.",
            plural(n as usize, "dead letter", "dead letters")
        )
    })?;
    Ok(0)
}

/// True for a stream entry id (`<ms>-<seq>`).
fn is_entry_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The dead letter named by a dead-letter id or a task id; exit 65 when
/// there is none.
async fn resolve(stem: &Stem, queue: &str, id: &str) -> anyhow::Result<DeadLetter> {
    let admin = stem.admin();
    if is_entry_id(id) {
        if let Some(l) = admin.get_dead_letter(queue, id).await? {
            return Ok(l);
        }
    } else if let Some(l) = admin
        .list_dead_letters(queue, SCAN)
        .await?
        .into_iter()
        .find(|l| l.task_id().as_deref() == Some(id))
    {
        return Ok(l);
    }
    Err(fail(
        Exit::Data,
        format!("no dead letter {id:?} in {queue} (see `stem dlq list -q {queue}`)"),
    ))
}
