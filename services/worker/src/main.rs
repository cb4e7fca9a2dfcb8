//! `worker`: one process consuming a queue set with the demo catalogue.
//! Configuration from `STEM_*` (flags override); exit 78 on invalid
//! configuration; SIGTERM drains within `STEM_SHUTDOWN_GRACE` and exits 0.

mod health;

use clap::Parser;
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig};
use stem::runtime::{config_or_exit, shutdown_token};
use stem::worker::{Worker, WorkerConfig};

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
    stem::telemetry::init_logging(stem::telemetry::log_format_from_env(), "info");
    let env = FlagsOverEnv::new()
        .flag("STEM_WORKER_QUEUES", args.queues)
        .flag("STEM_WORKER_CONCURRENCY", args.concurrency)
        .flag("STEM_WORKER_NAME", args.name);
    let config = config_or_exit(StemConfig::from_lookup(&env));
    let settings = config_or_exit(WorkerConfig::from_lookup(&env));
    let stem =
        config_or_exit(Stem::connect_consumer(&config)).with_registry(stem::demo::registry());
    tracing::info!(broker = %config.broker_url.redacted(), "Worker \"{}\" listening on queues {:?}", settings.name, settings.queues);
    let shutdown = shutdown_token();
    if let Some(port) = settings.health_port {
        let (name, broker, stop) = (settings.name.clone(), stem.broker(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = health::serve(port, name, broker, stop).await {
                tracing::error!(error = %e, "health endpoint failed");
            }
        });
    }
    let worker = Worker::new(settings.clone(), &stem, config.keys.verifier());
    let metrics = worker.metrics();
    let (name, namespace, concurrency) = (
        settings.name.clone(),
        settings.namespace.clone(),
        settings.concurrency,
    );
    stem::telemetry::start_exporters(
        &config.metric_exporters,
        std::sync::Arc::new(move || metrics.families(&name, &namespace, concurrency)),
        shutdown.clone(),
    );
    worker.run(shutdown).await?;
    Ok(())
}
