//! Runs one delivery: waits for a concurrency slot, calls the body (a
//! panic is caught and reported as a failure), records `running` for
//! bodies that take longer than [`RUNNING_AFTER`], enforces the hard limit
//! with `tokio::time::timeout`, fires the soft limit and cancellation
//! through the context, and sends the outcome to the completer.
//!
//! Admitted deliveries wait for a slot in one priority queue ([`WaitQueue`]);
//! a single dispatcher hands each free slot to the highest-priority waiting
//! delivery (earliest admitted first within a priority), so prefetched
//! entries start in priority order whatever order tokio polls tasks in.

use parking_lot::Mutex;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backend::get_status;
use crate::broker::Delivery;
use crate::canvas::{CHAIN_PREV_HEADER, CHORD_HEADER};
use crate::envelope::{now_ms, TaskSpec, TaskState, TaskStatus};
use crate::task::{TaskContext, TaskFailure, TaskHandler, TaskResult};

use super::{Outcome, Shared};

/// How long a body runs before its `running` status is written (by
/// [`mark_running`], in one batch per tick).
pub(super) const RUNNING_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// A delivery admitted but not started.
struct Waiting {
    seq: u64,
    delivery: Delivery,
    spec: Arc<TaskSpec>,
    handler: Arc<dyn TaskHandler>,
}

impl Waiting {
    fn key(&self) -> (u8, std::cmp::Reverse<u64>) {
        (self.spec.priority, std::cmp::Reverse(self.seq))
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The worker's concurrency slots and the deliveries waiting for one.
pub(super) struct Dispatch {
    slots: Arc<Semaphore>,
    /// Admitted deliveries waiting for a slot, in priority order.
    waiting: Mutex<WaitQueue>,
    waiting_changed: Notify,
    /// Signalled when a body starts (wakes the `running` marker).
    started: Notify,
}

impl Dispatch {
    /// `concurrency` slots, nobody waiting.
    pub(super) fn new(concurrency: usize) -> Self {
        Dispatch {
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: Mutex::new(WaitQueue::default()),
            waiting_changed: Notify::new(),
            started: Notify::new(),
        }
    }
}

/// Deliveries waiting for a concurrency slot: highest priority first, then
/// admission order. Closed once the worker stops (later arrivals are
/// handed straight back).
#[derive(Default)]
struct WaitQueue {
    heap: BinaryHeap<Waiting>,
    next_seq: u64,
    closed: bool,
}

fn requeue(shared: &Shared, d: Delivery, spec: &TaskSpec) {
    let _ = shared.outcomes.send(Outcome::Requeue {
        receipt: d.receipt,
        priority: spec.priority,
        wire: d.wire,
    });
}

/// Queues an admitted delivery for execution.
pub(super) fn spawn(
    shared: Arc<Shared>,
    d: Delivery,
    spec: Arc<TaskSpec>,
    handler: Arc<dyn TaskHandler>,
) {
    {
        let mut q = shared.dispatch.waiting.lock();
        if !q.closed {
            let seq = q.next_seq;
            q.next_seq += 1;
            q.heap.push(Waiting {
                seq,
                delivery: d,
                spec,
                handler,
            });
            drop(q);
            shared.dispatch.waiting_changed.notify_one();
            return;
        }
    }
    // Stopping before it started: hand it back untouched.
    shared.inflight.left_waiting(1);
    requeue(&shared, d, &spec);
}

/// Hands each free concurrency slot to the best waiting delivery, until
/// the worker stops; then hands back every delivery that never started.
pub(super) async fn dispatch(shared: Arc<Shared>) {
    loop {
        let permit = tokio::select! {
            biased;
            _ = shared.stopping.cancelled() => None,
            p = shared.dispatch.slots.clone().acquire_owned() => p.ok(),
        };
        let Some(permit) = permit else { break };
        let next = loop {
            let changed = shared.dispatch.waiting_changed.notified();
            let popped = shared.dispatch.waiting.lock().heap.pop();
            if let Some(w) = popped {
                break Some(w);
            }
            tokio::select! {
                biased;
                _ = shared.stopping.cancelled() => break None,
                _ = changed => {}
            }
        };
        let Some(w) = next else { break };
        shared.inflight.left_waiting(1);
        if shared.stopping.is_cancelled() {
            requeue(&shared, w.delivery, &w.spec);
            break;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let outcome = run(&shared, w.delivery, w.spec, w.handler).await;
            drop(permit);
            let _ = shared.outcomes.send(outcome);
        });
    }
    let left: Vec<Waiting> = {
        let mut q = shared.dispatch.waiting.lock();
        q.closed = true;
        std::mem::take(&mut q.heap).into_vec()
    };
    shared.inflight.left_waiting(left.len());
    for w in left {
        requeue(&shared, w.delivery, &w.spec);
    }
}

async fn run(
    shared: &Arc<Shared>,
    d: Delivery,
    spec: Arc<TaskSpec>,
    handler: Arc<dyn TaskHandler>,
) -> Outcome {
    let options = handler.options();
    let cancel = CancellationToken::new();
    let marked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let returned = marked.clone();
    track_running(shared, &d, &spec, &cancel, &marked);
    let series = shared.metrics.series(&spec);
    shared.metrics.started(&series);
    let began = std::time::Instant::now();
    tracing::debug!(task = %spec.name, task_id = %spec.id, attempt = d.wire.attempt, "task started");

    let (chain_previous, chord_results) = canvas_inputs(shared, &spec).await;
    let soft = CancellationToken::new();
    let ctx = TaskContext {
        task_id: spec.id.clone(),
        name: spec.name.clone(),
        queue: spec.queue.clone(),
        attempt: d.wire.attempt,
        max_retries: options.max_retries,
        headers: spec.headers.clone(),
        meta: spec.meta.clone(),
        chain_previous,
        chord_results,
        cancel: cancel.clone(),
        soft: soft.clone(),
        progress: Some((shared.backend.clone(), spec.clone())),
        progressed: marked,
    };
    let soft_timer = options
        .soft_time_limit
        .map(|limit| soft_limit_timer(limit, soft.clone(), spec.id.clone()));

    // The body runs inside this task ([`call_body`]); dropping its future
    // (hard limit, shutdown) stops it at its next await.
    let spans = crate::trace::Attempt::open(
        &spec,
        d.wire.attempt,
        &shared.opts.name,
        &shared.opts.namespace,
    );
    let call = handler.call(ctx, spec.args.clone());
    let call = match &spans {
        Some(spans) => spans.around(call).boxed(),
        None => call,
    };
    let result = tokio::select! {
        r = call_body(call, options.time_limit, &cancel, &spec.id) => r,
        _ = shared.force.cancelled() => {
            cancel.cancel();
            if let Some(t) = soft_timer { t.abort(); }
            tracing::warn!(task_id = %spec.id, "stopped by shutdown; handing back");
            return Outcome::Requeue { receipt: d.receipt, priority: spec.priority, wire: d.wire };
        }
    };
    // From here the task waits only for its settle: the marker must not
    // record `running` for it (the terminal status is on its way).
    returned.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = soft_timer {
        t.abort();
    }
    shared.metrics.ran(&series, began.elapsed());
    if let Some(spans) = spans {
        spans.finish(result.as_ref().err().map(|f| f.message.as_str()));
    }
    Outcome::Finished {
        receipt: d.receipt,
        spec,
        wire: d.wire,
        result,
        budget: options.max_retries,
    }
}

/// Counts the delivery as running (the in-flight table the marker, the
/// revoker and `inspect` read) and wakes the dispatcher, which waits for a
/// start before it takes the next task.
fn track_running(
    shared: &Shared,
    d: &Delivery,
    spec: &Arc<TaskSpec>,
    cancel: &CancellationToken,
    marked: &Arc<std::sync::atomic::AtomicBool>,
) {
    shared.inflight.start(
        &d.receipt,
        super::RunningTask {
            spec: spec.clone(),
            attempt: d.wire.attempt,
            started_ms: crate::envelope::now_ms(),
            cancel: cancel.clone(),
            marked: marked.clone(),
        },
    );
    shared.dispatch.started.notify_one();
}

/// What a canvas step reads before it runs: the previous chain step's
/// result and a chord callback's member results (each only when its header
/// is there; an unreadable one is `None`, as for a task outside a canvas).
async fn canvas_inputs(shared: &Shared, spec: &TaskSpec) -> (Option<Value>, Option<Vec<Value>>) {
    let chain_previous = match spec.headers.get(CHAIN_PREV_HEADER) {
        Some(prev) => get_status(shared.backend.as_ref(), prev)
            .await
            .ok()
            .flatten()
            .map(|s| s.result),
        None => None,
    };
    let chord_results = match spec.headers.get(CHORD_HEADER) {
        Some(gid) => shared.backend.get_group(gid).await.ok().flatten().map(|g| {
            g.results
                .into_values()
                .map(|s| s.result)
                .collect::<Vec<Value>>()
        }),
        None => None,
    };
    (chain_previous, chord_results)
}

/// Cancels `soft` once `limit` has passed (the task's soft time limit:
/// the body is told, and may wind down by itself).
fn soft_limit_timer(
    limit: Duration,
    soft: CancellationToken,
    task_id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        tracing::warn!(task_id = %task_id, limit_ms = limit.as_millis() as u64, "soft time limit reached");
        soft.cancel();
    })
}

/// Runs the body `call` inside this task: a panic is caught at its poll
/// and reported as a failed attempt, and a `hard` time limit drops the
/// future, which stops it at its next await (and cancels `cancel`, so what
/// the body spawned stops too).
async fn call_body(
    call: BoxFuture<'_, TaskResult<Value>>,
    hard: Option<Duration>,
    cancel: &CancellationToken,
    task_id: &str,
) -> TaskResult<Value> {
    let body = AssertUnwindSafe(call).catch_unwind();
    let joined = match hard {
        Some(limit) => tokio::time::timeout(limit, body).await.map_err(|_| limit),
        None => Ok(body.await),
    };
    match joined {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let msg = panic_message(panic);
            tracing::error!(task_id = %task_id, panic = %msg, "task panicked");
            Err(TaskFailure::new(format!("task panicked: {msg}")))
        }
        Err(limit) => {
            cancel.cancel();
            Err(TaskFailure::new(format!(
                "hard time limit of {}ms exceeded",
                limit.as_millis()
            )))
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Records `running` for bodies that have run for [`RUNNING_AFTER`]: one
/// batched status write per tick instead of a timer and a write per task,
/// so a task that finishes sooner goes straight from queued to its result.
/// Sleeps while nothing runs.
pub(super) async fn mark_running(shared: Arc<Shared>, stop: CancellationToken) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let started = shared.dispatch.started.notified();
        let mut idle = true;
        let due: Vec<TaskStatus> = {
            let held = shared.inflight.lock();
            let cutoff = now_ms() - RUNNING_AFTER.as_millis() as i64;
            held.values()
                .filter_map(|h| h.running.as_ref())
                .inspect(|_| idle = false)
                .filter(|r| r.started_ms <= cutoff && !r.marked.swap(true, Relaxed))
                .map(|r| TaskStatus::for_spec(&r.spec, TaskState::Running, r.attempt))
                .collect()
        };
        if !due.is_empty() {
            if let Err(e) = shared.backend.set_statuses(&due).await {
                tracing::warn!(error = %e, tasks = due.len(), "could not record running statuses");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = started, if idle => {}
            _ = tokio::time::sleep(RUNNING_AFTER / 2), if !idle => {}
        }
    }
}
