//! Redis result backend. Keys:
//!
//! | key | type | lifetime |
//! | --- | --- | --- |
//! | `stem:task:<id>` | string `"<rank>|<status JSON>"` | `STEM_RESULT_TTL` |
//! | `stem:group:<id>` | string, expected count | `STEM_RESULT_TTL` |
//! | `stem:group:<id>:results` | hash task id → status JSON | `STEM_RESULT_TTL` |
//! | `stem:kv:<key>` | string (idempotency keys, claims, chain steps) | per call |
//!
//! Status writes go through one script per batch that drops writes whose
//! rank is below the stored one (a status never moves backwards).

use std::collections::BTreeMap;
use std::time::Duration;

use ::redis::{AsyncCommands, Client, Script};
use async_trait::async_trait;

use super::{GroupProgress, GroupView, ResultBackend};
use crate::envelope::{TaskState, TaskStatus};
use crate::error::{Result, StemError};
use crate::redis_conn::{connection, Conn, COMMAND_TIMEOUT};

/// Key of a task status.
pub fn status_key(id: &str) -> String {
    format!("stem:task:{id}")
}
fn group_key(id: &str) -> String {
    format!("stem:group:{id}")
}
fn group_results_key(id: &str) -> String {
    format!("stem:group:{id}:results")
}
fn kv_key(key: &str) -> String {
    format!("stem:kv:{key}")
}

/// Lua: writes status value `v` ("<rank>|<JSON>") at key `k` unless the
/// stored rank is higher (a status never moves backwards). One `SET … GET`
/// per status: the old value comes back from the write itself and is put
/// back in the rare case it outranks the new one (all inside one script
/// call, so no reader sees the intermediate value). Shared by this
/// backend's script and the broker's co-located `settle` script.
pub(crate) const SET_STATUS_LUA: &str = r#"
local function rank_of(v)
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  return tonumber(string.sub(v, 1, bar - 1))
end
local function set_status(k, v, ttl)
  local old = redis.call('SET', k, v, 'PX', ttl, 'GET')
  if old then
    local cr = rank_of(old)
    if cr and cr > rank_of(v) then
      redis.call('SET', k, old, 'PX', ttl)
    end
  end
end
"#;

const SET_STATUSES: &str = r#"
local ttl = ARGV[1]
for i, k in ipairs(KEYS) do
  set_status(k, ARGV[i + 1], ttl)
end
return 0
"#;

/// The stored form of a status: `"<rank>|<JSON>"`.
pub(crate) fn status_value(s: &TaskStatus) -> Result<Vec<u8>> {
    let mut v = format!("{}|", s.rank()).into_bytes();
    v.extend(serde_json::to_vec(s)?);
    Ok(v)
}

/// The two fields of a stored status the admission check reads; serde
/// skips the rest without building it.
#[derive(serde::Deserialize)]
struct StatusHead {
    state: TaskState,
    attempt: u32,
}

fn decode_head(raw: &[u8]) -> Option<(TaskState, u32)> {
    let bar = raw.iter().position(|b| *b == b'|')?;
    let h: StatusHead = serde_json::from_slice(&raw[bar + 1..]).ok()?;
    Some((h.state, h.attempt))
}

fn decode_status(raw: &[u8]) -> Option<TaskStatus> {
    let bar = raw.iter().position(|b| *b == b'|')?;
    serde_json::from_slice(&raw[bar + 1..]).ok()
}

/// The Redis result backend.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    ttl: Duration,
    set_statuses: std::sync::Arc<Script>,
}

impl RedisBackend {
    /// The stored values (`"<rank>|<JSON>"`) of `ids`' statuses, one `MGET`.
    async fn stored_statuses(&self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<String> = ids.iter().map(|id| status_key(id)).collect();
        Ok(::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// A backend on `client`; records live for `ttl`.
    pub fn new(client: Client, ttl: Duration) -> Result<Self> {
        Ok(RedisBackend {
            conn: connection(client, COMMAND_TIMEOUT)?,
            ttl,
            set_statuses: std::sync::Arc::new(Script::new(&format!(
                "{SET_STATUS_LUA}{SET_STATUSES}"
            ))),
        })
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn set_statuses(&self, statuses: &[TaskStatus]) -> Result<()> {
        if statuses.is_empty() {
            return Ok(());
        }
        let mut inv = self.set_statuses.prepare_invoke();
        inv.arg(self.ttl_ms());
        for s in statuses {
            inv.key(status_key(&s.id)).arg(status_value(s)?);
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn get_statuses(&self, ids: &[String]) -> Result<Vec<Option<TaskStatus>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .stored_statuses(ids)
            .await?
            .into_iter()
            .map(|r| r.as_deref().and_then(decode_status))
            .collect())
    }

    async fn get_states(&self, ids: &[String]) -> Result<Vec<Option<(TaskState, u32)>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .stored_statuses(ids)
            .await?
            .into_iter()
            .map(|r| r.as_deref().and_then(decode_head))
            .collect())
    }

    async fn init_group(&self, id: &str, expected: u64) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(group_key(id))
            .arg(expected)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore()
            .del(group_results_key(id))
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
            let rk = group_results_key(gid);
            pipe.hset(&rk, &status.id, serde_json::to_vec(status)?)
                .ignore()
                .pexpire(&rk, self.ttl_ms() as i64)
                .ignore()
                .hlen(&rk)
                .get(group_key(gid));
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
        pipe.get(group_key(id)).hgetall(group_results_key(id));
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

    async fn put_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<String>> {
        let k = kv_key(key);
        // SET NX GET answers the existing value, or nil when it was set.
        let existing: Option<String> = ::redis::cmd("SET")
            .arg(&k)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(existing)
    }

    async fn put_blob(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let _: () = self
            .conn
            .clone()
            .pset_ex(kv_key(key), value, ttl.as_millis().max(1) as u64)
            .await?;
        Ok(())
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.clone().get(kv_key(key)).await?)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
