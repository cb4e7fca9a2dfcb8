//! `stem-bench memory`: a worker process's resident memory idle, after a
//! warm-up drain and after draining many more tasks at concurrency 128, and
//! its peak.

use std::time::{Duration, Instant};

use stem_testkit::ServiceProcess;

use super::rig::rig;
use super::{Opts, Report};
use crate::measure::process_memory;

pub async fn memory(opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(200_000);
    let r = rig()?;
    let mut report = Report::new("memory");
    let exe = std::env::current_exe()?;
    let args = [
        "worker",
        "--url",
        &r.store.url(),
        "--concurrency",
        "128",
        "--prefetch",
        &opts.prefetch.to_string(),
        "--name",
        "bench-mem",
        "--keys",
        &r.keys,
    ];
    let mut child = ServiceProcess::spawn_path("stem-bench-worker", &exe, &args, &[])?;
    let pid = child.pid().to_string();
    child.wait_for_log("worker ready", Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = process_memory(&pid)?;
    r.fill(10_000).await?;
    r.wait_drained(Duration::from_secs(600)).await?;
    let (warm, _) = process_memory(&pid)?;
    let mut i = 0;
    let t = Instant::now();
    while i < n {
        let end = (i + 20_000).min(n);
        r.fill(end - i).await?;
        r.wait_drained(Duration::from_secs(600)).await?;
        i = end;
    }
    let (end_rss, peak) = process_memory(&pid)?;
    tracing::info!(
        idle,
        warm,
        end_rss,
        peak,
        secs = t.elapsed().as_secs_f64(),
        "memory run"
    );
    child.sigterm()?;
    child.wait_exit(Duration::from_secs(30))?;
    let _ = opts.runs;
    report.add("idle worker RSS", "MiB", vec![idle]);
    report.add(
        "RSS after a 10k-task warm-up drain (concurrency 128)",
        "MiB",
        vec![warm],
    );
    report.add(
        &format!("RSS after draining {n} more tasks"),
        "MiB",
        vec![end_rss],
    );
    report.add("peak RSS (VmHWM)", "MiB", vec![peak]);
    Ok(report)
}
