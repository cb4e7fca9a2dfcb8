//! Chains and chords on the in-memory stores: a chain whose steps each add
//! to the previous step's result, and a chord whose callback sums the
//! results of its header tasks.
//!
//! `cargo run -p stem --example canvas`

use std::time::Duration;

use serde_json::{json, Value};
use stem::client::EnqueueRequest;
use stem::{Stem, StemConfig, TaskContext, TaskOptions, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stem = Stem::connect(&StemConfig::memory())?;
    stem.registry()
        // A chain step sees the previous step's result in its context.
        .register_fn(
            "math.add",
            TaskOptions::default(),
            |ctx: TaskContext, (a, b): (i64, i64)| async move {
                let before = ctx.chain_previous.and_then(|v| v.as_i64()).unwrap_or(0);
                Ok(before + a + b)
            },
        )
        // A chord's callback sees every header task's result.
        .register_fn(
            "math.sum",
            TaskOptions::default(),
            |ctx: TaskContext, _: Value| async move {
                let results = ctx.chord_results.unwrap_or_default();
                Ok(results.iter().filter_map(Value::as_i64).sum::<i64>())
            },
        );

    let stop = CancellationToken::new();
    let worker = Worker::new(WorkerConfig::new("canvas", &["default"]), &stem, None);
    let running = tokio::spawn(worker.run(stop.clone()));

    // 1 + 1, then + 10, then + 100: the last step holds the chain's result.
    let chain = stem
        .chain(vec![
            EnqueueRequest::new("math.add", json!([1, 1])),
            EnqueueRequest::new("math.add", json!([0, 10])),
            EnqueueRequest::new("math.add", json!([0, 100])),
        ])
        .await?;
    let last = chain.task_ids.last().expect("a chain has steps");
    let done = stem.wait(last, Duration::from_secs(10)).await?;
    println!("chain {}: {}", chain.chain_id, done.result);

    // Three header tasks run in parallel; the callback runs once all succeeded.
    let chord = stem
        .chord(
            (1..=3)
                .map(|n| EnqueueRequest::new("math.add", json!([n, 0])))
                .collect(),
            EnqueueRequest::new("math.sum", Value::Null),
        )
        .await?;
    let done = stem
        .wait(&chord.callback_id, Duration::from_secs(10))
        .await?;
    println!("chord {}: {}", chord.chord_id, done.result);

    stop.cancel();
    running.await??;
    Ok(())
}
