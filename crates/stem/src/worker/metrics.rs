//! The worker's counters and gauges, and their Prometheus families
//! (`stem_tasks_*_total`, `stem_worker_*`), like `schedule/metrics.rs` for
//! beat. Plain atomics: every part of the worker increments them without a
//! lock, and an exporter reads them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl WorkerMetrics {
    /// The worker's series (`stem_tasks_*_total`, `stem_worker_*`; the
    /// names and labels are listed in `docs/architecture.md`, "Metrics"), labelled with
    /// worker and namespace.
    pub fn families(
        &self,
        worker: &str,
        namespace: &str,
        concurrency: usize,
    ) -> Vec<crate::telemetry::Family> {
        let labels = || {
            vec![
                ("worker", worker.to_string()),
                ("namespace", namespace.to_string()),
            ]
        };
        let counter = |name, help, c: &AtomicU64| crate::telemetry::Family {
            name,
            help,
            kind: "counter",
            samples: vec![(labels(), c.load(Ordering::Relaxed) as f64)],
        };
        vec![
            counter(
                "stem_tasks_started_total",
                "Task executions started.",
                &self.started,
            ),
            counter(
                "stem_tasks_succeeded_total",
                "Task executions that succeeded.",
                &self.succeeded,
            ),
            counter(
                "stem_tasks_failed_total",
                "Tasks that failed for good.",
                &self.failed,
            ),
            counter(
                "stem_tasks_retried_total",
                "Failed attempts scheduled for a retry.",
                &self.retried,
            ),
            counter(
                "stem_tasks_signature_invalid_total",
                "Envelopes rejected by signature verification.",
                &self.signature_invalid,
            ),
            counter(
                "stem_tasks_dead_lettered_total",
                "Entries moved to a dead-letter queue.",
                &self.dead_lettered,
            ),
            crate::telemetry::Family {
                name: "stem_worker_concurrency",
                help: "Tasks the worker runs at once.",
                kind: "gauge",
                samples: vec![(labels(), concurrency as f64)],
            },
            crate::telemetry::Family {
                name: "stem_worker_queues_quarantined",
                help: "Queues set aside because a key of theirs is not what the broker wrote.",
                kind: "gauge",
                samples: vec![(labels(), self.quarantined.load(Ordering::Relaxed) as f64)],
            },
            crate::telemetry::Family {
                name: "stem_worker_inflight",
                help: "Entries the worker holds (running or prefetched).",
                kind: "gauge",
                samples: vec![(labels(), self.inflight.load(Ordering::Relaxed) as f64)],
            },
        ]
    }
}

/// Adds one to `counter`.
pub(crate) fn count_one(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
