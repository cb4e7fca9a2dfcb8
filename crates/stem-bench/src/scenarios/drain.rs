//! `stem-bench drain`: how fast workers drain pre-enqueued no-op tasks at
//! concurrency 1, 16 and 128 in one process and 128 in two processes, with
//! the Redis and worker CPU per task; with `--cluster` on the cluster too,
//! runs interleaved with the single node's.

use std::time::{Duration, Instant};

use stem_testkit::ServiceProcess;
use tokio_util::sync::CancellationToken;

use super::rig::{add_redis_cpu, bench_worker, interleaved, queues_label, Rig};
use super::{Opts, Report};
use crate::measure::process_cpu;

/// What one drain measured.
struct Drained {
    /// Tasks per second.
    rate: f64,
    /// Redis CPU seconds per 10k tasks, node by node.
    redis: Vec<f64>,
    /// Worker CPU seconds per 10k tasks.
    worker: f64,
}

/// Drains `n` pre-enqueued tasks with `processes` worker processes (1 =
/// in this process).
async fn drain_once(
    r: &Rig,
    n: usize,
    concurrency: usize,
    processes: usize,
    opts: &Opts,
) -> anyhow::Result<Drained> {
    let prefetch = opts.prefetch;
    r.reset().await?;
    r.fill(n).await?;
    let redis_before = r.store.cpu()?;
    let (rate, worker_cpu) = if processes == 1 {
        let cpu_before = process_cpu("self")?;
        let stop = CancellationToken::new();
        let t = Instant::now();
        let w = bench_worker(
            r.worker_options("bench-worker", concurrency, prefetch),
            &r.stem,
            r.stem_verifier(&r.keys)?,
            opts,
        );
        let handle = tokio::spawn(w.run(stop.clone()));
        r.wait_drained(Duration::from_secs(600)).await?;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let cpu = process_cpu("self")? - cpu_before;
        stop.cancel();
        handle.await??;
        (rate, cpu)
    } else {
        let exe = std::env::current_exe()?;
        let t = Instant::now();
        let mut children = Vec::new();
        for i in 0..processes {
            let args = [
                "worker",
                "--url",
                &r.store.url(),
                "--concurrency",
                &concurrency.to_string(),
                "--prefetch",
                &prefetch.to_string(),
                "--name",
                &format!("bench-worker-{i}"),
                "--keys",
                &r.keys,
                "--queues",
                &r.queues.join(","),
            ];
            children.push(ServiceProcess::spawn_path(
                "stem-bench-worker",
                &exe,
                &args,
                &[],
            )?);
        }
        r.wait_drained(Duration::from_secs(600)).await?;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let mut cpu = 0.0;
        for c in &mut children {
            cpu += process_cpu(&c.pid().to_string())?;
            c.sigterm()?;
        }
        for c in &mut children {
            c.wait_exit(Duration::from_secs(30))?;
        }
        (rate, cpu)
    };
    Ok(Drained {
        rate,
        redis: r.store.cpu_per_10k(&redis_before, n)?,
        worker: worker_cpu * 10_000.0 / n as f64,
    })
}

/// `only` = `"<concurrency>x<processes>"` runs one configuration. With
/// `--cluster` every run drains the single node, then the cluster.
pub async fn drain(opts: &Opts, only: Option<&str>) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(100_000);
    let rigs = Rig::compared(opts)?;
    let mut report = Report::new("drain");
    for (concurrency, processes) in [(1usize, 1usize), (16, 1), (128, 1), (128, 2)] {
        if only.is_some_and(|o| o != format!("{concurrency}x{processes}")) {
            continue;
        }
        let mut runs: Vec<Vec<Drained>> = rigs.iter().map(|_| Vec::new()).collect();
        for run in 0..opts.runs {
            for (r, runs) in interleaved(&rigs, &mut runs, run) {
                let d = drain_once(r, n, concurrency, processes, opts).await?;
                let store = r.store.label();
                tracing::info!(
                    run,
                    store,
                    concurrency,
                    processes,
                    rate = d.rate,
                    "drain run"
                );
                runs.push(d);
            }
        }
        let queues = queues_label(opts);
        let label =
            format!("{processes} process(es) × concurrency {concurrency} ({n} tasks{queues})");
        for (r, runs) in rigs.iter().zip(runs) {
            report.add(
                &r.figure(opts, &format!("{label}: throughput")),
                "tasks/s",
                runs.iter().map(|d| d.rate).collect(),
            );
            let redis: Vec<Vec<f64>> = runs.iter().map(|d| d.redis.clone()).collect();
            add_redis_cpu(&mut report, r, opts, &label, &redis);
            report.add(
                &r.figure(opts, &format!("{label}: worker cpu")),
                "s per 10k tasks",
                runs.iter().map(|d| d.worker).collect(),
            );
        }
    }
    Ok(report)
}
