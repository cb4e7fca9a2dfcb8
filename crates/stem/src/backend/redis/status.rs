//! How a status is stored and written: the `"<rank>|<JSON>"` value, the
//! Lua that keeps a status from moving backwards, and [`StatusWriter`],
//! which the backend and the atomic settle (`crate::atomic`) share so a
//! status is written one way whichever of them writes it.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Cmd, Pipeline, Script, Value};

use crate::envelope::{TaskState, TaskStatus};
use crate::error::{Result, StemError};
use crate::keys;
use crate::redis_conn::Conn;

/// Lua: `set_ranked` writes status value `v` ("<rank>|<JSON>") at key `k`
/// unless the stored rank is higher. One `SET … GET` per status: the old
/// value comes back from the write itself and is put back in the rare case
/// it outranks the new one (inside one script call, so no reader sees the
/// intermediate value).
const RANK_LUA: &str = r#"
local function rank_of(v)
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  return tonumber(string.sub(v, 1, bar - 1))
end
local function set_ranked(k, v, ttl)
  local old = redis.call('SET', k, v, 'PX', ttl, 'GET')
  if old then
    local cr = rank_of(old)
    if cr and cr > rank_of(v) then
      redis.call('SET', k, old, 'PX', ttl)
    end
  end
end
"#;

/// Live statuses. KEYS = (live key, done key) per status; ARGV = ttl, then
/// one value per status. A stored terminal status of equal or higher rank
/// wins; one of lower rank (an older attempt, before a replay) is deleted.
const SET_LIVE: &str = r#"
local ttl = ARGV[1]
for i = 2, #ARGV do
  local k, d, v = KEYS[2 * i - 3], KEYS[2 * i - 2], ARGV[i]
  local done = redis.call('GET', d)
  local dr = done and rank_of(done)
  if not (dr and dr >= rank_of(v)) then
    if done then redis.call('DEL', d) end
    set_ranked(k, v, ttl)
  end
end
return 0
"#;

/// Terminal statuses that met a stored terminal status: ranks decide.
/// KEYS = done keys; ARGV = ttl, then one value per key.
const SET_DONE: &str = r#"
local ttl = ARGV[1]
for i, k in ipairs(KEYS) do
  set_ranked(k, ARGV[i + 1], ttl)
end
return 0
"#;

/// Rejected envelopes (`signature-invalid`) fail the task they claim only
/// where its status waits on an envelope of the same fingerprint; see
/// [`ResultBackend::fail_rejected`] and `rejected_may_fail` in
/// `backend/mod.rs`, whose rule this is. KEYS = (live key, done key) per
/// status, one task's two keys share its `{<id>}` slot; ARGV = ttl, then
/// per status its fingerprint, attempt and value. Answers 1 or 0 per
/// status. The stored JSON is decoded (`cjson`) only here, on the reject
/// path, never on the hot path; a top-level field is compared, so a
/// `fingerprint` inside args or meta is never mistaken for it.
const FAIL_REJECTED: &str = r#"
local function decoded(raw)
  local bar = string.find(raw, '|', 1, true)
  if not bar then return nil end
  local ok, s = pcall(cjson.decode, string.sub(raw, bar + 1))
  if ok and type(s) == 'table' then return s end
  return nil
end
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local k, d = KEYS[2 * i - 1], KEYS[2 * i]
  local fp, attempt, v = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), ARGV[3 * i + 1]
  local live, done = redis.call('GET', k), redis.call('GET', d)
  local lr, dr = live and rank_of(live), done and rank_of(done)
  local res = 0
  if done and not (lr and dr and lr > dr) then
    -- The terminal record is the status: only the failure an earlier
    -- call wrote for this very envelope matches.
    local s = decoded(done)
    if s and s.fingerprint == fp and s.state == 'failed' then res = 1 end
  elseif live then
    local s = decoded(live)
    if s and s.fingerprint == fp and (s.state == 'queued' or s.state == 'retried')
        and tonumber(s.attempt) and tonumber(s.attempt) <= attempt then
      redis.call('SET', d, v, 'PX', ttl)
      redis.call('DEL', k)
      res = 1
    end
  end
  out[i] = res
end
return out
"#;

/// The stored form of a status: `"<rank>|<JSON>"`.
pub(crate) fn status_value(s: &TaskStatus) -> Result<Vec<u8>> {
    use std::io::Write as _;
    // One buffer, sized for a typical status, instead of a rank string
    // and a JSON vector joined: this runs for every status written.
    let mut v = Vec::with_capacity(STATUS_CAPACITY);
    write!(v, "{}|", s.rank()).map_err(serde_json::Error::io)?;
    serde_json::to_writer(&mut v, s)?;
    Ok(v)
}

/// Bytes reserved for a stored status: a small result and no error fit.
const STATUS_CAPACITY: usize = 384;

/// Splits a stored status into its rank and its JSON.
fn split_stored(raw: &[u8]) -> Option<(u64, &[u8])> {
    let bar = raw.iter().position(|b| *b == b'|')?;
    let rank = std::str::from_utf8(&raw[..bar]).ok()?.parse().ok()?;
    Some((rank, &raw[bar + 1..]))
}

pub(super) fn rank_of(raw: &[u8]) -> Option<u64> {
    split_stored(raw).map(|(rank, _)| rank)
}

/// The two fields of a stored status the admission check reads; serde
/// skips the rest without building it.
#[derive(serde::Deserialize)]
struct StatusHead {
    state: TaskState,
    attempt: u32,
}

pub(super) fn decode_head(raw: &[u8]) -> Option<(TaskState, u32)> {
    let h: StatusHead = serde_json::from_slice(split_stored(raw)?.1).ok()?;
    Some((h.state, h.attempt))
}

pub(super) fn decode_status(raw: &[u8]) -> Option<TaskStatus> {
    serde_json::from_slice(split_stored(raw)?.1).ok()
}

/// Writes statuses the way this module's key layout needs; shared by the
/// backend and by the broker's co-located settle, which adds its
/// acknowledgements to the same pipeline.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    ttl_ms: u64,
}

/// Writes a live status unless a higher-ranked one is stored.
static LIVE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{RANK_LUA}{SET_LIVE}")));
/// Compares ranks when a terminal status is already stored.
static DONE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{RANK_LUA}{SET_DONE}")));
/// Fails a rejected envelope's task if its status is still the one the
/// envelope claims (compare-and-set on the fingerprint).
static REJECTED: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{RANK_LUA}{FAIL_REJECTED}")));

impl StatusWriter {
    /// Lifetime of statuses, in ms.
    pub(crate) fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    pub(crate) fn new(ttl: Duration) -> Self {
        StatusWriter {
            ttl_ms: ttl.as_millis().max(1) as u64,
        }
    }

    /// Adds `SET key value NX PX <ttl>` to `pipe` (reply kept).
    fn set_nx<'p>(&self, pipe: &'p mut Pipeline, key: String, value: &[u8]) -> &'p mut Pipeline {
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms)
    }

    /// Adds the first record of new tasks (`queued`) to `pipe`: `SET NX`,
    /// since a queued status is only ever a task's first record.
    pub(crate) fn push_queued(&self, pipe: &mut Pipeline, statuses: &[TaskStatus]) -> Result<()> {
        for s in statuses {
            self.set_nx(pipe, keys::status(&s.id), &status_value(s)?)
                .ignore();
        }
        Ok(())
    }

    /// Writes `statuses`: live ones through the rank script first (so a
    /// replay's reopening lands before a terminal write of the same batch),
    /// then, in one pipeline, terminal ones with `SET NX`, a `GETDEL` of
    /// each one's live key, and the `extra` commands (replies ignored).
    /// With `extra` commands the pipeline is a `MULTI` transaction: a
    /// refused command aborts it whole, so the `extra` commands (the
    /// broker's acks) never run without the statuses. Afterwards, rarely:
    /// terminal writes that met a stored terminal status go through the
    /// rank script, and a live status that outranks the terminal one just
    /// written (a newer attempt already running) is put back.
    ///
    /// On a Redis Cluster each task's keys have a slot of their own: the
    /// scripts run slot by slot, all at once, and the pipeline goes one per
    /// master (`redis_conn`); `extra` commands (which belong to a queue's
    /// slot) are refused there: the cluster's stores are never co-located.
    pub(crate) async fn write(
        &self,
        conn: &mut Conn,
        statuses: &[TaskStatus],
        extra: Vec<Cmd>,
    ) -> Result<()> {
        if conn.is_cluster() && !extra.is_empty() {
            return Err(StemError::Internal(
                "a co-located settle was attempted on a Redis Cluster".into(),
            ));
        }
        let (done, live): (Vec<&TaskStatus>, Vec<&TaskStatus>) =
            statuses.iter().partition(|s| s.state.is_terminal());
        let groups = conn.slot_groups(live, |s| Some(keys::status(&s.id).into_bytes()));
        let writes = groups.iter().map(|group| {
            let mut conn = conn.clone();
            async move { self.write_live(&mut conn, group).await }
        });
        futures::future::try_join_all(writes).await?;
        if done.is_empty() && extra.is_empty() {
            return Ok(());
        }
        self.write_done(conn, &done, extra).await
    }

    /// [`ResultBackend::fail_rejected`]: one script call per slot (one on
    /// a single server), all at once.
    pub(super) async fn fail_rejected(
        &self,
        conn: &mut Conn,
        failures: &[TaskStatus],
    ) -> Result<Vec<bool>> {
        let mut out = vec![false; failures.len()];
        let candidates: Vec<usize> = (0..failures.len())
            .filter(|&i| failures[i].fingerprint.is_some())
            .collect();
        let groups = conn.slot_groups(candidates, |&i| {
            Some(keys::status(&failures[i].id).into_bytes())
        });
        let calls = groups.into_iter().map(|group| {
            let mut conn = conn.clone();
            async move {
                let mut inv = REJECTED.prepare_invoke();
                inv.arg(self.ttl_ms);
                for &i in &group {
                    let f = &failures[i];
                    inv.key(keys::status(&f.id))
                        .key(keys::done(&f.id))
                        .arg(f.fingerprint.as_deref().unwrap_or_default())
                        .arg(f.attempt)
                        .arg(status_value(f)?);
                }
                let answers: Vec<i64> = inv.invoke_async(&mut conn).await?;
                Ok::<_, StemError>(group.into_iter().zip(answers).collect::<Vec<_>>())
            }
        });
        for (i, answer) in futures::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
        {
            out[i] = answer == 1;
        }
        Ok(out)
    }

    /// Live statuses whose keys share one slot, through the rank script.
    async fn write_live(&self, conn: &mut Conn, live: &[&TaskStatus]) -> Result<()> {
        let mut inv = LIVE.prepare_invoke();
        inv.arg(self.ttl_ms);
        for s in live {
            inv.key(keys::status(&s.id))
                .key(keys::done(&s.id))
                .arg(status_value(s)?);
        }
        let _: i64 = inv.invoke_async(conn).await?;
        Ok(())
    }

    /// The terminal half of [`StatusWriter::write`].
    async fn write_done(
        &self,
        conn: &mut Conn,
        done: &[&TaskStatus],
        extra: Vec<Cmd>,
    ) -> Result<()> {
        let mut pipe = ::redis::pipe();
        // A transaction only for the `extra` commands: they must never run
        // without the statuses. The status writes themselves need none:
        // whatever runs between a `SET NX` and its `GETDEL` is a live
        // write, which either meets the terminal record (and loses to it)
        // or outranks it (and is put back below; until then, for that
        // instant, neither record is there: only a replay's new attempt
        // starting just as the old one finishes meets this), and a
        // `GETDEL` lost to a dropped connection leaves a live record the
        // terminal one outranks until its TTL. On a cluster, where every task is a slot of its
        // own, this is what lets a batch go one pipeline per master
        // (2026-12-02).
        if !extra.is_empty() {
            pipe.atomic();
        }
        let mut values = Vec::with_capacity(done.len());
        for s in done {
            let v = status_value(s)?;
            self.set_nx(&mut pipe, keys::done(&s.id), &v);
            values.push(v);
        }
        for s in done {
            pipe.cmd("GETDEL").arg(keys::status(&s.id));
        }
        for cmd in extra {
            pipe.add_command(cmd).ignore();
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        let (set, old_live) = replies.split_at(done.len().min(replies.len()));
        let mut ranked = Vec::new();
        let mut put_back = ::redis::pipe();
        for (((s, v), set), old) in done.iter().zip(values).zip(set).zip(old_live) {
            if *set == Value::Nil {
                ranked.push((keys::done(&s.id), v));
            }
            if let Value::BulkString(old) = old {
                if rank_of(old).is_some_and(|r| r > s.rank()) {
                    self.set_nx(&mut put_back, keys::status(&s.id), old)
                        .ignore();
                }
            }
        }
        // One rank script per slot on a cluster (a script's keys must
        // share one), all at once; one call on one server.
        let groups = conn.slot_groups(ranked, |(key, _)| Some(key.clone().into_bytes()));
        let scripts = groups.into_iter().map(|group| {
            let mut conn = conn.clone();
            async move {
                let mut inv = DONE.prepare_invoke();
                inv.arg(self.ttl_ms);
                for (key, v) in group {
                    inv.key(key).arg(v);
                }
                inv.invoke_async::<i64>(&mut conn).await
            }
        });
        futures::future::try_join_all(scripts).await?;
        if !put_back.is_empty() {
            put_back.exec_async(conn).await?;
        }
        Ok(())
    }
}
