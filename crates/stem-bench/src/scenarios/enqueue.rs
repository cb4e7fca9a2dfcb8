//! `stem-bench enqueue`: producer throughput, one task per call (on the
//! multi-threaded runtime and on a current-thread one) and in bulk, with
//! the Redis and producer CPU a bulk enqueue costs; a PING round trip for
//! reference.

use std::time::Instant;

use serde_json::json;
use stem::client::{EnqueueOptions, Stem};

use super::rig::{config, rig, Rig};
use super::{Opts, Report};
use crate::measure::process_cpu;
use crate::noop::{registry, TASK};

pub async fn enqueue(opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(100_000);
    let r = rig()?;
    let mut report = Report::new("enqueue");
    let broker = r.stem.broker();
    broker.ping().await?;
    let t = Instant::now();
    for _ in 0..10_000 {
        broker.ping().await?;
    }
    report.add(
        "round trip (PING) for reference",
        "µs",
        vec![t.elapsed().as_secs_f64() * 1e6 / 10_000.0],
    );
    let (mut single, mut single_ct, mut bulk) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bulk_redis, mut bulk_client) = (Vec::new(), Vec::new());
    for run in 0..opts.runs {
        r.store.flushall()?;
        // On a runtime worker, as a producer inside a server would run (the
        // main thread's block_on would add a cross-thread hand-off per call).
        let stem = r.stem.clone();
        single.push(tokio::spawn(async move { one_by_one(&stem, n).await }).await??);
        r.store.flushall()?;
        single_ct.push(one_by_one_current_thread(&r, n)?);
        r.store.flushall()?;
        let (redis_before, self_before) = (r.store.cpu()?, process_cpu("self")?);
        let t = Instant::now();
        r.fill(n).await?;
        bulk.push(n as f64 / t.elapsed().as_secs_f64());
        bulk_redis.push(r.store.cpu_per_10k(&redis_before, n)?.iter().sum());
        bulk_client.push((process_cpu("self")? - self_before) * 10_000.0 / n as f64);
        tracing::info!(
            run,
            one_by_one = single[run],
            one_by_one_current_thread = single_ct[run],
            bulk = bulk[run],
            "enqueue run"
        );
    }
    report.add(&format!("one-by-one ({n} tasks)"), "tasks/s", single);
    report.add(
        &format!("one-by-one, current-thread runtime ({n} tasks)"),
        "tasks/s",
        single_ct,
    );
    report.add(
        &format!("enqueue_many, 1000 per call ({n} tasks)"),
        "tasks/s",
        bulk,
    );
    report.add("enqueue_many: redis cpu", "s per 10k tasks", bulk_redis);
    report.add("enqueue_many: producer cpu", "s per 10k tasks", bulk_client);
    Ok(report)
}

/// Enqueues `n` tasks one call at a time, awaiting each; tasks/s.
async fn one_by_one(stem: &Stem, n: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    for i in 0..n {
        stem.enqueue_raw(TASK, json!(i), EnqueueOptions::default())
            .await?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// [`one_by_one`] from a producer on a current-thread runtime (its own
/// thread and connections): a sequential producer has nothing to run in
/// parallel, and one thread saves the cross-thread wake-up per call.
fn one_by_one_current_thread(r: &Rig, n: usize) -> anyhow::Result<f64> {
    let cfg = config(&r.store.url(), &r.keys)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let stem = Stem::connect(&cfg)?.with_registry(registry());
                    stem.broker().ping().await?;
                    one_by_one(&stem, n).await
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the current-thread producer panicked"))?
    })
}
