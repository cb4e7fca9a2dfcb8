//! `enqueuer`: the HTTP enqueue API. Configuration from `STEM_*`, `PORT`
//! and `ENQUEUER_*` (flags override); exit 78 on invalid configuration.

use clap::Parser;
use enqueuer::{AppState, EnqueuerConfig};
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig};
use stem_service::metrics::Metrics;
use stem_service::{config_or_exit, shutdown_token, stem_config_or_exit};

/// Stem HTTP enqueue API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// HTTP port (overrides PORT).
    #[arg(long)]
    port: Option<u16>,
    /// Broker URL (overrides STEM_BROKER_URL).
    #[arg(long)]
    broker: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _traces = stem_service::logging::init_service_logging("stem-enqueuer");
    let env = FlagsOverEnv::new()
        .flag("STEM_BROKER_URL", args.broker)
        .flag("PORT", args.port);
    let config = stem_config_or_exit(StemConfig::from_lookup(&env));
    let settings = config_or_exit(EnqueuerConfig::from_lookup(&env));
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem_demo::registry());
    if stem.signer().is_none() {
        tracing::warn!("no signing keys configured: envelopes are published unsigned");
    }
    tracing::info!(broker = %config.broker_url.redacted(), "enqueuer starting");
    let shutdown = shutdown_token();
    let metrics = Metrics::start(
        "stem-enqueuer",
        &config.namespace,
        &config.metric_exporters,
        config.otlp_endpoint.as_deref(),
        &shutdown,
    )?;
    let mut state = AppState::new(stem);
    if let Some(meter) = metrics.meter() {
        state.metrics = enqueuer::metrics::ApiMetrics::new(meter);
        stem_service::depth::sample(meter, state.stem.admin(), None, shutdown.clone());
    }
    enqueuer::serve(&settings, state, shutdown).await?;
    tracing::info!("enqueuer stopped");
    Ok(())
}
