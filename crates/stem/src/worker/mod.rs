//! The worker runtime.
//!
//! - **fetch** ([`Worker::run`]): never holds more than
//!   `concurrency × prefetch_multiplier` fetched-but-not-started entries
//!   (`STEM_PREFETCH_MULTIPLIER`, README "Configuration"); asks the broker for exactly
//!   the free places. Running tasks and finished ones awaiting their
//!   batched settle do not count against that bound, so fetching overlaps
//!   with settling; a second cap (bound + concurrency + one settle batch)
//!   keeps the total held bounded when Redis is slow to settle.
//! - **admit** (`admit.rs`): verifies signatures, decodes, skips tasks whose
//!   status is already final, dead-letters what cannot run. Runs as its own
//!   task per fetched batch, so the next fetch is in flight meanwhile.
//! - **execute** (`execute.rs`): admitted deliveries wait in a priority
//!   queue; a dispatcher gives each free concurrency slot to the highest
//!   priority one (in admission order within a priority: stream order for
//!   entries of one read; entries of two reads are admitted concurrently,
//!   so a later read's entry may start first), which then runs in its own
//!   tokio task with hard/soft limits, cancellation and panic capture.
//! - **complete** (`complete/`): batches outcomes; writes statuses and
//!   group results, *then* acknowledges, retries or dead-letters. Up to two
//!   batches are being settled at once.
//! - **leases**: every `visibility_timeout / 3` the worker renews the
//!   entries it holds; every `visibility_timeout / 2` it recovers entries
//!   whose owner died; every 200 ms it promotes due delayed entries.
//! - **shutdown**: stop fetching, let running tasks finish within the
//!   grace period, hand the rest back for immediate redelivery.
//!
//! The parts have files of their own: `inflight.rs` (what is held and how
//! much more may be fetched), `selection.rs` (which queues the next read
//! takes from: pauses, quarantines), `execute.rs`'s `Dispatch`
//! (concurrency slots and the deliveries waiting for one), `upkeep.rs` (the lease, promotion, recovery
//! and revocation loops), `control.rs` (heartbeats and commands),
//! `metrics.rs` (counters), `backoff.rs` (retry delays). This file wires
//! them and runs the fetch loop.

mod admit;
mod backoff;
mod complete;
mod control;
mod execute;
mod inflight;
mod metrics;
mod selection;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::config::WorkerConfig;
pub use backoff::{retry_cap, retry_delay};
pub use metrics::WorkerMetrics;

use crate::atomic::AtomicStore;
use crate::backend::ResultBackend;
use crate::broker::{Broker, Receipt};
use crate::client::Stem;
use crate::control::ControlPlane;
use crate::envelope::{TaskSpec, WireEnvelope};
use crate::error::Result;
use crate::signing::Verifier;
use crate::task::TaskRegistry;

/// An entry the worker holds (fetched, not yet settled).
struct Held {
    /// Set once the body runs.
    running: Option<RunningTask>,
}

/// A task whose body is running.
#[derive(Clone)]
pub(crate) struct RunningTask {
    pub spec: Arc<TaskSpec>,
    pub attempt: u32,
    pub started_ms: i64,
    /// Cancels the body (revocation).
    pub cancel: CancellationToken,
    /// Set once `running` was recorded (progress or the marker loop), or
    /// once the body returned: a finished task waiting for its batched
    /// settle is past `running`, and recording it then would cost a write
    /// per task exactly when settling lags behind (see `execute.rs`'s
    /// `mark_running`).
    pub marked: Arc<std::sync::atomic::AtomicBool>,
}

/// What happened to one delivery.
pub(crate) enum Outcome {
    /// The body returned.
    Finished {
        receipt: Receipt,
        spec: Arc<TaskSpec>,
        wire: WireEnvelope,
        result: std::result::Result<serde_json::Value, crate::task::TaskFailure>,
        budget: u32,
    },
    /// Not run (shutdown): hand back at the same attempt.
    Requeue {
        receipt: Receipt,
        wire: WireEnvelope,
        priority: u8,
    },
}

/// What the parts of a running worker share: its stores, its named parts
/// (in-flight accounting, dispatch, queue selection) and its lifecycle
/// tokens.
pub(crate) struct Shared {
    opts: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    /// Result + ack in one transaction, when broker and backend share a
    /// Redis (`crate::atomic`).
    atomic: Option<Arc<dyn AtomicStore>>,
    registry: TaskRegistry,
    verifier: Option<Verifier>,
    /// What the worker holds and how much more it may fetch.
    inflight: inflight::Inflight,
    /// Concurrency slots and the deliveries waiting for one.
    dispatch: execute::Dispatch,
    outcomes: mpsc::UnboundedSender<Outcome>,
    /// Cancelled when running bodies must stop (grace period over).
    force: CancellationToken,
    /// Cancelled when the worker stops fetching (SIGTERM or a `shutdown`
    /// command).
    stopping: CancellationToken,
    metrics: Arc<WorkerMetrics>,
    control: Arc<dyn ControlPlane>,
    /// Which queues the next read takes from (pauses, quarantines).
    selection: selection::QueueSelection,
    started_ms: i64,
}

/// A worker process's runtime.
pub struct Worker {
    opts: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    atomic: Option<Arc<dyn AtomicStore>>,
    registry: TaskRegistry,
    verifier: Option<Verifier>,
    metrics: Arc<WorkerMetrics>,
    control: Arc<dyn ControlPlane>,
}

impl Worker {
    /// A worker on `stem`'s stores and registry. With `verifier`, every
    /// envelope must carry a valid signature.
    pub fn new(opts: WorkerConfig, stem: &Stem, verifier: Option<Verifier>) -> Self {
        Worker {
            opts,
            broker: stem.broker(),
            backend: stem.backend(),
            atomic: stem.atomic(),
            registry: stem.registry().clone(),
            verifier,
            metrics: Arc::new(WorkerMetrics::default()),
            control: stem.control(),
        }
    }

    /// Records the worker's metrics through `meter` as well, labelled with
    /// its name and namespace (see [`WorkerMetrics::export_to`]).
    pub fn export_metrics(&self, meter: &opentelemetry::metrics::Meter) {
        self.metrics.export_to(
            meter,
            &self.opts.name,
            &self.opts.namespace,
            self.opts.concurrency,
        );
    }

    /// The worker's counters.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains and returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stem::{Stem, TaskContext, TaskOptions, Worker, WorkerConfig};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> stem::Result<()> {
    /// let stem = Stem::memory();
    /// stem.registry()
    ///     .register_fn("double", TaskOptions::default(), |_: TaskContext, n: i64| async move { Ok(n * 2) });
    /// let stop = CancellationToken::new();
    /// let worker = Worker::new(WorkerConfig::new("w1", &["default"]), &stem, None);
    /// let running = tokio::spawn(worker.run(stop.clone()));
    ///
    /// let id = stem.enqueue_raw("double", 21.into(), Default::default()).await?.task_id;
    /// let done = stem.wait(&id, Duration::from_secs(5)).await?;
    /// assert_eq!(done.result, 42);
    ///
    /// stop.cancel(); // stop fetching, let running tasks finish
    /// running.await.expect("worker task")?;
    /// # Ok(()) }
    /// ```
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dispatch: execute::Dispatch::new(self.opts.concurrency),
            inflight: {
                let bound = self.opts.concurrency * self.opts.prefetch_multiplier;
                let cap = bound + self.opts.concurrency + complete::MAX_BATCH;
                inflight::Inflight::new(bound, cap, self.metrics.clone())
            },
            selection: selection::QueueSelection::new(
                self.opts.queues.clone(),
                self.metrics.clone(),
            ),
            opts: self.opts,
            broker: self.broker,
            backend: self.backend,
            atomic: self.atomic,
            registry: self.registry,
            verifier: self.verifier,
            outcomes: tx,
            force: CancellationToken::new(),
            stopping: shutdown.clone(),
            metrics: self.metrics,
            control: self.control,
            started_ms: crate::envelope::now_ms(),
        });
        let o = &shared.opts;
        if shared.verifier.is_none() {
            tracing::warn!(worker = %o.name, "no verification keys configured: unsigned envelopes will run");
        }
        tracing::info!(
            worker = %o.name, queues = ?o.queues, namespace = %o.namespace,
            concurrency = o.concurrency, prefetch = shared.inflight.bound(),
            visibility_timeout_ms = o.visibility_timeout.as_millis() as u64,
            "worker starting"
        );
        register_with_retry(&shared, &shutdown).await;

        let background = CancellationToken::new();
        let completer = tokio::spawn(complete::run(shared.clone(), rx, background.clone()));
        let mut loops = vec![
            tokio::spawn(upkeep::renew_loop(shared.clone(), background.clone())),
            tokio::spawn(upkeep::promote_loop(shared.clone(), background.clone())),
            tokio::spawn(upkeep::recover_loop(shared.clone(), background.clone())),
            tokio::spawn(execute::dispatch(shared.clone())),
            tokio::spawn(execute::mark_running(shared.clone(), background.clone())),
            tokio::spawn(upkeep::revocation_loop(shared.clone(), background.clone())),
            tokio::spawn(control::heartbeat_loop(shared.clone(), background.clone())),
            tokio::spawn(control::command_loop(shared.clone(), background.clone())),
        ];
        tracing::info!(worker = %shared.opts.name, "worker ready");
        fetch_loop(&shared, &shutdown).await;

        // Drain: running tasks get the grace period.
        let held = shared.inflight.count();
        tracing::info!(worker = %shared.opts.name, held, grace_ms = shared.opts.shutdown_grace.as_millis() as u64, "worker stopping: draining");
        let drained =
            tokio::time::timeout(shared.opts.shutdown_grace, shared.inflight.drained()).await;
        if drained.is_err() {
            tracing::warn!(worker = %shared.opts.name, left = shared.inflight.count(), "grace period over: handing running tasks back");
            shared.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.inflight.drained()).await;
        }
        background.cancel();
        for l in loops.drain(..) {
            let _ = l.await;
        }
        // The completer ends once every sender (one lives in `shared`) is
        // gone.
        let (broker, name) = (shared.broker.clone(), shared.opts.name.clone());
        drop(shared);
        let _ = completer.await;
        // Every task is settled (or handed back): the lease declaration
        // has nothing left to protect.
        if let Err(e) = broker.withdraw_lease(&name).await {
            tracing::debug!(error = %e, "could not withdraw the lease declaration; pruned later");
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

async fn register_with_retry(shared: &Arc<Shared>, shutdown: &CancellationToken) {
    let mut failures = 0u32;
    loop {
        let registered = async {
            shared.broker.register_queues(&shared.opts.queues).await?;
            shared
                .broker
                .declare_lease(&shared.opts.name, shared.opts.visibility_timeout)
                .await
        };
        match registered.await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("broker reachable again");
                }
                return;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::error!(error = %e, "broker unavailable; retrying with backoff");
                }
                failures += 1;
                if !backoff::back_off(shutdown, failures).await {
                    return;
                }
            }
        }
    }
}

async fn fetch_loop(shared: &Arc<Shared>, shutdown: &CancellationToken) {
    let mut failures = 0u32;
    let consumer = shared.opts.name.clone();
    while !shutdown.is_cancelled() {
        let notified = shared.inflight.room_changed();
        let free = shared.inflight.room_to_fetch();
        if free == 0 {
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        // Not raced against shutdown: a read whose reply were dropped would
        // leave entries leased to us until the visibility timeout.
        let gate = shared.selection.gate().await;
        let queues = shared.selection.active();
        if queues.is_empty() {
            drop(gate);
            // Every queue is paused: wait, then look again.
            if shutdown
                .run_until_cancelled(tokio::time::sleep(shared.opts.fetch_block))
                .await
                .is_none()
            {
                break;
            }
            continue;
        }
        let read = shared
            .broker
            .fetch(&consumer, &queues, free, shared.opts.fetch_block)
            .await;
        drop(gate);
        match read {
            Ok(batch) => {
                if failures > 0 {
                    tracing::info!(worker = %consumer, "broker reachable again; resuming");
                    failures = 0;
                }
                if !batch.is_empty() {
                    // Admission (verification, the status check's round
                    // trip) runs beside the next fetch.
                    let fresh = shared.inflight.take_in(batch);
                    let shared = shared.clone();
                    tokio::spawn(async move { admit::admit_held(&shared, fresh).await });
                }
            }
            Err(crate::error::StemError::BrokenQueue { queue, reason }) => {
                // One broken key fails a read of every queue: set its queue
                // aside and keep serving the others.
                if shared.selection.quarantine(&queue) {
                    tracing::error!(
                        worker = %consumer, queue = %queue, error = %reason,
                        retry_in_s = selection::QUARANTINE.as_secs(),
                        "queue quarantined: its keys are broken; the worker keeps serving its other queues"
                    );
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::error!(worker = %consumer, error = %e, "fetch failed: broker unavailable; retrying with backoff");
                }
                failures += 1;
                if !backoff::back_off(shutdown, failures).await {
                    break;
                }
            }
        }
    }
}
