//! The pages (GET routes of README "Dashboard"): each reads what it shows
//! through the library's admin, control and schedule APIs and renders an
//! askama template; plus the health checks and the 404 page.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use stem::envelope::{format_ms, is_task_id, now_ms, parse_ms, TaskStatus};
use stem::schedule::ScheduleSummary;

use crate::guard::Session;
use crate::task_list::{self, FilterQuery, Filters};
use crate::view::{self, LetterRow, QueueRow, Snapshot, TaskView};
use crate::AppState;

/// Dead letters listed per queue.
pub(crate) const LETTERS_PER_QUEUE: usize = 100;

/// What every page's frame needs: the base path, the session's CSRF
/// token, whether actions show, whether the demo keys are in use, the
/// title, which navigation entry is current and a notice left by the last
/// action.
pub(crate) struct Chrome {
    pub base: String,
    pub csrf: String,
    pub read_only: bool,
    /// The shipped placeholder signing keys are in use: a banner says so.
    pub demo_keys: bool,
    pub title: String,
    pub nav: &'static str,
    pub notice: Option<String>,
    /// The task whose live part the page's event stream follows.
    pub watch: Option<String>,
    /// Whether the page lists recent tasks: its event stream asks Turbo to
    /// refresh it when the newest tasks change.
    pub list: bool,
}

impl Chrome {
    pub(crate) fn new(
        st: &AppState,
        session: &Session,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Self {
        Self {
            base: st.base().to_string(),
            csrf: session.token.clone(),
            read_only: st.config().read_only,
            demo_keys: st.config().demo_keys,
            title: title.into(),
            nav,
            notice: None,
            watch: None,
            list: false,
        }
    }

    fn with_notice(mut self, query: &NoticeQuery) -> Self {
        self.notice = query.notice.clone().filter(|n| !n.is_empty());
        self
    }

    /// Whether the navigation entry `href` is this page's.
    pub(crate) fn is_current(&self, href: &str) -> bool {
        href == self.nav
    }

    /// The navigation: (path under the base, label).
    pub(crate) fn links(&self) -> [(&'static str, &'static str); 6] {
        [
            ("/", "Overview"),
            ("/queues", "Queues"),
            ("/tasks", "Tasks"),
            ("/workers", "Workers"),
            ("/schedules", "Schedules"),
            ("/dead-letters", "Dead letters"),
        ]
    }
}

/// The part of every page's query string the chrome reads: the notice an
/// action leaves for the page it redirects to (`?notice=…`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NoticeQuery {
    notice: Option<String>,
}

/// The dead-letter page's query: which queue to show (all when absent).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LettersQuery {
    #[serde(default)]
    queue: String,
}

/// A page that could not be read: the store did not answer.
pub(crate) struct Unavailable(stem::StemError);

impl From<stem::StemError> for Unavailable {
    fn from(e: stem::StemError) -> Self {
        Self(e)
    }
}

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "dashboard page could not be read");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not answer: {}\n", self.0),
        )
            .into_response()
    }
}

type Page<T> = Result<T, Unavailable>;

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
pub(crate) struct Overview {
    chrome: Chrome,
    snap: Snapshot,
}

pub(crate) async fn overview(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<NoticeQuery>,
) -> Page<Overview> {
    Ok(Overview {
        chrome: Chrome::new(&st, &session, "Overview", "/").with_notice(&q),
        snap: view::snapshot(st.stem()).await?,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "queues.html")]
pub(crate) struct Queues {
    chrome: Chrome,
    snap: Snapshot,
}

pub(crate) async fn queues(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<NoticeQuery>,
) -> Page<Queues> {
    Ok(Queues {
        chrome: Chrome::new(&st, &session, "Queues", "/queues").with_notice(&q),
        snap: view::snapshot(st.stem()).await?,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "queue.html")]
pub(crate) struct QueuePage {
    chrome: Chrome,
    row: QueueRow,
    letters: Vec<LetterRow>,
}

pub(crate) async fn queue(
    State(st): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, Unavailable> {
    let snap = view::snapshot(st.stem()).await?;
    let Some(row) = snap.queues.into_iter().find(|r| r.name == name) else {
        return Ok(not_found_page(
            &st,
            &session,
            format!("No queue named {name:?} is known."),
        ));
    };
    let letters = st.stem().admin().list_dead_letters(&name, 10).await?;
    Ok(QueuePage {
        chrome: Chrome::new(&st, &session, format!("Queue {name}"), "/queues").with_notice(&q),
        row,
        letters: letters.iter().map(LetterRow::of).collect(),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "workers.html")]
pub(crate) struct Workers {
    chrome: Chrome,
    snap: Snapshot,
}

pub(crate) async fn workers(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<NoticeQuery>,
) -> Page<Workers> {
    Ok(Workers {
        chrome: Chrome::new(&st, &session, "Workers", "/workers").with_notice(&q),
        snap: view::snapshot(st.stem()).await?,
    })
}

/// A schedule entry as the table shows it.
pub(crate) struct ScheduleRow {
    pub id: String,
    pub task: String,
    pub queue: String,
    pub spec: String,
    pub next_run_at: String,
    pub last_run_at: String,
    pub last_error: String,
    pub total_run_count: u64,
    pub enabled: bool,
}

impl From<ScheduleSummary> for ScheduleRow {
    fn from(s: ScheduleSummary) -> Self {
        Self {
            id: s.id,
            task: s.task,
            queue: s.queue,
            spec: s.spec,
            next_run_at: s.next_run_at.unwrap_or_else(|| "—".into()),
            last_run_at: s.last_run_at.unwrap_or_else(|| "never".into()),
            last_error: s.last_error.unwrap_or_default(),
            total_run_count: s.total_run_count,
            enabled: s.enabled,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "schedules.html")]
pub(crate) struct Schedules {
    chrome: Chrome,
    rows: Vec<ScheduleRow>,
}

pub(crate) async fn schedules(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<NoticeQuery>,
) -> Page<Schedules> {
    let mut entries = st.0.schedules.list().await?;
    // Soonest next run first, disabled last (as `stem schedule list`).
    entries.sort_by_key(|e| (!e.enabled, e.history.next_run_at, e.id.clone()));
    Ok(Schedules {
        chrome: Chrome::new(&st, &session, "Schedules", "/schedules").with_notice(&q),
        rows: entries.iter().map(|e| e.summary().into()).collect(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "dead_letters.html")]
pub(crate) struct DeadLetters {
    chrome: Chrome,
    queues: Vec<String>,
    queue: String,
    letters: Vec<LetterRow>,
    limit: usize,
    /// What the replay-all jobs of this process did or are doing.
    replays: Vec<String>,
}

pub(crate) async fn dead_letters(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<NoticeQuery>,
    Query(LettersQuery { queue }): Query<LettersQuery>,
) -> Page<DeadLetters> {
    let admin = st.stem().admin();
    let mut queues = admin.known_queues().await?;
    queues.sort();
    let shown: Vec<String> = if queue.is_empty() {
        queues.clone()
    } else {
        vec![queue.clone()]
    };
    let lists = futures::future::try_join_all(
        shown
            .iter()
            .map(|name| admin.list_dead_letters(name, LETTERS_PER_QUEUE)),
    )
    .await?;
    let mut letters: Vec<_> = lists.into_iter().flatten().collect();
    letters.sort_by_key(|d| std::cmp::Reverse(d.dead_at_ms));
    Ok(DeadLetters {
        chrome: Chrome::new(&st, &session, "Dead letters", "/dead-letters").with_notice(&q),
        queues,
        queue,
        letters: letters.iter().map(LetterRow::of).collect(),
        limit: LETTERS_PER_QUEUE,
        replays: st.0.replays.all().iter().map(|p| p.describe()).collect(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "tasks.html")]
pub(crate) struct Tasks {
    chrome: Chrome,
    filters: Filters,
    rows: Vec<task_list::Row>,
    /// A task typed into `q` by id that the index no longer lists.
    found: Option<TaskStatus>,
    reach: String,
    prev: Option<String>,
    next: Option<String>,
    queues: Vec<String>,
    task_names: Vec<String>,
    states: [&'static str; 6],
    page_sizes: [usize; 4],
}

pub(crate) async fn tasks(
    State(st): State<AppState>,
    session: Session,
    Query(notice): Query<NoticeQuery>,
    Query(query): Query<FilterQuery>,
) -> Result<Response, Unavailable> {
    let filters = Filters::parse(&query);
    let listing = st.stem().find_tasks(&filters.query()).await?;
    let found = if listing.rows.is_empty() && is_task_id(&filters.q) {
        st.stem().status(&filters.q).await?
    } else {
        None
    };
    let mut queues = st.stem().admin().known_queues().await?;
    queues.sort();
    let mut task_names = st.stem().registry().names();
    task_names.sort();
    let mut chrome = Chrome::new(&st, &session, "Tasks", "/tasks").with_notice(&notice);
    // Only the unfiltered first page follows new tasks: a filtered page
    // re-runs its whole scan (up to 20 000 tasks) on every refresh, and
    // would be refreshed about once a second under any traffic; it shows
    // a link to refresh it by hand instead.
    chrome.list = filters.page == 1 && !filters.is_filtered();
    Ok(Tasks {
        chrome,
        rows: task_list::rows(&listing),
        reach: task_list::reach(&listing),
        prev: (filters.page > 1).then(|| filters.href(filters.page - 1)),
        next: listing.has_more.then(|| filters.href(filters.page + 1)),
        found,
        filters,
        queues,
        task_names,
        states: task_list::STATES,
        page_sizes: task_list::PAGE_SIZES,
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "task.html")]
pub(crate) struct TaskPage {
    chrome: Chrome,
    task: TaskView,
    /// The spec as published, when the recent-task index still holds it.
    published: Option<Published>,
}

/// What the recent-task index adds to a task's page.
pub(crate) struct Published {
    pub args: String,
    /// "1024.0 KiB"-style size of the whole spec when the index keeps only
    /// the first KiB of its arguments.
    pub truncated: Option<String>,
    pub headers: String,
    pub at: String,
    /// Link to the task's trace (`STEM_TRACE_UI_URL`), when it has one.
    pub trace_url: Option<String>,
    pub trace_id: Option<String>,
}

pub(crate) async fn task(
    State(st): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, Unavailable> {
    let Some(status) = st.stem().status(&id).await? else {
        return Ok(not_found_page(
            &st,
            &session,
            format!("No task with id {id:?}: it never existed, or its result expired."),
        ));
    };
    let near = parse_ms(&status.created_at).unwrap_or_else(now_ms);
    let published = st
        .stem()
        .admin()
        .find_recent(&status.queue, &status.id, near)
        .await?
        .and_then(|r| Some((r.at_ms, r.truncated, r.spec().ok()?)))
        .map(|(at_ms, truncated, spec)| {
            let trace_id = spec
                .headers
                .get(stem::trace::TRACEPARENT_HEADER)
                .and_then(|tp| stem::trace::trace_id_of(tp));
            let pretty =
                |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
            Published {
                // A preview's args are a JSON string: shown as its text.
                args: match (&spec.args, truncated) {
                    (serde_json::Value::String(cut), Some(_)) => cut.clone(),
                    (args, _) => pretty(args),
                },
                truncated: truncated.map(|b| format!("{:.1} KiB", b as f64 / 1024.0)),
                headers: pretty(&serde_json::to_value(&spec.headers).unwrap_or_default()),
                at: format_ms(at_ms),
                trace_url: trace_id.as_ref().and_then(|t| {
                    st.config()
                        .trace_ui_url
                        .as_ref()
                        .map(|u| format!("{}/trace/{t}", u.trim_end_matches('/')))
                }),
                trace_id,
            }
        });
    let mut chrome = Chrome::new(
        &st,
        &session,
        format!("{} {}", status.task, status.id),
        "/tasks",
    )
    .with_notice(&q);
    chrome.watch = Some(status.id.clone());
    Ok(TaskPage {
        chrome,
        task: TaskView::of(status),
        published,
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "not_found.html")]
pub(crate) struct NotFound {
    chrome: Chrome,
    what: String,
}

fn not_found_page(st: &AppState, session: &Session, what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        NotFound {
            chrome: Chrome::new(st, session, "Not found", ""),
            what,
        },
    )
        .into_response()
}

pub(crate) async fn not_found(State(st): State<AppState>, session: Session) -> Response {
    not_found_page(&st, &session, "There is no page at this address.".into())
}

/// `GET /healthz`: the process answers.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the broker and backend answer (the
/// enqueuer's check and body).
pub(crate) async fn readyz(State(st): State<AppState>) -> Response {
    stem_service::http::readyz(st.stem()).await
}
