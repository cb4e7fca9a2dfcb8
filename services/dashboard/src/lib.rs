//! The operations dashboard (README "Dashboard") as a library, so the
//! `dashboard` binary and `stem dev` serve the same router.
//!
//! - [`router`]: the pages, actions, event stream and assets of
//!   README "Dashboard", under [`DashboardConfig::base_path`].
//! - [`DashboardConfig`]: `DASHBOARD_*` and `STEM_TRACE_UI_URL`.
//! - [`serve`]: binds, warns when exposed without auth, serves until
//!   shutdown.
//!
//! Pages are rendered on the server (askama); Hotwire Turbo, vendored under
//! `assets/`, turns links and forms into fetches and applies the
//! `<turbo-stream>` fragments the `live` module pushes over server-sent
//! events, so an open page stays current without a reload and without a
//! script of ours.

mod actions;
mod assets;
mod auth;
mod guard;
mod live;
mod pages;
mod replays;
mod settings;
mod task_list;
mod view;

pub use settings::{Credentials, DashboardConfig};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use stem::client::Stem;
use stem::schedule::ScheduleStore;
use tokio_util::sync::CancellationToken;

/// What every handler reads: the library handle, the schedule store, the
/// settings, the key session tokens are made with, the live-update hub and
/// the token that ends the event streams when the process stops.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    stem: Stem,
    schedules: Arc<dyn ScheduleStore>,
    config: DashboardConfig,
    session_key: guard::SessionKey,
    hub: live::Hub,
    /// Replay-all jobs running in the background, and the last of each
    /// queue.
    replays: replays::Replays,
    /// Cancelled when the server begins its graceful stop: every open
    /// event stream ends, so the stop does not wait on open pages.
    closing: CancellationToken,
}

impl AppState {
    /// State over `stem` and `schedules`. The key that binds CSRF tokens
    /// to session cookies is drawn at random once per process.
    pub fn new(stem: Stem, schedules: Arc<dyn ScheduleStore>, config: DashboardConfig) -> Self {
        Self(Arc::new(Inner {
            stem,
            schedules,
            config,
            session_key: guard::SessionKey::random(),
            hub: live::Hub::new(),
            replays: replays::Replays::default(),
            closing: CancellationToken::new(),
        }))
    }

    fn stem(&self) -> &Stem {
        &self.0.stem
    }

    fn config(&self) -> &DashboardConfig {
        &self.0.config
    }

    fn base(&self) -> &str {
        &self.0.config.base_path
    }

    /// Whether `path` is a health check, answered to anyone (container
    /// healthchecks, load balancers) without auth or host checks.
    fn is_health(&self, path: &str) -> bool {
        path.strip_prefix(self.base())
            .is_some_and(|rest| matches!(rest, "/healthz" | "/readyz"))
    }
}

/// The dashboard's routes under the base path `B`: the overview at `B/`
/// (and, with a base path, `B` itself redirects there), every other page
/// at `B/<route>`.
pub fn router(state: AppState) -> Router {
    let base = state.base().to_string();
    let at = |path: &str| format!("{base}{path}");
    let mut routes = Router::new()
        .route(&at("/"), get(pages::overview))
        .route(&at("/queues"), get(pages::queues))
        .route(&at("/queues/{queue}"), get(pages::queue))
        .route(&at("/tasks"), get(pages::tasks).post(actions::enqueue))
        .route(&at("/tasks/{id}"), get(pages::task))
        .route(&at("/workers"), get(pages::workers))
        .route(&at("/schedules"), get(pages::schedules))
        .route(&at("/dead-letters"), get(pages::dead_letters))
        .route(&at("/events"), get(live::events))
        .route(&at("/assets/{*file}"), get(assets::serve))
        .route(&at("/healthz"), get(pages::healthz))
        .route(&at("/readyz"), get(pages::readyz))
        .route(&at("/tasks/{id}/revoke"), post(actions::revoke))
        .route(
            &at("/dead-letters/{queue}/{entry}/replay"),
            post(actions::replay),
        )
        .route(
            &at("/dead-letters/{queue}/replay-all"),
            post(actions::replay_all),
        )
        .route(&at("/queues/{queue}/purge"), post(actions::purge))
        .route(&at("/queues/{queue}/forget"), post(actions::forget))
        .route(&at("/queues/{queue}/pause"), post(actions::pause))
        .route(&at("/queues/{queue}/resume"), post(actions::resume))
        .route(&at("/workers/{name}/ping"), post(actions::ping))
        .route(&at("/workers/{name}/shutdown"), post(actions::shutdown))
        .route(
            &at("/schedules/{id}/enable"),
            post(actions::enable_schedule),
        )
        .route(
            &at("/schedules/{id}/disable"),
            post(actions::disable_schedule),
        );
    if !base.is_empty() {
        let overview = at("/");
        routes = routes.route(
            &base,
            get(move || async move { axum::response::Redirect::permanent(&overview) }),
        );
    }
    routes
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::basic_auth,
        ))
        .layer(axum::middleware::from_fn(auth::security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `state` until `shutdown` fires; the live-update poller runs
/// alongside while any page is open.
pub async fn serve(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = state.config().clone();
    if config.exposed() && config.credentials.is_none() {
        tracing::warn!(
            host = %config.host,
            "dashboard bound beyond loopback without DASHBOARD_USERNAME/DASHBOARD_PASSWORD: \
             anyone who reaches it can act on your queues"
        );
    }
    tokio::spawn(live::poll(state.clone(), shutdown.clone()));
    let closing = state.0.closing.clone();
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "Dashboard listening on http://{}{}/",
        listener.local_addr()?,
        config.base_path
    );
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            // Open pages hold event streams that never end by themselves.
            closing.cancel();
        })
        .await?;
    // A replay-all job stops between two letters once closing; a letter is
    // never left half replayed (queued again but still a dead letter).
    state
        .0
        .replays
        .wait(std::time::Duration::from_secs(10))
        .await;
    Ok(())
}
