//! Firing one slot: record which beat took it, publish its task exactly
//! once (keyed by entry and slot), and book the outcome so the entry's
//! grid moves on. The exactly-once guarantee lives here: the publish and
//! its key commit in one step, so any retry of a slot (after a timeout,
//! a crash, two beats both leading) is answered with the task it made.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;

use super::{Beat, Fired, PassReport, META_FROM, META_ID, META_SLOT};
use crate::client::{EnqueueOptions, Enqueued};
use crate::envelope::format_ms;
use crate::error::Result;
use crate::schedule::entry::{Misfire, ScheduleEntry};
use crate::schedule::store::{FiringOutcome, FiringReport};

/// The submit-once marker of one slot of one entry (a backend key).
fn slot_marker(entry_id: &str, slot: DateTime<Utc>) -> String {
    format!("beat-slot:{entry_id}:{}", slot.timestamp_millis())
}

/// How long a slot's firing record and submit-once marker must last
/// (from `now`): until no beat can consider the slot any more. Under
/// `misfire: all` a slot stays due until it is booked, and a beat taking
/// over after a crash between publish and booking fires it again unless
/// the marker still answers — so the marker must outlive the catch-up
/// window, the most recent [`Misfire::MAX_CATCH_UP`] slots, plus one gap;
/// at least a minute.
pub(super) fn record_ttl(
    slot: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    let gap = next
        .and_then(|n| (n - slot).to_std().ok())
        .unwrap_or(Duration::from_secs(3600));
    let window = gap * (Misfire::MAX_CATCH_UP as u32 + 1);
    let elapsed = (now - slot).to_std().unwrap_or(Duration::ZERO);
    window.saturating_sub(elapsed).max(Duration::from_secs(60))
}

/// The enqueue options of `slot` of `entry`: its queue, its meta plus the
/// `scheduled-from`/`schedule-id`/`schedule-slot` keys, and a random
/// countdown in `[0, jitter]` (returned in ms beside them, for the log).
fn slot_options(entry: &ScheduleEntry, slot_text: &str) -> (EnqueueOptions, u64) {
    let jitter_ms = match entry.jitter.as_millis() as u64 {
        0 => 0,
        max => rand::thread_rng().gen_range(0..=max),
    };
    let mut meta = entry.meta.clone();
    meta.insert(META_FROM.into(), Value::String("beat".into()));
    meta.insert(META_ID.into(), Value::String(entry.id.clone()));
    meta.insert(META_SLOT.into(), Value::String(slot_text.to_string()));
    let opts = EnqueueOptions {
        queue: Some(entry.queue.clone()),
        countdown: (jitter_ms > 0).then(|| Duration::from_millis(jitter_ms)),
        meta,
        ..Default::default()
    };
    (opts, jitter_ms)
}

/// One slot being fired: what its booking needs to know.
struct Firing<'a> {
    entry: &'a ScheduleEntry,
    slot: DateTime<Utc>,
    slot_text: String,
    next: Option<DateTime<Utc>>,
    missed: u64,
    jitter_ms: u64,
    /// Whether this beat's firing record was new (for the log).
    recorded: bool,
}

impl Firing<'_> {
    fn booking(&self, outcome: FiringOutcome) -> FiringReport {
        FiringReport {
            id: self.entry.id.clone(),
            revision: self.entry.history.revision,
            slot: self.slot,
            next_run_at: self.next,
            missed: self.missed,
            outcome,
        }
    }
}

impl Beat {
    /// Records, publishes and books one slot. `Err` only for outages (the
    /// pass stops and the slot is retried).
    pub(super) async fn fire(
        &self,
        entry: &ScheduleEntry,
        slot: DateTime<Utc>,
        missed: u64,
        report: &mut PassReport,
    ) -> Result<()> {
        let next = entry.next_after(slot);
        let slot_text = format_ms(slot.timestamp_millis());
        self.metrics.attempt();
        if missed > 0 {
            self.metrics.missed(missed);
            report.missed += missed;
        }
        // The firing record says which beat took the slot (for operators
        // and `stem schedule`); exactly-once comes from the publish itself,
        // which is keyed by (entry, slot). An error here is retried on the
        // next pass: the record may have been stored anyway, and the keyed
        // publish below makes that harmless.
        self.set_unfinished(&entry.id, Some(slot));
        let recorded = self
            .store
            .record_firing(
                &entry.id,
                slot,
                &self.opts.instance_id,
                record_ttl(slot, next, Utc::now()),
            )
            .await?;
        let (opts, jitter_ms) = slot_options(entry, &slot_text);
        // One task per (entry, slot), however often this runs: after a
        // publish that timed out but ran, after another beat recorded the
        // slot and died, after two beats both thought they led.
        let published = self
            .stem
            .enqueue_once(
                &slot_marker(&entry.id, slot),
                record_ttl(slot, next, Utc::now()),
                &entry.task,
                entry.args.clone(),
                &opts,
            )
            .await;
        let firing = Firing {
            entry,
            slot,
            slot_text,
            next,
            missed,
            jitter_ms,
            recorded,
        };
        let booked = self.book(&firing, published, report).await;
        if booked.is_ok() {
            self.set_unfinished(&entry.id, None);
        }
        booked
    }

    /// Books the outcome of a slot's publish: fired, already fired (the key
    /// answered an earlier task) or failed for good. A transient error is
    /// returned unbooked: the publish may have run, and the next pass
    /// publishes with the same key, which answers the task if it exists.
    async fn book(
        &self,
        f: &Firing<'_>,
        published: Result<Enqueued>,
        report: &mut PassReport,
    ) -> Result<()> {
        let entry = f.entry;
        let outcome = match published {
            Ok(enqueued) if enqueued.duplicate => {
                self.metrics.duplicate();
                report.duplicates += 1;
                tracing::debug!(
                    schedule = %entry.id, slot = %f.slot_text, task_id = %enqueued.task_id,
                    recorded = f.recorded, "slot already published"
                );
                FiringOutcome::AlreadyFired
            }
            Ok(enqueued) => {
                let at = Utc::now();
                let drift_ms = (at - f.slot).num_milliseconds();
                self.metrics.success(drift_ms);
                tracing::info!(
                    schedule = %entry.id, slot = %f.slot_text, task_id = %enqueued.task_id,
                    task = %entry.task, queue = %entry.queue, drift_ms, jitter_ms = f.jitter_ms,
                    "schedule fired"
                );
                report.fired.push(Fired {
                    id: entry.id.clone(),
                    slot: f.slot,
                    task_id: enqueued.task_id.clone(),
                });
                FiringOutcome::Dispatched {
                    task_id: enqueued.task_id,
                    at,
                    drift_ms,
                    jitter_ms: f.jitter_ms,
                }
            }
            Err(e) if e.is_transient() => {
                self.metrics.failed();
                return Err(e);
            }
            Err(e) => {
                self.metrics.failed();
                report.failed += 1;
                tracing::warn!(
                    schedule = %entry.id, slot = %f.slot_text, task = %entry.task, error = %e,
                    "schedule dispatch failed"
                );
                FiringOutcome::Failed {
                    error: e.to_string(),
                    at: Utc::now(),
                }
            }
        };
        self.store.complete_firing(&f.booking(outcome)).await
    }
}
