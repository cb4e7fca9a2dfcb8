//! [`ScheduleEntry`]: what to run and when (the definition an operator
//! writes), plus its [`RunHistory`] (what beat recorded). The definition and
//! the history are stored apart, so re-seeding or editing a definition never
//! resets the history.
//!
//! JSON for tools: [`ScheduleEntry::summary`] is the `stem schedule list
//! --json` row `{id, task, queue, spec, nextRunAt, lastRunAt, jitterMs,
//! enabled, totalRunCount, lastError}`; [`ScheduleEntry::to_json`] is the
//! full document (`stem schedule show`). Times are RFC 3339 UTC with
//! milliseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::spec::{parse_timezone, Spec};
use crate::config::validate_queue_name;
use crate::envelope::format_ms;
use crate::error::{Result, StemError};

/// Queue used when an entry names none (as in the reference).
pub const DEFAULT_QUEUE: &str = "default";

/// `t` truncated to whole milliseconds (the stores' precision).
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Schedule ids become part of Redis keys: letters, digits, `-`, `_`, `.`,
/// 1 to 200 characters.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StemError::InvalidArgument(format!(
            "invalid schedule id {id:?}: use 1-200 letters, digits, - _ ."
        )))
    }
}

/// What beat does with slots that fell due while no beat was firing (a
/// failover, a stopped beat, an outage of the schedule store): the entry's
/// `misfire` key in the schedule file.
///
/// Stem's choice among the peers' (Quartz's misfire instructions,
/// APScheduler's `coalesce` and grace time): `all` by default, because a
/// scheduled task an operator asked for every minute is usually work that
/// must happen each minute (a report per slot, a sweep per slot), and a
/// firing carries the slot it stands for (`schedule-slot`), so a late task
/// still knows which period it is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Misfire {
    /// Every missed slot fires once, oldest first; after a downtime longer
    /// than [`Misfire::MAX_CATCH_UP`] slots, only the most recent that many
    /// (the older ones are counted as missed).
    #[default]
    All,
    /// One firing, of the most recent missed slot; the others are counted
    /// as missed.
    Latest,
    /// No late firing: a slot fires only if beat reaches it at most
    /// [`Misfire::SKIP_GRACE`] after its time (so a graceful handover
    /// between beats, a tick, loses nothing); the slots it gives up are
    /// counted as missed and the grid continues.
    Skip,
}

impl Misfire {
    /// Most missed slots `all` fires per entry after one downtime.
    pub const MAX_CATCH_UP: usize = 100;
    /// How late a slot may be and still fire under `skip`: four beat
    /// ticks, more than a graceful handover (one tick) or a busy pass,
    /// less than a failover after a crash (up to lease + tick, 3.25 s).
    pub const SKIP_GRACE: Duration = Duration::from_secs(1);

    /// The policy's name in the schedule file and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::All => "all",
            Misfire::Latest => "latest",
            Misfire::Skip => "skip",
        }
    }

    /// Parses `all`, `latest` or `skip` (any case).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Misfire::All),
            "latest" => Ok(Misfire::Latest),
            "skip" => Ok(Misfire::Skip),
            _ => Err(StemError::InvalidArgument(format!(
                "invalid misfire policy {s:?}: use all, latest or skip"
            ))),
        }
    }

    fn is_all(&self) -> bool {
        *self == Misfire::All
    }
}

/// What beat recorded about an entry. Every field survives re-seeding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunHistory {
    /// When the entry was first stored.
    pub created_at: Option<DateTime<Utc>>,
    /// When its definition last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// Origin of the `every:` grid: creation, or the last change of spec,
    /// time zone or enabled flag.
    pub anchor_at: Option<DateTime<Utc>>,
    /// Bumped on every definition change; beat's bookkeeping only moves
    /// `next_run_at` when the revision it planned with is still current.
    pub revision: u64,
    /// The next slot to fire; `None` while disabled.
    pub next_run_at: Option<DateTime<Utc>>,
    /// When the last firing was published.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The slot the last firing was for.
    pub last_slot_at: Option<DateTime<Utc>>,
    /// Task id of the last firing.
    pub last_task_id: Option<String>,
    /// Firings published.
    pub total_run_count: u64,
    /// Why the last dispatch failed; cleared by the next success.
    pub last_error: Option<String>,
    /// When `last_error` was recorded.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Publish time minus slot time of the last firing (jitter excluded).
    pub last_drift_ms: Option<i64>,
    /// Countdown applied to the last firing.
    pub last_jitter_ms: Option<u64>,
    /// Slots skipped because no beat was leading when they were due.
    pub missed_slots: u64,
}

/// A schedule entry: definition plus run history.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleEntry {
    /// Entry id (see [`validate_id`]); part of its Redis keys.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Queue the task is published to (default [`DEFAULT_QUEUE`]).
    pub queue: String,
    /// When to fire: an `every:` interval or a cron expression.
    pub spec: Spec,
    /// Zone cron expressions are evaluated in (default UTC).
    pub timezone: Tz,
    /// Upper bound of a random countdown added to each firing.
    pub jitter: Duration,
    /// A disabled entry keeps its definition and history but does not fire.
    pub enabled: bool,
    /// What to do with slots that fell due while no beat fired.
    pub misfire: Misfire,
    /// Task arguments (a JSON object).
    pub args: Value,
    /// Merged into the envelope meta of every firing.
    pub meta: Map<String, Value>,
    /// What beat recorded;
    /// [`ScheduleStore::upsert`](crate::schedule::ScheduleStore::upsert)
    /// ignores it.
    pub history: RunHistory,
}

/// The stored form of a definition (no history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// Task name.
    pub task: String,
    /// Queue name.
    pub queue: String,
    /// The spec as written ([`Spec::as_str`]).
    pub spec: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Upper bound of the random countdown, in milliseconds.
    pub jitter_ms: u64,
    /// Whether the entry fires.
    pub enabled: bool,
    /// Misfire policy; absent (definitions stored before it existed, or
    /// the default) means [`Misfire::All`].
    #[serde(default, skip_serializing_if = "Misfire::is_all")]
    pub misfire: Misfire,
    /// Task arguments (a JSON object).
    #[serde(default)]
    pub args: Value,
    /// Merged into the envelope meta of every firing.
    #[serde(default)]
    pub meta: Map<String, Value>,
}

/// One row of `stem schedule list --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    /// Entry id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Queue name.
    pub queue: String,
    /// The spec as written.
    pub spec: String,
    /// The next slot to fire, RFC 3339 UTC; `None` while disabled.
    pub next_run_at: Option<String>,
    /// When the last firing was published, RFC 3339 UTC; `None` before the
    /// first.
    pub last_run_at: Option<String>,
    /// Upper bound of the random countdown, in milliseconds.
    pub jitter_ms: u64,
    /// Whether the entry fires.
    pub enabled: bool,
    /// Firings published.
    pub total_run_count: u64,
    /// Why the last dispatch failed; cleared by the next success.
    pub last_error: Option<String>,
}

fn rfc(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| format_ms(t.timestamp_millis()))
}

impl ScheduleEntry {
    /// A new enabled entry on queue `default`, UTC, no jitter, empty args
    /// and meta. Fails on an invalid id, task or spec.
    pub fn new(id: &str, task: &str, spec: &str) -> Result<Self> {
        let entry = ScheduleEntry {
            id: id.to_string(),
            task: task.to_string(),
            queue: DEFAULT_QUEUE.to_string(),
            spec: Spec::parse(spec)?,
            timezone: Tz::UTC,
            jitter: Duration::ZERO,
            enabled: true,
            misfire: Misfire::All,
            args: Value::Object(Map::new()),
            meta: Map::new(),
            history: RunHistory::default(),
        };
        entry.validate()?;
        Ok(entry)
    }

    /// Checks id, task name, queue name and args.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if self.task.trim().is_empty() {
            return Err(StemError::InvalidArgument("task name is empty".into()));
        }
        validate_queue_name("queue", &self.queue)
            .map_err(|e| StemError::InvalidArgument(e.to_string()))?;
        if !self.args.is_object() {
            return Err(StemError::InvalidArgument("args must be a mapping".into()));
        }
        Ok(())
    }

    /// The definition part, as stored.
    pub fn definition(&self) -> Definition {
        Definition {
            task: self.task.clone(),
            queue: self.queue.clone(),
            spec: self.spec.as_str().to_string(),
            timezone: self.timezone.name().to_string(),
            jitter_ms: self.jitter.as_millis() as u64,
            enabled: self.enabled,
            misfire: self.misfire,
            args: self.args.clone(),
            meta: self.meta.clone(),
        }
    }

    /// Rebuilds an entry from a stored definition and history.
    pub fn from_definition(id: &str, def: Definition, history: RunHistory) -> Result<Self> {
        Ok(ScheduleEntry {
            id: id.to_string(),
            task: def.task,
            queue: def.queue,
            spec: Spec::parse(&def.spec)?,
            timezone: parse_timezone(&def.timezone)?,
            jitter: Duration::from_millis(def.jitter_ms),
            enabled: def.enabled,
            misfire: def.misfire,
            args: def.args,
            meta: def.meta,
            history,
        })
    }

    /// Spec and time zone as one string: a change of either restarts the
    /// `every:` grid and replans `next_run_at`.
    pub fn timing_key(&self) -> String {
        format!("{}|{}", self.spec.as_str(), self.timezone.name())
    }

    /// The grid anchor (`history.anchor_at`, else `fallback`).
    pub fn anchor_or(&self, fallback: DateTime<Utc>) -> DateTime<Utc> {
        self.history.anchor_at.unwrap_or(fallback)
    }

    /// The next slot strictly after `t` on this entry's grid.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.spec
            .next_after(t, self.timezone, self.anchor_or(truncate_ms(t)))
    }

    /// The most recent slot at or before `t` on this entry's grid.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.spec
            .latest_at_or_before(t, self.timezone, self.anchor_or(truncate_ms(t)))
    }

    /// The planned slots after `from` (jitter not applied): `stem schedule
    /// dry-run`.
    pub fn upcoming(&self, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        self.spec.upcoming(
            from,
            self.timezone,
            self.anchor_or(truncate_ms(from)),
            count,
        )
    }

    /// The `list --json` row.
    pub fn summary(&self) -> ScheduleSummary {
        ScheduleSummary {
            id: self.id.clone(),
            task: self.task.clone(),
            queue: self.queue.clone(),
            spec: self.spec.as_str().to_string(),
            next_run_at: rfc(self.history.next_run_at),
            last_run_at: rfc(self.history.last_run_at),
            jitter_ms: self.jitter.as_millis() as u64,
            enabled: self.enabled,
            total_run_count: self.history.total_run_count,
            last_error: self.history.last_error.clone(),
        }
    }

    /// The full JSON document (`show`): the summary fields plus time zone,
    /// args, meta and the rest of the history.
    pub fn to_json(&self) -> Value {
        let h = &self.history;
        serde_json::json!({
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "spec": self.spec.as_str(),
            "timezone": self.timezone.name(),
            "jitterMs": self.jitter.as_millis() as u64,
            "enabled": self.enabled,
            "misfire": self.misfire.as_str(),
            "args": self.args,
            "meta": self.meta,
            "nextRunAt": rfc(h.next_run_at),
            "lastRunAt": rfc(h.last_run_at),
            "lastSlotAt": rfc(h.last_slot_at),
            "lastTaskId": h.last_task_id,
            "totalRunCount": h.total_run_count,
            "lastError": h.last_error,
            "lastErrorAt": rfc(h.last_error_at),
            "lastDriftMs": h.last_drift_ms,
            "lastJitterMs": h.last_jitter_ms,
            "missedSlots": h.missed_slots,
            "createdAt": rfc(h.created_at),
            "updatedAt": rfc(h.updated_at),
            "revision": h.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_the_cli_shape() {
        let mut e = ScheduleEntry::new("nightly", "reports.aggregate", "every:30s").expect("valid");
        e.jitter = Duration::from_secs(2);
        e.history.next_run_at = DateTime::from_timestamp_millis(1_700_000_000_123);
        let v = serde_json::to_value(e.summary()).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({
                "id": "nightly", "task": "reports.aggregate", "queue": "default",
                "spec": "every:30s", "nextRunAt": "2023-11-14T22:13:20.123Z",
                "lastRunAt": null, "jitterMs": 2000, "enabled": true,
                "totalRunCount": 0, "lastError": null
            })
        );
        let full = e.to_json();
        assert_eq!(full["timezone"], "UTC");
        assert_eq!(full["nextRunAt"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn definitions_round_trip() {
        let mut e = ScheduleEntry::new("a", "t", "0 9 * * 1-5").expect("valid");
        e.timezone = parse_timezone("Europe/Berlin").expect("zone");
        e.meta.insert("seeded".into(), Value::Bool(true));
        e.misfire = Misfire::Skip;
        let back = ScheduleEntry::from_definition("a", e.definition(), RunHistory::default())
            .expect("round trip");
        assert_eq!(back, e);
    }

    #[test]
    fn ids_are_key_safe() {
        assert!(validate_id("billing-charge_2.v1").is_ok());
        for bad in ["", "a b", "a:b", "a{b}", &"x".repeat(201)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
