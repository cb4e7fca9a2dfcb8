//! Beat's counters: plain atomics that the CLI and tests read through
//! [`SchedulerMetrics::snapshot`], and that the metrics exporters read as
//! `stem_scheduler_*_total` once [`SchedulerMetrics::export_to`] gave beat
//! a meter; the publish drift goes to the `stem_scheduler_drift_seconds`
//! histogram then too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use opentelemetry::metrics::{Histogram, Meter, ObservableCounter};
use opentelemetry::KeyValue;

/// Live counters of one beat process.
#[derive(Debug, Default)]
pub struct SchedulerMetrics {
    dispatch_attempts: AtomicU64,
    dispatch_success: AtomicU64,
    dispatch_failed: AtomicU64,
    dispatch_duplicate: AtomicU64,
    missed_slots: AtomicU64,
    lock_acquired: AtomicU64,
    lock_contended: AtomicU64,
    lock_renew_failed: AtomicU64,
    drift_abs_ms_total: AtomicU64,
    exported: OnceLock<Exported>,
}

/// What beat records through a meter.
#[derive(Debug)]
struct Exported {
    instance: [KeyValue; 1],
    drift: Histogram<f64>,
    /// Kept so their callbacks stay registered.
    _counters: Vec<ObservableCounter<u64>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Slots beat tried to fire (`stem_scheduler_dispatch_attempts_total`).
    pub dispatch_attempts: u64,
    /// Slots published (`stem_scheduler_dispatch_success_total`).
    pub dispatch_success: u64,
    /// Slots whose publish failed (`stem_scheduler_dispatch_failed_total`).
    pub dispatch_failed: u64,
    /// Slots skipped because another beat had recorded them
    /// (`stem_scheduler_dispatch_duplicate_total`).
    pub dispatch_duplicate: u64,
    /// Slots skipped after downtime (`stem_scheduler_missed_slots_total`).
    pub missed_slots: u64,
    /// Leader lease won (`stem_scheduler_lock_acquired_total`).
    pub lock_acquired: u64,
    /// Lease attempts that found another leader (`stem_scheduler_lock_contended_total`).
    pub lock_contended: u64,
    /// Renewals that failed (`stem_scheduler_lock_renew_failed_total`).
    pub lock_renew_failed: u64,
    /// Sum of |publish − slot| over successful dispatches, ms
    /// (`stem_scheduler_drift_ms_total`; divide by `dispatch_success`).
    pub drift_abs_ms_total: u64,
}

impl MetricsSnapshot {
    /// `(prometheus name, value)` pairs.
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            (
                "stem_scheduler_dispatch_attempts_total",
                self.dispatch_attempts,
            ),
            (
                "stem_scheduler_dispatch_success_total",
                self.dispatch_success,
            ),
            ("stem_scheduler_dispatch_failed_total", self.dispatch_failed),
            (
                "stem_scheduler_dispatch_duplicate_total",
                self.dispatch_duplicate,
            ),
            ("stem_scheduler_missed_slots_total", self.missed_slots),
            ("stem_scheduler_lock_acquired_total", self.lock_acquired),
            ("stem_scheduler_lock_contended_total", self.lock_contended),
            (
                "stem_scheduler_lock_renew_failed_total",
                self.lock_renew_failed,
            ),
            ("stem_scheduler_drift_ms_total", self.drift_abs_ms_total),
        ]
    }
}

impl SchedulerMetrics {
    /// Records from now on through `meter` as well, labelled with beat's
    /// `instance`. A second call does nothing.
    pub fn export_to(self: &Arc<Self>, meter: &Meter, instance: &str) {
        let base = [KeyValue::new("instance", instance.to_string())];
        let counters = MetricsSnapshot::default()
            .named()
            .into_iter()
            .enumerate()
            // The drift goes to the histogram below; a counter of
            // milliseconds is kept for `snapshot` only.
            .filter(|(_, (name, _))| *name != "stem_scheduler_drift_ms_total")
            .map(|(i, (name, _))| {
                let (me, base) = (Arc::downgrade(self), base.clone());
                meter
                    .u64_observable_counter(name.trim_end_matches("_total"))
                    .with_description("Beat scheduler counter (docs/architecture.md, \"Beat\").")
                    .with_callback(move |o| {
                        if let Some(me) = me.upgrade() {
                            o.observe(me.snapshot().named()[i].1, &base);
                        }
                    })
                    .build()
            })
            .collect();
        let drift = meter
            .f64_histogram("stem_scheduler_drift_seconds")
            .with_description("How late (or early) beat published a slot, absolute.")
            .with_unit("s")
            .with_boundaries(crate::telemetry::DURATION_BUCKETS.to_vec())
            .build();
        let _ = self.exported.set(Exported {
            instance: base,
            drift,
            _counters: counters,
        });
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl SchedulerMetrics {
    /// A copy of the counters now (each read on its own, not all at one
    /// instant).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            dispatch_attempts: g(&self.dispatch_attempts),
            dispatch_success: g(&self.dispatch_success),
            dispatch_failed: g(&self.dispatch_failed),
            dispatch_duplicate: g(&self.dispatch_duplicate),
            missed_slots: g(&self.missed_slots),
            lock_acquired: g(&self.lock_acquired),
            lock_contended: g(&self.lock_contended),
            lock_renew_failed: g(&self.lock_renew_failed),
            drift_abs_ms_total: g(&self.drift_abs_ms_total),
        }
    }

    pub(crate) fn attempt(&self) {
        add(&self.dispatch_attempts, 1);
    }
    pub(crate) fn success(&self, drift_ms: i64) {
        add(&self.dispatch_success, 1);
        add(&self.drift_abs_ms_total, drift_ms.unsigned_abs());
        if let Some(e) = self.exported.get() {
            e.drift
                .record(drift_ms.unsigned_abs() as f64 / 1000.0, &e.instance);
        }
    }
    pub(crate) fn failed(&self) {
        add(&self.dispatch_failed, 1);
    }
    pub(crate) fn duplicate(&self) {
        add(&self.dispatch_duplicate, 1);
    }
    pub(crate) fn missed(&self, n: u64) {
        add(&self.missed_slots, n);
    }
    pub(crate) fn acquired(&self) {
        add(&self.lock_acquired, 1);
    }
    pub(crate) fn contended(&self) {
        add(&self.lock_contended, 1);
    }
    pub(crate) fn renew_failed(&self) {
        add(&self.lock_renew_failed, 1);
    }
}
