//! The worker's counters and gauges.
//!
//! Two readers: the control plane (heartbeats and `stats` carry the plain
//! totals, kept in atomics so every part of the worker counts without a
//! lock) and the metrics exporters. For the exporters the worker records
//! through the OpenTelemetry metrics API once [`WorkerMetrics::export_to`]
//! gave it a meter: task series per `task` and `queue` (plus `worker` and
//! `namespace`), the `stem_task_duration_seconds` histogram, and gauges
//! read from the atomics when a reader collects. Without a meter nothing
//! but the atomics is touched, so a worker with exporters off pays nothing
//! for them. Names and labels: `docs/architecture.md`, "Metrics".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use opentelemetry::KeyValue;

use crate::envelope::TaskSpec;
use crate::telemetry::DURATION_BUCKETS;

/// Counters a worker keeps (exported as `stem_tasks_*_total`).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Task executions started.
    pub started: AtomicU64,
    /// Task executions that succeeded.
    pub succeeded: AtomicU64,
    /// Tasks that failed for good, including ones refused before they ran
    /// (unregistered, delivery limit).
    pub failed: AtomicU64,
    /// Failed attempts scheduled for a retry.
    pub retried: AtomicU64,
    /// Envelopes rejected by signature verification.
    pub signature_invalid: AtomicU64,
    /// Entries moved to a dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Entries held (fetched, not settled) right now.
    pub inflight: AtomicU64,
    /// Queues set aside because their keys are broken, right now.
    pub quarantined: AtomicU64,
    /// The exported instruments, once a meter was given.
    exported: OnceLock<Exported>,
}

/// What the worker records through a meter.
#[derive(Debug)]
struct Exported {
    /// `worker` and `namespace`, on every series.
    base: [KeyValue; 2],
    started: Counter<u64>,
    succeeded: Counter<u64>,
    failed: Counter<u64>,
    retried: Counter<u64>,
    signature_invalid: Counter<u64>,
    dead_lettered: Counter<u64>,
    duration: Histogram<f64>,
    /// Label sets by queue, then task (`""`: not known), built once each:
    /// a task's series then cost no allocation (the set is shared) and
    /// always present their labels in one order, which the SDK finds
    /// without sorting.
    label_sets: RwLock<LabelSets>,
    /// Kept so their callbacks stay registered.
    _gauges: Vec<ObservableGauge<u64>>,
}

/// Label sets by queue, then by task name.
type LabelSets = HashMap<String, HashMap<String, Arc<[KeyValue]>>>;

/// Most queues, and most tasks per queue, whose label sets are kept.
const MAX_CACHED: usize = 256;

/// The labels of one task's series (`task`, `queue`, `worker`,
/// `namespace`); `None` when nothing is exported, so they cost nothing
/// then.
pub(crate) struct TaskLabels(Option<Arc<[KeyValue]>>);

impl TaskLabels {
    fn get(&self) -> &[KeyValue] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl WorkerMetrics {
    /// Records from now on through `meter` as well, labelled with `worker`
    /// and `namespace`; `concurrency` is reported as a gauge. A second call
    /// does nothing.
    pub fn export_to(
        self: &Arc<Self>,
        meter: &Meter,
        worker: &str,
        namespace: &str,
        concurrency: usize,
    ) {
        let base = [
            KeyValue::new("worker", worker.to_string()),
            KeyValue::new("namespace", namespace.to_string()),
        ];
        let counter = |name: &'static str, help: &'static str| {
            meter.u64_counter(name).with_description(help).build()
        };
        let gauge = |name: &'static str, help: &'static str, read: fn(&WorkerMetrics) -> u64| {
            let (me, base) = (Arc::downgrade(self), base.clone());
            meter
                .u64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |observer| {
                    if let Some(me) = me.upgrade() {
                        observer.observe(read(&me), &base);
                    }
                })
                .build()
        };
        let concurrency = concurrency as u64;
        let base_for_concurrency = base.clone();
        let exported = Exported {
            started: counter("stem_tasks_started", "Task executions started."),
            succeeded: counter("stem_tasks_succeeded", "Task executions that succeeded."),
            failed: counter(
                "stem_tasks_failed",
                "Tasks that failed for good (including ones refused before they ran).",
            ),
            retried: counter(
                "stem_tasks_retried",
                "Failed attempts scheduled for a retry.",
            ),
            signature_invalid: counter(
                "stem_tasks_signature_invalid",
                "Envelopes rejected by signature verification.",
            ),
            dead_lettered: counter(
                "stem_tasks_dead_lettered",
                "Entries moved to a dead-letter queue.",
            ),
            duration: meter
                .f64_histogram("stem_task_duration_seconds")
                .with_description("How long task bodies ran.")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            _gauges: vec![
                meter
                    .u64_observable_gauge("stem_worker_concurrency")
                    .with_description("Tasks the worker runs at once.")
                    .with_callback(move |o| o.observe(concurrency, &base_for_concurrency))
                    .build(),
                gauge(
                    "stem_worker_inflight",
                    "Entries the worker holds (running or prefetched).",
                    |m| m.inflight.load(Ordering::Relaxed),
                ),
                gauge(
                    "stem_worker_queues_quarantined",
                    "Queues set aside because a key of theirs is not what the broker wrote.",
                    |m| m.quarantined.load(Ordering::Relaxed),
                ),
            ],
            label_sets: RwLock::default(),
            base,
        };
        let _ = self.exported.set(exported);
    }

    /// The labels of `spec`'s series (nothing when not exported).
    pub(crate) fn labels(&self, spec: &TaskSpec) -> TaskLabels {
        self.labels_of(Some(&spec.name), &spec.queue)
    }

    /// Labels for an entry of `queue` whose task is `task` (`None` when
    /// it is not known or not authentic: an unverified name is not a label,
    /// so forged entries cannot create series).
    pub(crate) fn labels_of(&self, task: Option<&str>, queue: &str) -> TaskLabels {
        let Some(e) = self.exported.get() else {
            return TaskLabels(None);
        };
        let task_key = task.unwrap_or("");
        if let Some(set) = e
            .label_sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .and_then(|by_task| by_task.get(task_key))
        {
            return TaskLabels(Some(set.clone()));
        }
        let mut kv = Vec::with_capacity(4);
        if let Some(task) = task {
            kv.push(KeyValue::new("task", task.to_string()));
        }
        kv.push(KeyValue::new("queue", queue.to_string()));
        kv.extend(e.base.iter().cloned());
        let set: Arc<[KeyValue]> = kv.into();
        let mut sets = e.label_sets.write().unwrap_or_else(|p| p.into_inner());
        // Bounded like the SDK's own series limit: past it a label set is
        // built per use instead of kept.
        if sets.len() < MAX_CACHED || sets.contains_key(queue) {
            let by_task = sets.entry(queue.to_string()).or_default();
            if by_task.len() < MAX_CACHED {
                by_task.insert(task_key.to_string(), set.clone());
            }
        }
        TaskLabels(Some(set))
    }

    fn record(&self, total: &AtomicU64, labels: &TaskLabels, pick: fn(&Exported) -> &Counter<u64>) {
        total.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.exported.get() {
            pick(e).add(1, labels.get());
        }
    }

    /// A body started.
    pub(crate) fn started(&self, l: &TaskLabels) {
        self.record(&self.started, l, |e| &e.started);
    }
    /// A body ran for `took` (whatever its outcome).
    pub(crate) fn ran(&self, l: &TaskLabels, took: Duration) {
        if let Some(e) = self.exported.get() {
            e.duration.record(took.as_secs_f64(), l.get());
        }
    }
    /// A task succeeded.
    pub(crate) fn succeeded(&self, l: &TaskLabels) {
        self.record(&self.succeeded, l, |e| &e.succeeded);
    }
    /// A failed attempt will be retried.
    pub(crate) fn retried(&self, l: &TaskLabels) {
        self.record(&self.retried, l, |e| &e.retried);
    }
    /// A task failed for good.
    pub(crate) fn failed(&self, l: &TaskLabels) {
        self.record(&self.failed, l, |e| &e.failed);
    }
    /// An entry was dead-lettered.
    pub(crate) fn dead_lettered(&self, l: &TaskLabels) {
        self.record(&self.dead_lettered, l, |e| &e.dead_lettered);
    }
    /// An envelope failed signature verification.
    pub(crate) fn signature_invalid(&self, l: &TaskLabels) {
        self.record(&self.signature_invalid, l, |e| &e.signature_invalid);
    }
}
