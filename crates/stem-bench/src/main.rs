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

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    let mut _traces = None;
    let mut _sink = None;
    if cli.traces {
        let port = stem_testkit::free_port();
        let exe = std::env::current_exe()?;
        _sink = Some(stem_testkit::ServiceProcess::spawn_path(
            "otlp-sink",
            &exe,
            &["sink", "--port", &port.to_string()],
            &[],
        )?);
        _traces = Some(stem_service::logging::init_service_logging_to(
            "stem-bench",
            stem::config::LogFormat::Text,
            "info",
            Some(&format!("http://127.0.0.1:{port}")),
        ));
    } else if !matches!(
        cli.scenario,
        Scenario::Worker { .. } | Scenario::Phase { .. }
    ) {
        stem_service::logging::init_logging(stem::config::LogFormat::Text, "info");
    }
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics = if cli.metrics {
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
            &stop_metrics,
        )?
    } else {
        stem_service::metrics::Metrics::off()
    };
    let opts = scenarios::Opts {
        tasks: cli.tasks,
        runs: cli.runs.max(1),
        prefetch: cli.prefetch.max(1),
        metrics,
        cluster: cli.cluster,
        queues: cli.queues.max(1),
    };
    let reports = match cli.scenario {
        Scenario::Sink { .. } => return Ok(()),
        Scenario::Worker {
            url,
            concurrency,
            name,
            keys,
            queues,
        } => {
            return scenarios::worker_process(
                &url,
                concurrency,
                opts.prefetch,
                &name,
                &keys,
                &queues,
            )
            .await;
        }
        Scenario::Enqueue => vec![scenarios::enqueue(&opts).await?],
        Scenario::Drain { only } => vec![scenarios::drain(&opts, only.as_deref()).await?],
        Scenario::Latency { rate, seconds } => {
            vec![scenarios::latency(&opts, rate, seconds).await?]
        }
        Scenario::Http {
            connections,
            seconds,
        } => vec![scenarios::http(&opts, connections, seconds).await?],
        Scenario::Cost => vec![scenarios::cost(&opts).await?],
        Scenario::Phases => vec![phases::phases(&opts).await?],
        Scenario::Gate { baseline, update } => {
            if phases::gate(&opts, &baseline, update).await? {
                return Ok(());
            }
            eprintln!(
                "the performance gate failed: a figure rose more than 10 % over {} \
                 (if that is the price of a change, rerun with --update and commit the baseline saying why)",
                baseline.display()
            );
            std::process::exit(1);
        }
        Scenario::Phase { name, url, keys } => {
            return phases::phase_process(&name, &url, &keys, &opts).await;
        }
        Scenario::Memory => vec![scenarios::memory(&opts).await?],
        Scenario::Dashboard => vec![scenarios::dashboard(&opts).await?],
        Scenario::All => vec![
            scenarios::enqueue(&opts).await?,
            scenarios::drain(&opts, None).await?,
            scenarios::latency(&opts, 1000, 20).await?,
            scenarios::http(&opts, 64, 10).await?,
            scenarios::cost(&opts).await?,
            scenarios::memory(&opts).await?,
            scenarios::dashboard(&opts).await?,
        ],
    };
    std::fs::create_dir_all(&cli.out)?;
    for r in &reports {
        r.print();
        let path = cli.out.join(format!("{}.json", r.name));
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
