//! The actions (POST routes of README "Dashboard"), plain handlers: what may act
//! at all (CSRF token, origin, read-only) is decided before them by
//! [`crate::guard`]. Each goes through the library's typed admin, control
//! or schedule API and answers `303 See Other` to the page it came from
//! (its `Referer`, when that is a page of this dashboard) with a `notice`
//! saying what happened, which the page shows.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::Value;
use stem::client::{EnqueueOptions, EnqueueRequest};

use stem_service::host::split_authority;

use crate::AppState;

/// An action's form fields. Unlike axum's `Form`, a missing or malformed
/// body is no error here but no fields (the guard has let it through on
/// its `X-CSRF-Token` header): each action then says what is missing.
pub(crate) struct Fields(HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        Ok(Fields(pairs.into_iter().collect()))
    }
}

/// How long an action waits for workers to answer a command.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// `303` to the page the action came from (or `fallback`, a path under
/// the base), with `notice` in its query.
fn back(st: &AppState, headers: &HeaderMap, fallback: &str, notice: &str) -> Response {
    let base = st.base();
    let from = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| local_path(r, headers))
        .filter(|p| p == base || p.starts_with(&format!("{base}/")));
    let target = from.unwrap_or_else(|| format!("{base}{fallback}"));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("notice="))
        .collect();
    let notice = serde_urlencoded::to_string([("notice", notice)]).unwrap_or_default();
    pairs.push(&notice);
    let location = format!("{path}?{}", pairs.join("&"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// The path and query of `referer` when it names this host. Only the
/// host names are compared: a proxy may forward `Host` without the port
/// the browser used (nginx's `$host`), and the guard has already checked
/// where the action came from.
fn local_path(referer: &str, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let uri: axum::http::Uri = referer.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let name = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let path = uri.path_and_query()?.as_str();
    (name.eq_ignore_ascii_case(&split_authority(host).0) && !path.starts_with("//"))
        .then(|| path.to_string())
}

/// What an action reports when the store failed under it.
fn failed(what: &str, e: impl std::fmt::Display) -> String {
    tracing::warn!(error = %e, "dashboard action failed: {what}");
    format!("{what} failed: {e}")
}

/// Runs `work` and answers 303 back with the notice it returns.
async fn act<Fut>(st: &AppState, headers: &HeaderMap, fallback: &str, work: Fut) -> Response
where
    Fut: std::future::Future<Output = String>,
{
    let notice = work.await;
    back(st, headers, fallback, &notice)
}

/// `POST /tasks`: enqueue a registered task with JSON args.
pub(crate) async fn enqueue(
    State(st): State<AppState>,
    headers: HeaderMap,
    Fields(f): Fields,
) -> Response {
    act(&st, &headers, "/tasks", async {
        let request = match request_of(&f) {
            Ok(r) => r,
            Err(problem) => return problem,
        };
        let name = request.name.clone();
        match st.stem().enqueue_many(vec![request]).await {
            Ok(ids) => format!(
                "Enqueued {name} {}",
                ids.first().map(String::as_str).unwrap_or("")
            ),
            Err(e) => failed("enqueue", e),
        }
    })
    .await
}

/// The enqueue form as a request, or what is wrong with it.
fn request_of(f: &HashMap<String, String>) -> Result<EnqueueRequest, String> {
    let field = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let task = field("task").ok_or("Enqueue refused: no task chosen")?;
    let args: Value = match field("args") {
        None => Value::Object(Default::default()),
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| format!("Enqueue refused: args are not JSON ({e})"))?,
    };
    if !args.is_object() {
        return Err("Enqueue refused: args must be a JSON object".into());
    }
    let priority = field("priority")
        .map(|p| p.parse::<u8>().ok().filter(|p| *p <= 9))
        .map(|p| p.ok_or("Enqueue refused: priority must be 0 to 9"))
        .transpose()?;
    let countdown = field("countdown")
        .map(|c| c.parse::<u64>().map(Duration::from_secs))
        .transpose()
        .map_err(|_| "Enqueue refused: countdown must be whole seconds")?;
    let mut options = EnqueueOptions {
        queue: field("queue").map(str::to_string),
        priority,
        countdown,
        ..Default::default()
    };
    options
        .meta
        .insert("source".into(), Value::from("dashboard"));
    Ok(EnqueueRequest::new(task, args).with_options(options))
}

/// `POST /tasks/{id}/revoke`: persisted, then running copies are told.
pub(crate) async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    // A task id is a UUID, safe in a path; anything else goes back to the list.
    let page = if stem::envelope::is_task_id(&id) {
        format!("/tasks/{id}")
    } else {
        "/tasks".to_string()
    };
    act(&st, &headers, &page, async {
        match st.stem().revoke(&id, "revoked from the dashboard").await {
            Ok(None) => format!("No task with id {id}"),
            Ok(Some(before)) if before.state.is_terminal() => {
                format!("Task {id} had already finished ({})", before.state.as_str())
            }
            Ok(Some(_)) => {
                // Persisted first: a worker that misses the command drops
                // the task at its next status check.
                let told = st
                    .stem()
                    .workers()
                    .timeout(REPLY_WAIT)
                    .revoke(std::slice::from_ref(&id))
                    .await;
                if let Err(e) = told {
                    tracing::warn!(error = %e, task_id = %id, "revoke command not sent");
                }
                format!("Revoked task {id}")
            }
            Err(e) => failed("revoke", e),
        }
    })
    .await
}

/// `POST /dead-letters/{queue}/{entry}/replay`.
pub(crate) async fn replay(
    State(st): State<AppState>,
    Path((queue, entry)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/dead-letters", async {
        let replayed = async {
            match st.stem().admin().get_dead_letter(&queue, &entry).await? {
                Some(letter) => st.stem().replay_dead_letter(&queue, &letter).await,
                None => Ok(None),
            }
        };
        match replayed.await {
            Ok(Some(r)) => format!("Replayed {} {} (attempt {})", r.task, r.task_id, r.attempt),
            Ok(None) => format!(
                "Dead letter {entry} of {queue} was not replayed (gone already, or it holds no task)"
            ),
            Err(e) => failed("replay", e),
        }
    })
    .await
}

/// `POST /dead-letters/{queue}/replay-all`: starts replaying every dead
/// letter of the queue in the background ([`crate::replays`]); the
/// dead-letters page shows how far it got.
pub(crate) async fn replay_all(
    State(st): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/dead-letters", async {
        crate::replays::start(&st, &queue)
            .await
            .unwrap_or_else(|e| failed(&format!("replay of {queue}"), e))
    })
    .await
}

/// `POST /queues/{queue}/purge`.
pub(crate) async fn purge(
    State(st): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/queues", async {
        match st.stem().admin().purge(&queue).await {
            Ok(n) => format!("Purged {n} tasks from {queue}"),
            Err(e) => failed("purge", e),
        }
    })
    .await
}

/// `POST /queues/{queue}/forget`: an empty queue nothing consumes stops
/// being listed ([`stem::Stem::forget_queue`]); then the queues page,
/// since the queue's own page has nothing left to show.
pub(crate) async fn forget(
    State(st): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    match st.stem().forget_queue(&queue).await {
        Ok(true) => back(
            &st,
            &HeaderMap::new(),
            "/queues",
            &format!("Forgot queue {queue}"),
        ),
        Ok(false) => back(
            &st,
            &headers,
            "/queues",
            &format!("No queue {queue} to forget"),
        ),
        Err(e) => back(&st, &headers, "/queues", &failed("forget", e)),
    }
}

/// `POST /queues/{queue}/pause`: persisted, then workers are told.
pub(crate) async fn pause(
    State(st): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/queues", set_paused(&st, &queue, true)).await
}

/// `POST /queues/{queue}/resume`.
pub(crate) async fn resume(
    State(st): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/queues", set_paused(&st, &queue, false)).await
}

async fn set_paused(st: &AppState, queue: &str, paused: bool) -> String {
    if let Err(e) = stem::config::validate_queue_name("queue", queue) {
        return format!("Not a queue name: {e}");
    }
    // Persisted, then told (Workers::pause).
    let queues = [queue.to_string()];
    let workers = st.stem().workers().timeout(REPLY_WAIT);
    let sent = if paused {
        workers.pause(&queues).await.map(drop)
    } else {
        workers.resume(&queues).await.map(drop)
    };
    match sent {
        Ok(()) if paused => format!("Paused {queue}"),
        Ok(()) => format!("Resumed {queue}"),
        Err(e) => failed(if paused { "pause" } else { "resume" }, e),
    }
}

/// `POST /workers/{name}/ping`.
pub(crate) async fn ping(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/workers", async {
        let began = std::time::Instant::now();
        let to = st.stem().workers().only(std::slice::from_ref(&name));
        match to.timeout(REPLY_WAIT).ping().await {
            Ok(ex) if ex.answered().next().is_some() => {
                format!("{name} answered in {} ms", began.elapsed().as_millis())
            }
            Ok(_) => silent(&name),
            Err(e) => failed("ping", e),
        }
    })
    .await
}

/// `POST /workers/{name}/shutdown`: the worker stops fetching, finishes
/// what it runs (up to its grace) and exits.
pub(crate) async fn shutdown(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/workers", async {
        let to = st.stem().workers().only(std::slice::from_ref(&name));
        match to.timeout(REPLY_WAIT).shutdown().await {
            Ok(ex) if ex.answered().next().is_some() => format!("{name} is shutting down"),
            Ok(_) => silent(&name),
            Err(e) => failed("shutdown", e),
        }
    })
    .await
}

fn silent(name: &str) -> String {
    format!("{name} did not answer within {} s", REPLY_WAIT.as_secs())
}

/// `POST /schedules/{id}/enable`.
pub(crate) async fn enable_schedule(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/schedules", set_enabled(&st, &id, true)).await
}

/// `POST /schedules/{id}/disable`.
pub(crate) async fn disable_schedule(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, "/schedules", set_enabled(&st, &id, false)).await
}

async fn set_enabled(st: &AppState, id: &str, enabled: bool) -> String {
    match st.0.schedules.set_enabled(id, enabled, Utc::now()).await {
        Ok(Some(_)) if enabled => format!("Enabled schedule {id}"),
        Ok(Some(_)) => format!("Disabled schedule {id}"),
        Ok(None) => format!("No schedule {id}"),
        Err(e) => failed("schedule change", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_referers_are_followed() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:3080".parse().expect("host"));
        assert_eq!(
            local_path("http://127.0.0.1:3080/ops/queues?x=1", &h).as_deref(),
            Some("/ops/queues?x=1")
        );
        assert_eq!(local_path("http://evil.example/ops/queues", &h), None);
        assert_eq!(local_path("http://127.0.0.1:3080//evil.example/", &h), None);
        assert_eq!(local_path("javascript:alert(1)", &h), None);
        assert_eq!(local_path("ftp://127.0.0.1:3080/ops", &h), None);
        assert_eq!(
            local_path("http://user@127.0.0.1/ops?notice=x", &h).as_deref(),
            Some("/ops?notice=x"),
            "user information is no part of the host, and a proxy may drop the port"
        );
        let mut v6 = HeaderMap::new();
        v6.insert(header::HOST, "[::1]:3080".parse().expect("host"));
        assert_eq!(
            local_path("http://[::1]:3080/tasks", &v6).as_deref(),
            Some("/tasks")
        );
    }

    #[test]
    fn the_enqueue_form_is_checked() {
        let form = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(request_of(&form(&[("args", "{}")])).is_err());
        let bad = request_of(&form(&[("task", "t"), ("args", "[1]")])).expect_err("array");
        assert!(bad.contains("JSON object"), "{bad}");
        let bad = request_of(&form(&[("task", "t"), ("args", "{")])).expect_err("json");
        assert!(bad.contains("not JSON"), "{bad}");
        let bad = request_of(&form(&[("task", "t"), ("priority", "12")])).expect_err("prio");
        assert!(bad.contains("0 to 9"), "{bad}");
        let ok = request_of(&form(&[
            ("task", "t"),
            ("args", r#"{"a":1}"#),
            ("priority", "3"),
        ]))
        .expect("valid");
        assert_eq!(ok.name, "t");
    }
}
