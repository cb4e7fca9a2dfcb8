//! The scenarios, one file each. Each returns a [`Report`] of median
//! figures; `main.rs` picks them by subcommand. What they share lives here
//! ([`Opts`] in, [`Report`] out) and in [`rig`] (the private Redis, the
//! producer and workers a run sets up), so a scenario file holds only what
//! it measures.

use serde::Serialize;
use serde_json::{json, Value};

use crate::measure::median;

mod cost;
mod dashboard;
mod drain;
mod enqueue;
mod http;
mod latency;
mod memory;
mod rig;
mod worker;

pub use cost::cost;
pub(crate) use cost::BENCH_COMMANDS;
pub use dashboard::dashboard;
pub use drain::drain;
pub use enqueue::enqueue;
pub use http::http;
pub use latency::latency;
pub use memory::memory;
pub(crate) use rig::{bench_worker, config, fill, worker_options};
pub use worker::worker_process;

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
