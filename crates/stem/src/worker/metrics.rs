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

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, ObservableGauge,
};
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
    instruments: Arc<Instruments>,
    /// Each (queue, task)'s series, bound once: recording is then an
    /// atomic add on the series, no label hashing or allocation per task.
    series: RwLock<SeriesByQueue>,
    /// Kept so their callbacks stay registered.
    _gauges: Vec<ObservableGauge<u64>>,
}

#[derive(Debug)]
struct Instruments {
    started: Counter<u64>,
    succeeded: Counter<u64>,
    failed: Counter<u64>,
    retried: Counter<u64>,
    signature_invalid: Counter<u64>,
    dead_lettered: Counter<u64>,
    duration: Histogram<f64>,
}

/// Series by queue, then by task name (`""`: not known).
type SeriesByQueue = HashMap<String, HashMap<String, Arc<TaskSeries>>>;

/// Most queues, and most tasks per queue, whose series are kept bound.
const MAX_CACHED: usize = 256;

/// The series of one (queue, task), each bound on first use (so a task
/// that never fails has no zero `failed` series of its own).
#[derive(Debug)]
pub(crate) struct TaskSeries {
    labels: Vec<KeyValue>,
    instruments: Arc<Instruments>,
    started: OnceLock<BoundCounter<u64>>,
    succeeded: OnceLock<BoundCounter<u64>>,
    failed: OnceLock<BoundCounter<u64>>,
    retried: OnceLock<BoundCounter<u64>>,
    signature_invalid: OnceLock<BoundCounter<u64>>,
    dead_lettered: OnceLock<BoundCounter<u64>>,
    duration: OnceLock<BoundHistogram<f64>>,
}

impl TaskSeries {
    fn count(
        &self,
        slot: &OnceLock<BoundCounter<u64>>,
        counter: fn(&Instruments) -> &Counter<u64>,
    ) {
        slot.get_or_init(|| counter(&self.instruments).bind(&self.labels))
            .add(1);
    }
}

/// The series of one task (`task`, `queue`, `worker`, `namespace`);
/// `None` when nothing is exported, so they cost nothing then.
pub(crate) struct SeriesHandle(Option<Arc<TaskSeries>>);

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
        let instruments = Instruments {
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
        };
        let exported = Exported {
            instruments: Arc::new(instruments),
            series: RwLock::default(),
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
            base,
        };
        let _ = self.exported.set(exported);
    }

    /// `spec`'s series (nothing when not exported).
    pub(crate) fn series(&self, spec: &TaskSpec) -> SeriesHandle {
        self.series_of(Some(&spec.name), &spec.queue)
    }

    /// The series of an entry of `queue` whose task is `task` (`None` when
    /// it is not known or not authentic: an unverified name is not a label,
    /// so forged entries cannot create series).
    pub(crate) fn series_of(&self, task: Option<&str>, queue: &str) -> SeriesHandle {
        let Some(e) = self.exported.get() else {
            return SeriesHandle(None);
        };
        let task_key = task.unwrap_or("");
        if let Some(series) = e
            .series
            .read()
            .get(queue)
            .and_then(|by_task| by_task.get(task_key))
        {
            return SeriesHandle(Some(series.clone()));
        }
        let mut labels = Vec::with_capacity(4);
        if let Some(task) = task {
            labels.push(KeyValue::new("task", task.to_string()));
        }
        labels.push(KeyValue::new("queue", queue.to_string()));
        labels.extend(e.base.iter().cloned());
        let series = Arc::new(TaskSeries {
            labels,
            instruments: e.instruments.clone(),
            started: OnceLock::new(),
            succeeded: OnceLock::new(),
            failed: OnceLock::new(),
            retried: OnceLock::new(),
            signature_invalid: OnceLock::new(),
            dead_lettered: OnceLock::new(),
            duration: OnceLock::new(),
        });
        let mut all = e.series.write();
        // Bounded like the SDK's own series limit: past it a task's series
        // are bound per use instead of kept.
        if all.len() < MAX_CACHED || all.contains_key(queue) {
            let by_task = all.entry(queue.to_string()).or_default();
            if by_task.len() < MAX_CACHED {
                by_task
                    .entry(task_key.to_string())
                    .or_insert_with(|| series.clone());
            }
        }
        SeriesHandle(Some(series))
    }

    fn record(
        &self,
        total: &AtomicU64,
        l: &SeriesHandle,
        slot: fn(&TaskSeries) -> &OnceLock<BoundCounter<u64>>,
        counter: fn(&Instruments) -> &Counter<u64>,
    ) {
        total.fetch_add(1, Ordering::Relaxed);
        if let Some(series) = &l.0 {
            series.count(slot(series), counter);
        }
    }

    /// A body started.
    pub(crate) fn started(&self, l: &SeriesHandle) {
        self.record(&self.started, l, |s| &s.started, |i| &i.started);
    }
    /// A body ran for `took` (whatever its outcome).
    pub(crate) fn ran(&self, l: &SeriesHandle, took: Duration) {
        if let Some(series) = &l.0 {
            series
                .duration
                .get_or_init(|| series.instruments.duration.bind(&series.labels))
                .record(took.as_secs_f64());
        }
    }
    /// A task succeeded.
    pub(crate) fn succeeded(&self, l: &SeriesHandle) {
        self.record(&self.succeeded, l, |s| &s.succeeded, |i| &i.succeeded);
    }
    /// A failed attempt will be retried.
    pub(crate) fn retried(&self, l: &SeriesHandle) {
        self.record(&self.retried, l, |s| &s.retried, |i| &i.retried);
    }
    /// A task failed for good.
    pub(crate) fn failed(&self, l: &SeriesHandle) {
        self.record(&self.failed, l, |s| &s.failed, |i| &i.failed);
    }
    /// An entry was dead-lettered.
    pub(crate) fn dead_lettered(&self, l: &SeriesHandle) {
        self.record(
            &self.dead_lettered,
            l,
            |s| &s.dead_lettered,
            |i| &i.dead_lettered,
        );
    }
    /// An envelope failed signature verification.
    pub(crate) fn signature_invalid(&self, l: &SeriesHandle) {
        self.record(
            &self.signature_invalid,
            l,
            |s| &s.signature_invalid,
            |i| &i.signature_invalid,
        );
    }
}
