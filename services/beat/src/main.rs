//! `beat`: the periodic scheduler. Reads `STEM_*` (flags override), seeds
//! the schedule store from `STEM_SCHEDULE_FILE` when set, then runs
//! [`stem::schedule::Beat`] until SIGTERM/SIGINT and exits 0. Any number of
//! beats may run against one store: one leads, the others take over within
//! the lease time. `STEM_BEAT_HEALTH_PORT` (or `--health-port`) serves
//! `/healthz` and `/readyz`. Invalid configuration exits 78.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use stem::client::Stem;
use stem::config::{port_var, FlagsOverEnv, StemConfig};
use stem::schedule::{BeatConfig, ScheduleStores};
use stem_service::{config_or_exit, shutdown_token, stem_config_or_exit};

/// Stem beat: fires schedule entries into their queues.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML schedule file to seed at start (overrides STEM_SCHEDULE_FILE).
    #[arg(long, value_name = "PATH")]
    schedule_file: Option<PathBuf>,
    /// Leader lease, e.g. 3s or 1500ms; renewed every third of it.
    #[arg(long, value_name = "DURATION", value_parser = stem_service::flags::positive_duration, default_value = "3s")]
    lease: Duration,
    /// Longest pause between two scheduling passes.
    #[arg(long, value_name = "DURATION", value_parser = stem_service::flags::positive_duration, default_value = "250ms")]
    tick: Duration,
    /// Unique id of this beat (default beat-<hostname>-<pid>-<random>).
    #[arg(long)]
    instance_id: Option<String>,
    /// Serve /healthz and /readyz on this port (overrides
    /// STEM_BEAT_HEALTH_PORT).
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _traces = stem_service::logging::init_service_logging("stem-beat");
    let env = FlagsOverEnv::new()
        .flag(
            "STEM_SCHEDULE_FILE",
            args.schedule_file.as_ref().map(|f| f.display()),
        )
        .flag("STEM_BEAT_HEALTH_PORT", args.health_port);
    let config = stem_config_or_exit(StemConfig::from_lookup(&env));
    let health_port = config_or_exit(port_var(&env, "STEM_BEAT_HEALTH_PORT"));
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem_demo::registry());
    let mut opts = BeatConfig {
        lease: args.lease,
        tick: args.tick,
        ..Default::default()
    };
    if let Some(id) = args.instance_id {
        opts.instance_id = id;
    }
    let stores = config_or_exit(ScheduleStores::connect(&config));
    if let Err(e) = beat::run(&config, stem, stores, opts, health_port, shutdown_token()).await {
        tracing::error!(error = %e, "beat failed");
        std::process::exit(stem_service::exit::EXIT_SOFTWARE);
    }
}
