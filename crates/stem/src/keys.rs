//! Every Redis key Stem reads or writes, named in one place.
//!
//! The four Redis adapters (broker, result backend, control plane,
//! schedule store) build their keys here and nowhere else, so a change of
//! layout — a deployment prefix, Redis Cluster hash tags — is a change to
//! this file. `docs/architecture.md` ("Redis keys") lists each key with its
//! type, owner and lifetime.
//!
//! **The hash-tag rule.** Redis Cluster places a key by the part between
//! the first `{` and `}`, and a script or `MULTI` may only touch keys of
//! one slot. So keys written together share a tag: every broker key of one
//! queue carries `{queue}` (lanes, delayed set, dead letters, recent-task
//! index: the promotion script and the `MULTI` blocks of ack, retry and
//! dead-letter stay in one slot); a task's live and terminal status carry
//! `{<id>}`; a group's count and results `{<gid>}`; the schedule store
//! `{schedule}`; the worker records and their index `{workers}`. Scripts
//! that combine a task's or a marker's keys with a queue's (submit-once,
//! the co-located settle) run only on one server; a cluster works without
//! them (`docs/architecture.md`, "Redis Cluster").

use crate::envelope::MAX_PRIORITY;

/// What every key starts with.
pub const PREFIX: &str = "stem";

// ---------------------------------------------------------------------------
// Broker (one hash tag per queue)
// ---------------------------------------------------------------------------

/// Set of every queue name seen.
pub const QUEUES: &str = "stem:queues";

/// Hash: consumer name → the lease (visibility timeout, ms) it declared.
pub const LEASES: &str = "stem:leases";

/// Hash: consumer name → when it last declared its lease (epoch ms); a
/// declaration is pruned only once its worker's record is gone *and* it
/// is older than the lease it declares.
pub const LEASES_AT: &str = "stem:leases:at";

/// Stream of lane `lane` of `queue` (see [`crate::lanes::LANES`]):
/// `p<band>` for a priority band, `p<band>:due` for a band's due lane.
pub fn lane(queue: &str, lane: u8) -> String {
    let band = crate::lanes::lane_band(lane);
    if lane > MAX_PRIORITY {
        format!("{PREFIX}:{{{queue}}}:p{band}:due")
    } else {
        format!("{PREFIX}:{{{queue}}}:p{band}")
    }
}

/// Stream of priority band `priority` of `queue` (above 9 counts as 9).
pub fn band(queue: &str, priority: u8) -> String {
    lane(queue, priority.min(MAX_PRIORITY))
}

/// Splits a key made by [`lane`] back into queue and lane.
pub fn parse_lane(key: &str) -> Option<(String, u8)> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(":{")?;
    let close = rest.rfind("}:p")?;
    let tail = &rest[close + 3..];
    let band = |s: &str| s.parse::<u8>().ok().filter(|b| *b <= MAX_PRIORITY);
    let lane = match tail.strip_suffix(":due") {
        Some(b) => crate::lanes::due_lane(band(b)?),
        None => band(tail)?,
    };
    Some((rest[..close].to_string(), lane))
}

/// Sorted set of `queue`'s delayed and retried entries.
pub fn delayed(queue: &str) -> String {
    format!("{PREFIX}:{{{queue}}}:delayed")
}

/// Stream of `queue`'s recent-task index (see [`crate::recent`]).
pub fn recent(queue: &str) -> String {
    format!("{PREFIX}:{{{queue}}}:recent")
}

/// The publish-once marker `marker` of a task published to `queue`
/// (`idem:<key>`, `published:chain:<cid>:<i>`, `chord-claim:<gid>`,
/// `beat-slot:<entry>:<slot ms>`): tagged with the queue, so the marker and
/// the publish it guards are one script on one slot, on a cluster too.
pub fn once(queue: &str, marker: &str) -> String {
    format!("{PREFIX}:{{{queue}}}:once:{marker}")
}

/// Stream of `queue`'s dead letters.
pub fn dead(queue: &str) -> String {
    format!("{PREFIX}:{{{queue}}}:dead")
}

// ---------------------------------------------------------------------------
// Result backend
// ---------------------------------------------------------------------------

/// A task's live status (queued, running, retried). Tagged by the task
/// id, like [`done`]: the status scripts read and write both together.
pub fn status(id: &str) -> String {
    format!("{PREFIX}:task:{{{id}}}")
}

/// A task's terminal status (succeeded, failed, cancelled).
pub fn done(id: &str) -> String {
    format!("{PREFIX}:done:{{{id}}}")
}

/// A group's expected member count. Tagged by the group id, like
/// [`group_results`]: `init_group` writes both in one transaction.
pub fn group(id: &str) -> String {
    format!("{PREFIX}:group:{{{id}}}")
}

/// Hash of a group's member results.
pub fn group_results(id: &str) -> String {
    format!("{PREFIX}:group:{{{id}}}:results")
}

/// A small record: idempotency key, claim, published marker, stored
/// envelope.
pub fn kv(key: &str) -> String {
    format!("{PREFIX}:kv:{key}")
}

// ---------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------

/// Sorted set: worker name → last heartbeat ms. Tagged `{workers}`, like
/// every [`worker`] record: the script that removes a stopping worker
/// touches its record and this set together.
pub const WORKERS: &str = "stem:{workers}";

/// Pub/sub channel of control commands.
pub const CONTROL: &str = "stem:control";

/// Set of paused queue names.
pub const PAUSED: &str = "stem:paused";

/// A worker's info record.
pub fn worker(name: &str) -> String {
    format!("{PREFIX}:{{workers}}:{name}")
}

/// Hash of the tasks finished in the minute starting at `minute_ms`
/// (`succeeded`, `failed`, `retried`), expiring after three days.
pub fn throughput(minute_ms: i64) -> String {
    format!("{PREFIX}:throughput:{minute_ms}")
}

/// The list the replies to command `id` are pushed on.
pub fn control_reply(id: &str) -> String {
    format!("{PREFIX}:control:reply:{id}")
}

// ---------------------------------------------------------------------------
// Schedule store
// ---------------------------------------------------------------------------

/// Sorted set of every schedule entry id by next run. Every schedule key
/// carries the tag `{schedule}`: the upsert and bookkeeping scripts write
/// an entry and the index together (schedule traffic is a few commands a
/// second, so one slot serves it).
pub const SCHEDULE_INDEX: &str = "stem:{schedule}:index";

/// Hash of schedule entry `id`.
pub fn schedule_entry(id: &str) -> String {
    format!("{PREFIX}:{{schedule}}:entry:{id}")
}

/// Firing record of slot `slot_ms` of schedule entry `id`.
pub fn schedule_fired(id: &str, slot_ms: i64) -> String {
    format!("{PREFIX}:{{schedule}}:fired:{id}:{slot_ms}")
}

/// Lock `key` (beat's leader lease is `lock("beat:leader")`).
pub fn lock(key: &str) -> String {
    format!("{PREFIX}:lock:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::{due_lane, LANES};

    #[test]
    fn lane_keys_round_trip_and_share_the_queue_tag() {
        for l in 0..LANES {
            let key = lane("billing", l);
            assert!(key.contains("{billing}"), "{key}");
            assert_eq!(parse_lane(&key), Some(("billing".to_string(), l)));
        }
        assert_eq!(lane("q", 3), "stem:{q}:p3");
        assert_eq!(lane("q", due_lane(3)), "stem:{q}:p3:due");
        for k in [delayed("q"), dead("q")] {
            assert!(k.starts_with("stem:{q}:"), "{k}");
        }
    }

    #[test]
    fn foreign_keys_are_not_lanes() {
        for key in [
            "stem:{q}:p10",
            "stem:{q}:p1:late",
            "stem:{q}:delayed",
            "other:{q}:p1",
        ] {
            assert_eq!(parse_lane(key), None, "{key}");
        }
    }

    #[test]
    fn every_constant_key_has_the_prefix() {
        for k in [
            QUEUES,
            LEASES,
            LEASES_AT,
            WORKERS,
            CONTROL,
            PAUSED,
            SCHEDULE_INDEX,
        ] {
            assert!(k.starts_with(&format!("{PREFIX}:")), "{k}");
        }
    }
}
