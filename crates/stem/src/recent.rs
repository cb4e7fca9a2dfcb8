//! Finding tasks without scanning the keyspace: the recent-task index and
//! the query over it.
//!
//! **The index.** Every publish also appends the task's spec body to its
//! queue's index (`stem:{q}:recent` on Redis, a stream capped with
//! `XADD MAXLEN ~ STEM_RECENT_TASKS`, default
//! [`DEFAULT_RECENT_TASKS`](crate::broker::DEFAULT_RECENT_TASKS) per
//! queue), in the pipeline or script that publishes it, so it costs one
//! more command in a round trip that is made anyway and nothing on the
//! worker's side. Retries and dead-letter replays keep the task's entry
//! (they are the same task). The index reaches back the last
//! `STEM_RECENT_TASKS` publishes of each queue; a queue's index costs
//! about the spec body plus ~20 bytes per entry (`docs/architecture.md`).
//!
//! **The query.** [`find_tasks`] reads the indexes of the asked queues
//! newest first in chunks, merges them by publish time, joins each entry
//! with its status in one `get_statuses` per chunk, and keeps what the
//! filters match, until the page is full. It never reads more than
//! [`MAX_SCAN`] entries, so a filter that matches little costs a bounded
//! amount; [`TaskListing::scanned`] and [`TaskListing::complete`] say how
//! far it looked.

use std::collections::{HashSet, VecDeque};

use crate::backend::ResultBackend;
use crate::broker::{QueueAdmin, RecentTask};
use crate::envelope::{TaskSpec, TaskState, TaskStatus};
use crate::error::Result;

/// Most index entries one query reads.
pub const MAX_SCAN: usize = 20_000;

/// Most index entries read per queue and round trip: a query reads what
/// its page needs first, then twice as much each time it needs more.
const MAX_CHUNK: usize = 1000;
/// Most entries whose statuses one round trip reads.
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
    /// The spec as published.
    pub spec: TaskSpec,
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
    /// Index entries read to answer.
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
        let got = admin
            .recent_tasks(&self.queue, self.last.as_deref(), self.chunk)
            .await?;
        self.done = got.len() < self.chunk;
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        if let Some(last) = got.last() {
            self.last = Some(last.cursor.clone());
        }
        self.buf.extend(got);
        Ok(())
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
    let mut readers: Vec<Reader> = queues
        .into_iter()
        .map(|queue| Reader {
            queue,
            buf: VecDeque::new(),
            last: None,
            chunk: wanted.clamp(16, MAX_CHUNK),
            done: false,
        })
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut matches: Vec<TaskRow> = Vec::new();
    let mut scanned = 0usize;
    let mut complete = false;
    while matches.len() < wanted {
        if scanned >= MAX_SCAN {
            break;
        }
        // Every reader with more to read holds at least one entry, so the
        // newest of their fronts is the newest entry left.
        let refills = readers
            .iter_mut()
            .filter(|r| r.buf.is_empty() && !r.done)
            .map(|r| r.refill(admin));
        futures::future::try_join_all(refills).await?;
        let mut batch: Vec<(RecentTask, bool)> = Vec::new();
        while batch.len() < BATCH && scanned < MAX_SCAN {
            let Some(next) = readers
                .iter_mut()
                .filter(|r| !r.buf.is_empty())
                .max_by_key(|r| r.buf.front().map(|e| e.at_ms))
            else {
                break;
            };
            let Some(entry) = next.buf.pop_front() else {
                break;
            };
            let refill = next.buf.is_empty() && !next.done;
            scanned += 1;
            if seen.insert(entry.spec.id.clone())
                && query.task.as_ref().is_none_or(|t| *t == entry.spec.name)
            {
                let text_hit = text
                    .as_deref()
                    .is_some_and(|t| spec_contains(&entry.spec, t));
                batch.push((entry, text_hit));
            }
            if refill {
                // Merging needs this queue's next entry before going on.
                break;
            }
        }
        if batch.is_empty() {
            if readers.iter().all(|r| r.buf.is_empty() && r.done) {
                complete = true;
                break;
            }
            continue;
        }
        // Statuses are needed to filter by state or by error text.
        let need_status = query.state.is_some() || text.is_some();
        let statuses = if need_status {
            let ids: Vec<String> = batch.iter().map(|(e, _)| e.spec.id.clone()).collect();
            backend.get_statuses(&ids).await?
        } else {
            vec![None; batch.len()]
        };
        for ((entry, text_hit), status) in batch.into_iter().zip(statuses) {
            if let Some(state) = query.state {
                if status.as_ref().map(|s| s.state) != Some(state) {
                    continue;
                }
            }
            if let Some(t) = text.as_deref() {
                let error_hit = status
                    .as_ref()
                    .and_then(|s| s.error.as_ref())
                    .is_some_and(|e| e.message.to_ascii_lowercase().contains(t));
                if !text_hit && !error_hit {
                    continue;
                }
            }
            matches.push(TaskRow {
                spec: entry.spec,
                published_ms: entry.at_ms,
                status,
            });
        }
    }
    let has_more = matches.len() > skip + page_size;
    let mut rows: Vec<TaskRow> = matches.into_iter().skip(skip).take(page_size).collect();
    if query.state.is_none() && text.is_none() {
        let ids: Vec<String> = rows.iter().map(|r| r.spec.id.clone()).collect();
        for (row, status) in rows.iter_mut().zip(backend.get_statuses(&ids).await?) {
            row.status = status;
        }
    }
    Ok(TaskListing {
        rows,
        has_more,
        scanned,
        complete,
    })
}

/// Whether `spec`'s id or JSON args contain `needle` (lower case).
fn spec_contains(spec: &TaskSpec, needle: &str) -> bool {
    spec.id.to_ascii_lowercase().contains(needle)
        || serde_json::to_string(&spec.args).is_ok_and(|a| a.to_ascii_lowercase().contains(needle))
}
