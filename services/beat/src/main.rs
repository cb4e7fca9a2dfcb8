//! `beat`: the periodic scheduler. Reads `STEM_*` (flags override), seeds
//! the schedule store from `STEM_SCHEDULE_FILE` when set, then runs
//! [`stem::schedule::Beat`] until SIGTERM/SIGINT and exits 0. Any number of
//! beats may run against one store: one leads, the others take over within
//! the lease time. Invalid configuration exits 78.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig, StoreUrl};
use stem::runtime::{config_or_exit, shutdown_token};
use stem::schedule::{seed, Beat, BeatOptions, ScheduleStores};
use tokio_util::sync::CancellationToken;

/// Stem beat: fires schedule entries into their queues.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML schedule file to seed at start (overrides STEM_SCHEDULE_FILE).
    #[arg(long, value_name = "PATH")]
    schedule_file: Option<PathBuf>,
    /// Leader lease, e.g. 3s or 1500ms; renewed every third of it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "3s")]
    lease: Duration,
    /// Longest pause between two scheduling passes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "250ms")]
    tick: Duration,
    /// Unique id of this beat (default beat-<hostname>-<pid>-<random>).
    #[arg(long)]
    instance_id: Option<String>,
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    match stem::config::parse_duration(v) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid duration {v:?} (use <n>ms|s|m|h)")),
    }
}

/// Seeds `path` into the store: a missing or unreadable file is logged and
/// skipped; a store outage is retried with backoff until it works or the
/// process is asked to stop.
async fn seed_from(
    path: &std::path::Path,
    stores: &ScheduleStores,
    stem: &Stem,
    shutdown: &CancellationToken,
) {
    let file = match seed::load_file(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{e}; continuing without seeding");
            return;
        }
    };
    for e in &file.entries {
        if stem.registry().get(&e.task).is_none() {
            tracing::warn!(schedule = %e.id, task = %e.task, "task is not in this beat's catalogue; it is published with no retries");
        }
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match seed::apply(stores.schedules.as_ref(), &file.entries, chrono::Utc::now()).await {
            Ok(done) => {
                tracing::info!(
                    file = %path.display(), loaded = done.len(), skipped = file.skipped.len(),
                    "schedule file seeded"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "seeding the schedule store failed; retrying");
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    stem::telemetry::init_logging(stem::telemetry::log_format_from_env(), "info");
    let env = FlagsOverEnv::new().flag(
        "STEM_SCHEDULE_FILE",
        args.schedule_file.as_ref().map(|f| f.display()),
    );
    let config = config_or_exit(StemConfig::from_lookup(&env));
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem::demo::registry());
    let stores = config_or_exit(ScheduleStores::connect(&config));
    if config.schedule_store_url == StoreUrl::Memory {
        tracing::warn!(
            "memory:// schedule store: schedules and the leader lease are private to this process"
        );
    }
    tracing::info!(
        broker = %config.broker_url.redacted(),
        schedule_store = %config.schedule_store_url.redacted(),
        "Beat scheduler starting"
    );
    let shutdown = shutdown_token();
    if let Some(path) = &config.schedule_file {
        seed_from(path, &stores, &stem, &shutdown).await;
    }
    let mut opts = BeatOptions {
        lease: args.lease,
        tick: args.tick,
        ..Default::default()
    };
    if let Some(id) = args.instance_id {
        opts.instance_id = id;
    }
    let instance = opts.instance_id.clone();
    let beat = Beat::new(stem, stores.schedules, stores.locks, opts);
    let metrics = beat.metrics();
    stem::telemetry::start_exporters(
        &config.metric_exporters,
        std::sync::Arc::new(move || metrics.families(&instance)),
        shutdown.clone(),
    );
    if let Err(e) = beat.run(shutdown).await {
        tracing::error!(error = %e, "beat failed");
        std::process::exit(stem::runtime::EXIT_SOFTWARE);
    }
}
