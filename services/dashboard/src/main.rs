//! `dashboard`: the operations web UI. Configuration from `STEM_*` and
//! `DASHBOARD_*` (flags override); exit 78 on invalid configuration.

use clap::Parser;
use dashboard::{AppState, DashboardConfig};
use stem::client::Stem;
use stem::config::{FlagsOverEnv, StemConfig};
use stem::schedule::ScheduleStores;
use stem_service::{config_or_exit, shutdown_token, stem_config_or_exit};

/// Stem operations dashboard.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// HTTP port (overrides DASHBOARD_PORT).
    #[arg(long)]
    port: Option<u16>,
    /// Broker URL (overrides STEM_BROKER_URL).
    #[arg(long)]
    broker: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _traces = stem_service::logging::init_service_logging("stem-dashboard");
    let env = FlagsOverEnv::new()
        .flag("STEM_BROKER_URL", args.broker)
        .flag("DASHBOARD_PORT", args.port);
    let config = stem_config_or_exit(StemConfig::from_lookup(&env));
    let mut settings = config_or_exit(DashboardConfig::from_lookup(&env));
    settings.demo_keys = config.uses_demo_secrets();
    let stem = config_or_exit(Stem::connect(&config)).with_registry(stem_demo::registry());
    let schedules = config_or_exit(ScheduleStores::connect(&config));
    tracing::info!(broker = %config.broker_url.redacted(), "dashboard starting");
    let state = AppState::new(stem, schedules.schedules, settings);
    dashboard::serve(state, shutdown_token()).await?;
    tracing::info!("dashboard stopped");
    Ok(())
}
