//! `worker`: one process consuming a queue set with the demo catalogue.
//! Configuration from `STEM_*` (flags override); exit 78 on invalid
//! configuration; SIGTERM drains within `STEM_SHUTDOWN_GRACE` and exits 0.

use clap::Parser;
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig};
use stem::worker::WorkerConfig;
use stem_service::{config_or_exit, shutdown_token, stem_config_or_exit};

/// Stem worker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Queues to consume, comma-separated (overrides STEM_WORKER_QUEUES).
    #[arg(long)]
    queues: Option<String>,
    /// Tasks run at once (overrides STEM_WORKER_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Worker id (overrides STEM_WORKER_NAME).
    #[arg(long)]
    name: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _traces = stem_service::logging::init_service_logging("stem-worker");
    let env = FlagsOverEnv::new()
        .flag("STEM_WORKER_QUEUES", args.queues)
        .flag("STEM_WORKER_CONCURRENCY", args.concurrency)
        .flag("STEM_WORKER_NAME", args.name);
    let config = stem_config_or_exit(StemConfig::from_lookup(&env));
    let worker = config_or_exit(WorkerConfig::from_lookup(&env));
    // Least privilege: a worker verifies and never signs.
    let stem = config_or_exit(Stem::connect_consumer(&config)).with_registry(stem_demo::registry());
    worker::run(&config, worker, &stem, shutdown_token()).await
}
