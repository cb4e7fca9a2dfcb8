//! A scheduler defined in code instead of a YAML file: one entry every
//! second, a beat that fires it and a worker that runs what it fires, all
//! on the in-memory stores. Runs for three seconds.
//!
//! `cargo run -p stem --example beat_from_code`

use std::time::Duration;

use serde_json::Value;
use stem::schedule::{ScheduleEntry, ScheduleStores};
use stem::{Beat, BeatConfig, Stem, StemConfig, TaskContext, TaskOptions, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stem = Stem::connect(&StemConfig::memory())?;
    stem.registry().register_fn(
        "clock.tick",
        TaskOptions::default(),
        |ctx: TaskContext, _: Value| async move {
            // Beat stamps every firing with its schedule id and slot.
            let slot = ctx.meta.get("schedule-slot").cloned().unwrap_or_default();
            println!("tick for slot {slot}");
            Ok(())
        },
    );

    let stores = ScheduleStores::memory();
    let entry = ScheduleEntry::new("every-second", "clock.tick", "every:1s")?;
    stores.schedules.upsert(&entry, chrono::Utc::now()).await?;

    let stop = CancellationToken::new();
    let beat = Beat::new(
        stem.clone(),
        stores.schedules.clone(),
        stores.locks.clone(),
        BeatConfig::default(),
    );
    let worker = Worker::new(WorkerConfig::new("clock", &["default"]), &stem, None);
    let beating = tokio::spawn({
        let stop = stop.clone();
        async move { beat.run(stop).await }
    });
    let working = tokio::spawn(worker.run(stop.clone()));

    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    beating.await??;
    working.await??;
    Ok(())
}
