//! Live updates: one poller per dashboard process reads the
//! [`Snapshot`](crate::view::Snapshot) every [`TICK`] while at least one
//! page is open, plus the status of every task an open page shows and,
//! while a tasks list is open, the newest tasks, and
//! when anything changed renders the tables and those tasks as
//! `<turbo-stream action="replace">` fragments for the open pages'
//! `GET /events` streams (server-sent events, which Turbo's
//! `<turbo-stream-source>` applies). Open tabs cost one channel receiver
//! each, not a poll each; each stream sends its page only the fragments
//! that differ from what it sent that page before. Fragments are shared
//! (`Arc<str>`) and each stream keeps only their hashes; the action forms
//! inside carry [`CSRF_SLOT`], which a stream replaces with its page's
//! session token as it sends. At most `DASHBOARD_MAX_STREAMS` streams are
//! open at once (one more is told to come back later), and every one
//! ends when the process begins to stop.

use parking_lot::Mutex;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use stem::recent::TaskQuery;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::guard::Session;
use crate::pages::Chrome;
use crate::view::{self, Snapshot, TaskView};
use crate::AppState;

/// How often the poller reads while a page is open.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// Most distinct tasks the poller follows for open task pages; pages of
/// others get the tables only.
const MAX_WATCHED: usize = 100;

/// When a page turned away at the stream cap tries again.
const FULL_RETRY: Duration = Duration::from_secs(30);

/// What the shared fragments carry where a form's CSRF token goes; each
/// stream writes its page's token there.
pub(crate) const CSRF_SLOT: &str = "STEM-CSRF-SLOT";

/// The hidden field holding [`CSRF_SLOT`], exactly as the `action` macro
/// writes it: only this is replaced, never the same text in task data
/// (escaped data holds no raw `"`, so it cannot contain this).
const CSRF_FIELD: &str = r#"name="csrf_token" value="STEM-CSRF-SLOT""#;

/// The element id a task's live part has on its page.
pub(crate) fn task_target(id: &str) -> String {
    format!("task-{id}")
}

/// The latest fragments: (target element id, HTML), numbered.
#[derive(Clone, Default)]
pub(crate) struct Update {
    pub seq: u64,
    pub fragments: Arc<Vec<(String, Arc<str>)>>,
}

/// The channel between the poller and the open pages, and the tasks those
/// pages show.
pub(crate) struct Hub {
    tx: watch::Sender<Update>,
    watched: Mutex<HashMap<String, usize>>,
    /// Open pages that list recent tasks.
    lists: AtomicUsize,
    /// Open event streams.
    streams: AtomicUsize,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::Sender::new(Update::default()),
            watched: Mutex::new(HashMap::new()),
            lists: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        }
    }

    fn watched(&self) -> parking_lot::MutexGuard<'_, HashMap<String, usize>> {
        self.watched.lock()
    }
}

/// A task an open page shows; the poller stops reading it when the last
/// such page closes (its stream, holding this, is dropped).
struct Watching {
    st: AppState,
    id: String,
}

impl Watching {
    /// Follows `id`, a task id whose status exists (the caller checked).
    fn start(st: &AppState, id: &str) -> Option<Self> {
        let mut watched = st.0.hub.watched();
        if !watched.contains_key(id) && watched.len() >= MAX_WATCHED {
            return None;
        }
        *watched.entry(id.to_string()).or_default() += 1;
        Some(Self {
            st: st.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.st.0.hub.watched();
        if let Some(n) = watched.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

/// An open page listing recent tasks; the poller reads the newest tasks
/// while one exists.
struct Listing(AppState);

impl Listing {
    fn start(st: &AppState) -> Self {
        st.0.hub.lists.fetch_add(1, Ordering::Relaxed);
        Self(st.clone())
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.0 .0.hub.lists.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open event stream, counted against `DASHBOARD_MAX_STREAMS` while
/// it lives: one more is told to retry in [`FULL_RETRY`] and ended, so
/// open connections cannot grow without end.
struct Open(AppState);

impl Open {
    fn start(st: &AppState) -> Option<Self> {
        let streams = &st.0.hub.streams;
        let mut n = streams.load(Ordering::Relaxed);
        loop {
            if n >= st.config().max_streams {
                return None;
            }
            match streams.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(Self(st.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0 .0.hub.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The target name of the newest tasks' digest: not an element, a change
/// of it makes list pages refresh.
const TASKS_HEAD: &str = "tasks-head";

/// The newest tasks by id and state: what a change of shows on a list page.
async fn tasks_head(st: &AppState) -> stem::Result<String> {
    let newest = st
        .stem()
        .find_tasks(&TaskQuery {
            page: 1,
            page_size: crate::task_list::DEFAULT_PAGE_SIZE,
            ..Default::default()
        })
        .await?;
    Ok(newest
        .rows
        .iter()
        .map(|r| {
            let state = r.status.as_ref().map(|s| s.state.as_str()).unwrap_or("");
            format!("{} {state}", r.spec.id)
        })
        .collect::<Vec<_>>()
        .join(","))
}

#[derive(Template)]
#[template(path = "partials/totals.html")]
struct Totals<'a> {
    snap: &'a Snapshot,
}

#[derive(Template)]
#[template(path = "partials/chart.html")]
struct Throughput<'a> {
    snap: &'a Snapshot,
}

#[derive(Template)]
#[template(path = "partials/queue_table.html")]
struct QueueTable<'a> {
    chrome: &'a Chrome,
    snap: &'a Snapshot,
}

#[derive(Template)]
#[template(path = "partials/worker_table.html")]
struct WorkerTable<'a> {
    chrome: &'a Chrome,
    snap: &'a Snapshot,
}

#[derive(Template)]
#[template(path = "partials/replays.html")]
struct Replays {
    replays: Vec<String>,
}

#[derive(Template)]
#[template(path = "partials/task_state.html")]
struct TaskState<'a> {
    chrome: &'a Chrome,
    task: &'a TaskView,
}

/// The fragments of `snap`, of the replay-all jobs and of the watched
/// `tasks`, by target id.
fn render(
    chrome: &Chrome,
    snap: &Snapshot,
    replays: Vec<String>,
    tasks: &[TaskView],
) -> askama::Result<Vec<(String, Arc<str>)>> {
    let mut out = vec![
        ("totals".to_string(), Totals { snap }.render()?),
        ("throughput".to_string(), Throughput { snap }.render()?),
        (
            "queue-table".to_string(),
            QueueTable { chrome, snap }.render()?,
        ),
        (
            "worker-table".to_string(),
            WorkerTable { chrome, snap }.render()?,
        ),
        ("replays".to_string(), Replays { replays }.render()?),
    ];
    for task in tasks {
        out.push((
            task_target(&task.status.id),
            TaskState { chrome, task }.render()?,
        ));
    }
    Ok(out.into_iter().map(|(t, html)| (t, html.into())).collect())
}

/// Reads and publishes while pages are open, until `stop`.
pub(crate) async fn poll(st: AppState, stop: CancellationToken) {
    let tx = &st.0.hub.tx;
    let slot = Session {
        token: CSRF_SLOT.to_string(),
    };
    let chrome = Chrome::new(&st, &slot, "", "");
    let mut last: Vec<(String, Arc<str>)> = Vec::new();
    let mut seq = 0u64;
    // Polls failed in a row: an outage is logged once, and its end.
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if tx.receiver_count() == 0 {
            last.clear();
            continue;
        }
        let ids: Vec<String> = st.0.hub.watched().keys().cloned().collect();
        let listing = st.0.hub.lists.load(Ordering::Relaxed) > 0;
        let read = async {
            let snap = view::snapshot(st.stem()).await?;
            let statuses = if ids.is_empty() {
                Vec::new()
            } else {
                st.stem().backend().get_statuses(&ids).await?
            };
            let head = if listing {
                Some(tasks_head(&st).await?)
            } else {
                None
            };
            Ok::<_, stem::StemError>((snap, statuses, head))
        };
        let (snap, statuses, head) = match read.await {
            Ok(r) => {
                if failures > 0 {
                    tracing::info!(failed_polls = failures, "dashboard poll works again");
                    failures = 0;
                }
                r
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "dashboard poll failed; pages keep their last state until it works again");
                } else {
                    tracing::debug!(error = %e, "dashboard poll still failing");
                }
                failures += 1;
                continue;
            }
        };
        let tasks: Vec<TaskView> = statuses.into_iter().flatten().map(TaskView::of).collect();
        let replays = st.0.replays.all().iter().map(|p| p.describe()).collect();
        let fragments = match render(&chrome, &snap, replays, &tasks) {
            Ok(mut f) => {
                f.extend(head.map(|h| (TASKS_HEAD.to_string(), h.into())));
                f
            }
            Err(e) => {
                tracing::error!(error = %e, "dashboard fragment did not render");
                continue;
            }
        };
        if fragments == last {
            continue;
        }
        last = fragments.clone();
        seq += 1;
        tx.send_replace(Update {
            seq,
            fragments: Arc::new(fragments),
        });
    }
}

/// What one open page's stream keeps: the channel, what it sent the page
/// (so it sends only changes, and a missed update costs nothing), and the
/// task the page shows.
struct Page {
    rx: watch::Receiver<Update>,
    /// A hash of each fragment sent, by target.
    sent: HashMap<String, u64>,
    task: Option<String>,
    /// The page's session token, written into the fragments' forms.
    token: String,
    _watching: Option<Watching>,
    listing: Option<Listing>,
    _open: Open,
}

/// `html` (a shared fragment) with its forms' CSRF fields carrying `token`.
fn with_token(html: &str, token: &str) -> String {
    html.replace(CSRF_FIELD, &format!(r#"name="csrf_token" value="{token}""#))
}

/// A fragment's hash: what a stream remembers of what it sent.
fn digest(html: &str) -> u64 {
    let mut h = DefaultHasher::new();
    html.hash(&mut h);
    h.finish()
}

impl Page {
    /// The `<turbo-stream>` elements of `update` this page shows and has
    /// not been sent yet. A list page is told to refresh itself (Turbo
    /// fetches it again and morphs the difference in, keeping scroll and
    /// the stream) when the newest tasks changed, the first digest it
    /// sees included: the page may have been rendered before it.
    fn changes(&mut self, update: &Update) -> String {
        let mut data = String::new();
        for (target, html) in update.fragments.iter() {
            let mine = if target == TASKS_HEAD {
                self.listing.is_some()
            } else {
                !target.starts_with("task-")
                    || self.task.as_deref().map(task_target).as_ref() == Some(target)
            };
            let hash = digest(html);
            if !mine || self.sent.get(target) == Some(&hash) {
                continue;
            }
            if target == TASKS_HEAD {
                data.push_str("<turbo-stream action=\"refresh\"></turbo-stream>");
            } else {
                let html = with_token(html, &self.token);
                data.push_str(&format!(
                    "<turbo-stream action=\"replace\" target=\"{target}\"><template>{html}</template></turbo-stream>"
                ));
            }
            self.sent.insert(target.clone(), hash);
        }
        data
    }
}

/// `GET /events[?task=ID|?list=tasks]`: from now on, the changes to the
/// tables (and to task `ID`'s part of its page, or a refresh of a tasks
/// list when the newest tasks change) as SSE messages of `<turbo-stream>`
/// elements; a comment every 15 s keeps proxies from closing the stream.
/// `ID` is followed only when it names a task with a status, so junk ids
/// cannot take the poller's [`MAX_WATCHED`] places; past
/// `DASHBOARD_MAX_STREAMS` open streams the answer asks the browser to
/// retry in 30 s and ends. Every stream ends when the process
/// begins to stop.
/// The event stream's query: the task page that opened it (`?task=ID`),
/// or the tasks list (`?list=tasks`).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct EventsQuery {
    task: Option<String>,
    list: Option<String>,
}

pub(crate) async fn events(
    State(st): State<AppState>,
    session: Session,
    Query(EventsQuery { task, list }): Query<EventsQuery>,
) -> Response {
    let Some(open) = Open::start(&st) else {
        // A browser's EventSource gives up for good on any answer but a
        // stream; a stream that asks to be retried later and ends makes
        // it come back when a place may be free.
        let later = Event::default()
            .retry(FULL_RETRY)
            .comment("too many open event streams; retrying later");
        return Sse::new(futures::stream::iter([Ok::<_, Infallible>(later)])).into_response();
    };
    let mut task = task.filter(|id| stem::envelope::is_task_id(id));
    if let Some(id) = &task {
        // One read per opened page; an id without a status is not followed.
        match st.stem().status(id).await {
            Ok(Some(_)) => {}
            Ok(None) => task = None,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard event stream could not read its task");
                task = None;
            }
        }
    }
    let mut rx = st.0.hub.tx.subscribe();
    // What was published before this page was rendered is in the page.
    rx.borrow_and_update();
    let page = Page {
        rx,
        _watching: task.as_deref().and_then(|id| Watching::start(&st, id)),
        listing: (list.as_deref() == Some("tasks")).then(|| Listing::start(&st)),
        task,
        token: session.token,
        sent: HashMap::new(),
        _open: open,
    };
    let stream = futures::stream::unfold(page, |mut page| async move {
        loop {
            page.rx.changed().await.ok()?;
            let update = page.rx.borrow_and_update().clone();
            let data = page.changes(&update);
            if !data.is_empty() {
                let event = Event::default().id(update.seq.to_string()).data(data);
                return Some((Ok::<_, Infallible>(event), page));
            }
        }
    })
    .take_until(st.0.closing.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_forms_csrf_fields_get_the_token() {
        let html = format!(
            r#"<td>Processed for {CSRF_SLOT}</td><a href="/queues/{CSRF_SLOT}/x"></a><input type="hidden" {CSRF_FIELD}>"#
        );
        let out = with_token(&html, "T0K3N");
        assert_eq!(out.matches("T0K3N").count(), 1, "{out}");
        assert!(out.contains(r#"name="csrf_token" value="T0K3N""#), "{out}");
        assert_eq!(
            out.matches(CSRF_SLOT).count(),
            2,
            "task data untouched: {out}"
        );
    }
}
