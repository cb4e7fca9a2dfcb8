//! Redis [`ScheduleStore`] and [`LockStore`]. Keys (see
//! `docs/architecture.md`, "Beat"):
//!
//! | key | type | lifetime |
//! | --- | --- | --- |
//! | `stem:{schedule}:index` | sorted set: id → `nextRunAt` ms (`+inf` when disabled) | permanent |
//! | `stem:{schedule}:entry:<id>` | hash: `def` (definition JSON), `timing`, `enabled`, `rev`, history fields | until deleted |
//! | `stem:{schedule}:fired:<id>:<slot ms>` | string: beat instance that fired the slot | 2 × period (≥ 60 s) |
//! | `stem:lock:<key>` | string: owner | lock TTL (beat: `stem:lock:beat:leader`) |
//!
//! Upsert, bookkeeping and the lock's compare-and-renew / compare-and-release
//! are small Lua scripts, so each is atomic and one round trip.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::entry::{truncate_ms, Definition, RunHistory, ScheduleEntry};
use super::store::{
    plan_from, FiringOutcome, FiringReport, LockStore, ScheduleStore, UpsertOutcome,
};
use crate::error::{Result, StemError};
use crate::keys;
use crate::redis_conn::{connection, Conn, Endpoint, COMMAND_TIMEOUT};

const UPSERT: &str = r#"
local function score(n) if n == '' then return 'inf' end return n end
local old = redis.call('HGET', KEYS[1], 'def')
if not old then
  local nxt = ARGV[7]
  if ARGV[4] ~= '1' then nxt = '' end
  redis.call('HSET', KEYS[1], 'def', ARGV[2], 'timing', ARGV[3], 'enabled', ARGV[4], 'rev', 1,
    'createdAt', ARGV[5], 'updatedAt', ARGV[5], 'anchorAt', ARGV[6], 'nextRunAt', nxt,
    'totalRunCount', 0, 'missedSlots', 0)
  redis.call('ZADD', KEYS[2], score(nxt), ARGV[1])
  return 'created'
end
if old == ARGV[2] then return 'unchanged' end
local was = redis.call('HGET', KEYS[1], 'enabled')
local timing = redis.call('HGET', KEYS[1], 'timing')
redis.call('HSET', KEYS[1], 'def', ARGV[2], 'timing', ARGV[3], 'enabled', ARGV[4], 'updatedAt', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
if ARGV[4] ~= '1' then
  redis.call('HSET', KEYS[1], 'nextRunAt', '')
  redis.call('ZADD', KEYS[2], 'inf', ARGV[1])
elseif timing ~= ARGV[3] or was ~= '1' then
  redis.call('HSET', KEYS[1], 'anchorAt', ARGV[6], 'nextRunAt', ARGV[7])
  redis.call('ZADD', KEYS[2], score(ARGV[7]), ARGV[1])
end
return 'updated'
"#;

const COMPLETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[5] == 'ok' then
  redis.call('HSET', KEYS[1], 'lastRunAt', ARGV[6], 'lastSlotAt', ARGV[3], 'lastTaskId', ARGV[7],
    'lastDriftMs', ARGV[8], 'lastJitterMs', ARGV[9], 'lastError', '')
  redis.call('HINCRBY', KEYS[1], 'totalRunCount', 1)
elseif ARGV[5] == 'fail' then
  redis.call('HSET', KEYS[1], 'lastError', ARGV[10], 'lastErrorAt', ARGV[6])
end
if tonumber(ARGV[11]) > 0 then redis.call('HINCRBY', KEYS[1], 'missedSlots', ARGV[11]) end
local rev = redis.call('HGET', KEYS[1], 'rev')
local enabled = redis.call('HGET', KEYS[1], 'enabled')
if rev == ARGV[2] and enabled == '1' then
  if ARGV[4] == '' then
    redis.call('HSET', KEYS[1], 'nextRunAt', '')
    redis.call('ZADD', KEYS[2], 'inf', ARGV[1])
  else
    local cur = tonumber(redis.call('HGET', KEYS[1], 'nextRunAt') or '')
    if cur == nil or tonumber(ARGV[4]) > cur then
      redis.call('HSET', KEYS[1], 'nextRunAt', ARGV[4])
      redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
    end
  end
end
return 1
"#;

/// Deletes KEYS[1] if it holds ARGV[1].
const DELETE_IF_OWNER: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// SET NX PX, or extend when ARGV[1] already holds it.
const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// PEXPIRE only when ARGV[1] holds the lock.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

fn ms_opt(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.timestamp_millis().to_string())
        .unwrap_or_default()
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

fn field<'a>(h: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    h.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn time_field(h: &HashMap<String, String>, name: &str) -> Option<DateTime<Utc>> {
    field(h, name)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
}

fn num_field<T: std::str::FromStr>(h: &HashMap<String, String>, name: &str) -> Option<T> {
    field(h, name).and_then(|v| v.parse::<T>().ok())
}

/// Rebuilds an entry from its hash.
fn decode(id: &str, h: &HashMap<String, String>) -> Result<ScheduleEntry> {
    let def_raw = field(h, "def")
        .ok_or_else(|| StemError::Malformed(format!("schedule {id}: no definition")))?;
    let def: Definition = serde_json::from_str(def_raw)
        .map_err(|e| StemError::Malformed(format!("schedule {id}: definition: {e}")))?;
    let history = RunHistory {
        created_at: time_field(h, "createdAt"),
        updated_at: time_field(h, "updatedAt"),
        anchor_at: time_field(h, "anchorAt"),
        revision: num_field(h, "rev").unwrap_or(0),
        next_run_at: time_field(h, "nextRunAt"),
        last_run_at: time_field(h, "lastRunAt"),
        last_slot_at: time_field(h, "lastSlotAt"),
        last_task_id: field(h, "lastTaskId").map(str::to_string),
        total_run_count: num_field(h, "totalRunCount").unwrap_or(0),
        last_error: field(h, "lastError").map(str::to_string),
        last_error_at: time_field(h, "lastErrorAt"),
        last_drift_ms: num_field(h, "lastDriftMs"),
        last_jitter_ms: num_field(h, "lastJitterMs"),
        missed_slots: num_field(h, "missedSlots").unwrap_or(0),
    };
    ScheduleEntry::from_definition(id, def, history)
        .map_err(|e| StemError::Malformed(format!("schedule {id}: {e}")))
}

/// The Redis schedule store.
#[derive(Clone)]
pub struct RedisScheduleStore {
    conn: Conn,
    upsert: std::sync::Arc<Script>,
    complete: std::sync::Arc<Script>,
}

impl RedisScheduleStore {
    /// A store on `endpoint` (a server's [`::redis::Client`] or an
    /// [`Endpoint`]; connected lazily, reconnecting by itself).
    pub fn new(endpoint: impl Into<Endpoint>) -> Result<Self> {
        Ok(RedisScheduleStore {
            conn: connection(endpoint, COMMAND_TIMEOUT)?,
            upsert: std::sync::Arc::new(Script::new(UPSERT)),
            complete: std::sync::Arc::new(Script::new(COMPLETE)),
        })
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Loads the hashes of `ids` in one pipeline; undecodable or vanished
    /// entries are logged and left out.
    async fn load(&self, ids: &[String]) -> Result<Vec<ScheduleEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.hgetall(keys::schedule_entry(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, h) in ids.iter().zip(hashes) {
            if h.is_empty() {
                continue;
            }
            match decode(id, &h) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(schedule = %id, error = %e, "skipping undecodable schedule entry")
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ScheduleStore for RedisScheduleStore {
    async fn upsert(&self, entry: &ScheduleEntry, now: DateTime<Utc>) -> Result<UpsertOutcome> {
        entry.validate()?;
        let now = truncate_ms(now);
        let (anchor, next) = plan_from(entry, now);
        let def = serde_json::to_string(&entry.definition())?;
        let outcome: String = self
            .upsert
            .key(keys::schedule_entry(&entry.id))
            .key(keys::SCHEDULE_INDEX)
            .arg(&entry.id)
            .arg(def)
            .arg(entry.timing_key())
            .arg(if entry.enabled { "1" } else { "0" })
            .arg(now.timestamp_millis())
            .arg(anchor.timestamp_millis())
            .arg(ms_opt(next))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match outcome.as_str() {
            "created" => UpsertOutcome::Created,
            "updated" => UpsertOutcome::Updated,
            _ => UpsertOutcome::Unchanged,
        })
    }

    async fn get(&self, id: &str) -> Result<Option<ScheduleEntry>> {
        let h: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(keys::schedule_entry(id))
            .query_async(&mut self.conn())
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        decode(id, &h).map(Some)
    }

    async fn list(&self) -> Result<Vec<ScheduleEntry>> {
        let ids: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(keys::SCHEDULE_INDEX)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        self.load(&ids).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .del(keys::schedule_entry(id))
            .zrem(keys::SCHEDULE_INDEX, id);
        let (deleted, _): (i64, i64) = pipe.query_async(&mut self.conn()).await?;
        Ok(deleted > 0)
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let ids: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(keys::SCHEDULE_INDEX)
            .arg("-inf")
            .arg(now.timestamp_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .query_async(&mut self.conn())
            .await?;
        Ok(self
            .load(&ids)
            .await?
            .into_iter()
            .filter(|e| e.enabled && e.history.next_run_at.is_some_and(|t| t <= now))
            .collect())
    }

    async fn next_run_at(&self) -> Result<Option<DateTime<Utc>>> {
        let first: Vec<(String, f64)> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(keys::SCHEDULE_INDEX)
            .arg("-inf")
            .arg("(+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        Ok(first
            .first()
            .filter(|(_, s)| s.is_finite())
            .and_then(|(_, s)| DateTime::from_timestamp_millis(*s as i64)))
    }

    async fn record_firing(
        &self,
        id: &str,
        slot: DateTime<Utc>,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let set: Option<String> = ::redis::cmd("SET")
            .arg(keys::schedule_fired(id, slot.timestamp_millis()))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut self.conn())
            .await?;
        Ok(set.is_some())
    }

    async fn firing_owner(&self, id: &str, slot: DateTime<Utc>) -> Result<Option<String>> {
        Ok(::redis::cmd("GET")
            .arg(keys::schedule_fired(id, slot.timestamp_millis()))
            .query_async(&mut self.conn())
            .await?)
    }

    async fn complete_firing(&self, r: &FiringReport) -> Result<()> {
        let mut inv = self.complete.prepare_invoke();
        inv.key(keys::schedule_entry(&r.id))
            .key(keys::SCHEDULE_INDEX)
            .arg(&r.id)
            .arg(r.revision)
            .arg(r.slot.timestamp_millis())
            .arg(ms_opt(r.next_run_at));
        match &r.outcome {
            FiringOutcome::Dispatched {
                task_id,
                at,
                drift_ms,
                jitter_ms,
            } => {
                inv.arg("ok")
                    .arg(at.timestamp_millis())
                    .arg(task_id)
                    .arg(drift_ms)
                    .arg(jitter_ms)
                    .arg("");
            }
            FiringOutcome::Failed { error, at } => {
                inv.arg("fail")
                    .arg(at.timestamp_millis())
                    .arg("")
                    .arg(0)
                    .arg(0)
                    .arg(error);
            }
            // Neither changes the run history beyond `missedSlots` and
            // `nextRunAt` (the script's third case).
            FiringOutcome::AlreadyFired | FiringOutcome::Skipped => {
                inv.arg("dup").arg(0).arg("").arg(0).arg(0).arg("");
            }
        }
        inv.arg(r.missed);
        let _: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(())
    }
}

/// The Redis lock store (`stem:lock:<key>` = owner, `PX` TTL).
#[derive(Clone)]
pub struct RedisLockStore {
    conn: Conn,
    acquire: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
    release: std::sync::Arc<Script>,
}

impl RedisLockStore {
    /// A lock store on `endpoint` (a server's [`::redis::Client`] or an
    /// [`Endpoint`]).
    pub fn new(endpoint: impl Into<Endpoint>) -> Result<Self> {
        Ok(RedisLockStore {
            conn: connection(endpoint, COMMAND_TIMEOUT)?,
            acquire: std::sync::Arc::new(Script::new(ACQUIRE)),
            renew: std::sync::Arc::new(Script::new(RENEW)),
            release: std::sync::Arc::new(Script::new(DELETE_IF_OWNER)),
        })
    }
}

#[async_trait]
impl LockStore for RedisLockStore {
    async fn acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let n: i64 = self
            .acquire
            .key(keys::lock(key))
            .arg(owner)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let n: i64 = self
            .renew
            .key(keys::lock(key))
            .arg(owner)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool> {
        let n: i64 = self
            .release
            .key(keys::lock(key))
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn owner_of(&self, key: &str) -> Result<Option<String>> {
        Ok(::redis::cmd("GET")
            .arg(keys::lock(key))
            .query_async(&mut self.conn.clone())
            .await?)
    }
}
