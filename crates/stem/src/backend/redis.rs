//! Redis result backend. Keys:
//!
//! | key | type | lifetime |
//! | --- | --- | --- |
//! | `stem:task:{<id>}` | string `"<rank>\|<status JSON>"`: the live status (queued, running, retried) | `STEM_RESULT_TTL`; deleted when the task finishes |
//! | `stem:done:{<id>}` | string `"<rank>\|<status JSON>"`: the terminal status (succeeded, failed, cancelled) | `STEM_RESULT_TTL` |
//! | `stem:group:{<id>}` | string, expected count | `STEM_RESULT_TTL` |
//! | `stem:group:{<id>}:results` | hash task id → status JSON | `STEM_RESULT_TTL` |
//! | `stem:kv:<key>` | string (claims, stored chain steps and chord callbacks) | per call |
//!
//! A task's status is the higher-ranked of its two records, so a status
//! never moves backwards. Terminal statuses, the hot path, are written
//! without a script, in one pipeline (a `MULTI` when the broker's acks ride
//! along): `SET stem:done:{<id>} … NX PX` (the first terminal write wins at
//! once) and `GETDEL` of the live key. Only
//! when a terminal status is already stored (a duplicate delivery, a
//! revoke after the result) does a script compare ranks, and only when the
//! deleted live status outranks the terminal one (a newer attempt is
//! already running) is it put back. Live statuses go through
//! a script that drops a write ranked below the stored terminal status and
//! deletes a terminal status that a newer attempt outranks (a dead-letter
//! replay). A rejected envelope's failure (`fail_rejected`) goes through a
//! compare-and-set script on the status's fingerprint, run only for
//! rejects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{AsyncCommands, Cmd, Pipeline, Script, Value};
use async_trait::async_trait;

use super::{GroupProgress, GroupView, ResultBackend};
use crate::envelope::{TaskState, TaskStatus};
use crate::error::{Result, StemError};
use crate::keys;
use crate::redis_conn::{connection, Conn, Endpoint, COMMAND_TIMEOUT};

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

fn rank_of(raw: &[u8]) -> Option<u64> {
    split_stored(raw).map(|(rank, _)| rank)
}

/// The two fields of a stored status the admission check reads; serde
/// skips the rest without building it.
#[derive(serde::Deserialize)]
struct StatusHead {
    state: TaskState,
    attempt: u32,
}

fn decode_head(raw: &[u8]) -> Option<(TaskState, u32)> {
    let h: StatusHead = serde_json::from_slice(split_stored(raw)?.1).ok()?;
    Some((h.state, h.attempt))
}

fn decode_status(raw: &[u8]) -> Option<TaskStatus> {
    serde_json::from_slice(split_stored(raw)?.1).ok()
}

/// Writes statuses the way this module's key layout needs; shared by the
/// backend and by the broker's co-located settle, which adds its
/// acknowledgements to the same pipeline.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    live: Arc<Script>,
    done: Arc<Script>,
    rejected: Arc<Script>,
    ttl_ms: u64,
}

impl StatusWriter {
    /// Lifetime of statuses, in ms.
    pub(crate) fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    pub(crate) fn new(ttl: Duration) -> Self {
        StatusWriter {
            live: Arc::new(Script::new(&format!("{RANK_LUA}{SET_LIVE}"))),
            done: Arc::new(Script::new(&format!("{RANK_LUA}{SET_DONE}"))),
            rejected: Arc::new(Script::new(&format!("{RANK_LUA}{FAIL_REJECTED}"))),
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
    async fn fail_rejected(&self, conn: &mut Conn, failures: &[TaskStatus]) -> Result<Vec<bool>> {
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
                let mut inv = self.rejected.prepare_invoke();
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
        let mut inv = self.live.prepare_invoke();
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
                let mut inv = self.done.prepare_invoke();
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

/// The Redis result backend.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    writer: StatusWriter,
}

impl RedisBackend {
    /// The stored values (`"<rank>|<JSON>"`) at `keys`: one `MGET`, on a
    /// cluster one per slot, in one pipeline per master.
    async fn stored(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut conn = self.conn.clone();
        let groups = conn.slot_groups((0..keys.len()).collect(), |&i| {
            Some(keys[i].clone().into_bytes())
        });
        if groups.len() <= 1 {
            return Ok(::redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut conn)
                .await?);
        }
        let mut pipe = ::redis::pipe();
        for group in &groups {
            pipe.cmd("MGET")
                .arg(group.iter().map(|&i| &keys[i]).collect::<Vec<_>>());
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(&mut conn).await?;
        let mut out = vec![None; keys.len()];
        for (group, values) in groups.iter().zip(replies) {
            for (&i, value) in group.iter().zip(values) {
                out[i] = value;
            }
        }
        Ok(out)
    }

    /// The stored value of each task's status (the higher-ranked of its
    /// terminal and live records; a terminal one wins a tie), one `MGET`.
    async fn current(&self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .flat_map(|id| [keys::done(id), keys::status(id)])
            .collect();
        let mut raw = self.stored(&keys).await?.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        while let (Some(done), Some(live)) = (raw.next(), raw.next()) {
            let rank = |v: &Option<Vec<u8>>| v.as_deref().and_then(rank_of);
            out.push(match (rank(&done), rank(&live)) {
                (Some(d), Some(l)) if l > d => live,
                (Some(_), _) => done,
                _ => live,
            });
        }
        Ok(out)
    }

    /// A backend on `endpoint` (a server's [`::redis::Client`] or an
    /// [`Endpoint`]); records live for `ttl`.
    pub fn new(endpoint: impl Into<Endpoint>, ttl: Duration) -> Result<Self> {
        Ok(RedisBackend {
            conn: connection(endpoint, COMMAND_TIMEOUT)?,
            writer: StatusWriter::new(ttl),
        })
    }

    fn ttl_ms(&self) -> u64 {
        self.writer.ttl_ms
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn set_statuses(&self, statuses: &[TaskStatus]) -> Result<()> {
        if statuses.is_empty() {
            return Ok(());
        }
        self.writer
            .write(&mut self.conn.clone(), statuses, Vec::new())
            .await
    }

    async fn fail_rejected(&self, failures: &[TaskStatus]) -> Result<Vec<bool>> {
        self.writer
            .fail_rejected(&mut self.conn.clone(), failures)
            .await
    }

    async fn record_revocation(&self, status: &TaskStatus, ttl: Duration) -> Result<bool> {
        // SET NX on the terminal record: a result that landed first stays.
        let set: Option<String> = ::redis::cmd("SET")
            .arg(keys::done(&status.id))
            .arg(status_value(status)?)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    async fn get_statuses(&self, ids: &[String]) -> Result<Vec<Option<TaskStatus>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .current(ids)
            .await?
            .into_iter()
            .map(|raw| raw.as_deref().and_then(decode_status))
            .collect())
    }

    async fn states(&self, ids: &[String]) -> Result<Vec<Option<TaskState>>> {
        Ok(self
            .current(ids)
            .await?
            .into_iter()
            .map(|raw| raw.as_deref().and_then(decode_head).map(|(s, _)| s))
            .collect())
    }

    async fn final_states(&self, ids: &[String]) -> Result<Vec<Option<(TaskState, u32)>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| keys::done(id)).collect();
        Ok(self
            .stored(&keys)
            .await?
            .into_iter()
            .map(|r| r.as_deref().and_then(decode_head))
            .collect())
    }

    async fn init_group(&self, id: &str, expected: u64) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(keys::group(id))
            .arg(expected)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore()
            .del(keys::group_results(id))
            .ignore();
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn add_group_results(
        &self,
        results: &[(String, TaskStatus)],
    ) -> Result<Vec<GroupProgress>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for (gid, status) in results {
            let rk = keys::group_results(gid);
            pipe.hset(&rk, &status.id, serde_json::to_vec(status)?)
                .ignore()
                .pexpire(&rk, self.ttl_ms() as i64)
                .ignore()
                .hlen(&rk)
                .get(keys::group(gid));
        }
        let answers: Vec<(u64, Option<u64>)> = {
            let flat: Vec<::redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
            flat.chunks(2)
                .map(|c| {
                    let n: u64 = ::redis::from_redis_value_ref(&c[0]).unwrap_or(0);
                    let e: Option<u64> = ::redis::from_redis_value_ref(&c[1]).unwrap_or(None);
                    (n, e)
                })
                .collect()
        };
        Ok(results
            .iter()
            .zip(answers)
            .filter_map(|((gid, _), (completed, expected))| {
                expected.map(|expected| GroupProgress {
                    group_id: gid.clone(),
                    completed,
                    expected,
                })
            })
            .collect())
    }

    async fn get_group(&self, id: &str) -> Result<Option<GroupView>> {
        let mut pipe = ::redis::pipe();
        pipe.get(keys::group(id)).hgetall(keys::group_results(id));
        let (expected, results): (Option<u64>, BTreeMap<String, Vec<u8>>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let Some(expected) = expected else {
            return Ok(None);
        };
        let mut view = GroupView {
            id: id.to_string(),
            expected,
            results: BTreeMap::new(),
        };
        for (tid, raw) in results {
            let status: TaskStatus = serde_json::from_slice(&raw)
                .map_err(|e| StemError::Malformed(format!("group result {tid}: {e}")))?;
            view.results.insert(tid, status);
        }
        Ok(Some(view))
    }

    async fn put_blob(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let _: () = self
            .conn
            .clone()
            .pset_ex(keys::kv(key), value, ttl.as_millis().max(1) as u64)
            .await?;
        Ok(())
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.clone().get(keys::kv(key)).await?)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
