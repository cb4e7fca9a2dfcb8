//! The worker runtime and canvas, in process, over both adapters: typed
//! tasks, retries, dead letters, limits, panics, signatures, chains,
//! chords, groups, progress, the prefetch bound and graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{poll, Adapters};
use serde_json::{json, Value};
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::envelope::{TaskState, TaskStatus};
use stem::signing::{generate_hmac_secret, KeyRing, Signer, Verifier};
use stem::task::{Task, TaskContext, TaskFailure, TaskOptions, TaskRegistry, TaskResult};
use stem::worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "rt";

fn opts(max_retries: u32) -> TaskOptions {
    TaskOptions {
        queue: QUEUE.into(),
        max_retries,
        ..Default::default()
    }
}

struct Add;
#[stem::async_trait]
impl Task for Add {
    const NAME: &'static str = "math.add";
    type Args = (i64, i64);
    type Output = i64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, (a, b): (i64, i64)) -> TaskResult<i64> {
        let prev = ctx.chain_previous.and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(a + b + prev)
    }
}

struct Sum;
#[stem::async_trait]
impl Task for Sum {
    const NAME: &'static str = "math.sum";
    type Args = ();
    type Output = i64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, _: ()) -> TaskResult<i64> {
        let parts = ctx.chord_results.ok_or("not a chord callback")?;
        Ok(parts.iter().filter_map(Value::as_i64).sum())
    }
}

/// Fails until attempt `ok_at`, counting executions.
struct Flaky(Arc<AtomicU32>);
#[stem::async_trait]
impl Task for Flaky {
    const NAME: &'static str = "flaky";
    type Args = u32;
    type Output = String;
    fn options(&self) -> TaskOptions {
        opts(1)
    }
    async fn run(&self, ctx: TaskContext, ok_at: u32) -> TaskResult<String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if ctx.attempt < ok_at {
            return Err(TaskFailure::new(format!("attempt {} fails", ctx.attempt)));
        }
        Ok(format!("ok at {}", ctx.attempt))
    }
}

struct Fatal;
#[stem::async_trait]
impl Task for Fatal {
    const NAME: &'static str = "fatal";
    type Args = ();
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(5)
    }
    async fn run(&self, _: TaskContext, _: ()) -> TaskResult<()> {
        Err(TaskFailure::fatal("bad input, do not retry"))
    }
}

struct Panics;
#[stem::async_trait]
impl Task for Panics {
    const NAME: &'static str = "panics";
    type Args = ();
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _: TaskContext, _: ()) -> TaskResult<()> {
        panic!("kaboom")
    }
}

/// Sleeps `ms`, reporting progress; honours soft and hard limits.
struct Sleepy;
#[stem::async_trait]
impl Task for Sleepy {
    const NAME: &'static str = "sleepy";
    type Args = u64;
    type Output = String;
    fn options(&self) -> TaskOptions {
        TaskOptions {
            soft_time_limit: Some(Duration::from_millis(300)),
            time_limit: Some(Duration::from_millis(1500)),
            ..opts(0)
        }
    }
    async fn run(&self, ctx: TaskContext, ms: u64) -> TaskResult<String> {
        let steps = ms / 50;
        for i in 0..steps {
            ctx.progress(i as f64 / steps as f64, json!({"step": i}))
                .await;
            if ctx.soft_limit_reached() && ms == 1000 {
                return Ok("stopped at the soft limit".into());
            }
            if !ctx.sleep(Duration::from_millis(50)).await {
                return Err(TaskFailure::new("cancelled"));
            }
        }
        Ok(format!("slept {ms}"))
    }
}

/// Blocks its thread for `ms` (a CPU-bound or synchronous body), on the
/// blocking pool through `run_blocking`; counts its runs.
struct Offloaded(Arc<AtomicU32>);
#[stem::async_trait]
impl Task for Offloaded {
    const NAME: &'static str = "offloaded";
    type Args = u64;
    type Output = u64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _ctx: TaskContext, ms: u64) -> TaskResult<u64> {
        self.0.fetch_add(1, Ordering::SeqCst);
        stem::task::run_blocking(move || {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .await
    }
}

/// Sleeps `ms` without reporting progress.
struct Quiet;
#[stem::async_trait]
impl Task for Quiet {
    const NAME: &'static str = "quiet";
    type Args = u64;
    type Output = u64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, ms: u64) -> TaskResult<u64> {
        ctx.sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

/// Makes the Redis on port `args` hold every write for 300 ms, then
/// returns at once: its settle waits behind the pause.
pub struct PausesWrites;
#[stem::async_trait]
impl Task for PausesWrites {
    const NAME: &'static str = "pauses.writes";
    type Args = u16;
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _: TaskContext, port: u16) -> TaskResult<()> {
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLIENT", "PAUSE", "300", "WRITE"])
            .output()
            .await
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !String::from_utf8_lossy(&out.stdout).contains("OK") {
            return Err(format!("CLIENT PAUSE: {out:?}").into());
        }
        Ok(())
    }
}

fn registry(counter: Arc<AtomicU32>) -> TaskRegistry {
    let r = TaskRegistry::new();
    r.register(Add)
        .register(Sum)
        .register(Flaky(counter.clone()))
        .register(Offloaded(counter))
        .register(Fatal)
        .register(Panics)
        .register(Sleepy)
        .register(Quiet)
        .register(PausesWrites);
    r
}

fn keys(active: &str, secrets: &[(&str, &str)]) -> KeyRing {
    let list = secrets
        .iter()
        .map(|(k, s)| format!("{k}:{s}"))
        .collect::<Vec<_>>()
        .join(",");
    let env: HashMap<String, String> = [
        ("STEM_SIGNING_KEYS".to_string(), list),
        ("STEM_SIGNING_ACTIVE_KEY".to_string(), active.to_string()),
    ]
    .into();
    KeyRing::from_lookup(&move |k: &str| env.get(k).cloned()).expect("valid keys")
}

/// A running worker and its producer on one set of stores.
pub struct Rig {
    /// The producer (and reader of statuses).
    pub stem: Stem,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<stem::Result<()>>,
    counter: Arc<AtomicU32>,
    _adapters: Adapters,
}

fn rig_with(
    a: Adapters,
    signer: Option<Signer>,
    verifier: Option<Verifier>,
    tune: impl FnOnce(&mut WorkerConfig),
) -> Rig {
    let counter = Arc::new(AtomicU32::new(0));
    let stem = Stem::new(a.stores(), signer, registry(counter.clone()));
    let mut o = WorkerConfig::new("rt-worker", &[QUEUE]);
    o.fetch_block = Duration::from_millis(200);
    o.promote_interval = Duration::from_millis(50);
    tune(&mut o);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(o, &stem, verifier).run(stop.clone()));
    Rig {
        stem,
        stop,
        worker,
        counter,
        _adapters: a,
    }
}

/// A worker on `a` with HMAC signing, running the suite's catalogue
/// (`QUEUE`); [`Rig::finish`] stops it.
pub fn rig(a: Adapters) -> Rig {
    let secret = generate_hmac_secret();
    let ring = keys("k1", &[("k1", &secret)]);
    rig_with(a, ring.signer().expect("signer"), ring.verifier(), |_| {})
}

impl Rig {
    /// Stops the worker.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.shutdown().await.map(drop)
    }
    /// Stops the worker and returns the stores (still running).
    async fn shutdown(self) -> anyhow::Result<Adapters> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.worker).await???;
        Ok(self._adapters)
    }
    /// Waits up to 15 s for task `id` to finish.
    pub async fn wait(&self, id: &str) -> anyhow::Result<TaskStatus> {
        Ok(self.stem.wait(id, Duration::from_secs(15)).await?)
    }
}

mod canvas;
mod control;
mod lifecycle;
mod outcomes;
mod signing;

pub use canvas::*;
pub use control::*;
pub use lifecycle::*;
pub use outcomes::*;
pub use signing::*;

/// Runs the runtime contract against each adapter listed as
/// `module => factory` (a `fn() -> anyhow::Result<…>`): one
/// `#[tokio::test]` per (adapter, test), in a module named after the
/// adapter.
#[macro_export]
macro_rules! runtime_suite {
    ($($module:ident => $factory:path),* $(,)?) => {
        $crate::__suite!(
            runtime;
            [$($module => $factory),*];
            typed_task_succeeds,
            failed_attempt_is_retried_with_backoff,
            exhausted_retries_dead_letter,
            fatal_failure_is_not_retried,
            panic_is_a_failure_and_the_worker_survives,
            time_limits_and_progress,
            chain_passes_results_and_aborts_on_failure,
            chord_runs_callback_with_all_results,
            group_collects_every_result,
            forged_and_unsigned_envelopes_never_run,
            a_misconfigured_producers_tasks_fail_as_signature_invalid,
            forged_copies_leave_the_real_tasks_status_alone,
            rotated_keys_all_verify,
            unregistered_task_is_dead_lettered,
            revoked_tasks_do_not_run_and_running_ones_stop,
            control_plane_reaches_the_worker,
            finished_tasks_are_counted_per_minute,
            a_stopping_worker_forgets_only_its_own_record,
            long_bodies_are_marked_running,
            prefetch_bound_and_graceful_shutdown,
            blocking_bodies_off_the_executor_keep_their_leases,
            recent_tasks_are_found_by_state_task_and_text,
            replaying_a_forged_letter_leaves_the_real_task_alone,
        );
    };
}
