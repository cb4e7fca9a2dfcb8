//! `stem-bench cost`: what a drain at concurrency 128 costs Redis per
//! task — commands (node by node on a cluster, and broken down by
//! command), client round trips and Redis CPU. Also owns the list of the
//! bench's own commands, which `phases` leaves out too.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rig::{add_redis_cpu, bench_worker, interleaved, queues_label, Rig};
use super::{Opts, Report};
use crate::store::Store;

/// Commands the bench itself issues (INFO, stats polling), not the worker's.
pub(crate) const BENCH_COMMANDS: [&str; 6] = [
    "info",
    "config|resetstat",
    "xlen",
    "zcard",
    "xpending",
    "ping",
];

/// What one drain of `cost` counted.
struct Counted {
    /// Worker commands per task, node by node.
    commands: Vec<f64>,
    /// Client round trips per task.
    trips: f64,
    /// Redis CPU seconds per 10k tasks, node by node.
    redis: Vec<f64>,
    /// Per command, summed over the nodes: (calls, µs) per task.
    breakdown: BTreeMap<String, (f64, f64)>,
}

async fn count_once(r: &Rig, n: usize, opts: &Opts) -> anyhow::Result<Counted> {
    r.reset().await?;
    r.fill(n).await?;
    r.store.reset_stats()?;
    let cpu_before = r.store.cpu()?;
    let trips_before = stem::redis_conn::round_trips();
    let stop = CancellationToken::new();
    let w = bench_worker(
        r.worker_options("bench-cost", 128, opts.prefetch),
        &r.stem,
        r.stem_verifier(&r.keys)?,
        opts,
    );
    let handle = tokio::spawn(w.run(stop.clone()));
    r.wait_drained(Duration::from_secs(600)).await?;
    stop.cancel();
    handle.await??;
    let trips = (stem::redis_conn::round_trips() - trips_before) as f64 / n as f64;
    let per_task = |count: u64| count as f64 / n as f64;
    let redis = r.store.cpu_per_10k(&cpu_before, n)?;
    let mut commands = Vec::new();
    let mut breakdown: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for node in r.store.command_calls()? {
        let worker: Vec<(String, (u64, u64))> = node
            .into_iter()
            .filter(|(k, _)| !BENCH_COMMANDS.contains(&k.as_str()))
            .collect();
        commands.push(per_task(worker.iter().map(|(_, (c, _))| *c).sum()));
        for (cmd, (calls, us)) in worker {
            let e = breakdown.entry(cmd).or_default();
            e.0 += per_task(calls);
            e.1 += per_task(us);
        }
    }
    Ok(Counted {
        commands,
        trips,
        redis,
        breakdown,
    })
}

/// Redis commands, round trips and Redis CPU per task of a drain at
/// concurrency 128; with `--cluster`, also on the cluster (runs
/// interleaved), node by node.
pub async fn cost(opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(20_000);
    let rigs = Rig::compared(opts)?;
    let mut report = Report::new("cost");
    let mut runs: Vec<Vec<Counted>> = rigs.iter().map(|_| Vec::new()).collect();
    for run in 0..opts.runs {
        for (r, runs) in interleaved(&rigs, &mut runs, run) {
            let c = count_once(r, n, opts).await?;
            let per_task: f64 = c.commands.iter().sum();
            tracing::info!(run, store = r.store.label(), per_task, "cost run");
            runs.push(c);
        }
    }
    let queues = queues_label(opts);
    for (r, runs) in rigs.iter().zip(runs) {
        report.add(
            &r.figure(
                opts,
                &format!("redis commands per task, drain at concurrency 128 ({n} tasks{queues})"),
            ),
            "commands",
            runs.iter().map(|c| c.commands.iter().sum()).collect(),
        );
        if let Store::Cluster(_) = r.store {
            for node in 0..runs.first().map_or(0, |c| c.commands.len()) {
                report.add(
                    &r.figure(opts, &format!("  commands on master {node}")),
                    "per task",
                    runs.iter().map(|c| c.commands[node]).collect(),
                );
            }
        }
        report.add(
            &r.figure(
                opts,
                "client round trips per task (includes the bench's polling)",
            ),
            "round trips",
            runs.iter().map(|c| c.trips).collect(),
        );
        let redis: Vec<Vec<f64>> = runs.iter().map(|c| c.redis.clone()).collect();
        add_redis_cpu(&mut report, r, opts, "drain", &redis);
        if let Some(last) = runs.last() {
            for (cmd, (per, us)) in &last.breakdown {
                report.add(
                    &r.figure(opts, &format!("  {cmd}")),
                    "per task (last run)",
                    vec![*per],
                );
                report.add(
                    &r.figure(opts, &format!("  {cmd} time")),
                    "µs per task (last run)",
                    vec![*us],
                );
            }
        }
    }
    Ok(report)
}
