//! Live updates: one poller per dashboard process reads the
//! [`Snapshot`](crate::view::Snapshot) every [`TICK`] while at least one
//! page is open and, when a table changed, renders the tables as
//! `<turbo-stream action="replace">` fragments for every open page's
//! `GET /events` stream (server-sent events, which Turbo's
//! `<turbo-stream-source>` applies). Open tabs cost one channel receiver
//! each, not a poll each.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pages::Chrome;
use crate::view::{self, Snapshot};
use crate::AppState;

/// How often the poller reads while a page is open.
pub const TICK: Duration = Duration::from_secs(1);

/// The latest fragments, numbered so a stream sends each change once.
#[derive(Clone, Default)]
pub struct Update {
    pub seq: u64,
    /// `<turbo-stream>` elements, one per table.
    pub streams: Arc<Vec<String>>,
}

/// The channel between the poller and the open pages.
pub struct Hub {
    tx: watch::Sender<Update>,
}

impl Hub {
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Update::default()),
        }
    }
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

/// The fragments of `snap`, by target id.
fn render(chrome: &Chrome, snap: &Snapshot) -> askama::Result<[(&'static str, String); 4]> {
    Ok([
        ("totals", Totals { snap }.render()?),
        ("throughput", Throughput { snap }.render()?),
        ("queue-table", QueueTable { chrome, snap }.render()?),
        ("worker-table", WorkerTable { chrome, snap }.render()?),
    ])
}

/// Reads and publishes while pages are open, until `stop`.
pub async fn poll(st: AppState, stop: CancellationToken) {
    let tx = &st.0.hub.tx;
    let chrome = Chrome::new(&st, "", "");
    let mut last: Vec<(&'static str, String)> = Vec::new();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if tx.receiver_count() == 0 {
            // Nobody watches: forget, so the next page gets a full picture.
            last.clear();
            continue;
        }
        let snap = match view::snapshot(st.stem()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard poll failed");
                continue;
            }
        };
        let fragments = match render(&chrome, &snap) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "dashboard fragment did not render");
                continue;
            }
        };
        if fragments.iter().eq(last.iter()) {
            continue;
        }
        // Every table goes out, not only the changed ones: a page that
        // missed an update (the channel keeps the latest only) is whole
        // again with the next.
        let streams: Vec<String> = fragments
            .iter()
            .map(|(target, html)| {
                format!(
                    "<turbo-stream action=\"replace\" target=\"{target}\"><template>{html}</template></turbo-stream>"
                )
            })
            .collect();
        last = fragments.into();
        seq += 1;
        tx.send_replace(Update {
            seq,
            streams: Arc::new(streams),
        });
    }
}

/// `GET /events`: the changes from now on, as SSE messages of
/// `<turbo-stream>` elements (a comment every 15 s keeps proxies from
/// closing the stream).
pub async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = st.0.hub.tx.subscribe();
    // What was published before this page was rendered is in the page.
    rx.borrow_and_update();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let update = rx.borrow_and_update().clone();
        let data = update.streams.join("");
        Some((
            Ok(Event::default().id(update.seq.to_string()).data(data)),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
