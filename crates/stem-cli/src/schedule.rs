//! `stem schedule list|show|apply|delete|enable|disable|dry-run`: the
//! schedule store on `STEM_SCHEDULE_STORE_URL` (the calls are mapped in
//! `stem::schedule`'s module doc).

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use stem::envelope::format_ms;
use stem::schedule::entry::validate_id;
use stem::schedule::spec::parse_timezone;
use stem::schedule::{seed, ScheduleEntry, ScheduleStore, ScheduleSummary, Spec};

use crate::context::Ctx;
use crate::fail::{bad_input, fail, require_yes, Exit};
use crate::output::{or_dash, outln, plural, print_json, short_duration, Format, Table};

#[derive(Subcommand, Debug)]
pub(crate) enum ScheduleCommand {
    /// List every schedule entry (soonest next run first, disabled last).
    List(Format),
    /// Print one entry as JSON: definition and run history.
    Show {
        /// Schedule id.
        id: String,
        /// Accepted for uniformity: the output is always JSON.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Create or update entries from a YAML file in beat's format
    /// (`entries:`). Run history is kept. An invalid file changes nothing
    /// (exit 65).
    Apply {
        /// The schedule file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only validate the file.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Delete an entry and its run history (needs --yes).
    Delete {
        /// Schedule id.
        id: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Enable an entry; its next run is planned from now.
    Enable {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        format: Format,
    },
    /// Disable an entry; beat stops firing it.
    Disable {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        format: Format,
    },
    /// Print the next planned slots, one RFC 3339 UTC timestamp per line
    /// (jitter is reported on stderr, not applied).
    DryRun(DryRunArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["id", "spec"])))]
pub(crate) struct DryRunArgs {
    /// A stored schedule entry.
    #[arg(long)]
    id: Option<String>,
    /// A spec: every:<n>[ms|s|m|h|d] or cron (5 fields, or 6 with seconds).
    #[arg(long)]
    spec: Option<String>,
    /// How many slots to print.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Start strictly after this RFC 3339 time (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// IANA time zone for a cron --spec (default UTC).
    #[arg(long, value_name = "TZ", conflicts_with = "id")]
    timezone: Option<String>,
    /// Print a JSON array of the timestamps instead of one per line.
    #[arg(long)]
    json: bool,
}

fn parse_time(v: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(v.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid time {v:?}: {e} (use RFC 3339, e.g. 2025-01-31T09:00:00Z)"))
}

pub(crate) async fn run(ctx: &Ctx, cmd: ScheduleCommand) -> anyhow::Result<i32> {
    // `dry-run --spec` needs no store.
    if let ScheduleCommand::DryRun(args) = &cmd {
        if args.spec.is_some() {
            return dry_run_spec(args);
        }
    }
    if let ScheduleCommand::Apply {
        file,
        dry_run: true,
        format,
    } = &cmd
    {
        let entries = load(file)?;
        report_apply(
            &entries
                .iter()
                .map(|e| (e.id.clone(), "valid"))
                .collect::<Vec<_>>(),
            *format,
            true,
        )?;
        return Ok(0);
    }
    let stores = ctx.schedules()?;
    let store = stores.schedules.as_ref();
    match cmd {
        ScheduleCommand::List(format) => list(store, format).await,
        ScheduleCommand::Show { id, .. } => {
            let entry = get(store, &id).await?;
            print_json(&entry.to_json())?;
            Ok(0)
        }
        ScheduleCommand::Apply { file, format, .. } => {
            let entries = load(&file)?;
            for e in &entries {
                if stem_demo::spec(&e.task).is_none() {
                    eprintln!(
                        "note: schedule {:?}: task {:?} is not in the demo catalogue; beat publishes it with no retries",
                        e.id, e.task
                    );
                }
            }
            let done = seed::apply(store, &entries, Utc::now()).await?;
            let rows: Vec<(String, &str)> =
                done.into_iter().map(|(id, o)| (id, o.as_str())).collect();
            report_apply(&rows, format, false)?;
            Ok(0)
        }
        ScheduleCommand::Delete { id, yes, format } => {
            check_id(&id)?;
            require_yes(yes, &format!("deleting schedule {id:?}"))?;
            if !store.delete(&id).await? {
                return Err(unknown(&id));
            }
            if format.json {
                print_json(&serde_json::json!({ "id": id, "deleted": true }))?;
            } else {
                outln!("Deleted schedule {id:?}.");
            }
            Ok(0)
        }
        ScheduleCommand::Enable { id, format } => set_enabled(store, &id, true, format).await,
        ScheduleCommand::Disable { id, format } => set_enabled(store, &id, false, format).await,
        ScheduleCommand::DryRun(args) => dry_run_id(store, &args).await,
    }
}

fn check_id(id: &str) -> anyhow::Result<()> {
    validate_id(id).map_err(|e| bad_input(&e))
}

fn unknown(id: &str) -> anyhow::Error {
    fail(
        Exit::Data,
        format!("no schedule {id:?} (see `stem schedule list`)"),
    )
}

async fn get(store: &dyn ScheduleStore, id: &str) -> anyhow::Result<ScheduleEntry> {
    check_id(id)?;
    store.get(id).await?.ok_or_else(|| unknown(id))
}

/// Strict load: every problem on stderr, exit 65, nothing applied.
fn load(file: &std::path::Path) -> anyhow::Result<Vec<ScheduleEntry>> {
    match seed::load_file_strict(file) {
        Ok(entries) => Ok(entries),
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", file.display());
            }
            Err(fail(
                Exit::Data,
                format!(
                    "{} is invalid ({}); nothing was applied",
                    file.display(),
                    plural(errors.len(), "problem", "problems")
                ),
            ))
        }
    }
}

#[derive(Serialize)]
struct Applied<'a> {
    id: &'a str,
    outcome: &'a str,
}

fn report_apply(rows: &[(String, &str)], format: Format, dry_run: bool) -> anyhow::Result<()> {
    if format.json {
        let v: Vec<Applied> = rows
            .iter()
            .map(|(id, o)| Applied { id, outcome: o })
            .collect();
        return print_json(&v);
    }
    if dry_run {
        outln!(
            "Validated {}; nothing was applied.",
            plural(rows.len(), "schedule", "schedules")
        );
        return Ok(());
    }
    let mut t = Table::new(&["ID", "Outcome"]);
    for (id, o) in rows {
        t.row(vec![id.clone(), o.to_string()]);
    }
    t.print();
    let count = |o: &str| rows.iter().filter(|(_, x)| *x == o).count();
    outln!(
        "Applied {}: {} created, {} updated, {} unchanged.",
        plural(rows.len(), "schedule", "schedules"),
        count("created"),
        count("updated"),
        count("unchanged")
    );
    Ok(())
}

async fn list(store: &dyn ScheduleStore, format: Format) -> anyhow::Result<i32> {
    let rows: Vec<ScheduleSummary> = store.list().await?.iter().map(|e| e.summary()).collect();
    if format.json {
        print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("No schedules found.");
        return Ok(0);
    }
    let mut t = Table::new(&[
        "ID", "Task", "Queue", "Spec", "Next Run", "Last Run", "Jitter", "Enabled",
    ]);
    for r in rows {
        t.row(vec![
            r.id,
            r.task,
            r.queue,
            r.spec,
            or_dash(r.next_run_at),
            or_dash(r.last_run_at),
            if r.jitter_ms == 0 {
                "-".into()
            } else {
                short_duration(std::time::Duration::from_millis(r.jitter_ms))
            },
            if r.enabled { "yes" } else { "no" }.into(),
        ]);
    }
    t.print();
    Ok(0)
}

async fn set_enabled(
    store: &dyn ScheduleStore,
    id: &str,
    enabled: bool,
    format: Format,
) -> anyhow::Result<i32> {
    check_id(id)?;
    let entry = store
        .set_enabled(id, enabled, Utc::now())
        .await?
        .ok_or_else(|| unknown(id))?;
    if format.json {
        print_json(&entry.summary())?;
    } else if enabled {
        outln!(
            "Enabled schedule {id:?} (next run {}).",
            or_dash(
                entry
                    .history
                    .next_run_at
                    .map(|t| format_ms(t.timestamp_millis()))
            )
        );
    } else {
        outln!("Disabled schedule {id:?}.");
    }
    Ok(0)
}

fn print_slots(slots: &[DateTime<Utc>], count: u32, json: bool) -> anyhow::Result<i32> {
    let text: Vec<String> = slots
        .iter()
        .map(|s| format_ms(s.timestamp_millis()))
        .collect();
    if json {
        print_json(&text)?;
    } else {
        for t in &text {
            outln!("{t}");
        }
    }
    if slots.len() < count as usize {
        return Err(fail(
            Exit::Data,
            format!(
                "the schedule has only {} after the start time",
                plural(slots.len(), "slot", "slots")
            ),
        ));
    }
    Ok(0)
}

fn dry_run_spec(args: &DryRunArgs) -> anyhow::Result<i32> {
    let text = args.spec.as_deref().unwrap_or_default();
    let spec = Spec::parse(text).map_err(|e| bad_input(&e))?;
    let tz =
        parse_timezone(args.timezone.as_deref().unwrap_or_default()).map_err(|e| bad_input(&e))?;
    let from = args.from.unwrap_or_else(Utc::now);
    let anchor = stem::schedule::entry::truncate_ms(from);
    let slots = spec.upcoming(from, tz, anchor, args.count as usize);
    if spec.period().is_some() {
        eprintln!(
            "note: an every: grid starts when the entry is created; this one starts at {}",
            format_ms(anchor.timestamp_millis())
        );
    }
    print_slots(&slots, args.count, args.json)
}

async fn dry_run_id(store: &dyn ScheduleStore, args: &DryRunArgs) -> anyhow::Result<i32> {
    let id = args.id.as_deref().unwrap_or_default();
    let entry = get(store, id)
        .await
        .with_context(|| "schedule dry-run".to_string())?;
    let from = args.from.unwrap_or_else(Utc::now);
    let slots = entry.upcoming(from, args.count as usize);
    if !entry.jitter.is_zero() {
        eprintln!(
            "jitter: each firing may start up to {} after its slot (not applied here)",
            short_duration(entry.jitter)
        );
    }
    if !entry.enabled {
        eprintln!("note: schedule {id:?} is disabled; these slots fire only once it is enabled");
    }
    print_slots(&slots, args.count, args.json)
}
