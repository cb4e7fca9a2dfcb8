//! The internal `stem-bench worker` subcommand: a no-op worker in a
//! process of its own, which `drain` (two processes) and `memory` spawn
//! from the bench's own executable so no other binary is needed.

use stem::client::Stem;
use stem::worker::Worker;

use super::rig::{config, worker_options};
use crate::noop::registry;

/// The internal `worker` subcommand: a no-op worker process.
pub async fn worker_process(
    url: &str,
    concurrency: usize,
    prefetch: usize,
    name: &str,
    keys: &str,
    queues: &[String],
) -> anyhow::Result<()> {
    stem_service::logging::init_logging(stem::config::LogFormat::Text, "info");
    let cfg = config(url, keys)?;
    let stem = Stem::connect_consumer(&cfg)?.with_registry(registry());
    let w = Worker::new(
        worker_options(name, concurrency, prefetch, queues),
        &stem,
        cfg.keys.verifier(),
    );
    w.run(stem_service::shutdown_token()).await?;
    Ok(())
}
