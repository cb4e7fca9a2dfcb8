//! Writing and reading the recent-task index on Redis (`stem:{q}:recent`,
//! see [`crate::recent`]) so that it costs the hot path next to nothing.
//!
//! **Entries hold many tasks.** One `XADD` carries the spec bodies of
//! several tasks of a queue (fields `0`, `1`, … in publish order, at most
//! [`PER_ENTRY`]): Redis spends about 0.6 µs per task that way against
//! 2.8 µs for an `XADD … MAXLEN ~` per task (measured with
//! `redis-benchmark` on 2026-12-01; the per-task form cost the enqueue
//! bench 27 % of its throughput).
//!
//! **Writes are coalesced per process.** A publish writes its tasks'
//! entry in its own pipeline when this process wrote no index entry in
//! the last [`FLUSH`] (a one-shot `stem enqueue` is indexed before it
//! exits); otherwise the bodies wait in [`RecentLog`] and a flusher task
//! writes them together at the end of the window. So a busy producer adds
//! about two index writes per [`FLUSH`], whatever its rate. A process that
//! dies (or exits) within [`FLUSH`] of a busy burst leaves those tasks out
//! of the index; the tasks themselves are untouched, and a task is always
//! found by its id through its status.
//!
//! **The cap counts tasks.** Each write trims the stream to
//! `STEM_RECENT_TASKS / (tasks in the entry)` entries (`MAXLEN ~`, whole
//! stream nodes), so under a steady rate the index holds about
//! `STEM_RECENT_TASKS` tasks, and a mix of entry sizes keeps at most about
//! twice that. Bodies over [`crate::task_index::INDEX_BODY_MAX`] are indexed
//! as previews, so the bytes are bounded too; each write sets the
//! stream's expiry to `STEM_RESULT_TTL` (one `PEXPIRE` per queue and
//! write).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::redis::streams::StreamId;
use ::redis::Pipeline;
use bytes::Bytes;

use crate::broker::{Outgoing, RecentTask};
use crate::keys;
use crate::redis_conn::Conn;

/// Most tasks one index entry holds.
pub(crate) const PER_ENTRY: usize = 100;
/// How long a busy producer's index writes wait to be coalesced.
pub(crate) const FLUSH: Duration = Duration::from_millis(100);

/// Adds the `XADD`s that index `bodies` (published to `queue`, in order,
/// each already [`crate::task_index::index_body`]) to `pipe`, [`PER_ENTRY`]
/// tasks an entry, each trimming the stream to about `cap` tasks, and the
/// stream's expiry `ttl` after this write.
pub(crate) fn push_entries(
    pipe: &mut Pipeline,
    queue: &str,
    cap: usize,
    ttl: Duration,
    bodies: &[Bytes],
) {
    if bodies.is_empty() {
        return;
    }
    for chunk in bodies.chunks(PER_ENTRY) {
        let cmd = pipe
            .cmd("XADD")
            .arg(keys::recent(queue))
            .arg("MAXLEN")
            .arg("~")
            .arg(cap.div_ceil(chunk.len()).max(1))
            .arg("*");
        for (i, body) in chunk.iter().enumerate() {
            cmd.arg(i).arg(body.as_ref());
        }
        cmd.ignore();
    }
    pipe.pexpire(keys::recent(queue), ttl_ms(ttl)).ignore();
}

/// `ttl` in whole milliseconds, at least 1 (what `PEXPIRE` takes).
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The tasks of one index entry, newest first (field `i` is the entry's
/// i-th task in publish order); bodies that do not decode are skipped.
pub(crate) fn decode_entry(e: &StreamId) -> Vec<RecentTask> {
    let at_ms = super::entry::entry_ms(&e.id).unwrap_or(0);
    let mut bodies: Vec<(usize, &[u8])> = e
        .map
        .iter()
        .filter_map(|(field, v)| match v {
            ::redis::Value::BulkString(body) => Some((field.parse().ok()?, body.as_slice())),
            _ => None,
        })
        .collect();
    bodies.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    bodies
        .into_iter()
        .filter_map(|(_, body)| {
            RecentTask::decode(e.id.clone(), at_ms, Bytes::copy_from_slice(body))
        })
        .collect()
}

/// This process's side of the index: the bodies waiting for the next
/// flush, and when it last wrote.
pub(crate) struct RecentLog {
    cap: usize,
    ttl: Duration,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    pending: HashMap<String, Vec<Bytes>>,
    last_write: Option<Instant>,
    flusher: bool,
}

impl RecentLog {
    /// A log trimming each queue's index to about `cap` tasks (0: no
    /// index), each index expiring `ttl` after its last write.
    pub(crate) fn new(cap: usize, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            cap,
            ttl,
            state: Mutex::new(LogState::default()),
        })
    }

    /// Tasks kept per queue.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// How long an index outlives its last write.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, LogState> {
        self.state.lock()
    }

    /// Indexes `batch`: in `pipe` when this process wrote no index entry
    /// in the last [`FLUSH`], else by the flusher (started on `conn` when
    /// not running) at the end of the window.
    pub(crate) fn record(self: &Arc<Self>, pipe: &mut Pipeline, batch: &[Outgoing], conn: &Conn) {
        if self.cap == 0 || batch.is_empty() {
            return;
        }
        let mut by_queue: HashMap<&str, Vec<Bytes>> = HashMap::new();
        for o in batch {
            if let Some(body) = crate::task_index::index_body(&o.wire.body) {
                by_queue.entry(o.queue.as_str()).or_default().push(body);
            }
        }
        let mut st = self.lock();
        let quiet = st.pending.is_empty() && st.last_write.is_none_or(|t| t.elapsed() >= FLUSH);
        if quiet {
            st.last_write = Some(Instant::now());
            drop(st);
            for (queue, bodies) in by_queue {
                push_entries(pipe, queue, self.cap, self.ttl, &bodies);
            }
            return;
        }
        for (queue, bodies) in by_queue {
            st.pending
                .entry(queue.to_string())
                .or_default()
                .extend(bodies);
        }
        if !st.flusher {
            st.flusher = true;
            tokio::spawn(flush(Arc::downgrade(self), conn.clone()));
        }
    }
}

/// Writes what waits in the log every [`FLUSH`] until nothing does (or
/// the broker is gone). The index is a view: a failed write is logged and
/// dropped, never retried into the hot path.
async fn flush(log: Weak<RecentLog>, mut conn: Conn) {
    loop {
        tokio::time::sleep(FLUSH).await;
        let Some(log) = log.upgrade() else { return };
        let pending = {
            let mut st = log.lock();
            if st.pending.is_empty() {
                st.flusher = false;
                return;
            }
            st.last_write = Some(Instant::now());
            std::mem::take(&mut st.pending)
        };
        let mut pipe = ::redis::pipe();
        for (queue, bodies) in &pending {
            push_entries(&mut pipe, queue, log.cap(), log.ttl(), bodies);
        }
        if let Err(e) = pipe.exec_async(&mut conn).await {
            tracing::warn!(error = %e, tasks = pending.values().map(Vec::len).sum::<usize>(), "writing the recent-task index failed; those tasks are left out of it");
        }
    }
}
