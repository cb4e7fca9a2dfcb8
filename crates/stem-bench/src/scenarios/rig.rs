//! What every scenario sets up: a [`Rig`] (a private `redis-server` or
//! three-master cluster, a signing producer on it and the queues of the
//! run), the no-op tasks it fills the queues with, the in-process workers
//! that drain them, and the helpers `drain` and `cost` share to compare a
//! single node with a cluster run by run. Also used by `phases`, so the
//! figures of both are taken on the same setup.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::config::StemConfig;
use stem::signing::generate_hmac_secret;
use stem::worker::{Worker, WorkerConfig};

use super::{Opts, Report};
use crate::noop::{queues as queues_of, registry, TASK};
use crate::store::Store;

/// A store plus a signing producer on it, and the queues a run uses.
pub(super) struct Rig {
    pub(super) store: Store,
    pub(super) keys: String,
    pub(super) stem: Stem,
    pub(super) queues: Vec<String>,
}

pub(crate) fn config(url: &str, keys: &str) -> anyhow::Result<StemConfig> {
    let env: BTreeMap<&str, String> = [
        ("STEM_BROKER_URL", url.to_string()),
        ("STEM_SIGNING_KEYS", keys.to_string()),
        ("STEM_SIGNING_ACTIVE_KEY", "bench".to_string()),
    ]
    .into();
    Ok(StemConfig::from_lookup(&move |k: &str| {
        env.get(k).cloned()
    })?)
}

/// A single node and the one queue `bench`.
pub(super) fn rig() -> anyhow::Result<Rig> {
    Rig::start(false, 1)
}

impl Rig {
    /// A single node or a three-master cluster, and `queues` queues.
    fn start(cluster: bool, queues: usize) -> anyhow::Result<Rig> {
        let store = Store::start(cluster)?;
        let keys = format!("bench:{}", generate_hmac_secret());
        let stem = Stem::connect(&config(&store.url(), &keys)?)?.with_registry(registry());
        Ok(Rig {
            store,
            keys,
            stem,
            queues: queues_of(queues),
        })
    }

    /// The rigs `drain` and `cost` compare: the single node, and with
    /// `--cluster` the cluster too.
    pub(super) fn compared(opts: &Opts) -> anyhow::Result<Vec<Rig>> {
        let mut rigs = vec![Rig::start(false, opts.queues)?];
        if opts.cluster {
            rigs.push(Rig::start(true, opts.queues)?);
        }
        Ok(rigs)
    }

    pub(super) fn stem_verifier(
        &self,
        keys: &str,
    ) -> anyhow::Result<Option<stem::signing::Verifier>> {
        Ok(config(&self.store.url(), keys)?.keys.verifier())
    }

    /// Empties the store and registers the queues.
    pub(super) async fn reset(&self) -> anyhow::Result<()> {
        self.store.flushall()?;
        self.stem.broker().register_queues(&self.queues).await?;
        Ok(())
    }

    pub(super) async fn fill(&self, n: usize) -> anyhow::Result<()> {
        fill(&self.stem, &self.queues, n).await
    }

    pub(super) async fn wait_drained(&self, limit: Duration) -> anyhow::Result<()> {
        wait_drained(&self.stem, &self.queues, limit).await
    }

    pub(super) fn worker_options(
        &self,
        name: &str,
        concurrency: usize,
        prefetch: usize,
    ) -> WorkerConfig {
        worker_options(name, concurrency, prefetch, &self.queues)
    }

    /// A figure's name: with `--cluster`, prefixed by the store's label.
    pub(super) fn figure(&self, opts: &Opts, name: &str) -> String {
        if opts.cluster {
            format!("{}: {name}", self.store.label())
        } else {
            name.to_string()
        }
    }
}

/// Task `i` of a run over `queues` (round-robin).
fn noop(i: usize, queues: &[String]) -> EnqueueRequest {
    let queue = (queues.len() > 1).then(|| queues[i % queues.len()].clone());
    EnqueueRequest {
        name: TASK.into(),
        args: json!(i),
        options: EnqueueOptions {
            queue,
            ..Default::default()
        },
    }
}

pub(crate) async fn fill(stem: &Stem, queues: &[String], n: usize) -> anyhow::Result<()> {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        stem.enqueue_many((i..end).map(|i| noop(i, queues)).collect())
            .await?;
        i = end;
    }
    Ok(())
}

async fn drained(stem: &Stem, queues: &[String]) -> anyhow::Result<bool> {
    for q in queues {
        let s = stem.admin().stats(q).await?;
        if s.ready != 0 || s.inflight != 0 || s.delayed != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) async fn wait_drained(
    stem: &Stem,
    queues: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !drained(stem, queues).await? {
        if Instant::now() > deadline {
            anyhow::bail!("queue not drained within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A worker for an in-process scenario; with `--metrics`, it records
/// through a meter exported to Prometheus and OTLP, as a worker with
/// `STEM_METRIC_EXPORTERS=prometheus,otlp` does.
pub(crate) fn bench_worker(
    config: WorkerConfig,
    stem: &Stem,
    verifier: Option<stem::signing::Verifier>,
    opts: &Opts,
) -> Worker {
    let w = Worker::new(config, stem, verifier);
    if let Some(meter) = opts.metrics.meter() {
        w.export_metrics(meter);
    }
    w
}

pub(crate) fn worker_options(
    name: &str,
    concurrency: usize,
    prefetch: usize,
    queues: &[String],
) -> WorkerConfig {
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    let mut o = WorkerConfig::new(name, &queues);
    o.concurrency = concurrency;
    o.prefetch_multiplier = prefetch;
    o
}

/// `", N queues"` for figure names when the tasks spread over several.
pub(super) fn queues_label(opts: &Opts) -> String {
    match opts.queues {
        0 | 1 => String::new(),
        q => format!(", {q} queues"),
    }
}

/// The rigs of run `run` with their figures, the order alternating
/// between runs (so neither store always runs first).
pub(super) fn interleaved<'a, T>(
    rigs: &'a [Rig],
    runs: &'a mut [Vec<T>],
    run: usize,
) -> Vec<(&'a Rig, &'a mut Vec<T>)> {
    let mut pairs: Vec<_> = rigs.iter().zip(runs.iter_mut()).collect();
    if run % 2 == 1 {
        pairs.reverse();
    }
    pairs
}

/// Adds a store's Redis CPU rows: the total and, on a cluster, each
/// master's share (`runs[run][node]`).
pub(super) fn add_redis_cpu(
    report: &mut Report,
    r: &Rig,
    opts: &Opts,
    label: &str,
    runs: &[Vec<f64>],
) {
    let unit = "s per 10k tasks";
    report.add(
        &r.figure(opts, &format!("{label}: redis cpu")),
        unit,
        runs.iter().map(|nodes| nodes.iter().sum()).collect(),
    );
    if let Store::Cluster(_) = r.store {
        let nodes = runs.first().map_or(0, Vec::len);
        for node in 0..nodes {
            report.add(
                &r.figure(opts, &format!("{label}: redis cpu, master {node}")),
                unit,
                runs.iter().map(|n| n[node]).collect(),
            );
        }
    }
}
