//! The storage traits beat and the CLI share: [`ScheduleStore`] (entries,
//! due queries, idempotent firing records, run bookkeeping) and
//! [`LockStore`] (owned, expiring locks for the leader lease). Redis
//! ([`super::redis`]) and in-memory ([`super::memory`]) implementations
//! pass the same contract suite (`tests/schedule_contract.rs`).
//!
//! Upsert rules (both implementations):
//! - a new id is stored with `createdAt = anchorAt = now` and `nextRunAt`
//!   = the first slot after `now` (none while disabled);
//! - an identical definition changes nothing ([`UpsertOutcome::Unchanged`]);
//! - a changed definition keeps the whole run history and bumps the
//!   revision; `nextRunAt` is replanned from `now` (new grid anchor) only
//!   when the spec or time zone changed or the entry was re-enabled, and
//!   cleared when it is disabled.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::entry::{truncate_ms, ScheduleEntry};
use crate::error::Result;

/// What [`ScheduleStore::upsert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// The id was new; the entry was stored.
    Created,
    /// The definition changed; the run history was kept.
    Updated,
    /// The stored definition was identical; nothing changed.
    Unchanged,
}

impl UpsertOutcome {
    /// `created`, `updated` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpsertOutcome::Created => "created",
            UpsertOutcome::Updated => "updated",
            UpsertOutcome::Unchanged => "unchanged",
        }
    }
}

/// How one slot ended, as beat reports it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FiringOutcome {
    /// Published as task `task_id` at `at`.
    Dispatched {
        /// Id of the published task.
        task_id: String,
        /// When it was published.
        at: DateTime<Utc>,
        /// `at` minus the slot, in ms.
        drift_ms: i64,
        /// Countdown given to the task.
        jitter_ms: u64,
    },
    /// Publishing failed for good (not a store outage).
    Failed {
        /// Why publishing failed.
        error: String,
        /// When it failed.
        at: DateTime<Utc>,
    },
    /// Another beat had already recorded this slot; nothing was published.
    AlreadyFired,
    /// The slot was late beyond what the entry's misfire policy fires
    /// (`skip`); nothing was published, the slot counts as missed.
    Skipped,
}

/// Beat's bookkeeping after handling one slot of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiringReport {
    /// Schedule entry id.
    pub id: String,
    /// Revision of the definition the slot was planned with.
    pub revision: u64,
    /// The slot handled.
    pub slot: DateTime<Utc>,
    /// The slot after this one. Stored only if the revision is current and
    /// it is later than the stored `nextRunAt` (never moves backwards).
    pub next_run_at: Option<DateTime<Utc>>,
    /// Slots skipped before this one (downtime).
    pub missed: u64,
    /// How the slot ended.
    pub outcome: FiringOutcome,
}

/// Where a new or replanned entry's grid starts and its first slot.
pub fn plan_from(
    entry: &ScheduleEntry,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let anchor = truncate_ms(now);
    let next = entry.spec.next_after(anchor, entry.timezone, anchor);
    (anchor, next)
}

/// Schedule entries and their run history.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates or updates `entry`'s definition (its `history` is ignored),
    /// keeping the stored run history; see the module doc for the rules.
    async fn upsert(&self, entry: &ScheduleEntry, now: DateTime<Utc>) -> Result<UpsertOutcome>;

    /// The entry `id`.
    async fn get(&self, id: &str) -> Result<Option<ScheduleEntry>>;

    /// Every entry, soonest `nextRunAt` first, disabled entries last (then
    /// by id).
    async fn list(&self) -> Result<Vec<ScheduleEntry>>;

    /// Removes `id`; false if it did not exist.
    async fn delete(&self, id: &str) -> Result<bool>;

    /// Enabled entries whose `nextRunAt` ≤ `now`, soonest first, at most
    /// `limit`.
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ScheduleEntry>>;

    /// The soonest `nextRunAt` of any enabled entry.
    async fn next_run_at(&self) -> Result<Option<DateTime<Utc>>>;

    /// Records that `owner` fires slot `slot` of `id` (SET NX with `ttl`).
    /// True for the first caller; false if the slot was already recorded.
    async fn record_firing(
        &self,
        id: &str,
        slot: DateTime<Utc>,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool>;

    /// Who recorded slot `slot` of `id`, if anyone (and not expired).
    async fn firing_owner(&self, id: &str, slot: DateTime<Utc>) -> Result<Option<String>>;

    /// Applies beat's bookkeeping for one slot: run counters, last run,
    /// last error, missed slots, and `nextRunAt` (see [`FiringReport`]).
    /// A deleted entry is not recreated.
    async fn complete_firing(&self, report: &FiringReport) -> Result<()>;

    /// Enables or disables `id` (re-enabling replans from `now`). Returns
    /// the updated entry, `None` for an unknown id.
    async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<ScheduleEntry>> {
        let Some(mut entry) = self.get(id).await? else {
            return Ok(None);
        };
        if entry.enabled != enabled {
            entry.enabled = enabled;
            self.upsert(&entry, now).await?;
        }
        self.get(id).await
    }
}

/// Owned locks with a time to live (the beat leader lease).
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes `key` for `owner` for `ttl` if it is free (SET NX PX), or
    /// extends it if `owner` already holds it. True when `owner` holds it.
    async fn acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// Extends `key` to `ttl` only if `owner` holds it (compare-and-renew).
    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// Frees `key` only if `owner` holds it.
    async fn release(&self, key: &str, owner: &str) -> Result<bool>;

    /// The current holder of `key`.
    async fn owner_of(&self, key: &str) -> Result<Option<String>>;
}
