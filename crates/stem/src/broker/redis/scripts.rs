//! The broker's Lua scripts. Each runs atomically in Redis, so concurrent
//! workers, promoters and operators never see one half done. Scripts are
//! loaded once per process (`EVALSHA`, falling back to `EVAL` after a Redis
//! restart flushed the script cache).

use std::sync::LazyLock;

use ::redis::Script;

/// Moves due members of a delayed set to their bands' due lanes (KEYS[2 +
/// band]), oldest first. One call per queue per promoter tick (not per
/// task), repeated while it moves a full batch. Member = band \n packed
/// entry.
pub(super) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
"#,
    )
});

/// Replays a dead letter at most once: the new entry is added only when
/// this call removed the letter, so two concurrent replays publish once.
/// KEYS = dead stream, band stream; ARGV = letter id, packed entry.
pub(super) static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 1
"#,
    )
});

/// Lua: sets `last` to the last-delivered id of group ARGV[1] on stream
/// KEYS[1] (`0-0` when the group does not exist); the entries after it
/// were never delivered.
const LAST_DELIVERED: &str = r#"
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, lid
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == ARGV[1] then last = lid end
end
"#;

/// Deletes a queue's keys only if it holds no task, in one step (`stem
/// queue forget`): KEYS = its lane streams, then its dead-letter stream
/// (streams: `XLEN`), then its delayed set (`ZCARD`), then its recent-task
/// index (deleted, not counted). Returns how many entries it held (0 when
/// it deleted them). A task published a moment before is counted, never
/// deleted.
pub(super) static FORGET_QUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = 0
local n = #KEYS
for i = 1, n - 2 do
  held = held + redis.call('XLEN', KEYS[i])
end
held = held + redis.call('ZCARD', KEYS[n - 1])
if held > 0 then return held end
redis.call('DEL', unpack(KEYS))
return 0
"#,
    )
});

/// Deletes up to ARGV[2] never-delivered entries of stream KEYS[1]: those
/// after the last-delivered id of group ARGV[1] (all of them when the group
/// does not exist). Entries at or before it are in flight or acknowledged,
/// and stay. Returns how many were deleted.
pub(super) static PURGE_READY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
{LAST_DELIVERED}
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])
local n = 0
for _, e in ipairs(entries) do
  n = n + redis.call('XDEL', KEYS[1], e[1])
end
return n
"#
    ))
});

/// The id of the oldest never-delivered entry of stream KEYS[1] for group
/// ARGV[1] (the first after its last-delivered id), or nil: how long the
/// lane's next task has waited.
pub(super) static FIRST_READY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
{LAST_DELIVERED}
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
if first then return first[1] end
return false
"#
    ))
});

/// Publishes one envelope unless its marker exists, atomically: the
/// marker (an idempotency key, a chain step's or a chord's "published"
/// record), the task's first status (when given) and the `XADD` or `ZADD`
/// commit together, so a crash or a cut connection leaves either all of
/// them or none; the task's entry in its queue's recent-task index goes
/// with them. KEYS = marker, status key (the marker again when there is
/// no status, so that every key shares the queue's slot), target (band
/// stream or delayed set), recent-task index. ARGV = marker value, marker ttl ms, status
/// value ('' for none), status ttl ms, 'x' (XADD) or 'z' (ZADD), entry or
/// member, score, index cap (0: no index), the body to index, index ttl ms.
/// Returns the marker's existing value, or nil when this call published.
pub(crate) static SUBMIT_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
if ARGV[8] ~= '0' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', '0', ARGV[9])
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
end
return false
"#,
    )
});
