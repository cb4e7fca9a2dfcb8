//! The scenarios. Each returns a [`Report`] of median figures.

use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::config::StemConfig;
use stem::signing::generate_hmac_secret;
use stem::worker::{Worker, WorkerConfig};
use stem_testkit::ServiceProcess;
use tokio_util::sync::CancellationToken;

use crate::measure::{median, percentile, process_cpu, process_memory};
use crate::noop::{queues as queues_of, registry, QUEUE, TASK};
use crate::store::Store;
use crate::timing::TimingAtomic;

pub struct Opts {
    pub tasks: Option<usize>,
    pub runs: usize,
    /// Prefetch multiplier of the bench's workers (product default 2).
    pub prefetch: usize,
    /// The metrics pipeline in-process workers record through (off unless
    /// `--metrics`).
    pub metrics: stem_service::metrics::Metrics,
    /// `drain` and `cost` run on a three-master cluster too, interleaved
    /// with the single node (`--cluster`).
    pub cluster: bool,
    /// Queues the tasks of `drain` and `cost` spread over (`--queues`).
    pub queues: usize,
}

#[derive(Serialize)]
pub struct Row {
    pub figure: String,
    pub value: f64,
    pub unit: String,
    pub runs: Vec<f64>,
}

#[derive(Serialize)]
pub struct Report {
    pub name: String,
    pub machine: Value,
    pub rows: Vec<Row>,
}

impl Report {
    pub(crate) fn new(name: &str) -> Self {
        Report {
            name: name.into(),
            machine: machine(),
            rows: Vec::new(),
        }
    }
    pub(crate) fn add(&mut self, figure: &str, unit: &str, runs: Vec<f64>) {
        self.rows.push(Row {
            figure: figure.into(),
            value: median(runs.clone()),
            unit: unit.into(),
            runs,
        });
    }
    pub fn print(&self) {
        println!("\n== {} ==", self.name);
        let w = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(10);
        for r in &self.rows {
            println!("  {:<w$}  {:>12.2} {}", r.figure, r.value, r.unit, w = w);
        }
    }
}

/// The CPU's model name (`/proc/cpuinfo`).
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpu = cpu_model();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({ "nproc": nproc, "cpu": cpu, "redis": redis })
}

/// A store plus a signing producer on it, and the queues a run uses.
struct Rig {
    store: Store,
    keys: String,
    stem: Stem,
    queues: Vec<String>,
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
fn rig() -> anyhow::Result<Rig> {
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
    fn compared(opts: &Opts) -> anyhow::Result<Vec<Rig>> {
        let mut rigs = vec![Rig::start(false, opts.queues)?];
        if opts.cluster {
            rigs.push(Rig::start(true, opts.queues)?);
        }
        Ok(rigs)
    }

    fn stem_verifier(&self, keys: &str) -> anyhow::Result<Option<stem::signing::Verifier>> {
        Ok(config(&self.store.url(), keys)?.keys.verifier())
    }

    /// Empties the store and registers the queues.
    async fn reset(&self) -> anyhow::Result<()> {
        self.store.flushall()?;
        self.stem.broker().register_queues(&self.queues).await?;
        Ok(())
    }

    async fn fill(&self, n: usize) -> anyhow::Result<()> {
        fill(&self.stem, &self.queues, n).await
    }

    async fn wait_drained(&self, limit: Duration) -> anyhow::Result<()> {
        wait_drained(&self.stem, &self.queues, limit).await
    }

    fn worker_options(&self, name: &str, concurrency: usize, prefetch: usize) -> WorkerConfig {
        worker_options(name, concurrency, prefetch, &self.queues)
    }

    /// A figure's name: with `--cluster`, prefixed by the store's label.
    fn figure(&self, opts: &Opts, name: &str) -> String {
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

async fn wait_drained(stem: &Stem, queues: &[String], limit: Duration) -> anyhow::Result<()> {
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

/// `", N queues"` for figure names when the tasks spread over several.
fn queues_label(opts: &Opts) -> String {
    match opts.queues {
        0 | 1 => String::new(),
        q => format!(", {q} queues"),
    }
}

/// The rigs of run `run` with their figures, the order alternating
/// between runs (so neither store always runs first).
fn interleaved<'a, T>(
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
fn add_redis_cpu(report: &mut Report, r: &Rig, opts: &Opts, label: &str, runs: &[Vec<f64>]) {
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
        let stored = timing.stored.lock().unwrap_or_else(|p| p.into_inner());
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

pub async fn http(opts: &Opts, connections: u32, seconds: u64) -> anyhow::Result<Report> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!(
            "wrk not found: install it with `apt-get install wrk` (scripts/bench.sh does this)"
        );
    }
    let mut report = Report::new("http");
    let (mut rps, mut p99) = (Vec::new(), Vec::new());
    let script = std::env::temp_dir().join("stem-bench-post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"name\":\"bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    for run in 0..opts.runs {
        let r = rig()?;
        let port = stem_testkit::free_port();
        let mut enq = ServiceProcess::spawn(
            "enqueuer",
            &[],
            &[
                ("PORT", port.to_string()),
                ("STEM_BROKER_URL", r.store.url()),
                ("STEM_SIGNING_KEYS", r.keys.clone()),
                ("STEM_SIGNING_ACTIVE_KEY", "bench".into()),
                ("RUST_LOG", "warn".into()),
            ],
        )?;
        let url = format!("http://127.0.0.1:{port}");
        stem_testkit::wait_until("enqueuer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        let out = std::process::Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(format!("{url}/enqueue"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        let q99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| parse_wrk_duration(v.trim()))
            .unwrap_or(f64::NAN);
        let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
        tracing::info!(run, rate, p99_ms = q99, non2xx, "http run");
        if non2xx {
            tracing::warn!("wrk saw non-2xx responses:\n{text}");
        }
        rps.push(rate);
        p99.push(q99);
        enq.sigterm()?;
        enq.wait_exit(Duration::from_secs(15))?;
    }
    report.add(
        &format!("POST /enqueue, {connections} connections, {seconds} s"),
        "requests/s",
        rps,
    );
    report.add("POST /enqueue p99", "ms", p99);
    Ok(report)
}

fn parse_wrk_duration(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

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

    let port = stem_testkit::free_port();
    let mut dash = ServiceProcess::spawn(
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
    stem::redis_conn::install_crypto_provider();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
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
    let pid = dash.pid().to_string();
    let idle = |secs: u64| {
        let pid = pid.clone();
        async move {
            let before = process_cpu(&pid)?;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            anyhow::Ok((process_cpu(&pid)? - before) / secs as f64 * 100.0)
        }
    };
    report.add(
        "dashboard CPU, no page open",
        "% of a core",
        vec![idle(20).await?],
    );
    let mut stream = http.get(format!("{base}/events?list=tasks")).send().await?;
    let reading = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
    report.add(
        "dashboard CPU, one list page open",
        "% of a core",
        vec![idle(20).await?],
    );
    reading.abort();
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

/// The internal `worker` subcommand: a no-op worker process.
pub async fn worker_process(
    url: &str,
    concurrency: usize,
    prefetch: usize,
    name: &str,
    keys: &str,
    queues: &[String],
) -> anyhow::Result<()> {
    stem_service::logging::init_logging(stem::config::LogFormat::Text, "info");
    let cfg = config(url, keys)?;
    let stem = Stem::connect_consumer(&cfg)?.with_registry(registry());
    let w = Worker::new(
        worker_options(name, concurrency, prefetch, queues),
        &stem,
        cfg.keys.verifier(),
    );
    w.run(stem_service::shutdown_token()).await?;
    Ok(())
}
