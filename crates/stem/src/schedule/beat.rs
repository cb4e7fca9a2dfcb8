//! [`Beat`]: the scheduler loop. Any number of beat processes may run; the
//! one holding the leader lease fires slots, the others wait to take over.
//!
//! Per iteration (at most every `tick`, 250 ms by default):
//!
//! 1. **Lease**, on its own task so that a dispatch stalled on Redis cannot
//!    starve it: a follower tries `acquire` (SET NX PX `lease`) every tick;
//!    the leader renews (compare-and-renew) every `lease / 3` and steps down
//!    when the renewal says another owner holds it, or when its lease ran
//!    out while the store was unreachable. On a graceful stop the leader
//!    releases the lease, so a follower takes over within one tick.
//! 2. **Fire.** While the lease is held, the firing loop asks for due
//!    entries (`nextRunAt ≤ now`). For each, a slot an error cut short is
//!    finished first; otherwise, when several slots fell due (downtime, a
//!    failover), the entry's misfire policy picks them (`Beat::plan`:
//!    `all` fires each in turn, oldest first, at most the last 100;
//!    `latest` the most recent; `skip` only those at most 1 s late), the
//!    others counted as missed and logged. It records the firing under
//!    `entry id + slot` (SET NX with a TTL: which beat took the slot), then
//!    publishes through `Stem::enqueue_once` keyed by `(entry id, slot)`
//!    (signed by the Stem's signer; retry budget from its registry) with
//!    meta `scheduled-from: beat`, `schedule-id`, `schedule-slot` and a
//!    random countdown in `[0, jitter]`, then stores the run and
//!    `nextRunAt` = the next slot after *this slot* (not after the publish
//!    time, and not moved by jitter), so periods never drift.
//! 3. **Sleep** until the soonest `nextRunAt`, a lease change or one tick,
//!    whichever comes first — so slots fire within a few ms.
//!
//! Guarantees: each slot is published exactly once while some beat leads
//! and the broker is up, whatever errors come in between: the publish and
//! its key commit in one atomic step, so a publish that timed out but ran
//! is answered with its task when the slot is tried again, and a slot that
//! another beat recorded and then died on is still published. Nothing is
//! released after an ambiguous error. After the leader is SIGKILLed, a
//! follower takes over at most `lease + tick` later (3.25 s by default);
//! the slots that fell due in that gap follow the misfire policy (under
//! the default `all`, each fires late, once). A slot's publish key lasts
//! as long as the catch-up window (`record_ttl`), so a slot published
//! by a beat that died before booking it is never published again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entry::{Misfire, ScheduleEntry};
use super::metrics::SchedulerMetrics;
use super::store::{FiringOutcome, FiringReport, LockStore, ScheduleStore};
use crate::client::{EnqueueOptions, Stem};
use crate::envelope::format_ms;
use crate::error::Result;

/// Default leader lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);
/// Default (and maximum useful) pause between two passes.
pub const DEFAULT_TICK: Duration = Duration::from_millis(250);
/// Default lock name of the leader lease (`stem:lock:beat:leader` on Redis).
pub const LEADER_LOCK: &str = "beat:leader";
/// Meta key naming the producer of a scheduled task.
pub const META_FROM: &str = "scheduled-from";
/// Meta key holding the schedule id.
pub const META_ID: &str = "schedule-id";
/// Meta key holding the slot (RFC 3339 UTC, ms).
pub const META_SLOT: &str = "schedule-slot";

/// A firing is only started while at least this much lease is left.
const LEASE_SAFETY: Duration = Duration::from_millis(200);

/// Settings of one beat process.
#[derive(Clone, Debug)]
pub struct BeatConfig {
    /// Unique id of this process (lease owner, firing-record value).
    pub instance_id: String,
    /// Leader lease TTL; renewed every third of it.
    pub lease: Duration,
    /// Longest pause between two passes.
    pub tick: Duration,
    /// Lock name of the leader lease.
    pub lock_key: String,
    /// Most entries fired per pass.
    pub batch_size: usize,
}

impl Default for BeatConfig {
    fn default() -> Self {
        BeatConfig {
            instance_id: default_instance_id(),
            lease: DEFAULT_LEASE,
            tick: DEFAULT_TICK,
            lock_key: LEADER_LOCK.to_string(),
            batch_size: 100,
        }
    }
}

/// `beat-<hostname>-<pid>-<random>`.
pub fn default_instance_id() -> String {
    let host = crate::config::hostname();
    let tag: u16 = rand::thread_rng().gen();
    format!("beat-{host}-{}-{tag:04x}", std::process::id())
}

/// One published slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// Schedule entry id.
    pub id: String,
    /// The slot fired.
    pub slot: DateTime<Utc>,
    /// Id of the task published for the slot.
    pub task_id: String,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Slots published in this pass.
    pub fired: Vec<Fired>,
    /// Slots another beat had already recorded.
    pub duplicates: usize,
    /// Slots whose publish failed for good.
    pub failed: usize,
    /// Slots skipped after downtime.
    pub missed: u64,
}

/// The scheduler. Cheap to clone.
///
/// Every beat process competes for one leader lease; the leader fires due
/// entries, each slot at most once across processes.
///
/// ```
/// use chrono::Utc;
/// use stem::schedule::{ScheduleEntry, ScheduleStores};
/// use stem::{Beat, BeatConfig, Stem};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> stem::Result<()> {
/// let stem = Stem::memory();
/// let stores = ScheduleStores::memory();
/// let entry = ScheduleEntry::new("nightly-report", "reports.build", "0 3 * * *")?;
/// stores.schedules.upsert(&entry, Utc::now()).await?;
///
/// let beat = Beat::new(stem, stores.schedules, stores.locks, BeatConfig::default());
/// // `beat.run(shutdown)` leads and fires until cancelled; one pass by hand:
/// let pass = beat.fire_due(Utc::now()).await?;
/// assert!(pass.fired.is_empty(), "03:00 is not due the moment it is defined");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Beat {
    stem: Stem,
    store: Arc<dyn ScheduleStore>,
    locks: Arc<dyn LockStore>,
    opts: BeatConfig,
    metrics: Arc<SchedulerMetrics>,
    /// The slot each entry was being fired at when an error cut the firing
    /// short (it may be recorded, even published): the next pass finishes
    /// that slot before moving on, instead of coalescing it away.
    unfinished: Arc<std::sync::Mutex<std::collections::HashMap<String, DateTime<Utc>>>>,
}

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
enum Step {
    /// Publish `slot`; `missed` slots before it are given up.
    Fire { slot: DateTime<Utc>, missed: u64 },
    /// Give up `slot` too (`misfire: skip`); `missed` counts it.
    Skip { slot: DateTime<Utc>, missed: u64 },
}

impl Step {
    fn slot(self) -> DateTime<Utc> {
        match self {
            Step::Fire { slot, .. } | Step::Skip { slot, .. } => slot,
        }
    }
}

/// Logs the first error of an outage at warn, later ones at debug.
struct OutageLog {
    what: &'static str,
    down: bool,
}

impl OutageLog {
    fn new(what: &'static str) -> Self {
        OutageLog { what, down: false }
    }
    fn error(&mut self, e: &crate::error::StemError) {
        if self.down {
            tracing::debug!(error = %e, "{} still failing", self.what);
        } else {
            tracing::warn!(error = %e, "{} failed; retrying every tick", self.what);
            self.down = true;
        }
    }
    fn ok(&mut self) {
        if self.down {
            tracing::info!("{} works again", self.what);
            self.down = false;
        }
    }
}

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
fn record_ttl(slot: DateTime<Utc>, next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    let gap = next
        .and_then(|n| (n - slot).to_std().ok())
        .unwrap_or(Duration::from_secs(3600));
    let window = gap * (Misfire::MAX_CATCH_UP as u32 + 1);
    let elapsed = (now - slot).to_std().unwrap_or(Duration::ZERO);
    window.saturating_sub(elapsed).max(Duration::from_secs(60))
}

impl Beat {
    /// A beat publishing through `stem`, reading `store`, leading through
    /// `locks`.
    pub fn new(
        stem: Stem,
        store: Arc<dyn ScheduleStore>,
        locks: Arc<dyn LockStore>,
        opts: BeatConfig,
    ) -> Self {
        Beat {
            stem,
            store,
            locks,
            opts,
            metrics: Arc::new(SchedulerMetrics::default()),
            unfinished: Default::default(),
        }
    }

    /// This beat's counters.
    pub fn metrics(&self) -> Arc<SchedulerMetrics> {
        self.metrics.clone()
    }

    /// This beat's settings.
    pub fn options(&self) -> &BeatConfig {
        &self.opts
    }

    /// The schedule store.
    pub fn store(&self) -> Arc<dyn ScheduleStore> {
        self.store.clone()
    }

    /// Runs until `shutdown` is cancelled; releases the lease on the way out.
    /// Store and broker outages are logged once and retried; this returns
    /// `Ok` on shutdown.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let o = &self.opts;
        tracing::info!(
            instance = %o.instance_id, lease_ms = o.lease.as_millis() as u64,
            tick_ms = o.tick.as_millis() as u64, "beat started"
        );
        // The lease lives on its own task: a dispatch stalled on Redis for
        // longer than the lease must not stop the renewals (and so hand
        // leadership to nobody in particular). It publishes how long the
        // lease is known to be held; the firing loop reads it.
        let (lease_tx, mut lease) = tokio::sync::watch::channel::<Option<Instant>>(None);
        let leasing = tokio::spawn(self.clone().hold_lease(lease_tx, shutdown.clone()));
        let mut fire_log = OutageLog::new("firing due schedules");
        while !shutdown.is_cancelled() {
            let mut wake = Instant::now() + o.tick;
            let valid_until = *lease.borrow_and_update();
            if let Some(valid_until) = valid_until.filter(|v| Instant::now() + LEASE_SAFETY < *v) {
                let deadline = valid_until - LEASE_SAFETY;
                match self.fire_due_until(Utc::now(), Some(deadline)).await {
                    Ok(_) => {
                        fire_log.ok();
                        if let Ok(Some(t)) = self.store.next_run_at().await {
                            let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                            wake = wake.min(Instant::now() + wait.max(Duration::from_millis(1)));
                        }
                    }
                    Err(e) => fire_log.error(&e),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = lease.changed() => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if let Err(e) = leasing.await {
            tracing::warn!(error = %e, "the lease task ended abnormally");
        }
        tracing::info!(instance = %o.instance_id, "beat stopped");
        Ok(())
    }

    /// Acquires and renews the leader lease until `shutdown`, then releases
    /// it. Sends `Some(valid until)` while leading, `None` otherwise.
    async fn hold_lease(
        self,
        leading: tokio::sync::watch::Sender<Option<Instant>>,
        shutdown: CancellationToken,
    ) {
        let o = &self.opts;
        let renew_every = o.lease / 3;
        let mut leader = false;
        let mut valid_until = Instant::now();
        let mut lease_log = OutageLog::new("leader lease operation");
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let res = if leader {
                self.locks.renew(&o.lock_key, &o.instance_id, o.lease).await
            } else {
                self.locks
                    .acquire(&o.lock_key, &o.instance_id, o.lease)
                    .await
            };
            let next = match res {
                Ok(true) => {
                    lease_log.ok();
                    if !leader {
                        leader = true;
                        self.metrics.acquired();
                        tracing::info!(instance = %o.instance_id, "became leader");
                    }
                    valid_until = started + o.lease;
                    started + renew_every
                }
                Ok(false) => {
                    lease_log.ok();
                    if leader {
                        leader = false;
                        self.metrics.renew_failed();
                        tracing::warn!(instance = %o.instance_id, "lost leadership: another beat holds the lease");
                    } else {
                        self.metrics.contended();
                    }
                    Instant::now() + o.tick
                }
                Err(e) => {
                    lease_log.error(&e);
                    if leader {
                        self.metrics.renew_failed();
                        if Instant::now() >= valid_until {
                            leader = false;
                            tracing::warn!(instance = %o.instance_id, "lost leadership: lease expired while the store was unreachable");
                        }
                    }
                    Instant::now() + o.tick
                }
            };
            leading.send_replace(leader.then_some(valid_until));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        leading.send_replace(None);
        if leader {
            match self.locks.release(&o.lock_key, &o.instance_id).await {
                Ok(_) => tracing::info!(instance = %o.instance_id, "released leadership"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leader lease; it expires by itself")
                }
            }
        }
    }

    /// One pass: fires every due entry once (the caller must hold the
    /// lease; tests call this directly).
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<PassReport> {
        self.fire_due_until(now, None).await
    }

    async fn fire_due_until(
        &self,
        now: DateTime<Utc>,
        deadline: Option<Instant>,
    ) -> Result<PassReport> {
        let due = self.store.due(now, self.opts.batch_size).await?;
        let mut report = PassReport::default();
        'entries: for mut entry in due {
            // Under `misfire: all` an entry has several due slots after a
            // downtime: they fire one after another, each booked (its
            // `nextRunAt` stored) before the next, so a pass cut short by
            // the deadline or an outage resumes at the first unfired slot.
            // Under `latest` and `skip` the first step jumps to the most
            // recent due slot and the loop ends after it.
            let mut first = true;
            while let Some(next_run) = entry.history.next_run_at.filter(|n| *n <= now) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break 'entries;
                }
                if std::mem::take(&mut first) {
                    self.log_misfire(&entry, next_run, now);
                } else {
                    // A catch-up may take a while: an entry disabled,
                    // deleted or redefined meanwhile stops it (its
                    // bookings would be ignored, its slots still fired).
                    match self.store.get(&entry.id).await? {
                        Some(current)
                            if current.enabled
                                && current.history.revision == entry.history.revision => {}
                        _ => continue 'entries,
                    }
                }
                let step = self.plan(&entry, next_run, now);
                match step {
                    Step::Fire { slot, missed } => {
                        self.fire(&entry, slot, missed, &mut report).await?
                    }
                    Step::Skip { slot, missed } => {
                        self.skip(&entry, slot, missed, &mut report).await?
                    }
                }
                let slot = step.slot();
                match entry.next_after(slot) {
                    Some(next) if next > slot => entry.history.next_run_at = Some(next),
                    _ => continue 'entries, // the schedule has no further slot
                }
            }
        }
        Ok(report)
    }

    /// Which slot of `entry` to handle next, given its first unfired slot
    /// `next_run` ≤ `now`, and how many slots before it are given up.
    fn plan(&self, entry: &ScheduleEntry, next_run: DateTime<Utc>, now: DateTime<Utc>) -> Step {
        let missed_before = |slot| {
            if slot > next_run {
                entry.spec.slots_between(
                    next_run,
                    slot,
                    entry.timezone,
                    entry.anchor_or(next_run),
                    1_000_000,
                )
            } else {
                0
            }
        };
        // A slot an error cut short is finished first, whatever the policy:
        // it may be recorded or even published already.
        let unfinished = self
            .unfinished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&entry.id)
            .copied()
            .filter(|s| *s >= next_run);
        if let Some(slot) = unfinished {
            return Step::Fire {
                slot,
                missed: missed_before(slot),
            };
        }
        let latest = latest_due(entry, next_run, now);
        match entry.misfire {
            Misfire::All => {
                let late = missed_before(latest) + 1;
                if late as usize <= Misfire::MAX_CATCH_UP {
                    return Step::Fire {
                        slot: next_run,
                        missed: 0,
                    };
                }
                // Only the most recent MAX_CATCH_UP slots fire: walk back
                // from the latest (cheap for `every:` and cron alike).
                let mut first = latest;
                for _ in 1..Misfire::MAX_CATCH_UP {
                    match entry.latest_at_or_before(first - chrono::Duration::milliseconds(1)) {
                        Some(p) if p >= next_run => first = p,
                        _ => break,
                    }
                }
                Step::Fire {
                    slot: first,
                    missed: missed_before(first),
                }
            }
            Misfire::Latest => Step::Fire {
                slot: latest,
                missed: missed_before(latest),
            },
            Misfire::Skip => {
                // The first slot at most SKIP_GRACE late fires (and, in
                // turn, those after it); the ones before it are given up.
                let threshold = now - Misfire::SKIP_GRACE;
                let first = if next_run >= threshold {
                    Some(next_run)
                } else {
                    entry
                        .next_after(threshold - chrono::Duration::milliseconds(1))
                        .filter(|f| *f <= now)
                };
                match first {
                    Some(slot) => Step::Fire {
                        slot,
                        missed: missed_before(slot),
                    },
                    None => Step::Skip {
                        slot: latest,
                        missed: missed_before(latest) + 1,
                    },
                }
            }
        }
    }

    /// Logs how an entry's late slots are handled, when it has more than
    /// one due (once per pass, not per slot of a catch-up).
    fn log_misfire(&self, entry: &ScheduleEntry, next_run: DateTime<Utc>, now: DateTime<Utc>) {
        let latest = latest_due(entry, next_run, now);
        if latest <= next_run {
            return;
        }
        let count = entry.spec.slots_between(
            next_run,
            latest,
            entry.timezone,
            entry.anchor_or(next_run),
            1_000_000,
        ) + 1;
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
    async fn skip(
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

    /// Records, publishes and books one slot. `Err` only for outages (the
    /// pass stops and the slot is retried).
    async fn fire(
        &self,
        entry: &ScheduleEntry,
        slot: DateTime<Utc>,
        missed: u64,
        report: &mut PassReport,
    ) -> Result<()> {
        let next = entry.next_after(slot);
        let slot_text = format_ms(slot.timestamp_millis());
        let booking = |outcome| FiringReport {
            id: entry.id.clone(),
            revision: entry.history.revision,
            slot,
            next_run_at: next,
            missed,
            outcome,
        };
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
        let owner = &self.opts.instance_id;
        self.unfinished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.id.clone(), slot);
        let recorded = self
            .store
            .record_firing(&entry.id, slot, owner, record_ttl(slot, next, Utc::now()))
            .await?;
        let jitter_ms = match entry.jitter.as_millis() as u64 {
            0 => 0,
            max => rand::thread_rng().gen_range(0..=max),
        };
        let mut meta = entry.meta.clone();
        meta.insert(META_FROM.into(), Value::String("beat".into()));
        meta.insert(META_ID.into(), Value::String(entry.id.clone()));
        meta.insert(META_SLOT.into(), Value::String(slot_text.clone()));
        let opts = EnqueueOptions {
            queue: Some(entry.queue.clone()),
            countdown: (jitter_ms > 0).then(|| Duration::from_millis(jitter_ms)),
            meta,
            ..Default::default()
        };
        // One task per (entry, slot), however often this runs: after a
        // publish that timed out but ran, after another beat recorded the
        // slot and died, after two beats both thought they led.
        let marker = slot_marker(&entry.id, slot);
        let booked = match self
            .stem
            .enqueue_once(
                &marker,
                record_ttl(slot, next, Utc::now()),
                &entry.task,
                entry.args.clone(),
                &opts,
            )
            .await
        {
            Ok(enqueued) if enqueued.duplicate => {
                self.metrics.duplicate();
                report.duplicates += 1;
                tracing::debug!(
                    schedule = %entry.id, slot = %slot_text, task_id = %enqueued.task_id, recorded,
                    "slot already published"
                );
                self.store
                    .complete_firing(&booking(FiringOutcome::AlreadyFired))
                    .await
            }
            Ok(enqueued) => {
                let at = Utc::now();
                let drift_ms = (at - slot).num_milliseconds();
                self.metrics.success(drift_ms);
                tracing::info!(
                    schedule = %entry.id, slot = %slot_text, task_id = %enqueued.task_id,
                    task = %entry.task, queue = %entry.queue, drift_ms, jitter_ms,
                    "schedule fired"
                );
                report.fired.push(Fired {
                    id: entry.id.clone(),
                    slot,
                    task_id: enqueued.task_id.clone(),
                });
                self.store
                    .complete_firing(&booking(FiringOutcome::Dispatched {
                        task_id: enqueued.task_id,
                        at,
                        drift_ms,
                        jitter_ms,
                    }))
                    .await
            }
            Err(e) if e.is_transient() => {
                // Possibly published (a timeout after the request left):
                // the record stays, and the next pass publishes with the
                // same key, which answers the task if it exists.
                self.metrics.failed();
                Err(e)
            }
            Err(e) => {
                self.metrics.failed();
                report.failed += 1;
                tracing::warn!(
                    schedule = %entry.id, slot = %slot_text, task = %entry.task, error = %e,
                    "schedule dispatch failed"
                );
                self.store
                    .complete_firing(&booking(FiringOutcome::Failed {
                        error: e.to_string(),
                        at: Utc::now(),
                    }))
                    .await
            }
        };
        if booked.is_ok() {
            self.unfinished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry.id);
        }
        booked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::memory::{MemoryLockStore, MemoryScheduleStore};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid time in test")
            .with_timezone(&Utc)
    }

    /// A catalogue of one task, `greeting.send` on `greetings` with five
    /// retries, as the demo catalogue has it.
    struct Greeting;

    #[async_trait::async_trait]
    impl crate::task::Task for Greeting {
        const NAME: &'static str = "greeting.send";
        type Args = serde_json::Value;
        type Output = ();
        fn options(&self) -> crate::task::TaskOptions {
            crate::task::TaskOptions {
                queue: "greetings".into(),
                max_retries: 5,
                ..Default::default()
            }
        }
        async fn run(
            &self,
            _ctx: crate::task::TaskContext,
            _args: serde_json::Value,
        ) -> crate::task::TaskResult<()> {
            Ok(())
        }
    }

    fn beat(store: &MemoryScheduleStore, id: &str) -> Beat {
        let registry = crate::task::TaskRegistry::new();
        registry.register(Greeting);
        let stem = Stem::memory().with_registry(registry);
        Beat::new(
            stem,
            Arc::new(store.clone()),
            Arc::new(MemoryLockStore::new()),
            BeatConfig {
                instance_id: id.into(),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn fires_on_the_grid_and_advances_from_the_slot() -> Result<()> {
        let store = MemoryScheduleStore::new();
        let t0 = at("2025-01-01T00:00:00Z");
        let mut e = ScheduleEntry::new("tick", "greeting.send", "every:10s")?;
        e.queue = "greetings".into();
        store.upsert(&e, t0).await?;
        let b = beat(&store, "b1");
        assert!(b
            .fire_due(at("2025-01-01T00:00:09.999Z"))
            .await?
            .fired
            .is_empty());
        // Dispatched 3.7 s late: the next slot is still :20.
        let r = b.fire_due(at("2025-01-01T00:00:13.700Z")).await?;
        assert_eq!(r.fired.len(), 1);
        assert_eq!(r.fired[0].slot, at("2025-01-01T00:00:10Z"));
        let got = store.get("tick").await?.expect("stored");
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:20Z")));
        assert_eq!(got.history.total_run_count, 1);
        assert_eq!(got.history.last_slot_at, Some(at("2025-01-01T00:00:10Z")));
        assert_eq!(
            got.history.last_task_id.as_deref(),
            Some(r.fired[0].task_id.as_str())
        );
        // The task carries the schedule meta and the catalogue's retry budget.
        let status = b
            .stem
            .status(&r.fired[0].task_id)
            .await?
            .expect("queued status");
        assert_eq!(status.queue, "greetings");
        assert_eq!(status.max_retries, 5);
        assert_eq!(status.meta[META_ID], "tick");
        assert_eq!(status.meta[META_SLOT], "2025-01-01T00:00:10.000Z");
        assert_eq!(status.meta[META_FROM], "beat");
        Ok(())
    }

    /// An `every:10s` entry created at :00, with misfire policy `misfire`.
    async fn ten_seconds(store: &MemoryScheduleStore, misfire: Misfire) -> Result<()> {
        let mut e = ScheduleEntry::new("m", "greeting.send", "every:10s")?;
        e.misfire = misfire;
        store.upsert(&e, at("2025-01-01T00:00:00Z")).await?;
        Ok(())
    }

    fn slots(r: &PassReport) -> Vec<DateTime<Utc>> {
        r.fired.iter().map(|f| f.slot).collect()
    }

    #[tokio::test]
    async fn downtime_fires_every_missed_slot_once_oldest_first() -> Result<()> {
        let store = MemoryScheduleStore::new();
        ten_seconds(&store, Misfire::All).await?;
        let b = beat(&store, "b1");
        // Down from :05 to :47: :10 :20 :30 :40 fire late, each once, in
        // order, each task carrying its own slot.
        let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
        assert_eq!(
            slots(&r),
            ["10", "20", "30", "40"].map(|s| at(&format!("2025-01-01T00:00:{s}Z")))
        );
        assert_eq!(r.missed, 0);
        for f in &r.fired {
            let status = b.stem.status(&f.task_id).await?.expect("queued status");
            assert_eq!(status.meta[META_SLOT], format_ms(f.slot.timestamp_millis()));
        }
        let got = store.get("m").await?.expect("stored");
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:50Z")));
        assert_eq!(got.history.total_run_count, 4);
        assert_eq!(got.history.missed_slots, 0);
        assert!(b
            .fire_due(at("2025-01-01T00:00:49Z"))
            .await?
            .fired
            .is_empty());
        Ok(())
    }

    /// A store that disables its entries right after booking their first
    /// firing: an operator's `stem schedule disable` during a catch-up.
    struct DisabledDuringCatchUp(MemoryScheduleStore);

    #[async_trait::async_trait]
    impl ScheduleStore for DisabledDuringCatchUp {
        async fn upsert(
            &self,
            entry: &ScheduleEntry,
            now: DateTime<Utc>,
        ) -> Result<crate::schedule::UpsertOutcome> {
            self.0.upsert(entry, now).await
        }
        async fn get(&self, id: &str) -> Result<Option<ScheduleEntry>> {
            self.0.get(id).await
        }
        async fn list(&self) -> Result<Vec<ScheduleEntry>> {
            self.0.list().await
        }
        async fn delete(&self, id: &str) -> Result<bool> {
            self.0.delete(id).await
        }
        async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ScheduleEntry>> {
            self.0.due(now, limit).await
        }
        async fn next_run_at(&self) -> Result<Option<DateTime<Utc>>> {
            self.0.next_run_at().await
        }
        async fn record_firing(
            &self,
            id: &str,
            slot: DateTime<Utc>,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool> {
            self.0.record_firing(id, slot, owner, ttl).await
        }
        async fn firing_owner(&self, id: &str, slot: DateTime<Utc>) -> Result<Option<String>> {
            self.0.firing_owner(id, slot).await
        }
        async fn complete_firing(&self, report: &FiringReport) -> Result<()> {
            self.0.complete_firing(report).await?;
            self.0.set_enabled(&report.id, false, report.slot).await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_catch_up_stops_when_its_entry_is_disabled() -> Result<()> {
        let inner = MemoryScheduleStore::new();
        ten_seconds(&inner, Misfire::All).await?;
        let mut b = beat(&inner, "b1");
        b.store = Arc::new(DisabledDuringCatchUp(inner.clone()));
        // :10 … :40 are due; the entry is disabled once :10 is booked.
        let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
        assert_eq!(slots(&r), [at("2025-01-01T00:00:10Z")]);
        Ok(())
    }

    #[tokio::test]
    async fn a_long_downtime_fires_the_most_recent_hundred_slots() -> Result<()> {
        let store = MemoryScheduleStore::new();
        ten_seconds(&store, Misfire::All).await?;
        let b = beat(&store, "b1");
        // 150 slots (:10 … 25:00) fell due: the last 100 fire, 50 missed.
        let r = b.fire_due(at("2025-01-01T00:25:05Z")).await?;
        assert_eq!(r.fired.len(), Misfire::MAX_CATCH_UP);
        assert_eq!(r.fired[0].slot, at("2025-01-01T00:08:30Z"));
        assert_eq!(r.fired[99].slot, at("2025-01-01T00:25:00Z"));
        assert_eq!(r.missed, 50);
        let got = store.get("m").await?.expect("stored");
        assert_eq!(got.history.missed_slots, 50);
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:25:10Z")));
        Ok(())
    }

    #[tokio::test]
    async fn latest_fires_the_most_recent_missed_slot_once() -> Result<()> {
        let store = MemoryScheduleStore::new();
        ten_seconds(&store, Misfire::Latest).await?;
        let b = beat(&store, "b1");
        // Down from :05 to :47: slots :10 :20 :30 missed, :40 fires.
        let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
        assert_eq!(slots(&r), [at("2025-01-01T00:00:40Z")]);
        assert_eq!(r.missed, 3);
        let got = store.get("m").await?.expect("stored");
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:50Z")));
        assert_eq!(got.history.missed_slots, 3);
        assert!(b
            .fire_due(at("2025-01-01T00:00:49Z"))
            .await?
            .fired
            .is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn skip_fires_nothing_late_beyond_its_grace() -> Result<()> {
        let store = MemoryScheduleStore::new();
        ten_seconds(&store, Misfire::Skip).await?;
        let b = beat(&store, "b1");
        // Half a second late (a beat handing over): the slot fires.
        let r = b.fire_due(at("2025-01-01T00:00:10.500Z")).await?;
        assert_eq!(slots(&r), [at("2025-01-01T00:00:10Z")]);
        assert_eq!(r.missed, 0);
        // Down until 10:45: :20 … 10:40 fell due, the latest 5 s ago.
        // Nothing fires, all 63 count as missed, the grid goes on at 10:50.
        let r = b.fire_due(at("2025-01-01T00:10:45Z")).await?;
        assert!(r.fired.is_empty(), "{r:?}");
        assert_eq!(r.missed, 63);
        let got = store.get("m").await?.expect("stored");
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:10:50Z")));
        assert_eq!(got.history.missed_slots, 63);
        assert_eq!(got.history.total_run_count, 1);
        // Back on time: 10:50 fires.
        let r = b.fire_due(at("2025-01-01T00:10:50.200Z")).await?;
        assert_eq!(slots(&r), [at("2025-01-01T00:10:50Z")]);
        Ok(())
    }

    #[tokio::test]
    async fn a_slot_recorded_by_a_beat_that_died_is_still_published_once() -> Result<()> {
        let store = MemoryScheduleStore::new();
        let t0 = at("2025-01-01T00:00:00Z");
        store
            .upsert(&ScheduleEntry::new("d", "greeting.send", "every:10s")?, t0)
            .await?;
        // Another beat recorded :10 and died before publishing it (C4):
        // the slot is published, keyed by (entry, slot), so a beat that
        // did publish it would be answered with its task instead.
        assert!(
            store
                .record_firing(
                    "d",
                    at("2025-01-01T00:00:10Z"),
                    "dead-beat",
                    Duration::from_secs(60)
                )
                .await?
        );
        let b = beat(&store, "b2");
        let r = b.fire_due(at("2025-01-01T00:00:11Z")).await?;
        assert_eq!(r.fired.len(), 1);
        assert_eq!(r.duplicates, 0);
        let got = store.get("d").await?.expect("stored");
        assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:20Z")));
        assert_eq!(got.history.total_run_count, 1);
        assert_eq!(b.metrics().snapshot().dispatch_duplicate, 0);
        Ok(())
    }

    #[tokio::test]
    async fn jitter_delays_one_firing_and_never_the_grid() -> Result<()> {
        let store = MemoryScheduleStore::new();
        let t0 = at("2025-01-01T00:00:00Z");
        let mut e = ScheduleEntry::new("j", "greeting.send", "every:10s")?;
        e.jitter = Duration::from_secs(5);
        store.upsert(&e, t0).await?;
        let b = beat(&store, "b1");
        let mut now = t0;
        let mut jitters = std::collections::BTreeSet::new();
        for k in 1..=20 {
            now += chrono::Duration::seconds(10);
            let r = b.fire_due(now).await?;
            assert_eq!(r.fired.len(), 1);
            let got = store.get("j").await?.expect("stored");
            let jitter = got.history.last_jitter_ms.expect("jitter recorded");
            assert!(jitter <= 5000, "{jitter}");
            jitters.insert(jitter);
            assert_eq!(
                got.history.next_run_at,
                Some(t0 + chrono::Duration::seconds(10 * (k + 1)))
            );
        }
        // Jitter is drawn per firing from [0, 5000] ms: twenty draws are
        // not all equal (chance 20 × (1/5001)^19), and some are non-zero.
        assert!(jitters.len() > 1, "jitter never varies: {jitters:?}");
        assert!(jitters.iter().any(|j| *j > 0), "{jitters:?}");
        Ok(())
    }

    #[tokio::test]
    async fn record_ttls_outlive_the_catch_up_window() {
        let s = at("2025-01-01T00:00:00Z");
        let secs = |n: i64| chrono::Duration::seconds(n);
        // every:1s: 101 slots from the slot; a firing 30 s late keeps
        // the rest of that window, never less than a minute.
        assert_eq!(
            record_ttl(s, Some(s + secs(1)), s),
            Duration::from_secs(101)
        );
        assert_eq!(
            record_ttl(s, Some(s + secs(1)), s + secs(30)),
            Duration::from_secs(71)
        );
        assert_eq!(
            record_ttl(s, Some(s + secs(1)), s + secs(100)),
            Duration::from_secs(60)
        );
        assert_eq!(
            record_ttl(s, Some(s + chrono::Duration::hours(1)), s),
            Duration::from_secs(101 * 3600)
        );
        assert_eq!(record_ttl(s, None, s), Duration::from_secs(101 * 3600));
    }
}
