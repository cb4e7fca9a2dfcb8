//! `enqueuer`: the HTTP enqueue API. Configuration from `STEM_*`, `PORT`
//! and `ENQUEUER_*` (flags override); exit 78 on invalid configuration.

use clap::Parser;
use enqueuer::{AppState, EnqueuerSettings};
use stem::client::Stem;
use stem::config::StemConfig;
use stem::runtime::{config_or_exit, shutdown_token};

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
    stem::telemetry::init_logging(stem::telemetry::log_format_from_env());
    if let Some(b) = &args.broker {
        std::env::set_var("STEM_BROKER_URL", b);
    }
    let config = config_or_exit(StemConfig::from_env());
    let mut settings = config_or_exit(EnqueuerSettings::from_env());
    if let Some(p) = args.port {
        settings.port = p;
    }
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem::demo::registry());
    if stem.signer().is_none() {
        tracing::warn!("no signing keys configured: envelopes are published unsigned");
    }
    tracing::info!(broker = %config.broker_url.redacted(), "enqueuer starting");
    let shutdown = shutdown_token();
    enqueuer::serve(&settings, AppState { stem }, shutdown).await?;
    tracing::info!("enqueuer stopped");
    Ok(())
}
