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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::SchedulerMetrics;
use super::store::{LockStore, ScheduleStore};
use crate::client::Stem;
use crate::error::Result;

mod catch_up;
mod fire;
#[cfg(test)]
mod tests;

use catch_up::Step;

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
    unfinished: Arc<parking_lot::Mutex<std::collections::HashMap<String, DateTime<Utc>>>>,
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

    /// The slot an error cut short for entry `id`, if any.
    fn unfinished_slot(&self, id: &str) -> Option<DateTime<Utc>> {
        let unfinished = self.unfinished.lock();
        unfinished.get(id).copied()
    }

    /// Marks `slot` of entry `id` as being fired (`None`: booked).
    fn set_unfinished(&self, id: &str, slot: Option<DateTime<Utc>>) {
        let mut unfinished = self.unfinished.lock();
        match slot {
            Some(slot) => unfinished.insert(id.to_string(), slot),
            None => unfinished.remove(id),
        };
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
}
