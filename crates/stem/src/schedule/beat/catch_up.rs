//! Catch-up after downtime: which due slot of an entry fires next under
//! its misfire policy (`all`, `latest`, `skip`), how many are given up,
//! and how a given-up slot is booked. Kept apart from the firing itself
//! (`fire.rs`) because it is pure arithmetic over an entry's grid, tested
//! without a store.

use chrono::{DateTime, Utc};

use super::{Beat, PassReport};
use crate::envelope::format_ms;
use crate::error::Result;
use crate::schedule::entry::{Misfire, ScheduleEntry};
use crate::schedule::store::{FiringOutcome, FiringReport};

/// The most recent slot of `entry` at or before `now`, given its first
/// unfired slot `next_run` ≤ `now`.
fn latest_due(entry: &ScheduleEntry, next_run: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    entry
        .latest_at_or_before(now)
        .filter(|l| *l >= next_run)
        .unwrap_or(next_run)
}

/// One step of an entry's catch-up ([`Beat::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Publish `slot`; `missed` slots before it are given up.
    Fire { slot: DateTime<Utc>, missed: u64 },
    /// Give up `slot` too (`misfire: skip`); `missed` counts it.
    Skip { slot: DateTime<Utc>, missed: u64 },
}

impl Step {
    pub(super) fn slot(self) -> DateTime<Utc> {
        match self {
            Step::Fire { slot, .. } | Step::Skip { slot, .. } => slot,
        }
    }
}

/// How many slots of `entry` lie in `[next_run, slot)`: the ones given up
/// when `slot` fires next.
fn missed_before(entry: &ScheduleEntry, next_run: DateTime<Utc>, slot: DateTime<Utc>) -> u64 {
    if slot <= next_run {
        return 0;
    }
    entry.spec.slots_between(
        next_run,
        slot,
        entry.timezone,
        entry.anchor_or(next_run),
        1_000_000,
    )
}

/// `misfire: all`: the oldest unfired slot, unless more than
/// [`Misfire::MAX_CATCH_UP`] fell due; then the oldest of the most recent
/// ones, found by walking back from `latest` (cheap for `every:` and cron
/// alike).
fn oldest_in_window(
    entry: &ScheduleEntry,
    next_run: DateTime<Utc>,
    latest: DateTime<Utc>,
) -> DateTime<Utc> {
    let late = missed_before(entry, next_run, latest) + 1;
    if late as usize <= Misfire::MAX_CATCH_UP {
        return next_run;
    }
    let mut first = latest;
    for _ in 1..Misfire::MAX_CATCH_UP {
        match entry.latest_at_or_before(first - chrono::Duration::milliseconds(1)) {
            Some(p) if p >= next_run => first = p,
            _ => break,
        }
    }
    first
}

/// `misfire: skip`: the first slot at most [`Misfire::SKIP_GRACE`] late
/// (those after it fire in turn; the ones before it are given up), or
/// `None` when every due slot is later than that.
fn first_within_grace(
    entry: &ScheduleEntry,
    next_run: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let threshold = now - Misfire::SKIP_GRACE;
    if next_run >= threshold {
        return Some(next_run);
    }
    entry
        .next_after(threshold - chrono::Duration::milliseconds(1))
        .filter(|f| *f <= now)
}

impl Beat {
    /// Which slot of `entry` to handle next, given its first unfired slot
    /// `next_run` ≤ `now`, and how many slots before it are given up.
    pub(super) fn plan(
        &self,
        entry: &ScheduleEntry,
        next_run: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Step {
        let fire = |slot| Step::Fire {
            slot,
            missed: missed_before(entry, next_run, slot),
        };
        // A slot an error cut short is finished first, whatever the policy:
        // it may be recorded or even published already.
        if let Some(slot) = self.unfinished_slot(&entry.id).filter(|s| *s >= next_run) {
            return fire(slot);
        }
        let latest = latest_due(entry, next_run, now);
        match entry.misfire {
            Misfire::All => fire(oldest_in_window(entry, next_run, latest)),
            Misfire::Latest => fire(latest),
            Misfire::Skip => match first_within_grace(entry, next_run, now) {
                Some(slot) => fire(slot),
                None => Step::Skip {
                    slot: latest,
                    missed: missed_before(entry, next_run, latest) + 1,
                },
            },
        }
    }

    /// Logs how an entry's late slots are handled, when it has more than
    /// one due (once per pass, not per slot of a catch-up).
    pub(super) fn log_misfire(
        &self,
        entry: &ScheduleEntry,
        next_run: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let latest = latest_due(entry, next_run, now);
        if latest <= next_run {
            return;
        }
        let count = missed_before(entry, next_run, latest) + 1;
        let how = match entry.misfire {
            Misfire::All if count as usize <= Misfire::MAX_CATCH_UP => {
                "firing each, oldest first".to_string()
            }
            Misfire::All => format!(
                "firing the most recent {}, oldest first",
                Misfire::MAX_CATCH_UP
            ),
            Misfire::Latest => "firing the most recent once".to_string(),
            Misfire::Skip => format!(
                "firing only those at most {} ms late",
                Misfire::SKIP_GRACE.as_millis()
            ),
        };
        tracing::warn!(
            schedule = %entry.id, late_slots = count, misfire = entry.misfire.as_str(),
            from = %format_ms(next_run.timestamp_millis()),
            "slots fell due while no beat was firing; {how}"
        );
    }

    /// Books a slot the `skip` policy gives up: nothing is published, the
    /// slot and those before it count as missed, the grid continues.
    pub(super) async fn skip(
        &self,
        entry: &ScheduleEntry,
        slot: DateTime<Utc>,
        missed: u64,
        report: &mut PassReport,
    ) -> Result<()> {
        self.metrics.missed(missed);
        report.missed += missed;
        self.store
            .complete_firing(&FiringReport {
                id: entry.id.clone(),
                revision: entry.history.revision,
                slot,
                next_run_at: entry.next_after(slot),
                missed,
                outcome: FiringOutcome::Skipped,
            })
            .await
    }
}
