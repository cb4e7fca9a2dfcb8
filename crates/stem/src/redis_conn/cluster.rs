//! Plain pipelines on a Redis Cluster, sent one per master.
//!
//! The cluster client sends a pipeline to one node and refuses one whose
//! keys span slots, but Stem's batches name a slot per task (a settle's
//! status writes, a batch's status reads: `stem:task:{<id>}`). Sent slot by
//! slot, a batch of 128 tasks is 128 requests, and each costs Redis a read
//! and a write of its own: on a three-master cluster the settle's Redis CPU
//! per task was about twice a single node's (`stem-bench cost --cluster`,
//! 2026-12-02). Redis runs a plain (non-`MULTI`) pipeline command by
//! command, each checked against its own slot, so a master takes one
//! pipeline spanning every slot it serves. [`send`] therefore groups the
//! commands by the slot of their first key ([`first_key`], [`slot_of`]),
//! merges the slots each master serves by the slot map ([`SlotMap`], read
//! with `CLUSTER SLOTS` and kept until a reply says it is stale), and sends
//! one pipeline per master, all at once, replies put back in order.
//!
//! Those pipelines go over a connection of our own to each master (a
//! `ConnectionManager`, [`Slots`]), not through the cluster client: the
//! client treats a pipeline with one `MOVED` reply as failed and sends it
//! whole to the node named in the redirect (and back), running the
//! commands of the slots that did not move again each time. On our own
//! connection every reply comes back as it is: a slot that moved
//! (resharding, a failover) answers `MOVED` or `ASK` for its command alone,
//! which therefore never ran (so do `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`
//! and the like, [`refused`]), and only those commands are sent again,
//! slot by slot, through the client's routing, which follows the redirect
//! or waits and retries; after a `MOVED` the map is read again before the
//! next pipeline. A slot the map does not know goes through the client's
//! routing too. A master that fails to answer fails the whole call, as
//! any request's failure does; a write that never left (a dead socket
//! after a restart) is sent again to that master alone.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisResult, Value};

use super::ClusterEndpoint;

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The first key `cmd` names, as Redis Cluster routes it: after `numkeys`
/// for scripts, after `STREAMS` for stream reads, after the subcommand for
/// `XGROUP`, `XINFO`, `OBJECT` and `MEMORY`, else the first argument;
/// `None` for commands without a key (`PING`, `SCRIPT LOAD`, `PUBLISH`).
fn first_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)?
        }
        // Subcommand first, then the key.
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2)?,
        b"PING" | b"SCRIPT" | b"PUBLISH" | b"INFO" | b"TIME" | b"CLUSTER" | b"CLIENT" => {
            return None
        }
        _ => args.get(1)?,
    };
    Some(key.to_vec())
}

/// The cluster slot of `key`, as Redis computes it: CRC16 (XMODEM) of the
/// key's hash tag (the text between its first `{` and the next `}`, when
/// not empty) or else of the whole key, modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tag = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % SLOTS
}

/// `items` grouped by the Redis Cluster slot of the key `key` names for
/// each, groups in order of first appearance and items in order within a
/// group; an item without a key joins the first group. The one grouping
/// of every per-slot split (pipelines here, status scripts in the
/// backend).
pub(crate) fn by_slot<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> Option<Vec<u8>>,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<u16, usize> = HashMap::new();
    for item in items {
        let at = match key(&item).map(|k| slot_of(&k)) {
            None if !groups.is_empty() => 0,
            None => {
                groups.push(Vec::new());
                0
            }
            Some(slot) => *index.entry(slot).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            }),
        };
        groups[at].push(item);
    }
    groups
}

/// A master's address: host and port.
type Master = (String, u16);

/// Which master serves each slot, as `CLUSTER SLOTS` last said.
#[derive(Debug, Default, PartialEq)]
struct SlotMap {
    /// `(first slot, last slot, master)`, sorted by first slot.
    ranges: Vec<(u16, u16, Master)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply: per range, its first and last slot
    /// and then the master as `[host, port, id, …]` (replicas follow and
    /// are not used). A master without a usable address (empty or `?`
    /// host) leaves its range out: its commands take the client's routing.
    fn parse(reply: &Value) -> Option<SlotMap> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let int = |v: &Value| match v {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = int(master.get(1)?)?;
            if !host.is_empty() && host != "?" {
                ranges.push((first, last, (host, port)));
            }
        }
        ranges.sort_by_key(|r| r.0);
        Some(SlotMap { ranges })
    }

    /// The master serving `slot`.
    fn master_of(&self, slot: u16) -> Option<&Master> {
        let at = self
            .ranges
            .partition_point(|r| r.0 <= slot)
            .checked_sub(1)?;
        let (_, last, master) = &self.ranges[at];
        (slot <= *last).then_some(master)
    }
}

/// What one cluster connection (and its clones) knows of the masters:
/// the slot map, read on first use and dropped when a reply says it is
/// stale, and a connection to each master it has sent a pipeline to.
pub(super) struct Slots {
    map: RwLock<Option<Arc<SlotMap>>>,
    endpoint: ClusterEndpoint,
    response_timeout: Duration,
    masters: Mutex<HashMap<Master, ConnectionManager>>,
}

impl Slots {
    pub(super) fn new(endpoint: &ClusterEndpoint, response_timeout: Duration) -> Self {
        Slots {
            map: RwLock::new(None),
            endpoint: endpoint.clone(),
            response_timeout,
            masters: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `master` (lazily connected, reconnecting by
    /// itself, kept while the master serves slots).
    fn master(&self, master: &Master) -> RedisResult<ConnectionManager> {
        let fail = |e: crate::error::StemError| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "connecting to a cluster node",
                e.to_string(),
            ))
        };
        let mut masters = self.masters.lock();
        if let Some(conn) = masters.get(master) {
            return Ok(conn.clone());
        }
        let client = self
            .endpoint
            .node_client(&master.0, master.1)
            .map_err(fail)?;
        let conn = super::manager(client, self.response_timeout).map_err(fail)?;
        masters.insert(master.clone(), conn.clone());
        Ok(conn)
    }

    /// The current map, read with `CLUSTER SLOTS` when there is none;
    /// `None` when it cannot be read (every command then takes the
    /// client's routing).
    async fn current(&self, conn: &mut ClusterConnection) -> Option<Arc<SlotMap>> {
        if let Some(map) = self.map.read().as_ref() {
            return Some(map.clone());
        }
        let reply = redis::aio::ConnectionLike::req_packed_command(
            conn,
            redis::cmd("CLUSTER").arg("SLOTS"),
        )
        .await
        .ok()?;
        let map = Arc::new(SlotMap::parse(&reply)?);
        *self.map.write() = Some(map.clone());
        // Connections to nodes that serve no slot any more (a demoted
        // master, a removed node) are closed.
        self.masters
            .lock()
            .retain(|master, _| map.ranges.iter().any(|r| &r.2 == master));
        Some(map)
    }

    /// Forgets the map: the next pipeline reads it again.
    fn stale(&self) {
        *self.map.write() = None;
    }
}

/// What a reply that refused its command says: `None` if it ran (or
/// failed on its own merits), else `Some(stale)`: the command did not run
/// and the cluster client's routing should take it (it follows `MOVED` and
/// `ASK`, and waits and retries `TRYAGAIN`, `MASTERDOWN`, `LOADING` and
/// `READONLY`), and whether the slot map is stale (`ASK` and `TRYAGAIN`
/// are a slot half-way through a move the map already gives right).
/// `CLUSTERDOWN` is final: the cluster says it cannot serve the slot, so
/// the caller hears it at once (unavailable, transient) instead of after
/// the client's waits (issue 24, W9).
fn refused(reply: &Value) -> Option<bool> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    match e.code() {
        "ASK" | "TRYAGAIN" | "LOADING" => Some(false),
        "MOVED" | "MASTERDOWN" | "READONLY" => Some(true),
        _ => None,
    }
}

/// Sends a plain (non-transaction) pipeline to a cluster, one pipeline per
/// master (see the module's documentation); keyless commands ride with the
/// first command's slot.
pub(super) async fn send(
    conn: &mut ClusterConnection,
    slots: &Slots,
    pipeline: &Pipeline,
) -> RedisResult<Vec<Value>> {
    use redis::aio::ConnectionLike;
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let keys: Vec<Option<Vec<u8>>> = cmds.iter().map(|c| first_key(c)).collect();
    let groups = by_slot(0..cmds.len(), |&i| keys[i].clone());
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }
    // Slot groups merged by master; the groups of a master the map does
    // not know keep a request each through the client's routing (`None`).
    let map = slots.current(conn).await;
    let batches = by_master(groups, &keys, map.as_deref());
    let sends = batches.into_iter().map(|(master, groups)| {
        let conn = conn.clone();
        let cmds = &cmds;
        async move {
            match master {
                Some(master) => send_to_master(slots, &master, cmds, &groups).await,
                None => per_slot(&conn, cmds, &groups).await,
            }
        }
    });
    let mut out = vec![Value::Nil; pipeline.len()];
    let mut again = Vec::new();
    for replies in futures::future::try_join_all(sends).await? {
        for (i, reply) in replies {
            if let Some(stale) = refused(&reply) {
                if stale {
                    slots.stale();
                }
                again.push(i);
            }
            out[i] = reply;
        }
    }
    if !again.is_empty() {
        let moved = by_slot(again, |&i| keys[i].clone());
        // One slot after another: redis 1.8.1's cluster client, handed
        // dozens of redirected pipelines at once while its own map is
        // stale, left some unanswered in our tests (2026-12-02); one at a
        // time they all follow their redirect. Moved slots are rare (a
        // resharding, a failover), so the wait does not matter.
        for group in &moved {
            for (i, reply) in per_slot(conn, &cmds, std::slice::from_ref(group)).await? {
                out[i] = reply;
            }
        }
    }
    Ok(out)
}

/// Slot groups merged by the master `map` says serves them; the groups of
/// a master the map does not know keep a request each through the client's
/// routing (`None`).
fn by_master(
    groups: Vec<Vec<usize>>,
    keys: &[Option<Vec<u8>>],
    map: Option<&SlotMap>,
) -> Vec<(Option<Master>, Vec<Vec<usize>>)> {
    let mut batches: Vec<(Option<Master>, Vec<Vec<usize>>)> = Vec::new();
    for group in groups {
        let slot = group.iter().find_map(|&i| keys[i].as_deref()).map(slot_of);
        let master = map
            .zip(slot)
            .and_then(|(m, slot)| m.master_of(slot))
            .cloned();
        match batches
            .iter_mut()
            .find(|(m, _)| master.is_some() && *m == master)
        {
            Some((_, members)) => members.push(group),
            None => batches.push((master, vec![group])),
        }
    }
    batches
}

/// Sends the commands of `groups` to `master` as one pipeline; each reply
/// comes back with its command's index.
async fn send_to_master(
    slots: &Slots,
    master: &Master,
    cmds: &[&Cmd],
    groups: &[Vec<usize>],
) -> RedisResult<Vec<(usize, Value)>> {
    use redis::aio::ConnectionLike;
    let members: Vec<usize> = groups.iter().flatten().copied().collect();
    let sub = sub_pipeline(cmds, &members);
    let mut master = slots.master(master)?;
    let mut sent = master.req_packed_commands(&sub, 0, members.len()).await;
    if let Err(e) = &sent {
        // After a restart the first write meets the dead socket and never
        // leaves: this part alone goes again (the manager reconnects on
        // that error).
        if super::never_sent(e) {
            sent = master.req_packed_commands(&sub, 0, members.len()).await;
        }
    }
    match sent {
        Ok(replies) => Ok(members.into_iter().zip(replies).collect()),
        Err(e) => {
            // The master may be gone (a failover): read the map again next
            // time. What ran is unknown, so the error goes to the caller,
            // as any failed request's does.
            slots.stale();
            Err(e)
        }
    }
}

/// The pipeline of `cmds[i]` for each `i` of `members`, in that order.
fn sub_pipeline(cmds: &[&Cmd], members: &[usize]) -> Pipeline {
    let mut sub = redis::pipe();
    for &i in members {
        sub.add_command(cmds[i].clone());
    }
    sub
}

/// Sends each group of `cmds` (one slot each) as a pipeline of its own
/// through the client's routing, which follows redirects; all at once.
async fn per_slot(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    groups: &[Vec<usize>],
) -> RedisResult<Vec<(usize, Value)>> {
    use redis::aio::ConnectionLike;
    let sends = groups.iter().map(|members| {
        let sub = sub_pipeline(cmds, members);
        let mut conn = conn.clone();
        async move {
            let replies = conn.req_packed_commands(&sub, 0, sub.len()).await?;
            Ok::<_, redis::RedisError>(members.iter().copied().zip(replies).collect::<Vec<_>>())
        }
    });
    Ok(futures::future::try_join_all(sends)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_slot_groups_by_hash_tag_in_order_and_keyless_items_join_the_first() {
        let keys = [
            Some("stem:{a}:p0"),
            Some("stem:{b}:p0"),
            None,
            Some("stem:{a}:delayed"),
            Some("stem:{b}:dead"),
        ];
        let groups = by_slot(0..keys.len(), |&i| keys[i].map(|k| k.as_bytes().to_vec()));
        assert_eq!(groups, vec![vec![0, 2, 3], vec![1, 4]]);
        assert_eq!(by_slot(Vec::<u8>::new(), |_| None), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn slots_are_redis_slots() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        assert_eq!(slot_of(b"bench"), 2933);
        assert_eq!(slot_of(b"stem:{bench}:p0"), 2933);
        assert_eq!(slot_of(b"bench0"), 9136);
        assert_eq!(slot_of(b"foo"), 12182);
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"{}foo"), 9500);
        assert_eq!(slot_of(b"a{foo}"), 12182);
    }

    #[test]
    fn the_slot_map_names_each_slots_master() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, master: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master])
        };
        let reply = Value::Array(vec![
            range(10923, 16383, node("127.0.0.1", 7002)),
            range(0, 5460, node("127.0.0.1", 7000)),
            range(5461, 10922, node("?", 7001)),
        ]);
        let map = SlotMap::parse(&reply).expect("a CLUSTER SLOTS reply");
        let master = |port| Some(("127.0.0.1".to_string(), port));
        assert_eq!(map.master_of(0).cloned(), master(7000));
        assert_eq!(map.master_of(5460).cloned(), master(7000));
        assert_eq!(map.master_of(5461), None, "unusable address");
        assert_eq!(map.master_of(16383).cloned(), master(7002));
        assert_eq!(SlotMap::parse(&Value::Nil), None);
    }
}
