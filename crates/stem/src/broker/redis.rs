//! The Redis Streams broker. It owns every broker key (see
//! `docs/architecture.md`); all keys of one queue share the hash tag `{q}`,
//! so a queue lives on one Redis Cluster slot:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `stem:{q}:p<n>` | stream | ready + in-flight entries of priority band n (0–9), consumer group `stem` |
//! | `stem:{q}:p<n>:due` | stream | band n's delayed and retried entries, moved here when due and read before `p<n>` (the band's due lane, see [`super::LANES`]) |
//! | `stem:{q}:delayed` | sorted set | delayed and retried entries, score = not-before epoch ms |
//! | `stem:{q}:dead` | stream | dead letters, capped at `STEM_DEAD_LETTER_MAXLEN` |
//! | `stem:queues` | set | every queue name seen |
//! | `stem:leases` | hash | consumer → the visibility timeout (ms) it renews within |
//!
//! A lease is the entry's idle time in the group's pending list: the owner
//! resets it with `XCLAIM … JUSTID`; recovery lists entries idle past the
//! visibility timeout with `XPENDING … IDLE` and claims them with `XCLAIM`,
//! respecting the lease each holder declared in `stem:leases`. Acknowledged entries are
//! deleted (`XACK` + `XDEL`), so streams stay small; streams are never
//! trimmed by `MAXLEN`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::streams::StreamId;
use ::redis::{AsyncCommands, Client, Script, Value};
use async_trait::async_trait;
use bytes::Bytes;

use super::{due_lane, lane_band, lane_rank, lanes_in_fetch_order, LANES};
use super::{
    Broker, DeadLetter, Delivery, Fetched, MalformedEntry, NewDeadLetter, Outgoing, QueueStats,
    Receipt, SubmitOnce,
};
use crate::backend::redis::StatusWriter;
use crate::envelope::{now_ms, TaskStatus, WireEnvelope, MAX_PRIORITY};
use crate::error::{Result, StemError};
use crate::redis_conn::{connection, Conn, COMMAND_TIMEOUT};

const GROUP: &str = "stem";
const QUEUES_KEY: &str = "stem:queues";
/// Hash: consumer name → the lease (visibility timeout, ms) it declared.
const LEASES_KEY: &str = "stem:leases";
/// Most pending entries one recovery scan lists per lane stream.
const RECOVER_SCAN: usize = 1000;
/// Most delayed entries one promotion script call moves.
const PROMOTE_BATCH: usize = 512;
/// Most promotion calls per queue per promoter tick.
const PROMOTE_ROUNDS: usize = 20;

/// Key of lane `lane` of `queue`: `p<band>` for a priority band,
/// `p<band>:due` for a band's due lane (see [`super::LANES`]).
pub fn lane_key(queue: &str, lane: u8) -> String {
    let band = lane_band(lane);
    if lane > MAX_PRIORITY {
        format!("stem:{{{queue}}}:p{band}:due")
    } else {
        format!("stem:{{{queue}}}:p{band}")
    }
}
/// Key of the delayed set of `queue`.
pub fn delayed_key(queue: &str) -> String {
    format!("stem:{{{queue}}}:delayed")
}
/// Key of the dead-letter stream of `queue`.
pub fn dead_key(queue: &str) -> String {
    format!("stem:{{{queue}}}:dead")
}

/// Moves due members of a delayed set to their bands' due lanes (KEYS[2 +
/// band]), oldest first. One call per queue per promoter tick (not per
/// task), repeated while it moves a full batch. Member = band \n packed
/// entry.
const PROMOTE: &str = r#"
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(items) do
  redis.call('ZREM', KEYS[1], m)
  local p1 = string.find(m, '\n', 1, true)
  local band = p1 and tonumber(string.sub(m, 1, p1 - 1))
  if band and band >= 0 and band <= 9 and math.floor(band) == band then
    redis.call('XADD', KEYS[2 + band], '*', 'e', string.sub(m, p1 + 1))
  else
    -- Garbage: into band 0's due lane as it is, where a worker dead-letters it as
    -- malformed with its bytes.
    redis.call('XADD', KEYS[2], '*', 'e', m)
  end
end
return #items
"#;

/// Publishes one envelope unless its marker exists, atomically: the
/// marker (an idempotency key, a chain step's or a chord's "published"
/// record), the task's first status (when given) and the `XADD` or `ZADD`
/// commit together, so a crash or a cut connection leaves either all of
/// them or none. KEYS = marker, status key, target (band stream or delayed
/// set). ARGV = marker value, marker ttl ms, status value ('' for none),
/// status ttl ms, 'x' (XADD) or 'z' (ZADD), entry or member, score.
/// Returns the marker's existing value, or nil when this call published.
const SUBMIT_ONCE: &str = r#"
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4])
end
if ARGV[5] == 'x' then
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[6])
else
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
end
return false
"#;

/// Replays a dead letter at most once: the new entry is added only when
/// this call removed the letter, so two concurrent replays publish once.
/// KEYS = dead stream, band stream; ARGV = letter id, packed entry.
const REPLAY: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 1
"#;

/// Deletes up to ARGV[2] never-delivered entries of stream KEYS[1]: those
/// after the last-delivered id of group ARGV[1] (all of them when the group
/// does not exist). Entries at or before it are in flight or acknowledged,
/// and stay. Returns how many were deleted.
const PURGE_READY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, lid
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == ARGV[1] then last = lid end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])
local n = 0
for _, e in ipairs(entries) do
  n = n + redis.call('XDEL', KEYS[1], e[1])
end
return n
"#;

/// Field name of the packed envelope in a stream entry.
const ENTRY_FIELD: &str = "e";

/// A stream entry's one field: `attempt \n kid \n sig \n body` (kid and sig
/// empty when unsigned). One value instead of four pairs: cheaper for Redis
/// to store and send and for the worker to parse.
fn pack_entry(wire: &WireEnvelope) -> Vec<u8> {
    let kid = wire.key_id.as_deref().unwrap_or("");
    let sig = wire.signature.as_deref().unwrap_or("");
    let mut m = Vec::with_capacity(wire.body.len() + kid.len() + sig.len() + 16);
    m.extend_from_slice(wire.attempt.to_string().as_bytes());
    for part in [kid.as_bytes(), sig.as_bytes()] {
        m.push(b'\n');
        m.extend_from_slice(part);
    }
    m.push(b'\n');
    m.extend_from_slice(&wire.body);
    m
}

/// Reads [`pack_entry`]'s form back; the body is a slice of `packed`, not
/// a copy.
fn unpack_entry(packed: Vec<u8>) -> std::result::Result<WireEnvelope, (String, Vec<u8>)> {
    let mut cuts = packed
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i);
    let (Some(p1), Some(p2), Some(p3)) = (cuts.next(), cuts.next(), cuts.next()) else {
        return Err(("packed entry has fewer than four parts".into(), packed));
    };
    let part = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&packed[r])
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let Some(attempt) = part(0..p1).and_then(|a| a.parse::<u32>().ok()) else {
        return Err(("attempt is not a number".into(), packed));
    };
    let (key_id, signature) = (part(p1 + 1..p2), part(p2 + 1..p3));
    Ok(WireEnvelope {
        body: Bytes::from(packed).slice(p3 + 1..),
        key_id,
        signature,
        attempt,
    })
}

/// Adds the `XADD` of `wire` to band `band` of `queue` (reply ignored).
fn add_entry(pipe: &mut ::redis::Pipeline, queue: &str, band: u8, wire: &WireEnvelope) {
    pipe.xadd(
        lane_key(queue, band.min(MAX_PRIORITY)),
        "*",
        &[(ENTRY_FIELD, pack_entry(wire))],
    )
    .ignore();
}

fn delayed_member(band: u8, wire: &WireEnvelope) -> Vec<u8> {
    let mut m = format!("{}\n", band.min(MAX_PRIORITY)).into_bytes();
    m.extend(pack_entry(wire));
    m
}

/// The dead-letter stream's envelope fields (kept readable field by field
/// for operators; not on the hot path). Stream entries written before
/// packing used the same fields.
fn wire_fields(wire: &WireEnvelope) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("body", wire.body.to_vec()),
        ("attempt", wire.attempt.to_string().into_bytes()),
    ];
    if let (Some(k), Some(s)) = (&wire.key_id, &wire.signature) {
        f.push(("kid", k.clone().into_bytes()));
        f.push(("sig", s.clone().into_bytes()));
    }
    f
}

fn field_bytes(map: &HashMap<String, Value>, name: &str) -> Option<Vec<u8>> {
    match map.get(name)? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn field_string(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    field_bytes(map, name).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn raw_text(map: &HashMap<String, Value>) -> String {
    let ordered: BTreeMap<&String, String> = map
        .keys()
        .map(|k| (k, field_string(map, k).unwrap_or_default()))
        .collect();
    serde_json::to_string(&ordered).unwrap_or_default()
}

/// Moves a field's bytes out of an owned entry (no copy of the body).
fn take_bytes(map: &mut HashMap<String, Value>, name: &str) -> Option<Vec<u8>> {
    match map.remove(name)? {
        Value::BulkString(b) => Some(b),
        other => {
            let mut m = HashMap::new();
            m.insert(name.to_string(), other);
            field_bytes(&m, name)
        }
    }
}

fn decode_owned(
    mut map: HashMap<String, Value>,
) -> std::result::Result<WireEnvelope, (String, HashMap<String, Value>)> {
    if let Some(packed) = take_bytes(&mut map, ENTRY_FIELD) {
        return unpack_entry(packed).map_err(|(error, packed)| {
            map.insert(ENTRY_FIELD.into(), Value::BulkString(packed));
            (error, map)
        });
    }
    let Some(body) = take_bytes(&mut map, "body") else {
        return Err(("entry has no body field".into(), map));
    };
    let attempt = match field_string(&map, "attempt").map(|a| a.parse::<u32>()) {
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            map.insert("body".into(), Value::BulkString(body));
            return Err(("attempt is not a number".into(), map));
        }
        None => {
            map.insert("body".into(), Value::BulkString(body));
            return Err(("entry has no attempt field".into(), map));
        }
    };
    Ok(WireEnvelope {
        body: Bytes::from(body),
        key_id: field_string(&map, "kid").filter(|s| !s.is_empty()),
        signature: field_string(&map, "sig").filter(|s| !s.is_empty()),
        attempt,
    })
}

fn fields_to_fetched(
    queue: &str,
    lane: u8,
    entry_id: String,
    map: HashMap<String, Value>,
) -> Fetched {
    let receipt = Receipt {
        queue: queue.to_string(),
        lane,
        entry_id,
    };
    match decode_owned(map) {
        Ok(wire) => Fetched::Task(Delivery {
            receipt,
            wire,
            deliveries: 1,
        }),
        Err((error, map)) => Fetched::Malformed(MalformedEntry {
            receipt,
            raw: raw_text(&map),
            error,
        }),
    }
}

/// The elements of an array-like reply (RESP2 arrays, RESP3 maps flattened
/// into key, value, key, value).
fn elements(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// One entry of an `XREADGROUP` reply, decoded straight from the reply's
/// values: the body's bytes are moved, not copied, and no field map is
/// built unless the entry is malformed.
fn entry_to_fetched(queue: &str, lane: u8, entry_id: String, fields: Vec<Value>) -> Fetched {
    // The packed form: one field.
    let mut fields = fields;
    if let [k, Value::BulkString(packed)] = fields.as_mut_slice() {
        if text(k) == Some(ENTRY_FIELD) {
            return match unpack_entry(std::mem::take(packed)) {
                Ok(wire) => Fetched::Task(Delivery {
                    receipt: Receipt {
                        queue: queue.to_string(),
                        lane,
                        entry_id,
                    },
                    wire,
                    deliveries: 1,
                }),
                // Rare: the map-based path reports it with its raw bytes.
                Err((_, packed)) => fields_to_fetched(
                    queue,
                    lane,
                    entry_id,
                    HashMap::from([(ENTRY_FIELD.to_string(), Value::BulkString(packed))]),
                ),
            };
        }
    }
    // Entries written before packing: body, attempt, kid, sig.
    let (mut body, mut attempt, mut kid, mut sig) = (None, None, None, None);
    let mut pairs = fields.into_iter();
    let mut all = Vec::new();
    while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
        let slot = match text(&k) {
            Some("body") => &mut body,
            Some("attempt") => &mut attempt,
            Some("kid") => &mut kid,
            Some("sig") => &mut sig,
            _ => {
                all.push((k, v));
                continue;
            }
        };
        *slot = Some(v);
    }
    let attempt_num = attempt.as_ref().and_then(text).and_then(|a| a.parse().ok());
    if let (Some(Value::BulkString(b)), Some(a)) = (&mut body, attempt_num) {
        let owned = |v: Option<Value>| {
            v.as_ref()
                .and_then(text)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let wire = WireEnvelope {
            body: Bytes::from(std::mem::take(b)),
            key_id: owned(kid),
            signature: owned(sig),
            attempt: a,
        };
        let receipt = Receipt {
            queue: queue.to_string(),
            lane,
            entry_id,
        };
        return Fetched::Task(Delivery {
            receipt,
            wire,
            deliveries: 1,
        });
    }
    // Malformed: rebuild the field map for the error and the raw text.
    let known = [
        ("body", body),
        ("attempt", attempt),
        ("kid", kid),
        ("sig", sig),
    ];
    let mut map: HashMap<String, Value> = known
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    for (k, v) in all {
        map.insert(text(&k).unwrap_or("?").to_string(), v);
    }
    fields_to_fetched(queue, lane, entry_id, map)
}

/// Walks an `XREADGROUP` reply (RESP2 or RESP3) into deliveries.
fn fetched_from_reply(reply: Value, out: &mut Vec<Fetched>) {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(m) => m,
        other => elements(other)
            .into_iter()
            .filter_map(|s| {
                let mut kv = elements(s).into_iter();
                Some((kv.next()?, kv.next()?))
            })
            .collect(),
    };
    for (key, entries) in streams {
        let Some((queue, lane)) = text(&key).and_then(parse_lane_key) else {
            continue;
        };
        for entry in elements(entries) {
            let mut parts = elements(entry).into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(id) = text(&id).map(str::to_string) else {
                continue;
            };
            out.push(entry_to_fetched(&queue, lane, id, elements(fields)));
        }
    }
}

/// Adds the commands that publish `batch`: `ZADD` to the delayed set for
/// a future not-before, else `XADD` to the priority band's stream.
fn push_outgoing(pipe: &mut ::redis::Pipeline, batch: &[Outgoing]) {
    let now = now_ms();
    for o in batch {
        match o.not_before_ms {
            Some(t) if t > now => {
                pipe.zadd(
                    delayed_key(&o.queue),
                    delayed_member(o.priority, &o.wire),
                    t,
                )
                .ignore();
            }
            _ => {
                add_entry(pipe, &o.queue, o.priority, &o.wire);
            }
        }
    }
}

/// Splits `stem:{q}:p<n>` or `stem:{q}:p<n>:due` back into queue and lane.
fn parse_lane_key(key: &str) -> Option<(String, u8)> {
    let rest = key.strip_prefix("stem:{")?;
    let close = rest.rfind("}:p")?;
    let tail = &rest[close + 3..];
    let lane = match tail.strip_suffix(":due") {
        Some(band) => due_lane(band.parse().ok().filter(|b| *b <= MAX_PRIORITY)?),
        None => tail.parse().ok().filter(|b| *b <= MAX_PRIORITY)?,
    };
    Some((rest[..close].to_string(), lane))
}

fn is_nogroup(e: &::redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// The Redis Streams broker.
#[derive(Clone)]
pub struct RedisBroker {
    client: Client,
    conn: Conn,
    /// Connections for blocking reads, one per concurrent fetch.
    blocking: Arc<Mutex<Vec<Conn>>>,
    known: Arc<Mutex<HashSet<String>>>,
    promote: Arc<Script>,
    submit_once: Arc<Script>,
    replay: Arc<Script>,
    purge_ready: Arc<Script>,
    dead_maxlen: usize,
    /// The backend's status writer, when it lives on the same Redis.
    colocated: Option<StatusWriter>,
    /// When recovery last removed stale consumers.
    pruned: Arc<Mutex<Option<std::time::Instant>>>,
}

impl RedisBroker {
    /// A broker on `client`; connects lazily.
    pub fn new(client: Client, dead_letter_maxlen: usize) -> Result<Self> {
        Ok(RedisBroker {
            conn: connection(client.clone(), COMMAND_TIMEOUT)?,
            client,
            blocking: Arc::new(Mutex::new(Vec::new())),
            known: Arc::new(Mutex::new(HashSet::new())),
            promote: Arc::new(Script::new(PROMOTE)),
            submit_once: Arc::new(Script::new(SUBMIT_ONCE)),
            replay: Arc::new(Script::new(REPLAY)),
            purge_ready: Arc::new(Script::new(PURGE_READY)),
            dead_maxlen: dead_letter_maxlen,
            colocated: None,
            pruned: Arc::new(Mutex::new(None)),
        })
    }

    /// Declares that the result backend (with status TTL `ttl`) lives on
    /// the same Redis, enabling the one-round-trip submit and settle.
    pub fn with_colocated_backend(mut self, ttl: Duration) -> Self {
        self.colocated = Some(StatusWriter::new(ttl));
        self
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Removes consumers that hold nothing and have not read for ten
    /// visibility timeouts (at least 10 s) from the groups of `queues`, at
    /// most every half of that: every restart of a worker named
    /// `worker-<host>-<pid>` would otherwise leave ten consumers per queue
    /// behind for good. A consumer with pending entries is never removed
    /// (its entries are recovered first), and a live worker reads at least
    /// every second, so only the dead qualify.
    async fn prune_consumers(&self, queues: &[String], vt: Duration) {
        let stale = (vt * 10).max(Duration::from_secs(10));
        {
            let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < stale / 2) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let mut conn = self.conn();
        let stale_ms = stale.as_millis() as i64;
        for q in queues {
            for lane in 0..LANES {
                let key = lane_key(q, lane);
                let info: ::redis::RedisResult<::redis::streams::StreamInfoConsumersReply> =
                    conn.xinfo_consumers(&key, GROUP).await;
                let Ok(info) = info else { continue };
                for c in info.consumers {
                    if c.pending == 0 && c.idle as i64 > stale_ms {
                        let removed: ::redis::RedisResult<i64> = ::redis::cmd("XGROUP")
                            .arg("DELCONSUMER")
                            .arg(&key)
                            .arg(GROUP)
                            .arg(&c.name)
                            .query_async(&mut conn)
                            .await;
                        if removed.is_ok() {
                            tracing::debug!(key, consumer = %c.name, "stale consumer removed");
                        }
                    }
                }
            }
        }
    }

    /// After a read of `queues` failed with `error` (one `XREADGROUP`
    /// names every lane of every queue, so one bad key fails it all):
    /// finds a queue whose lane key is not a stream, so the caller can set
    /// that queue aside. Falls back to `error` when every key looks right.
    async fn broken_queue(&self, queues: &[String], error: ::redis::RedisError) -> StemError {
        let mut pipe = ::redis::pipe();
        let mut keys = Vec::new();
        for q in queues {
            for lane in 0..LANES {
                let key = lane_key(q, lane);
                pipe.cmd("TYPE").arg(&key);
                keys.push((q, key));
            }
        }
        let types: Vec<String> = match pipe.query_async(&mut self.conn()).await {
            Ok(t) => t,
            Err(_) => return error.into(),
        };
        for ((queue, key), kind) in keys.into_iter().zip(types) {
            if kind != "stream" && kind != "none" {
                return StemError::BrokenQueue {
                    queue: queue.clone(),
                    reason: format!("{key} holds a {kind}, not a stream ({error})"),
                };
            }
        }
        error.into()
    }

    fn take_blocking(&self, block: Duration) -> Result<Conn> {
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match pooled {
            Some(c) => Ok(c),
            None => connection(self.client.clone(), block + COMMAND_TIMEOUT),
        }
    }

    fn give_blocking(&self, c: Conn) {
        self.blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    /// Names queues in `stem:queues`, once per process per queue.
    async fn remember(&self, queues: impl Iterator<Item = &String>) -> Result<()> {
        let new: Vec<String> = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .filter(|q| known.insert((*q).clone()))
                .cloned()
                .collect()
        };
        if !new.is_empty() {
            let _: () = self.conn().sadd(QUEUES_KEY, &new).await?;
        }
        Ok(())
    }

    async fn create_groups(&self, queues: &[String]) -> Result<()> {
        let mut pipe = ::redis::pipe();
        for q in queues {
            for lane in 0..LANES {
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(lane_key(q, lane))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .ignore();
            }
        }
        // BUSYGROUP errors (group exists) are expected; a pipeline reports
        // the first error, so send each CREATE and ignore BUSYGROUP.
        let mut conn = self.conn();
        match pipe.exec_async(&mut conn).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                for q in queues {
                    for lane in 0..LANES {
                        let r: ::redis::RedisResult<()> = ::redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(lane_key(q, lane))
                            .arg(GROUP)
                            .arg("0")
                            .arg("MKSTREAM")
                            .query_async(&mut conn)
                            .await;
                        match r {
                            Ok(()) => {}
                            Err(e) if e.to_string().contains("BUSYGROUP") => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `XACK` and `XDEL` of `receipts`, two commands per lane stream.
    fn ack_cmds<'a>(receipts: impl IntoIterator<Item = &'a Receipt>) -> Vec<::redis::Cmd> {
        let mut by_key: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for r in receipts {
            by_key
                .entry(lane_key(&r.queue, r.lane))
                .or_default()
                .push(r.entry_id.as_str());
        }
        let mut cmds = Vec::with_capacity(by_key.len() * 2);
        for (key, ids) in by_key {
            let mut ack = ::redis::cmd("XACK");
            ack.arg(&key).arg(GROUP).arg(&ids);
            let mut del = ::redis::cmd("XDEL");
            del.arg(&key).arg(&ids);
            cmds.extend([ack, del]);
        }
        cmds
    }

    fn ack_into(pipe: &mut ::redis::Pipeline, receipts: &[&Receipt]) {
        for cmd in Self::ack_cmds(receipts.iter().copied()) {
            pipe.add_command(cmd).ignore();
        }
    }

    fn dead_fields(&self, letter: &NewDeadLetter) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("reason", letter.reason.clone().into_bytes()),
            ("dead_at", now_ms().to_string().into_bytes()),
        ];
        if let Some(e) = &letter.error {
            f.push(("error", e.clone().into_bytes()));
        }
        if let Some(w) = &letter.wire {
            f.extend(wire_fields(w));
        }
        if let Some(r) = &letter.raw {
            f.push(("raw", r.clone().into_bytes()));
        }
        f
    }

    fn decode_dead(queue: &str, entry: &StreamId) -> DeadLetter {
        let map = &entry.map;
        DeadLetter {
            id: entry.id.clone(),
            queue: queue.to_string(),
            reason: field_string(map, "reason").unwrap_or_default(),
            error: field_string(map, "error"),
            dead_at_ms: field_string(map, "dead_at")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            wire: decode_owned(map.clone()).ok(),
            raw: field_string(map, "raw"),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.remember(batch.iter().map(|o| &o.queue)).await?;
        let mut pipe = ::redis::pipe();
        push_outgoing(&mut pipe, &batch);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn register_queues(&self, queues: &[String]) -> Result<()> {
        self.create_groups(queues).await?;
        self.remember(queues.iter()).await
    }

    async fn fetch(
        &self,
        consumer: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>> {
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(queues.len() * LANES as usize);
        for q in queues {
            keys.extend(lanes_in_fetch_order().map(|lane| lane_key(q, lane)));
        }
        let ids = vec![">"; keys.len()];
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&keys).arg(&ids);
        let mut conn = self.take_blocking(block)?;
        let reply: ::redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        self.give_blocking(conn);
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                self.create_groups(queues).await?;
                return Ok(Vec::new());
            }
            // A stream deleted while we were blocked on it: the next read
            // recreates its group.
            Err(e) if e.to_string().contains("UNBLOCKED") => return Ok(Vec::new()),
            Err(e) if !StemError::from(e.clone()).is_transient() => {
                return Err(self.broken_queue(queues, e).await);
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(max);
        fetched_from_reply(reply, &mut out);
        // Highest band first, its due lane before it; within a lane,
        // stream order.
        out.sort_by_key(|f| std::cmp::Reverse(lane_rank(f.receipt().lane)));
        Ok(out)
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        let refs: Vec<&Receipt> = receipts.iter().collect();
        Self::ack_into(&mut pipe, &refs);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn renew(&self, consumer: &str, receipts: &[Receipt]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut by_key: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for r in receipts {
            by_key
                .entry(lane_key(&r.queue, r.lane))
                .or_default()
                .push(r.entry_id.as_str());
        }
        let mut pipe = ::redis::pipe();
        for (key, ids) in by_key {
            pipe.cmd("XCLAIM")
                .arg(key)
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .ignore();
        }
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn declare_lease(&self, consumer: &str, lease: Duration) -> Result<()> {
        let _: () = self
            .conn()
            .hset(LEASES_KEY, consumer, lease.as_millis() as u64)
            .await?;
        Ok(())
    }

    async fn recover(
        &self,
        consumer: &str,
        queues: &[String],
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.prune_consumers(queues, min_idle).await;
        // XPENDING with IDLE walks the whole pending list of a lane and
        // lists only entries idle for at least our timeout, with their
        // holder and delivery count: live workers' renewed entries at the
        // head no longer hide a dead worker's behind them, whatever room we
        // have. Each candidate is then claimed with XCLAIM, whose own
        // min-idle check loses to a renewal that landed in between.
        let mut out = Vec::new();
        let mut conn = self.conn();
        let min_ms = min_idle.as_millis() as u64;
        let mut leases: Option<HashMap<String, u64>> = None;
        for q in queues {
            for lane in lanes_in_fetch_order() {
                if out.len() >= max {
                    return Ok(out);
                }
                let key = lane_key(q, lane);
                let pending: ::redis::RedisResult<::redis::streams::StreamPendingCountReply> =
                    ::redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(GROUP)
                        .arg("IDLE")
                        .arg(min_ms)
                        .arg("-")
                        .arg("+")
                        .arg(RECOVER_SCAN)
                        .query_async(&mut conn)
                        .await;
                let pending = match pending {
                    Ok(p) => p.ids,
                    Err(e) if is_nogroup(&e) => continue,
                    Err(e) => {
                        // One broken key must not stop recovery of the
                        // others, nor drop what was claimed already.
                        tracing::warn!(key, error = %e, "recovery skipped a stream it cannot read");
                        continue;
                    }
                };
                if pending.is_empty() {
                    continue;
                }
                if leases.is_none() {
                    leases = Some(conn.hgetall(LEASES_KEY).await.unwrap_or_default());
                }
                let declared = leases.as_ref();
                let mut pipe = ::redis::pipe();
                let mut counts = Vec::new();
                for p in pending {
                    if out.len() + counts.len() >= max {
                        break;
                    }
                    let lease = declared
                        .and_then(|l| l.get(&p.consumer))
                        .copied()
                        .unwrap_or(0)
                        .max(min_ms);
                    // Our own entries count too: a worker restarted under the
                    // same name recovers what its previous life held.
                    if (p.last_delivered_ms as u64) < lease {
                        continue;
                    }
                    pipe.cmd("XCLAIM")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(lease)
                        .arg(&p.id);
                    counts.push(p.times_delivered as u32);
                }
                if counts.is_empty() {
                    continue;
                }
                let claimed: Vec<Value> = match pipe.query_async(&mut conn).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(key, error = %e, "recovery could not claim entries");
                        continue;
                    }
                };
                for (reply, before) in claimed.into_iter().zip(counts) {
                    let Some(entry) = elements(reply).into_iter().next() else {
                        continue; // renewed meanwhile, or deleted
                    };
                    let mut parts = elements(entry).into_iter();
                    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let Some(id) = text(&id).map(str::to_string) else {
                        continue;
                    };
                    let mut f = entry_to_fetched(q, lane, id, elements(fields));
                    if let Fetched::Task(d) = &mut f {
                        d.deliveries = before.saturating_add(1);
                    }
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    async fn retry(
        &self,
        receipt: &Receipt,
        wire: WireEnvelope,
        priority: u8,
        not_before_ms: i64,
    ) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        pipe.zadd(
            delayed_key(&receipt.queue),
            delayed_member(priority, &wire),
            not_before_ms,
        )
        .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn requeue(&self, receipt: &Receipt, wire: WireEnvelope, priority: u8) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        add_entry(&mut pipe, &receipt.queue, priority, &wire);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn dead_letter(&self, receipt: &Receipt, letter: NewDeadLetter) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        Self::ack_into(&mut pipe, &[receipt]);
        pipe.cmd("XADD")
            .arg(dead_key(&receipt.queue))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.dead_maxlen)
            .arg("*")
            .arg(self.dead_fields(&letter))
            .ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn promote_due(&self, queues: &[String], now_ms: i64) -> Result<usize> {
        let mut moved = 0usize;
        let mut conn = self.conn();
        let mut failure = None;
        for q in queues {
            let mut inv = self.promote.key(delayed_key(q));
            for band in 0..=MAX_PRIORITY {
                inv.key(lane_key(q, due_lane(band)));
            }
            inv.arg(now_ms).arg(PROMOTE_BATCH);
            // A burst falling due at once moves in full batches until the
            // due part is empty (each call is short, so other clients
            // interleave); the cap bounds one tick.
            for _ in 0..PROMOTE_ROUNDS {
                // One queue's broken key must not hold back the others.
                match inv.invoke_async::<usize>(&mut conn).await {
                    Ok(n) => {
                        moved += n;
                        if n < PROMOTE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        match failure {
            Some(e) if moved == 0 => Err(e.into()),
            _ => Ok(moved),
        }
    }

    async fn list_dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let reply: ::redis::streams::StreamRangeReply = self
            .conn()
            .xrevrange_count(dead_key(queue), "+", "-", limit)
            .await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| Self::decode_dead(queue, e))
            .collect())
    }

    async fn get_dead_letter(&self, queue: &str, id: &str) -> Result<Option<DeadLetter>> {
        let reply: ::redis::streams::StreamRangeReply =
            match self.conn().xrange(dead_key(queue), id, id).await {
                Ok(r) => r,
                Err(e)
                    if e.kind()
                        == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ResponseError) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
        Ok(reply.ids.first().map(|e| Self::decode_dead(queue, e)))
    }

    async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Option<WireEnvelope>> {
        let Some(letter) = self.get_dead_letter(queue, id).await? else {
            return Ok(None);
        };
        let Some(mut wire) = letter.wire else {
            return Ok(None);
        };
        wire.attempt += 1;
        let band = wire.spec().map(|s| s.priority).unwrap_or(0);
        let replayed: u64 = self
            .replay
            .key(dead_key(queue))
            .key(lane_key(queue, band.min(MAX_PRIORITY)))
            .arg(id)
            .arg(pack_entry(&wire))
            .invoke_async(&mut self.conn())
            .await?;
        Ok((replayed == 1).then_some(wire))
    }

    async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .xlen(dead_key(queue))
            .del(dead_key(queue))
            .ignore();
        let (n,): (u64,) = pipe.query_async(&mut self.conn()).await?;
        Ok(n)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        // Ready entries are those after the group's last-delivered id; the
        // script reads that id and deletes what follows it in one atomic
        // step, so an entry a worker fetches meanwhile (in flight, maybe
        // about to be recovered) is never deleted. Chunks of 1000 keep each
        // script call short; the delayed set goes with one ZCARD + DEL.
        let mut conn = self.conn();
        let mut removed = 0u64;
        for lane in 0..LANES {
            loop {
                let n: u64 = self
                    .purge_ready
                    .key(lane_key(queue, lane))
                    .arg(GROUP)
                    .arg(1000)
                    .invoke_async(&mut conn)
                    .await?;
                removed += n;
                if n < 1000 {
                    break;
                }
            }
        }
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .zcard(delayed_key(queue))
            .del(delayed_key(queue))
            .ignore();
        let (delayed,): (u64,) = pipe.query_async(&mut conn).await?;
        Ok(removed + delayed)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut pipe = ::redis::pipe();
        for lane in 0..LANES {
            pipe.xlen(lane_key(queue, lane));
        }
        pipe.zcard(delayed_key(queue)).xlen(dead_key(queue));
        let mut conn = self.conn();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let lanes = LANES as usize;
        let mut stats = QueueStats {
            queue: queue.to_string(),
            delayed: counts.get(lanes).copied().unwrap_or(0),
            dead: counts.get(lanes + 1).copied().unwrap_or(0),
            ..Default::default()
        };
        let mut total = 0u64;
        let mut inflight = 0u64;
        for lane in 0..LANES {
            let len = counts.get(lane as usize).copied().unwrap_or(0);
            if len == 0 {
                continue;
            }
            total += len;
            let pending: ::redis::RedisResult<::redis::streams::StreamPendingReply> =
                conn.xpending(lane_key(queue, lane), GROUP).await;
            if let Ok(p) = pending {
                inflight += p.count() as u64;
            }
        }
        stats.inflight = inflight;
        stats.ready = total.saturating_sub(inflight);
        Ok(stats)
    }

    async fn known_queues(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.conn().smembers(QUEUES_KEY).await?;
        v.sort();
        Ok(v)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = ::redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn submit_colocated(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<bool> {
        let Some(writer) = &self.colocated else {
            return Ok(false);
        };
        if batch.is_empty() {
            return Ok(true);
        }
        self.remember(batch.iter().map(|o| &o.queue)).await?;
        let mut pipe = ::redis::pipe();
        writer.push_queued(&mut pipe, statuses)?;
        push_outgoing(&mut pipe, batch);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(true)
    }

    async fn submit_once_colocated(
        &self,
        once: &SubmitOnce<'_>,
        out: &Outgoing,
    ) -> Result<Option<Option<String>>> {
        let Some(writer) = &self.colocated else {
            return Ok(None);
        };
        self.remember(std::iter::once(&out.queue)).await?;
        let status = match once.status {
            Some(s) => crate::backend::redis::status_value(s)?,
            None => Vec::new(),
        };
        let task_id = once.status.map(|s| s.id.as_str()).unwrap_or("");
        // The same placement as `push_outgoing`: the delayed set for a
        // future not-before, else the band stream.
        let (target, mode, payload, score) = match out.not_before_ms {
            Some(t) if t > now_ms() => (
                delayed_key(&out.queue),
                "z",
                delayed_member(out.priority, &out.wire),
                t,
            ),
            _ => (
                lane_key(&out.queue, out.priority.min(MAX_PRIORITY)),
                "x",
                pack_entry(&out.wire),
                0,
            ),
        };
        let mut inv = self.submit_once.prepare_invoke();
        inv.key(crate::backend::redis::kv_key(once.marker))
            .key(crate::backend::redis::status_key(task_id))
            .key(target)
            .arg(once.value)
            .arg(once.ttl.as_millis().max(1) as u64)
            .arg(status)
            .arg(writer.ttl_ms())
            .arg(mode)
            .arg(payload)
            .arg(score);
        let existing: Option<String> = inv.invoke_async(&mut self.conn()).await?;
        Ok(Some(existing))
    }

    async fn settle_colocated(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<bool> {
        let Some(writer) = &self.colocated else {
            return Ok(false);
        };
        writer
            .write(&mut self.conn(), statuses, Self::ack_cmds(acks))
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(signed: bool) -> WireEnvelope {
        WireEnvelope {
            body: Bytes::from_static(b"{\"id\":\"t1\",\"args\":\"a\\nb\"}"),
            key_id: signed.then(|| "k1".to_string()),
            signature: signed.then(|| "c2ln".to_string()),
            attempt: 3,
        }
    }

    #[test]
    fn packed_entries_round_trip() {
        for signed in [true, false] {
            let w = wire(signed);
            let back = unpack_entry(pack_entry(&w)).expect("unpacks");
            assert_eq!(back.body, w.body);
            assert_eq!(back.key_id, w.key_id);
            assert_eq!(back.signature, w.signature);
            assert_eq!(back.attempt, 3);
        }
    }

    #[test]
    fn a_delayed_member_is_the_band_and_the_packed_entry() {
        let w = wire(true);
        let m = delayed_member(12, &w);
        assert_eq!(m, [b"9\n".as_slice(), &pack_entry(&w)].concat());
    }

    #[test]
    fn malformed_packed_entries_are_rejected_with_their_bytes() {
        for bad in [&b"3\nk1"[..], b"x\nk1\nsig\n{}", b""] {
            let (error, raw) = unpack_entry(bad.to_vec()).expect_err("malformed");
            assert!(!error.is_empty());
            assert_eq!(raw, bad);
        }
    }

    #[test]
    fn reply_entries_decode_packed_and_field_by_field() {
        let w = wire(true);
        let packed = vec![
            Value::BulkString(b"e".to_vec()),
            Value::BulkString(pack_entry(&w)),
        ];
        let legacy = vec![
            Value::BulkString(b"body".to_vec()),
            Value::BulkString(w.body.to_vec()),
            Value::BulkString(b"attempt".to_vec()),
            Value::BulkString(b"3".to_vec()),
            Value::BulkString(b"kid".to_vec()),
            Value::BulkString(b"k1".to_vec()),
            Value::BulkString(b"sig".to_vec()),
            Value::BulkString(b"c2ln".to_vec()),
        ];
        for fields in [packed, legacy] {
            match entry_to_fetched("q", 0, "1-0".into(), fields) {
                Fetched::Task(d) => {
                    assert_eq!(d.wire.body, w.body);
                    assert_eq!(d.wire.key_id.as_deref(), Some("k1"));
                    assert_eq!(d.wire.signature.as_deref(), Some("c2ln"));
                    assert_eq!(d.wire.attempt, 3);
                }
                Fetched::Malformed(m) => panic!("malformed: {}", m.error),
            }
        }
    }
}
