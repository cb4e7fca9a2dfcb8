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
use std::time::Duration;

use ::redis::AsyncCommands;
use async_trait::async_trait;

use super::{GroupProgress, GroupView, ResultBackend};
use crate::envelope::{TaskState, TaskStatus};
use crate::error::{Result, StemError};
use crate::keys;
use crate::redis_conn::{connection, Conn, Endpoint, COMMAND_TIMEOUT};

mod status;

use status::{decode_head, decode_status, rank_of};
pub(crate) use status::{status_value, StatusWriter};

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
        self.writer.ttl_ms()
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
