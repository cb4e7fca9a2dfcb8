//! Finding tasks without scanning the keyspace: the recent-task index and
//! the query over it.
//!
//! **The index.** Every publish also records the task's spec body in its
//! queue's index (`stem:{q}:recent` on Redis: a stream whose entries each
//! hold the tasks one write indexed together; a list on the memory
//! broker), keeping about `STEM_RECENT_TASKS` tasks per queue (default
//! [`DEFAULT_RECENT_TASKS`](crate::broker::DEFAULT_RECENT_TASKS)). On
//! Redis a producer writes it in the publish's own pipeline when it wrote
//! none in the last 100 ms, and otherwise coalesces it into one write per
//! 100 ms (see `broker/redis/recent.rs`), so the index costs the hot path
//! about nothing. Retries and dead-letter replays keep the task's entry
//! (they are the same task). The index reaches back about the last
//! `STEM_RECENT_TASKS` publishes of each queue; its memory is about the
//! spec body plus a few bytes per task (`docs/benchmarks.md`).
//!
//! **Bounded in bytes, and expiring.** Every other copy of a task's body
//! goes when the task is acknowledged; the index would keep it. So a spec
//! body over [`INDEX_BODY_MAX`] is indexed as a preview ([`index_body`]:
//! its args cut to their first [`ARGS_PREVIEW`] bytes of JSON text, kept
//! as a JSON string, and the body's real size in `indexTruncated`), which
//! bounds what a task costs the index to a few KiB (2 KiB for a whole
//! body; a preview stays near 2 KiB too, up to about 4 KiB when JSON
//! escaping inflates its name and args) whatever producers send (issue
//! 24: 20 bodies of 1 MiB had pinned 25 MB).
//! The index expires `STEM_RESULT_TTL` after its last write, like the
//! statuses it points to, and a queue's purge drops it.
//!
//! **The query.** [`find_tasks`] reads the indexes of the asked queues
//! newest first in chunks, merges them by enqueue time, reads the states
//! of each batch in one `states` call when a filter needs them (whole
//! statuses only where an error text must be searched), and keeps what
//! the filters match, until the page is full; only the page's rows are
//! decoded whole and read with their statuses. It never
//! reads more than [`MAX_SCAN`] tasks, so a filter that matches little
//! costs a bounded amount; [`TaskListing::scanned`] and
//! [`TaskListing::complete`] say how far it looked.

use std::collections::{HashSet, VecDeque};

use crate::backend::ResultBackend;
use crate::broker::{QueueAdmin, RecentTask};
use crate::envelope::{TaskSpec, TaskState, TaskStatus};
use crate::error::Result;

pub use crate::task_index::{index_body, ARGS_PREVIEW, INDEX_BODY_MAX};

/// Most tasks one query reads from the index.
pub const MAX_SCAN: usize = 20_000;

/// Most index entries read per queue and round trip: a query reads two
/// first, then twice as many each time it needs more.
const MAX_CHUNK: usize = 1000;
/// Most tasks one read of an index should return: with bodies bounded by
/// [`INDEX_BODY_MAX`], a reply stays under about 4 MB even when every
/// entry holds 100 tasks.
const MAX_CHUNK_TASKS: usize = 2000;
/// Most tasks whose states one round trip reads.
const BATCH: usize = 500;

/// What to list: every filter is optional; pages count from 1.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Only tasks whose status is in this state.
    pub state: Option<TaskState>,
    /// Only tasks published to this queue.
    pub queue: Option<String>,
    /// Only tasks of this name.
    pub task: Option<String>,
    /// Only tasks whose id, JSON args or error message contain this text
    /// (ASCII case ignored).
    pub text: Option<String>,
    /// Which page, from 1.
    pub page: usize,
    /// Rows per page.
    pub page_size: usize,
}

/// A listed task: its spec as published and its status, when the backend
/// still has one (`None` once the result expired).
#[derive(Clone, Debug)]
pub struct TaskRow {
    /// The spec as published, or the index's preview of it (see
    /// `truncated`).
    pub spec: TaskSpec,
    /// `Some(size of the whole spec body)` when `spec` is a preview whose
    /// args are the first [`ARGS_PREVIEW`] bytes of their JSON text, as a
    /// JSON string.
    pub truncated: Option<u64>,
    /// When its index entry was written, in epoch milliseconds.
    pub published_ms: i64,
    /// Its status now.
    pub status: Option<TaskStatus>,
}

/// One page of a [`TaskQuery`].
#[derive(Clone, Debug, Default)]
pub struct TaskListing {
    /// The page's rows, newest first.
    pub rows: Vec<TaskRow>,
    /// Whether a later page has rows.
    pub has_more: bool,
    /// Tasks read from the index to answer.
    pub scanned: usize,
    /// Whether every entry of the asked queues' indexes was considered
    /// (false when the query stopped at [`MAX_SCAN`] or at a full page).
    pub complete: bool,
}

/// One queue's index, read newest first a chunk at a time.
struct Reader {
    queue: String,
    buf: VecDeque<RecentTask>,
    /// The cursor of the last entry read.
    last: Option<String>,
    chunk: usize,
    done: bool,
}

impl Reader {
    async fn refill(&mut self, admin: &dyn QueueAdmin) -> Result<()> {
        let mut got = admin
            .recent_tasks(&self.queue, self.last.as_deref(), self.chunk)
            .await?;
        self.done = got.is_empty();
        // Entries hold 1 to 100 tasks: size the next read by how many
        // this one's entries held, so a reply stays near MAX_CHUNK_TASKS.
        let per_entry = got.len().div_ceil(self.chunk).max(1);
        self.chunk = (self.chunk * 2)
            .min(MAX_CHUNK)
            .min((MAX_CHUNK_TASKS / per_entry).max(1));
        if let Some(last) = got.last() {
            self.last = Some(last.cursor.clone());
        }
        // Index order is write order, which a coalesced write may put up
        // to a flush window behind publish order: each chunk is put back
        // in publish order (ids are time-ordered UUIDs within a ms).
        got.sort_by(|a, b| newer(b).cmp(&newer(a)));
        self.buf.extend(got);
        Ok(())
    }
}

/// Every asked queue's index merged newest first: the readers, the ids
/// already seen (retries and replays keep their entry) and how many tasks
/// were read.
struct Merge {
    readers: Vec<Reader>,
    seen: HashSet<String>,
    scanned: usize,
}

impl Merge {
    fn new(queues: Vec<String>) -> Self {
        let readers = queues
            .into_iter()
            .map(|queue| Reader {
                queue,
                buf: VecDeque::new(),
                last: None,
                // An entry holds one task or (on Redis) up to a hundred:
                // start small, then double.
                chunk: 2,
                done: false,
            })
            .collect();
        Merge {
            readers,
            seen: HashSet::new(),
            scanned: 0,
        }
    }

    /// Whether every reader has read its whole index.
    fn exhausted(&self) -> bool {
        self.readers.iter().all(|r| r.buf.is_empty() && r.done)
    }

    /// The next batch of up to [`BATCH`] entries, newest first, that
    /// `query`'s task name matches, each with whether `text` occurs in it.
    /// Empty when a reader must refill first, or when nothing is left.
    async fn next_batch(
        &mut self,
        admin: &dyn QueueAdmin,
        query: &TaskQuery,
        text: Option<&str>,
    ) -> Result<Vec<(RecentTask, bool)>> {
        // Every reader with more to read holds at least one entry, so the
        // newest of their fronts is the newest entry left.
        let refills = self
            .readers
            .iter_mut()
            .filter(|r| r.buf.is_empty() && !r.done)
            .map(|r| r.refill(admin));
        futures::future::try_join_all(refills).await?;
        let mut batch: Vec<(RecentTask, bool)> = Vec::new();
        while batch.len() < BATCH && self.scanned < MAX_SCAN {
            let Some(next) = self
                .readers
                .iter_mut()
                .filter(|r| !r.buf.is_empty())
                .max_by(|a, b| a.buf.front().map(newer).cmp(&b.buf.front().map(newer)))
            else {
                break;
            };
            let Some(entry) = next.buf.pop_front() else {
                break;
            };
            let refill = next.buf.is_empty() && !next.done;
            self.scanned += 1;
            if self.seen.insert(entry.id.clone())
                && query.task.as_ref().is_none_or(|t| *t == entry.name)
            {
                let text_hit = text.is_some_and(|t| entry_contains(&entry, t));
                batch.push((entry, text_hit));
            }
            if refill {
                // Merging needs this queue's next entry before going on.
                break;
            }
        }
        Ok(batch)
    }
}

/// Lists the tasks `query` asks for, newest first, from the recent-task
/// indexes of `admin` and the statuses of `backend`.
pub async fn find_tasks(
    admin: &dyn QueueAdmin,
    backend: &dyn ResultBackend,
    query: &TaskQuery,
) -> Result<TaskListing> {
    let queues = match &query.queue {
        Some(q) => vec![q.clone()],
        None => admin.known_queues().await?,
    };
    let text = query
        .text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase);
    let page_size = query.page_size.max(1);
    let skip = query.page.max(1).saturating_sub(1) * page_size;
    // One match past the page says whether another page exists.
    let wanted = skip + page_size + 1;
    let mut merge = Merge::new(queues);
    let mut matches: Vec<RecentTask> = Vec::new();
    let mut complete = false;
    while matches.len() < wanted && merge.scanned < MAX_SCAN {
        let batch = merge.next_batch(admin, query, text.as_deref()).await?;
        if batch.is_empty() {
            if merge.exhausted() {
                complete = true;
                break;
            }
            continue;
        }
        matches.extend(filter_batch(backend, query, text.as_deref(), batch).await?);
    }
    let has_more = matches.len() > skip + page_size;
    let page: Vec<RecentTask> = matches.into_iter().skip(skip).take(page_size).collect();
    Ok(TaskListing {
        rows: page_rows(backend, page).await?,
        has_more,
        scanned: merge.scanned,
        complete,
    })
}

/// The page's rows: only they are decoded whole and read with their full
/// statuses.
async fn page_rows(backend: &dyn ResultBackend, page: Vec<RecentTask>) -> Result<Vec<TaskRow>> {
    let ids: Vec<String> = page.iter().map(|e| e.id.clone()).collect();
    let statuses = backend.get_statuses(&ids).await?;
    Ok(page
        .into_iter()
        .zip(statuses)
        .filter_map(|(entry, status)| {
            Some(TaskRow {
                spec: entry.spec().ok()?,
                truncated: entry.truncated,
                published_ms: entry.at_ms,
                status,
            })
        })
        .collect())
}

/// The publish-order key of an index entry: the producer's enqueue
/// time, then the id (a time-ordered UUID).
fn newer(r: &RecentTask) -> (i64, &str) {
    (r.enqueued_at, r.id.as_str())
}

/// Whether the task's id or JSON args contain `needle` (lower case).
fn entry_contains(entry: &RecentTask, needle: &str) -> bool {
    entry.id.to_ascii_lowercase().contains(needle)
        || entry.args_json().to_ascii_lowercase().contains(needle)
}

/// The entries of `batch` the state and text filters keep. States come
/// from the backend's cheap state read; whole statuses (for the error
/// text) only for entries whose id and args did not match and whose state
/// can carry an error.
async fn filter_batch(
    backend: &dyn ResultBackend,
    query: &TaskQuery,
    text: Option<&str>,
    batch: Vec<(RecentTask, bool)>,
) -> Result<Vec<RecentTask>> {
    if query.state.is_none() && text.is_none() {
        return Ok(batch.into_iter().map(|(e, _)| e).collect());
    }
    let ids: Vec<String> = batch.iter().map(|(e, _)| e.id.clone()).collect();
    let states = backend.states(&ids).await?;
    let mut kept: Vec<(RecentTask, bool, Option<TaskState>)> = batch
        .into_iter()
        .zip(states)
        .filter(|((_, _), state)| query.state.is_none_or(|want| *state == Some(want)))
        .map(|((e, hit), state)| (e, hit, state))
        .collect();
    let Some(t) = text else {
        return Ok(kept.into_iter().map(|(e, _, _)| e).collect());
    };
    let errored = |s: &Option<TaskState>| {
        matches!(
            s,
            Some(TaskState::Retried | TaskState::Failed | TaskState::Cancelled)
        )
    };
    let ask: Vec<String> = kept
        .iter()
        .filter(|(_, hit, s)| !hit && errored(s))
        .map(|(e, _, _)| e.id.clone())
        .collect();
    let errors: HashSet<String> = backend
        .get_statuses(&ask)
        .await?
        .into_iter()
        .flatten()
        .filter(|s| {
            s.error
                .as_ref()
                .is_some_and(|e| e.message.to_ascii_lowercase().contains(t))
        })
        .map(|s| s.id)
        .collect();
    kept.retain(|(e, hit, _)| *hit || errors.contains(&e.id));
    Ok(kept.into_iter().map(|(e, _, _)| e).collect())
}
