//! `stem-bench latency`: enqueue-to-result latency (p50, p99, p99.9) at a
//! steady rate, timed from the enqueue call to the settle's return through
//! a timing wrapper around the shared Redis store.

use anyhow::Context;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stem::client::{EnqueueOptions, Stem};
use tokio_util::sync::CancellationToken;

use super::rig::{bench_worker, rig, wait_drained};
use super::{Opts, Report};
use crate::measure::percentile;
use crate::noop::{registry, TASK};
use crate::timing::TimingAtomic;

pub async fn latency(opts: &Opts, rate: u64, seconds: u64) -> anyhow::Result<Report> {
    let mut report = Report::new("latency");
    let (mut p50s, mut p99s, mut p999s) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..opts.runs {
        let r = rig()?;
        // The default path: producer and worker share the Redis, so an
        // enqueue is one round trip and a settle is one MULTI transaction; the
        // timing wrapper notes when that call returned.
        let timing = Arc::new(TimingAtomic {
            inner: r
                .stem
                .atomic()
                .context("the bench's stores share one Redis")?,
            stored: Mutex::new(Default::default()),
        });
        let mut stores = r.stem.stores().clone();
        stores.atomic = Some(timing.clone());
        let stem = Stem::new(stores, r.stem.signer().cloned(), registry());
        let stop = CancellationToken::new();
        let w = bench_worker(
            r.worker_options("bench-latency", 16, opts.prefetch),
            &stem,
            r.stem_verifier(&r.keys)?,
            opts,
        );
        let handle = tokio::spawn(w.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let total = (rate * seconds) as usize;
        let mut sent: Vec<(String, Instant)> = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total {
            tick.tick().await;
            let at = Instant::now();
            let e = stem
                .enqueue_raw(TASK, json!(i), EnqueueOptions::default())
                .await?;
            sent.push((e.task_id, at));
        }
        wait_drained(&stem, &r.queues, Duration::from_secs(60)).await?;
        stop.cancel();
        handle.await??;
        let stored = timing.stored.lock();
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(id, at)| {
                stored
                    .get(id)
                    .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        tracing::info!(
            run,
            samples = lat.len(),
            p50 = percentile(&lat, 50.0),
            p99 = percentile(&lat, 99.0),
            "latency run"
        );
        p50s.push(percentile(&lat, 50.0));
        p99s.push(percentile(&lat, 99.0));
        p999s.push(percentile(&lat, 99.9));
    }
    let label = format!("{rate} tasks/s for {seconds} s");
    report.add(&format!("{label}: p50"), "ms", p50s);
    report.add(&format!("{label}: p99"), "ms", p99s);
    report.add(&format!("{label}: p99.9"), "ms", p999s);
    Ok(report)
}
