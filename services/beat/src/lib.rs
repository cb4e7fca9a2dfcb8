//! The beat service: seeds the schedule store from the schedule file,
//! then runs [`Beat`] with its metrics exporters until `shutdown`.
//! `main.rs` reads the configuration and calls [`run`]; `stem dev` calls
//! [`run`] too, so both seed and lead the same way.

use std::time::Duration;

use stem::client::Stem;
use stem::config::{StemConfig, StoreUrl};
use stem::schedule::{seed, Beat, BeatConfig, ScheduleStores};
use tokio_util::sync::CancellationToken;

/// Seeds `config.schedule_file` (when set) into `stores`, then runs a
/// beat with `opts`, publishing through `stem`, until `shutdown`; with a
/// `health_port`, serves `/healthz` and `/readyz` there meanwhile (the
/// compose healthcheck probes it).
pub async fn run(
    config: &StemConfig,
    stem: Stem,
    stores: ScheduleStores,
    opts: BeatConfig,
    health_port: Option<u16>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
    if let Some(port) = health_port {
        let (id, broker, stop) = (opts.instance_id.clone(), stem.broker(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = stem_service::http::serve_health(port, "beat", id, broker, stop).await {
                tracing::error!(error = %e, "health endpoint failed");
            }
        });
    }
    if let Some(path) = &config.schedule_file {
        seed_from(path, &stores, &stem, &shutdown).await;
    }
    let metrics = stem_service::metrics::Metrics::start(
        "stem-beat",
        &config.namespace,
        &config.metric_exporters,
        config.otlp_endpoint.as_deref(),
        &shutdown,
    )?;
    let instance = opts.instance_id.clone();
    let beat = Beat::new(stem, stores.schedules, stores.locks, opts);
    if let Some(meter) = metrics.meter() {
        beat.metrics().export_to(meter, &instance);
    }
    beat.run(shutdown).await?;
    Ok(())
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
