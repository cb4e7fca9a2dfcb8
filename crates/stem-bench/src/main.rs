//! `stem-bench`: the benchmark suite. Each scenario starts a private
//! `redis-server` (loopback, no persistence), runs 3 times (configurable),
//! prints a table of medians and writes JSON. Benchmarks print numbers and
//! never fail on timing.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p stem-bench -- all
//! cargo run --release -p stem-bench -- drain --tasks 100000
//! cargo run --release -p stem-bench -- cost --cluster --queues 3
//! ```

mod alloc;
mod measure;
mod noop;
mod phases;
mod scenarios;
mod store;
mod timing;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use scenarios::Report;

/// Counts allocations while a phase of `stem-bench phases` runs.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Parser, Debug)]
#[command(
    name = "stem-bench",
    about = "Stem benchmarks against a private redis-server"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Tasks per run (scenario default when absent).
    #[arg(long, global = true)]
    tasks: Option<usize>,
    /// Runs per figure; the median is reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Prefetch multiplier of the bench's workers.
    #[arg(long, global = true, default_value_t = 2)]
    prefetch: usize,
    /// Where to write the JSON results.
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,
    /// In-process workers export metrics (Prometheus on a free port and
    /// OTLP/HTTP to 127.0.0.1:4318, as STEM_METRIC_EXPORTERS=prometheus,otlp).
    #[arg(long, global = true)]
    metrics: bool,
    /// Producers and in-process workers open spans and export them over
    /// OTLP/HTTP to a sink process that accepts and discards them.
    #[arg(long, global = true)]
    traces: bool,
    /// `drain` and `cost` also run on a private three-master Redis Cluster,
    /// each run right after the single node's (interleaved), with Redis
    /// CPU and commands per master.
    #[arg(long, global = true)]
    cluster: bool,
    /// `drain` and `cost` spread their tasks round-robin over this many
    /// queues (`bench0`, `bench1`, …; one queue is `bench`).
    #[arg(long, global = true, default_value_t = 1)]
    queues: usize,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// One-by-one and bulk enqueue throughput (default 100 000 tasks).
    Enqueue,
    /// Drain throughput at concurrency 1, 16, 128 and with 2 processes.
    Drain {
        /// Only this configuration, as `<concurrency>x<processes>` (e.g. 128x1).
        #[arg(long)]
        only: Option<String>,
    },
    /// Enqueue-to-result latency at a steady rate.
    Latency {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// POST /enqueue against the real enqueuer binary with wrk.
    Http {
        #[arg(long, default_value_t = 64)]
        connections: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Redis commands and round trips per task on the hot path.
    Cost,
    /// Deterministic cost per task of each phase (enqueue one by one, in
    /// bulk, drain and settle): Redis commands, round trips, bytes to and
    /// from Redis, heap allocations.
    Phases,
    /// The performance gate: instructions (callgrind) and Redis commands
    /// per task of each phase against a committed baseline; exits 1 when
    /// one rose more than 10 %.
    Gate {
        /// The baseline file.
        #[arg(long)]
        baseline: PathBuf,
        /// Write the figures measured now as the baseline.
        #[arg(long)]
        update: bool,
    },
    /// (internal) one phase alone against a Redis, for callgrind.
    Phase {
        /// enqueue, bulk or drain.
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        keys: String,
    },
    /// Worker RSS idle and while draining at concurrency 128.
    Memory,
    /// Dashboard pages over 1 000 000 finished tasks, and its idle CPU.
    Dashboard,
    /// Every scenario.
    All,
    /// (internal) an OTLP/HTTP sink: answers 200 to every POST, keeps nothing.
    Sink {
        #[arg(long)]
        port: u16,
    },
    /// (internal) a worker process with the no-op task.
    Worker {
        #[arg(long)]
        url: String,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        name: String,
        #[arg(long)]
        keys: String,
        #[arg(long, value_delimiter = ',', default_value = "bench")]
        queues: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Sink { port } = cli.scenario {
        return sink(port).await;
    }
    // Kept until the end of main: flushes the spans.
    let _telemetry = init_logging(&cli)?;
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics = start_metrics(cli.metrics, &stop_metrics)?;
    let opts = scenarios::Opts {
        tasks: cli.tasks,
        runs: cli.runs.max(1),
        prefetch: cli.prefetch.max(1),
        metrics,
        cluster: cli.cluster,
        queues: cli.queues.max(1),
    };
    match run(cli.scenario, &opts).await? {
        Some(reports) => write_reports(&reports, &cli.out),
        None => Ok(()),
    }
}

/// What `--traces` keeps alive until the end of `main`: the OTLP sink
/// process and the trace pipeline exporting to it. Fields drop in
/// declaration order: the sink first, then the trace pipeline.
struct Telemetry {
    _sink: Option<stem_testkit::ServiceProcess>,
    _traces: Option<stem_service::logging::Traces>,
}

/// Logs to stderr, and with `--traces` exports spans to a sink process
/// started from this executable. The internal `worker` and `phase`
/// subcommands set up their own logging (or none), so they get none here.
fn init_logging(cli: &Cli) -> anyhow::Result<Telemetry> {
    if !cli.traces {
        if !matches!(
            cli.scenario,
            Scenario::Worker { .. } | Scenario::Phase { .. }
        ) {
            stem_service::logging::init_logging(stem::config::LogFormat::Text, "info");
        }
        return Ok(Telemetry {
            _sink: None,
            _traces: None,
        });
    }
    let port = stem_testkit::free_port();
    let exe = std::env::current_exe()?;
    let sink = stem_testkit::ServiceProcess::spawn_path(
        "otlp-sink",
        &exe,
        &["sink", "--port", &port.to_string()],
        &[],
    )?;
    let traces = stem_service::logging::init_service_logging_to(
        "stem-bench",
        stem::config::LogFormat::Text,
        "info",
        Some(&format!("http://127.0.0.1:{port}")),
    );
    Ok(Telemetry {
        _sink: Some(sink),
        _traces: Some(traces),
    })
}

/// With `--metrics`, the pipeline in-process workers record through
/// (Prometheus on a free port and OTLP); otherwise metrics off.
fn start_metrics(
    on: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<stem_service::metrics::Metrics> {
    if !on {
        return Ok(stem_service::metrics::Metrics::off());
    }
    let port = stem_testkit::free_port();
    tracing::info!(port, "workers export metrics (prometheus and otlp)");
    stem_service::metrics::Metrics::start(
        "stem-bench",
        "stem",
        &[
            stem::telemetry::Exporter::Prometheus { port },
            stem::telemetry::Exporter::Otlp { url: None },
        ],
        None,
        stop,
    )
}

/// Runs `scenario`: the reports to print and write, or `None` for the
/// subcommands that report nothing (the internal ones, a passed gate).
/// A failed gate exits with status 1 here.
async fn run(scenario: Scenario, opts: &scenarios::Opts) -> anyhow::Result<Option<Vec<Report>>> {
    let reports = match scenario {
        Scenario::Sink { .. } => return Ok(None),
        Scenario::Worker {
            url,
            concurrency,
            name,
            keys,
            queues,
        } => {
            scenarios::worker_process(&url, concurrency, opts.prefetch, &name, &keys, &queues)
                .await?;
            return Ok(None);
        }
        Scenario::Enqueue => vec![scenarios::enqueue(opts).await?],
        Scenario::Drain { only } => vec![scenarios::drain(opts, only.as_deref()).await?],
        Scenario::Latency { rate, seconds } => {
            vec![scenarios::latency(opts, rate, seconds).await?]
        }
        Scenario::Http {
            connections,
            seconds,
        } => vec![scenarios::http(opts, connections, seconds).await?],
        Scenario::Cost => vec![scenarios::cost(opts).await?],
        Scenario::Phases => vec![phases::phases(opts).await?],
        Scenario::Gate { baseline, update } => {
            gate(opts, &baseline, update).await?;
            return Ok(None);
        }
        Scenario::Phase { name, url, keys } => {
            phases::phase_process(&name, &url, &keys, opts).await?;
            return Ok(None);
        }
        Scenario::Memory => vec![scenarios::memory(opts).await?],
        Scenario::Dashboard => vec![scenarios::dashboard(opts).await?],
        Scenario::All => vec![
            scenarios::enqueue(opts).await?,
            scenarios::drain(opts, None).await?,
            scenarios::latency(opts, 1000, 20).await?,
            scenarios::http(opts, 64, 10).await?,
            scenarios::cost(opts).await?,
            scenarios::memory(opts).await?,
            scenarios::dashboard(opts).await?,
        ],
    };
    Ok(Some(reports))
}

/// The performance gate: returns when it passed, exits with status 1
/// (saying what to do) when a figure rose too much.
async fn gate(opts: &scenarios::Opts, baseline: &Path, update: bool) -> anyhow::Result<()> {
    if phases::gate(opts, baseline, update).await? {
        return Ok(());
    }
    eprintln!(
        "the performance gate failed: a figure rose more than 10 % over {} \
         (if that is the price of a change, rerun with --update and commit the baseline saying why)",
        baseline.display()
    );
    std::process::exit(1);
}

/// Prints each report and writes it as `<out>/<name>.json`.
fn write_reports(reports: &[Report], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for r in reports {
        r.print();
        let path = out.join(format!("{}.json", r.name));
        std::fs::write(&path, serde_json::to_vec_pretty(r)?)?;
        println!("  → {}", path.display());
    }
    Ok(())
}

/// Accepts OTLP/HTTP exports on `port` and drops them.
async fn sink(port: u16) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::OK });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("sink listening on {port}");
    axum::serve(listener, app).await?;
    Ok(())
}
