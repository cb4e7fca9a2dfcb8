//! In-process [`ScheduleStore`] and [`LockStore`] (for `stem dev`, tests
//! and single-process embedding). Same rules as the Redis store; clones
//! share state; expiry uses tokio's clock (monotonic; paused in tests).

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::entry::{truncate_ms, ScheduleEntry};
use super::store::{
    plan_from, FiringOutcome, FiringReport, LockStore, ScheduleStore, UpsertOutcome,
};
use crate::error::Result;

#[derive(Default)]
struct State {
    entries: HashMap<String, ScheduleEntry>,
    /// (id, slot ms) → (owner, expiry).
    firings: HashMap<(String, i64), (String, Instant)>,
}

/// The in-memory schedule store.
#[derive(Clone, Default)]
pub struct MemoryScheduleStore {
    state: Arc<Mutex<State>>,
}

impl MemoryScheduleStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

fn sort_key(e: &ScheduleEntry) -> (i64, String) {
    let next = if e.enabled {
        e.history
            .next_run_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MAX)
    } else {
        i64::MAX
    };
    (next, e.id.clone())
}

#[async_trait]
impl ScheduleStore for MemoryScheduleStore {
    async fn upsert(&self, entry: &ScheduleEntry, now: DateTime<Utc>) -> Result<UpsertOutcome> {
        entry.validate()?;
        let now = truncate_ms(now);
        let (anchor, next) = plan_from(entry, now);
        let mut st = self.lock();
        let Some(old) = st.entries.get_mut(&entry.id) else {
            let mut fresh = entry.clone();
            fresh.history = Default::default();
            fresh.history.created_at = Some(now);
            fresh.history.updated_at = Some(now);
            fresh.history.anchor_at = Some(anchor);
            fresh.history.revision = 1;
            fresh.history.next_run_at = if entry.enabled { next } else { None };
            st.entries.insert(entry.id.clone(), fresh);
            return Ok(UpsertOutcome::Created);
        };
        if old.definition() == entry.definition() {
            return Ok(UpsertOutcome::Unchanged);
        }
        let replan = old.timing_key() != entry.timing_key() || (!old.enabled && entry.enabled);
        let mut history = old.history.clone();
        history.revision += 1;
        history.updated_at = Some(now);
        if !entry.enabled {
            history.next_run_at = None;
        } else if replan {
            history.anchor_at = Some(anchor);
            history.next_run_at = next;
        }
        let mut updated = entry.clone();
        updated.history = history;
        *old = updated;
        Ok(UpsertOutcome::Updated)
    }

    async fn get(&self, id: &str) -> Result<Option<ScheduleEntry>> {
        Ok(self.lock().entries.get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<ScheduleEntry>> {
        let mut all: Vec<ScheduleEntry> = self.lock().entries.values().cloned().collect();
        all.sort_by_key(sort_key);
        Ok(all)
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.lock().entries.remove(id).is_some())
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let mut due: Vec<ScheduleEntry> = self
            .lock()
            .entries
            .values()
            .filter(|e| e.enabled && e.history.next_run_at.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        due.sort_by_key(sort_key);
        due.truncate(limit);
        Ok(due)
    }

    async fn next_run_at(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .lock()
            .entries
            .values()
            .filter(|e| e.enabled)
            .filter_map(|e| e.history.next_run_at)
            .min())
    }

    async fn record_firing(
        &self,
        id: &str,
        slot: DateTime<Utc>,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut st = self.lock();
        let now = Instant::now();
        st.firings.retain(|_, (_, exp)| *exp > now);
        let key = (id.to_string(), slot.timestamp_millis());
        if st.firings.contains_key(&key) {
            return Ok(false);
        }
        st.firings.insert(key, (owner.to_string(), now + ttl));
        Ok(true)
    }

    async fn firing_owner(&self, id: &str, slot: DateTime<Utc>) -> Result<Option<String>> {
        let st = self.lock();
        Ok(st
            .firings
            .get(&(id.to_string(), slot.timestamp_millis()))
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(o, _)| o.clone()))
    }

    async fn complete_firing(&self, report: &FiringReport) -> Result<()> {
        let mut st = self.lock();
        let Some(entry) = st.entries.get_mut(&report.id) else {
            return Ok(());
        };
        let h = &mut entry.history;
        match &report.outcome {
            FiringOutcome::Dispatched {
                task_id,
                at,
                drift_ms,
                jitter_ms,
            } => {
                h.last_run_at = Some(truncate_ms(*at));
                h.last_slot_at = Some(truncate_ms(report.slot));
                h.last_task_id = Some(task_id.clone());
                h.last_drift_ms = Some(*drift_ms);
                h.last_jitter_ms = Some(*jitter_ms);
                h.last_error = None;
                h.total_run_count += 1;
            }
            FiringOutcome::Failed { error, at } => {
                h.last_error = Some(error.clone());
                h.last_error_at = Some(truncate_ms(*at));
            }
            FiringOutcome::AlreadyFired | FiringOutcome::Skipped => {}
        }
        h.missed_slots += report.missed;
        if h.revision == report.revision && entry.enabled {
            match report.next_run_at {
                Some(next) => {
                    if h.next_run_at.is_none_or(|cur| next > cur) {
                        h.next_run_at = Some(truncate_ms(next));
                    }
                }
                None => h.next_run_at = None,
            }
        }
        Ok(())
    }
}

/// The in-memory lock store.
#[derive(Clone, Default)]
pub struct MemoryLockStore {
    locks: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl MemoryLockStore {
    /// An empty lock store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.locks.lock()
    }
}

#[async_trait]
impl LockStore for MemoryLockStore {
    async fn acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let mut locks = self.lock();
        let now = Instant::now();
        match locks.get(key) {
            Some((o, exp)) if *exp > now && o != owner => Ok(false),
            _ => {
                locks.insert(key.to_string(), (owner.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let mut locks = self.lock();
        let now = Instant::now();
        match locks.get_mut(key) {
            Some((o, exp)) if *exp > now && o == owner => {
                *exp = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool> {
        let mut locks = self.lock();
        let held = locks
            .get(key)
            .is_some_and(|(o, exp)| o == owner && *exp > Instant::now());
        if held {
            locks.remove(key);
        }
        Ok(held)
    }

    async fn owner_of(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .get(key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(o, _)| o.clone()))
    }
}
