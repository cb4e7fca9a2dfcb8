//! `stem-bench dashboard`: the dashboard over a million finished tasks —
//! how fast it answers its pages, what its recent-task index costs Redis,
//! and its CPU with no page open and with one list page streaming.

use std::time::{Duration, Instant};

use stem_testkit::ServiceProcess;
use tokio_util::sync::CancellationToken;

use super::rig::{bench_worker, rig, Rig};
use super::{Opts, Report};
use crate::measure::{percentile, process_cpu};
use crate::noop::QUEUE;

/// The dashboard over a Redis holding `n` finished tasks (default
/// 1 000 000): how long the release `dashboard` binary takes to answer its
/// overview and tasks pages (unfiltered; filtered by a state no task is
/// in and by a text no task holds, both of which read the queue's whole
/// recent-task index), p50 and p95 over 50 requests each, timed by the
/// client on loopback; what the index costs Redis (`MEMORY USAGE`); and
/// the dashboard's CPU over 20 s with no page open and with one list
/// page's event stream open.
pub async fn dashboard(opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(1_000_000);
    let r = rig()?;
    let mut report = Report::new("dashboard");
    finish_tasks(&r, n, opts).await?;
    let (entries, bytes) = index_cost(&r)?;
    let (mut dash, port) = spawn_dashboard(&r)?;
    stem::redis_conn::install_crypto_provider();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    time_pages(&mut report, &http, &base).await?;
    add_cpu(&mut report, &http, &base, &dash.pid().to_string()).await?;
    report.add("recent-task index entries", "entries", vec![entries]);
    report.add(
        "recent-task index memory per entry",
        "bytes",
        vec![bytes / entries.max(1.0)],
    );
    dash.sigterm()?;
    dash.wait_exit(Duration::from_secs(15))?;
    Ok(report)
}

/// Runs `n` no-op tasks through an in-process worker at concurrency 128,
/// 100 000 at a time, so the store holds `n` finished tasks.
async fn finish_tasks(r: &Rig, n: usize, opts: &Opts) -> anyhow::Result<()> {
    r.stem.broker().register_queues(&r.queues).await?;
    let stop = CancellationToken::new();
    let w = bench_worker(
        r.worker_options("bench-dashboard", 128, opts.prefetch),
        &r.stem,
        r.stem_verifier(&r.keys)?,
        opts,
    );
    let worker = tokio::spawn(w.run(stop.clone()));
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 100_000).min(n);
        r.fill(end - i).await?;
        r.wait_drained(Duration::from_secs(600)).await?;
        i = end;
        tracing::info!(finished = i, secs = t.elapsed().as_secs_f64(), "filling");
    }
    stop.cancel();
    worker.await??;
    Ok(())
}

/// The entries of the queue's recent-task index and the bytes Redis
/// spends on it (`MEMORY USAGE`).
fn index_cost(r: &Rig) -> anyhow::Result<(f64, f64)> {
    let keys = r.store.single()?.cli(&["DBSIZE"])?;
    let index = stem::keys::recent(QUEUE);
    let entries: f64 = r.store.single()?.cli(&["XLEN", &index])?.trim().parse()?;
    let bytes: f64 = r
        .store
        .single()?
        .cli(&["MEMORY", "USAGE", &index, "SAMPLES", "0"])?
        .trim()
        .parse()?;
    tracing::info!(keys = keys.trim(), entries, bytes, "finished tasks stored");
    Ok((entries, bytes))
}

/// The release `dashboard` binary on a free port over `r`'s store, once
/// it accepts connections; and that port.
fn spawn_dashboard(r: &Rig) -> anyhow::Result<(ServiceProcess, u16)> {
    let port = stem_testkit::free_port();
    let dash = ServiceProcess::spawn(
        "dashboard",
        &[],
        &[
            ("DASHBOARD_PORT", port.to_string()),
            ("STEM_BROKER_URL", r.store.url()),
            ("RUST_LOG", "warn".into()),
        ],
    )?;
    stem_testkit::wait_until("dashboard", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok((dash, port))
}

/// Each page's p50 and p95 over 50 requests, timed by the client.
async fn time_pages(report: &mut Report, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for (path, figure) in [
        ("/", "overview"),
        ("/tasks", "tasks, page 1 of 25"),
        ("/tasks?page=4&pageSize=200", "tasks, page 4 of 200"),
        (
            "/tasks?state=failed",
            "tasks, state=failed (none: whole index read)",
        ),
        (
            "/tasks?q=no-such-text",
            "tasks, q=no-such-text (none: whole index read)",
        ),
    ] {
        let mut ms = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let reply = http.get(format!("{base}{path}")).send().await?;
            anyhow::ensure!(reply.status() == 200, "{path}: {}", reply.status());
            reply.bytes().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        report.add(&format!("{figure} p50"), "ms", vec![percentile(&ms, 50.0)]);
        report.add(&format!("{figure} p95"), "ms", vec![percentile(&ms, 95.0)]);
    }
    Ok(())
}

/// The dashboard's (process `pid`) CPU over 20 s with no page open, then
/// over 20 s with one list page's event stream open and read.
async fn add_cpu(
    report: &mut Report,
    http: &reqwest::Client,
    base: &str,
    pid: &str,
) -> anyhow::Result<()> {
    report.add(
        "dashboard CPU, no page open",
        "% of a core",
        vec![cpu_over(pid, 20).await?],
    );
    let mut stream = http.get(format!("{base}/events?list=tasks")).send().await?;
    let reading = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
    report.add(
        "dashboard CPU, one list page open",
        "% of a core",
        vec![cpu_over(pid, 20).await?],
    );
    reading.abort();
    Ok(())
}

/// Process `pid`'s CPU over the next `secs` seconds, in % of a core.
async fn cpu_over(pid: &str, secs: u64) -> anyhow::Result<f64> {
    let before = process_cpu(pid)?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok((process_cpu(pid)? - before) / secs as f64 * 100.0)
}
