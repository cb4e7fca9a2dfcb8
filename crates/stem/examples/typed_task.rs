//! A typed task end to end on the in-memory stores: define, register,
//! enqueue, run a worker, wait for the result.
//!
//! `cargo run -p stem --example typed_task`
//! With Redis: `STEM_BROKER_URL=redis://127.0.0.1:6379/0 cargo run -p stem --example typed_task`

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stem::client::Stem;
use stem::config::StemConfig;
use stem::task::{Task, TaskContext, TaskOptions, TaskResult};
use stem::worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Invoice {
    customer: String,
    cents: u64,
}

struct SendInvoice;

#[stem::async_trait]
impl Task for SendInvoice {
    const NAME: &'static str = "billing.send_invoice";
    type Args = Invoice;
    type Output = String;

    fn options(&self) -> TaskOptions {
        TaskOptions {
            queue: "billing".into(),
            max_retries: 3,
            time_limit: Some(Duration::from_secs(10)),
            ..Default::default()
        }
    }

    async fn run(&self, ctx: TaskContext, inv: Invoice) -> TaskResult<String> {
        ctx.progress(0.5, serde_json::json!({"stage": "rendering"}))
            .await;
        Ok(format!("sent {} cents to {}", inv.cents, inv.customer))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = if std::env::var("STEM_BROKER_URL").is_ok() {
        StemConfig::from_env()?
    } else {
        StemConfig::memory()
    };
    let stem = Stem::connect(&config)?;
    stem.registry().register(SendInvoice);

    let stop = CancellationToken::new();
    let worker = Worker::new(
        WorkerConfig::new("example", &["billing"]),
        &stem,
        config.keys.verifier(),
    );
    let running = tokio::spawn(worker.run(stop.clone()));

    let id = stem
        .enqueue::<SendInvoice>(Invoice {
            customer: "Ada".into(),
            cents: 4200,
        })
        .await?;
    let status = stem.wait(&id, Duration::from_secs(10)).await?;
    println!("{id}: {:?} -> {}", status.state, status.result);

    stop.cancel();
    running.await??;
    Ok(())
}
