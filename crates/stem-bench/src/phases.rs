//! Deterministic cost per task, phase by phase (issue 25): what one task
//! costs its producer (one by one, and in bulk) and its worker (fetch, run,
//! settle at concurrency 128), in figures that do not move with the
//! machine's load — Redis commands, client round trips, bytes to and from
//! Redis, heap allocations — and the performance gate built on them.
//!
//! - `stem-bench phases`: every figure of every phase, in one process on a
//!   private `redis-server`.
//! - `stem-bench phase <name> --url URL --keys KEYS`: one phase alone, in a
//!   process of its own (internal), so callgrind can count its instructions.
//! - `stem-bench gate`: instructions per task of each phase (callgrind,
//!   the slope between two task counts, so start-up cancels out, the least
//!   of several runs at each) and Redis
//!   commands per task, against the committed baseline
//!   (`crates/stem-bench/gate-baseline.json`); fails when either rises
//!   more than [`GATE_TOLERANCE`]. `scripts/bench-gate.sh` builds the
//!   release binary and runs it; `scripts/test.sh` runs that.
//!
//! Why these figures: on a 2-core machine wall-clock throughput moves by
//! tens of per cent between runs of one build, so a 20 % loss hides in it;
//! instructions and commands per task move by well under 1 % between runs
//! (docs/benchmarks.md, "The performance gate").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use stem::client::{EnqueueOptions, Stem};
use stem::signing::generate_hmac_secret;
use stem_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

use crate::alloc;
use crate::measure::{command_calls, info};
use crate::noop::{registry, QUEUE, TASK};
use crate::scenarios::{
    bench_worker, config, cpu_model, fill, worker_options, Opts, Report, BENCH_COMMANDS,
};

/// The phases, in the order a task meets them.
pub const PHASES: [&str; 3] = ["enqueue", "bulk", "drain"];

/// How much a gated figure may rise over the baseline before the gate
/// fails.
pub const GATE_TOLERANCE: f64 = 0.10;

/// A producer with the bench's catalogue and signing key `keys` on
/// `url`, and the verifier a worker of it needs.
fn producer(url: &str, keys: &str) -> anyhow::Result<(Stem, Option<stem::signing::Verifier>)> {
    let cfg = config(url, keys)?;
    Ok((
        Stem::connect(&cfg)?.with_registry(registry()),
        cfg.keys.verifier(),
    ))
}

/// What one phase spent per task.
#[derive(Clone, Copy, Debug, Default)]
struct Spent {
    commands: f64,
    trips: f64,
    bytes_in: f64,
    bytes_out: f64,
    allocs: f64,
    alloc_bytes: f64,
}

/// What phase `name` is, for reports.
fn describe(name: &str) -> &'static str {
    match name {
        "enqueue" => "enqueue one by one (producer)",
        "bulk" => "enqueue_many, 1000 a call (producer)",
        _ => "drain: fetch, run, settle at concurrency 128 (worker)",
    }
}

/// Runs phase `name` for `n` tasks through `stem` (the queue must hold `n`
/// tasks for `drain`, whose worker verifies with `verifier`).
async fn run_phase(
    name: &str,
    (stem, verifier): &(Stem, Option<stem::signing::Verifier>),
    n: usize,
    opts: &Opts,
) -> anyhow::Result<()> {
    let queues = [QUEUE.to_string()];
    match name {
        "enqueue" => {
            for i in 0..n {
                stem.enqueue_raw(TASK, json!(i), EnqueueOptions::default())
                    .await?;
            }
        }
        "bulk" => fill(stem, &queues, n).await?,
        "drain" => {
            let stop = CancellationToken::new();
            let worker = bench_worker(
                worker_options("bench-phase", 128, opts.prefetch, &queues),
                stem,
                verifier.clone(),
                opts,
            );
            let handle = tokio::spawn(worker.run(stop.clone()));
            // Polled every 50 ms, not 5: the polls' own allocations and
            // commands stay far below one per task.
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let s = stem.admin().stats(QUEUE).await?;
                if s.ready + s.inflight + s.delayed == 0 {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "queue not drained in 10 min");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.cancel();
            handle.await??;
        }
        other => anyhow::bail!("no phase {other:?} (use {})", PHASES.join(", ")),
    }
    Ok(())
}

/// Runs phase `name` on `redis` and reads what it spent.
async fn measure(
    name: &str,
    redis: &RedisServer,
    rig: &(Stem, Option<stem::signing::Verifier>),
    n: usize,
    opts: &Opts,
) -> anyhow::Result<Spent> {
    redis.cli(&["CONFIG", "RESETSTAT"])?;
    let trips = stem::redis_conn::round_trips();
    alloc::counting(true);
    run_phase(name, rig, n, opts).await?;
    let allocated = alloc::counting(false);
    let trips = stem::redis_conn::round_trips() - trips;
    let per = |v: f64| v / n as f64;
    // The drain's polling (stats: XLEN, ZCARD, XPENDING) is the bench's,
    // not the worker's; the producer phases poll nothing, so everything
    // but this function's own INFO and RESETSTAT counts there.
    let bench_own: &[&str] = if name == "drain" {
        &BENCH_COMMANDS
    } else {
        &["info", "config|resetstat"]
    };
    let commands: u64 = command_calls(redis)?
        .into_iter()
        .filter(|(k, _)| !bench_own.contains(&k.as_str()))
        .map(|(_, (calls, _))| calls)
        .sum();
    let stats = info(redis, "stats")?;
    let stat = |k: &str| {
        stats
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Spent {
        commands: per(commands as f64),
        trips: per(trips as f64),
        bytes_in: per(stat("total_net_input_bytes")),
        bytes_out: per(stat("total_net_output_bytes")),
        allocs: per(allocated.calls as f64),
        alloc_bytes: per(allocated.bytes as f64),
    })
}

/// Every phase on a fresh private Redis; the drain consumes what the bulk
/// phase published.
async fn spend(n: usize, opts: &Opts) -> anyhow::Result<BTreeMap<&'static str, Spent>> {
    let redis = RedisServer::start()?;
    let keys = format!("bench:{}", generate_hmac_secret());
    let rig = producer(&redis.url(), &keys)?;
    let queues = [QUEUE.to_string()];
    rig.0.broker().register_queues(&queues).await?;
    let mut out = BTreeMap::new();
    for name in PHASES {
        if name == "bulk" {
            // One by one left its tasks in the queue: start the bulk
            // phase (and so the drain) from an empty one.
            redis.cli(&["FLUSHALL"])?;
            rig.0.broker().register_queues(&queues).await?;
        }
        out.insert(name, measure(name, &redis, &rig, n, opts).await?);
    }
    Ok(out)
}

/// `stem-bench phases`: every figure of every phase.
pub async fn phases(opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.tasks.unwrap_or(20_000);
    let mut runs: Vec<BTreeMap<&str, Spent>> = Vec::new();
    for run in 0..opts.runs {
        runs.push(spend(n, opts).await?);
        tracing::info!(run, "phases run");
    }
    let mut report = Report::new("phases");
    type Figure = (&'static str, &'static str, fn(&Spent) -> f64);
    let figures: [Figure; 6] = [
        ("redis commands", "per task", |s| s.commands),
        ("client round trips", "per task", |s| s.trips),
        ("bytes to redis", "per task", |s| s.bytes_in),
        ("bytes from redis", "per task", |s| s.bytes_out),
        ("heap allocations", "per task", |s| s.allocs),
        ("bytes allocated", "per task", |s| s.alloc_bytes),
    ];
    for name in PHASES {
        for (figure, unit, get) in figures {
            report.add(
                &format!("{}: {figure} ({n} tasks)", describe(name)),
                unit,
                runs.iter().map(|r| get(&r[name])).collect(),
            );
        }
    }
    Ok(report)
}

/// The internal `phase` subcommand: phase `name` alone against `url`.
pub async fn phase_process(name: &str, url: &str, keys: &str, opts: &Opts) -> anyhow::Result<()> {
    let n = opts.tasks.unwrap_or(2_000);
    let rig = producer(url, keys)?;
    rig.0.broker().register_queues(&[QUEUE.to_string()]).await?;
    run_phase(name, &rig, n, opts).await
}

/// One phase's gated figures.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Gated {
    /// CPU instructions per task (callgrind).
    pub instructions: f64,
    /// Redis commands per task.
    pub commands: f64,
}

/// The committed baseline.
#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    /// Why the baseline is what it is (the commit that changed it says
    /// more).
    pub note: String,
    /// Where its instructions were counted ([`counting_machine`]):
    /// instruction counts depend on the code paths a CPU's features
    /// select (SHA, AVX) and on valgrind's version, so elsewhere only the
    /// commands are compared.
    #[serde(default)]
    pub machine: String,
    pub phases: BTreeMap<String, Gated>,
}

/// The CPU model and valgrind version instructions are counted with.
fn counting_machine() -> String {
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{} / {valgrind}", cpu_model())
}

/// Task counts whose difference callgrind's slope is taken over.
const SLOPE: (usize, usize) = (2_000, 6_000);

/// Runs of each count under callgrind (the drain's batches are cut by
/// timing, so it needs more); the smallest total counts. Work that is not
/// the tasks' (timer-driven loops, which run longer the slower valgrind
/// makes a run; batches cut differently) only ever adds instructions, so
/// the least is the closest to the tasks' own cost.
fn repeats(phase: &str) -> usize {
    if phase == "drain" {
        4
    } else {
        2
    }
}

/// Instructions callgrind counted in a run of this binary with `args`.
fn callgrind(dir: &Path, label: &str, args: &[&str]) -> anyhow::Result<f64> {
    let out = dir.join(format!("callgrind.{label}.out"));
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| {
            anyhow::anyhow!("running valgrind (install it: apt-get install valgrind): {e}")
        })?;
    anyhow::ensure!(status.success(), "valgrind {label} failed: {status}");
    let text = std::fs::read_to_string(&out)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no instruction total in {}", out.display()))
}

/// Instructions per task of `name`: callgrind over the phase alone at two
/// task counts, on `redis` (emptied first; filled natively for `drain`).
fn instructions(redis: &RedisServer, keys: &str, dir: &Path, name: &str) -> anyhow::Result<f64> {
    let url = redis.url();
    let exe = std::env::current_exe()?;
    let mut totals = Vec::new();
    for n in [SLOPE.0, SLOPE.1] {
        redis.cli(&["FLUSHALL"])?;
        let tasks = n.to_string();
        let args = |phase: &'static str| {
            vec![
                "phase",
                phase,
                "--url",
                url.as_str(),
                "--keys",
                keys,
                "--tasks",
                tasks.as_str(),
            ]
        };
        let fill_natively = || -> anyhow::Result<()> {
            let status = std::process::Command::new(&exe)
                .args(args("bulk"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "filling the queue failed: {status}");
            Ok(())
        };
        if name == "drain" {
            fill_natively()?;
        }
        let phase: &'static str = PHASES
            .into_iter()
            .find(|p| *p == name)
            .ok_or_else(|| anyhow::anyhow!("no phase {name}"))?;
        let mut least = f64::INFINITY;
        for run in 0..repeats(name) {
            if name == "drain" && run > 0 {
                fill_natively()?;
            }
            least = least.min(callgrind(dir, &format!("{name}.{n}.{run}"), &args(phase))?);
            redis.cli(&["FLUSHALL"])?;
        }
        totals.push(least);
    }
    Ok((totals[1] - totals[0]) / (SLOPE.1 - SLOPE.0) as f64)
}

/// `stem-bench gate`: the gated figures now against `baseline`; writes
/// them as the new baseline with `update`. Ok(false) when a figure rose
/// more than [`GATE_TOLERANCE`].
pub async fn gate(opts: &Opts, baseline: &Path, update: bool) -> anyhow::Result<bool> {
    let redis = RedisServer::start()?;
    let keys = format!("bench:{}", generate_hmac_secret());
    let dir = tempfile::tempdir()?;
    let commands = spend(opts.tasks.unwrap_or(10_000), opts).await?;
    let mut now: BTreeMap<String, Gated> = BTreeMap::new();
    for name in PHASES {
        let instructions = instructions(&redis, &keys, dir.path(), name)?;
        anyhow::ensure!(
            instructions.is_finite() && instructions > 0.0,
            "callgrind's slope for {name} is {instructions}: the runs at {} and {} tasks did not measure what they should",
            SLOPE.0,
            SLOPE.1
        );
        tracing::info!(phase = name, instructions, "counted");
        now.insert(
            name.to_string(),
            Gated {
                instructions,
                commands: commands[name].commands,
            },
        );
    }
    if update {
        let note = std::env::var("STEM_GATE_NOTE").unwrap_or_else(|_| {
            "instructions (callgrind slope, release build) and Redis commands per task".into()
        });
        let b = Baseline {
            note,
            machine: counting_machine(),
            phases: now,
        };
        std::fs::write(baseline, serde_json::to_vec_pretty(&b)?)?;
        println!("baseline written to {}", baseline.display());
        return Ok(true);
    }
    let base: Baseline = serde_json::from_slice(
        &std::fs::read(baseline)
            .map_err(|e| anyhow::anyhow!("reading the baseline {}: {e}", baseline.display()))?,
    )?;
    let here = counting_machine();
    let same_machine = base.machine.is_empty() || base.machine == here;
    if !same_machine {
        println!(
            "instructions not gated: the baseline counted them on {:?}, this is {here:?} (commands are)",
            base.machine
        );
    }
    let verdicts: Vec<Verdict> = judge(&base, &now)?
        .into_iter()
        .filter(|v| same_machine || v.figure != "instructions")
        .collect();
    println!(
        "{:<10} {:<14} {:>12} {:>12} {:>8}",
        "phase", "figure", "baseline", "now", "change"
    );
    for v in &verdicts {
        println!(
            "{:<10} {:<14} {:>12.2} {:>12.2} {:>+7.1}%{}",
            v.phase,
            v.figure,
            v.was,
            v.is,
            v.change() * 100.0,
            if v.over() {
                "  ← over the 10 % allowed"
            } else {
                ""
            }
        );
    }
    Ok(!verdicts.iter().any(Verdict::over))
}

/// One gated figure of one phase, then and now.
#[derive(Debug)]
struct Verdict {
    phase: &'static str,
    figure: &'static str,
    was: f64,
    is: f64,
}

impl Verdict {
    fn change(&self) -> f64 {
        self.is / self.was - 1.0
    }

    /// Whether it rose more than [`GATE_TOLERANCE`] (a fall always
    /// passes: update the baseline to keep it).
    fn over(&self) -> bool {
        self.change() > GATE_TOLERANCE
    }
}

/// Every gated figure of every phase of `now` against `base`; `Err` when
/// the baseline lacks a phase.
fn judge(base: &Baseline, now: &BTreeMap<String, Gated>) -> anyhow::Result<Vec<Verdict>> {
    let mut out = Vec::new();
    for phase in PHASES {
        let (Some(b), Some(n)) = (base.phases.get(phase), now.get(phase)) else {
            anyhow::bail!(
                "the baseline has no phase {phase}: run `scripts/bench-gate.sh --update`"
            );
        };
        out.push(Verdict {
            phase,
            figure: "instructions",
            was: b.instructions,
            is: n.instructions,
        });
        out.push(Verdict {
            phase,
            figure: "commands",
            was: b.commands,
            is: n.commands,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(instructions: f64, commands: f64) -> BTreeMap<String, Gated> {
        PHASES
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    Gated {
                        instructions,
                        commands,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_gate_fails_a_rise_over_ten_per_cent_only() -> anyhow::Result<()> {
        let base = Baseline {
            note: String::new(),
            machine: String::new(),
            phases: figures(100_000.0, 2.0),
        };
        let over = |now| -> anyhow::Result<Vec<(&str, &str)>> {
            Ok(judge(&base, &now)?
                .into_iter()
                .filter(Verdict::over)
                .map(|v| (v.phase, v.figure))
                .collect())
        };
        assert!(over(figures(109_000.0, 2.19))?.is_empty(), "within 10 %");
        assert!(over(figures(50_000.0, 1.0))?.is_empty(), "cheaper passes");
        assert_eq!(
            over(figures(111_000.0, 2.0))?.len(),
            3,
            "instructions +11 %"
        );
        let mut one = figures(100_000.0, 2.0);
        one.insert(
            "drain".into(),
            Gated {
                instructions: 100_000.0,
                commands: 2.3,
            },
        );
        assert_eq!(
            over(one)?,
            [("drain", "commands")],
            "one command more per ten tasks"
        );
        let mut missing = figures(100_000.0, 2.0);
        missing.remove("bulk");
        let lacking = Baseline {
            note: String::new(),
            machine: String::new(),
            phases: missing,
        };
        assert!(judge(&lacking, &figures(1.0, 1.0)).is_err());
        Ok(())
    }
}
