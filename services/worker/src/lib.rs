//! The worker service: one [`Worker`] on a queue set, with its health
//! endpoint (`STEM_WORKER_HEALTH_PORT`) and metrics exporters
//! (`STEM_METRIC_EXPORTERS`). `main.rs` reads the configuration and calls
//! [`run`]; `stem dev` calls [`run`] once per demo queue.

use stem::client::Stem;
use stem::config::StemConfig;
use stem::worker::{Worker, WorkerConfig};
use stem_service::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Runs a worker on `stem`'s stores and registry until `shutdown`, then
/// drains it. Verifies envelopes with `config`'s keys; exports its metrics
/// as `config` asks.
pub async fn run(
    config: &StemConfig,
    worker: WorkerConfig,
    stem: &Stem,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(
        broker = %config.broker_url.redacted(),
        "Worker \"{}\" listening on queues {:?}", worker.name, worker.queues
    );
    if let Some(port) = worker.health_port {
        let (name, broker, stop) = (worker.name.clone(), stem.broker(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) =
                stem_service::http::serve_health(port, "worker", name, broker, stop).await
            {
                tracing::error!(error = %e, "health endpoint failed");
            }
        });
    }
    let metrics = Metrics::start(
        "stem-worker",
        &worker.namespace,
        &config.metric_exporters,
        config.otlp_endpoint.as_deref(),
        &shutdown,
    )?;
    let queues = worker.queues.clone();
    let runtime = Worker::new(worker, stem, config.keys.verifier());
    if let Some(meter) = metrics.meter() {
        runtime.export_metrics(meter);
        stem_service::depth::sample(meter, stem.admin(), Some(queues), shutdown.clone());
    }
    runtime.run(shutdown).await?;
    Ok(())
}
