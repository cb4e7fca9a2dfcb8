//! The `dashboard` binary over HTTP, against a real Redis and real
//! workers: every page answers, unknown ids get the 404 page, actions need
//! the CSRF token (403 and nothing changed without it), answer 303 to the
//! page they came from and change what the pages show; basic auth,
//! read-only mode and a base path; and the event stream carries
//! `<turbo-stream>` fragments within 2 s of a change.

use std::time::Duration;

use serde_json::json;
use stem_e2e::{
    hmac_key, poll_until, signed, start_dashboard, start_enqueuer, start_worker, stream_until,
    Dashboard, RedisServer, ServiceProcess, Stem,
};

/// The session cookie every request of these tests carries, as a browser
/// keeps the one the dashboard set: the CSRF tokens its pages carry are
/// made for it (any well-formed value serves).
const SESSION: &str = "stem_csrf=c2Vzc2lvbi1jb29raWUtb2YtdGhlLWUyZS10ZXN0cyE";

/// A client that does not follow redirects, so a 303 can be checked, and
/// holds the session cookie.
fn client() -> reqwest::Client {
    client_with(Some(SESSION))
}

/// A client holding `cookie` (none: a browser on its first visit).
fn client_with(cookie: Option<&str>) -> reqwest::Client {
    stem::redis_conn::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(c) = cookie {
        headers.insert(reqwest::header::COOKIE, c.parse().expect("cookie"));
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .expect("client")
}

/// GET `path` of `dash`: status and body.
async fn get(dash: &Dashboard, path: &str) -> anyhow::Result<(u16, String)> {
    let r = client().get(dash.url(path)).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// The CSRF token a page carries.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    let start = page
        .find(r#"<meta name="csrf-token" content=""#)
        .ok_or_else(|| anyhow::anyhow!("no csrf-token meta in the page"))?
        + r#"<meta name="csrf-token" content=""#.len();
    let end = page[start..]
        .find('"')
        .ok_or_else(|| anyhow::anyhow!("unterminated csrf-token"))?;
    Ok(page[start..start + end].to_string())
}

/// POST `path` as the page `from` (its Referer) with `fields`; returns
/// the status and the Location.
async fn post(
    dash: &Dashboard,
    path: &str,
    from: &str,
    fields: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let r = client()
        .post(dash.url(path))
        .header("referer", dash.url(from))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(fields)?)
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((r.status().as_u16(), location))
}

/// Polls page `path` until it contains `needle`.
async fn wait_page(dash: &Dashboard, path: &str, needle: &str) -> anyhow::Result<String> {
    poll_until(
        &format!("{path} to show {needle:?}"),
        Duration::from_secs(20),
        || async {
            let (status, body) = get(dash, path).await?;
            Ok((status == 200 && body.contains(needle)).then_some(body))
        },
    )
    .await
}

/// The task id a notice `Enqueued <task> <id>` names in a Location.
fn enqueued_id(location: &str) -> anyhow::Result<String> {
    let notice = location
        .split("notice=")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no notice in {location}"))?;
    let decoded: Vec<(String, String)> = serde_urlencoded::from_str(&format!("n={notice}"))?;
    let text = &decoded[0].1;
    anyhow::ensure!(text.starts_with("Enqueued "), "{text}");
    text.rsplit(' ')
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no id in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_and_actions_change_what_they_show() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "dash-worker", "greetings", &[]).await?;
    let dash = start_dashboard(&url, &[]).await?;

    // Every page answers, carries the token and loads nothing from
    // elsewhere: every src and href is a path of this dashboard.
    let mut token = String::new();
    for path in [
        "/",
        "/queues",
        "/tasks",
        "/workers",
        "/schedules",
        "/dead-letters",
    ] {
        let r = client().get(dash.url(path)).send().await?;
        assert_eq!(r.status(), 200, "{path}");
        let csp = r
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        // Live pages are never cached (nor parked with their event stream
        // open in a back/forward cache).
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        let page = r.text().await?;
        token = csrf_of(&page)?;
        for attr in ["src=\"", "href=\""] {
            for link in page.split(attr).skip(1) {
                assert!(
                    link.starts_with('/') && !link.starts_with("//"),
                    "{path} links elsewhere: {attr}{}",
                    &link[..link.len().min(60)]
                );
            }
        }
    }
    let workers = wait_page(&dash, "/workers", "dash-worker").await?;
    assert!(workers.contains("greetings"), "{workers}");
    let (status, turbo) = get(&dash, "/assets/turbo.js").await?;
    assert_eq!(status, 200);
    assert!(
        turbo.contains("Turbo 8.0.23"),
        "the vendored Turbo is served"
    );

    // Unknown ids and routes: the 404 page.
    let (status, page) = get(&dash, "/tasks/no-such-task").await?;
    assert_eq!(status, 404);
    assert!(page.contains("No task with id"), "{page}");
    assert_eq!(get(&dash, "/no/such/page").await?.0, 404);
    assert_eq!(get(&dash, "/queues/no-such-queue").await?.0, 404);

    // Without the token (or with another one): 403 and nothing changes.
    let (status, _) = post(&dash, "/queues/greetings/pause", "/queues", &[]).await?;
    assert_eq!(status, 403);
    let (status, _) = post(
        &dash,
        "/queues/greetings/pause",
        "/queues",
        &[("csrf_token", "forged")],
    )
    .await?;
    assert_eq!(status, 403);
    let (_, queue) = get(&dash, "/queues/greetings").await?;
    assert!(
        queue.contains(r#"<span class="value">active</span>"#),
        "{queue}"
    );

    // With it: 303 back to the page, whose notice and content show it.
    let (status, location) = post(
        &dash,
        "/queues/greetings/pause",
        "/queues/greetings",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert_eq!(location, "/queues/greetings?notice=Paused+greetings");
    let paused = wait_page(
        &dash,
        "/queues/greetings",
        r#"<span class="value">paused</span>"#,
    )
    .await?;
    assert!(
        !paused.contains("/pause\""),
        "a paused queue offers resume only"
    );
    assert!(
        paused.contains(r#"Oldest ready</span><span class="value">—</span>"#),
        "nothing waits yet"
    );
    // A task published while the queue is paused waits, and its age shows.
    let (status, _) = post(
        &dash,
        "/tasks",
        "/tasks",
        &[
            ("csrf_token", &token),
            ("task", "greeting.send"),
            ("args", r#"{"name":"Waiting"}"#),
        ],
    )
    .await?;
    assert_eq!(status, 303);
    let waiting = wait_page(
        &dash,
        "/queues/greetings",
        "Ready</span><span class=\"value\">1<",
    )
    .await?;
    assert!(
        !waiting.contains(r#"Oldest ready</span><span class="value">—</span>"#),
        "the waiting task is dated: {waiting}"
    );
    // The token also works as a header.
    let r = client()
        .post(dash.url("/queues/greetings/resume"))
        .header("x-csrf-token", &token)
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    wait_page(
        &dash,
        "/queues/greetings",
        r#"<span class="value">active</span>"#,
    )
    .await?;

    // Enqueue from the dashboard: the task runs.
    let (status, location) = post(
        &dash,
        "/tasks",
        "/tasks",
        &[
            ("csrf_token", &token),
            ("task", "greeting.send"),
            ("args", r#"{"name":"Dash"}"#),
        ],
    )
    .await?;
    assert_eq!(status, 303, "{location}");
    let id = enqueued_id(&location)?;
    wait_page(&dash, &format!("/tasks/{id}"), "state-succeeded").await?;
    let (_, found) = get(&dash, &format!("/tasks?q={id}")).await?;
    assert!(
        found.contains(&format!("/tasks/{id}")),
        "the id finds the task"
    );

    // The overview's chart counts it (the worker adds its counts with its
    // heartbeat), and the count is in Redis: another dashboard shows it.
    // (Two: the one that waited out the pause, and this one.)
    wait_page(&dash, "/", "2 succeeded · 0 failed").await?;
    let second = start_dashboard(&url, &[]).await?;
    let (_, again) = get(&second, "/").await?;
    assert!(again.contains("2 succeeded · 0 failed"), "{again}");

    // Bad arguments are refused with a notice, and nothing is enqueued.
    let (status, location) = post(
        &dash,
        "/tasks",
        "/tasks",
        &[
            ("csrf_token", &token),
            ("task", "greeting.send"),
            ("args", "{nope"),
        ],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(location.contains("not+JSON"), "{location}");

    // Revoke a running task: it shows cancelled.
    let (_, location) = post(
        &dash,
        "/tasks",
        "/tasks",
        &[
            ("csrf_token", &token),
            ("task", "greeting.send"),
            ("args", r#"{"name":"Slow","delayMs":20000}"#),
        ],
    )
    .await?;
    let slow = enqueued_id(&location)?;
    wait_page(&dash, &format!("/tasks/{slow}"), "state-running").await?;
    let (status, location) = post(
        &dash,
        &format!("/tasks/{slow}/revoke"),
        &format!("/tasks/{slow}"),
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(
        location.starts_with(&format!("/tasks/{slow}?notice=Revoked")),
        "{location}"
    );
    let cancelled = wait_page(&dash, &format!("/tasks/{slow}"), "state-cancelled").await?;
    assert!(
        !cancelled.contains("/revoke\""),
        "a finished task offers no revoke"
    );

    // Ping a worker.
    let (status, location) = post(
        &dash,
        "/workers/dash-worker/ping",
        "/workers",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(location.contains("answered+in"), "{location}");

    // Disable and enable a schedule.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("s.yaml");
    std::fs::write(
        &file,
        "entries:\n  - id: nightly\n    task: greeting.send\n    queue: greetings\n    spec: \"0 3 * * *\"\n",
    )?;
    Stem::new(&url).ok(&["schedule", "apply", "--file", &file.display().to_string()])?;
    wait_page(&dash, "/schedules", "nightly").await?;
    let (status, _) = post(
        &dash,
        "/schedules/nightly/disable",
        "/schedules",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    wait_page(&dash, "/schedules", "/schedules/nightly/enable").await?;
    let shown = Stem::new(&url).json(&["schedule", "show", "nightly"])?;
    assert_eq!(shown["enabled"], false, "{shown}");

    // Forget a queue nothing uses (issue 24, W16): offered once it is
    // empty; refused for a queue a live worker consumes.
    Stem::new(&url).ok(&["task", "enqueue", "billing.charge"])?;
    let busy = wait_page(
        &dash,
        "/queues/billing",
        "Ready</span><span class=\"value\">1<",
    )
    .await?;
    assert!(
        !busy.contains("/forget\""),
        "a queue holding a task offers no forget"
    );
    let (status, _) = post(
        &dash,
        "/queues/billing/purge",
        "/queues/billing",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    wait_page(&dash, "/queues/billing", "/queues/billing/forget\"").await?;
    let (status, location) = post(
        &dash,
        "/queues/billing/forget",
        "/queues/billing",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert_eq!(location, "/queues?notice=Forgot+queue+billing");
    assert_eq!(get(&dash, "/queues/billing").await?.0, 404);
    let (_, location) = post(
        &dash,
        "/queues/greetings/forget",
        "/queues/greetings",
        &[("csrf_token", &token)],
    )
    .await?;
    assert!(location.contains("consumed+by+live+workers"), "{location}");
    assert_eq!(get(&dash, "/queues/greetings").await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_and_replayed() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let key = hmac_key("k1");
    // A worker holding another secret under the same id dead-letters it.
    let mut wrong = start_worker(&url, "wrong-key", "greetings", &signed(&hmac_key("k1"))).await?;
    let enq = start_enqueuer(&url, &signed(&key)).await?;
    let dash = start_dashboard(&url, &signed(&key)).await?;
    // Two letters for replay-all, then one to replay alone.
    let more = [
        enq.api.enqueue(json!({"name": "Earlier 1"})).await?,
        enq.api.enqueue(json!({"name": "Earlier 2"})).await?,
    ];
    let id = enq.api.enqueue(json!({"name": "Letter"})).await?;
    for other in &more {
        wait_page(&dash, "/dead-letters", other).await?;
    }
    let letters = wait_page(&dash, "/dead-letters", &id).await?;
    assert!(letters.contains("signature-invalid"), "{letters}");
    let filtered = wait_page(&dash, "/dead-letters?queue=greetings", &id).await?;
    let token = csrf_of(&filtered)?;
    wrong.sigterm()?;
    wrong.wait_exit(Duration::from_secs(15))?;
    let _right = start_worker(&url, "right-key", "greetings", &signed(&key)).await?;

    // The replay button's form in `id`'s row (letters that died in one
    // batch may be listed in any order):
    // /dead-letters/{queue}/{entry}/replay.
    let row = filtered
        .split("<tr>")
        .find(|row| row.contains(&format!("<small>{id}</small>")))
        .ok_or_else(|| anyhow::anyhow!("no row for {id}: {filtered}"))?;
    let action = row
        .split("action=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap_or(0)])
        .find(|a| a.ends_with("/replay"))
        .ok_or_else(|| anyhow::anyhow!("no replay form in {row}"))?
        .to_string();
    let (status, location) = post(
        &dash,
        &action,
        "/dead-letters?queue=greetings",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(
        location.starts_with("/dead-letters?queue=greetings&notice=Replayed"),
        "{location}"
    );
    enq.api
        .wait_state(&id, "succeeded", Duration::from_secs(20))
        .await?;
    let (_, after) = get(&dash, "/dead-letters").await?;
    assert!(!after.contains(&id), "the replayed letter left the list");

    // Replay-all answers at once and works in the background; the page
    // shows how far it got.
    let (status, location) = post(
        &dash,
        "/dead-letters/greetings/replay-all",
        "/dead-letters",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(
        location.contains("Replaying+2+dead+letters+of+greetings+in+the+background"),
        "{location}"
    );
    wait_page(
        &dash,
        "/dead-letters",
        "Replayed 2 dead letters of greetings",
    )
    .await?;
    for other in &more {
        enq.api
            .wait_state(other, "succeeded", Duration::from_secs(20))
            .await?;
    }
    let (status, location) = post(
        &dash,
        "/dead-letters/greetings/replay-all",
        "/dead-letters",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    assert!(location.contains("no+dead+letters+to+replay"), "{location}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_read_only_and_a_base_path() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let dash = start_dashboard(
        &url,
        &[
            ("DASHBOARD_BASE_PATH", "/ops".to_string()),
            ("DASHBOARD_USERNAME", "ops".to_string()),
            ("DASHBOARD_PASSWORD", "s3cret pass".to_string()),
        ],
    )
    .await?;
    let c = client();
    // Health checks answer without credentials; pages and assets do not.
    assert_eq!(c.get(dash.url("/healthz")).send().await?.status(), 200);
    for path in ["/", "/queues", "/assets/turbo.js", "/events"] {
        let r = c.get(dash.url(path)).send().await?;
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
    }
    let wrong = c
        .get(dash.url("/"))
        .basic_auth("ops", Some("guess"))
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let page = c
        .get(dash.url("/"))
        .basic_auth("ops", Some("s3cret pass"))
        .send()
        .await?
        .text()
        .await?;
    // Every link, form, asset and the event stream carry the base path.
    for needle in [
        r#"src="/ops/assets/turbo.js""#,
        r#"href="/ops/assets/app.css""#,
        r#"<turbo-stream-source src="/ops/events">"#,
        r#"href="/ops/queues""#,
        r#"href="/ops/dead-letters""#,
    ] {
        assert!(page.contains(needle), "{needle} in {page}");
    }
    for link in page.split("href=\"").skip(1) {
        assert!(
            link.starts_with("/ops/"),
            "a link outside the base path: {link:.40}"
        );
    }
    let bare = c
        .get(format!("http://127.0.0.1:{}/ops", dash.port))
        .basic_auth("ops", Some("s3cret pass"))
        .send()
        .await?;
    assert!(bare.status().is_redirection(), "{}", bare.status());
    assert_eq!(bare.headers()["location"], "/ops/");
    let outside = c
        .get(format!("http://127.0.0.1:{}/queues", dash.port))
        .basic_auth("ops", Some("s3cret pass"))
        .send()
        .await?;
    assert_eq!(outside.status(), 404);

    // Read-only: no action is offered, and each is refused even with the
    // token.
    let ro = start_dashboard(&url, &[("DASHBOARD_READ_ONLY", "true".to_string())]).await?;
    let (_, page) = get(&ro, "/tasks").await?;
    assert!(page.contains("read-only"), "{page}");
    assert!(
        !page.contains("method=\"post\""),
        "no action form when read-only"
    );
    let token = csrf_of(&page)?;
    let (status, _) = post(
        &ro,
        "/queues/greetings/pause",
        "/queues",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_a_fragment_within_two_seconds_of_a_change() -> anyhow::Result<()>
{
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "sse-worker", "greetings", &[]).await?;
    let dash = start_dashboard(&url, &[]).await?;
    let token = csrf_of(&get(&dash, "/").await?.1)?;
    let mut r = client().get(dash.url("/events")).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str()?,
        "text/event-stream",
        "an SSE stream"
    );
    // The first picture arrives once the poller sees the open page.
    stream_until(
        &mut r,
        r#"<turbo-stream action="replace" target="queue-table">"#,
        Duration::from_secs(5),
    )
    .await?;

    // A change (a pause) is on the stream within 2 s.
    let (status, _) = post(
        &dash,
        "/queues/greetings/pause",
        "/",
        &[("csrf_token", &token)],
    )
    .await?;
    assert_eq!(status, 303);
    stream_until(
        &mut r,
        r#"<span class="badge">paused</span>"#,
        Duration::from_secs(2),
    )
    .await?;
    Ok(())
}

/// A task's page follows that task: its stream carries the task's part
/// until it finishes, and only that page's stream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_page_follows_its_task_until_it_finishes() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "follow-worker", "greetings", &[]).await?;
    let enq = start_enqueuer(&url, &[]).await?;
    let dash = start_dashboard(&url, &[]).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "Followed", "delayMs": 1500}))
        .await?;
    let (_, page) = get(&dash, &format!("/tasks/{id}")).await?;
    assert!(
        page.contains(&format!(r#"<turbo-stream-source src="/events?task={id}">"#)),
        "the page's stream names its task: {page}"
    );
    let mut other = client().get(dash.url("/events")).send().await?;
    let mut mine = client()
        .get(dash.url(&format!("/events?task={id}")))
        .send()
        .await?;
    let target = format!(r#"<turbo-stream action="replace" target="task-{id}">"#);
    let mut seen = String::new();
    let finished = tokio::time::timeout(Duration::from_secs(15), async {
        // Until the last fragment of the task's part shows it succeeded.
        let done = |seen: &str| {
            seen.rfind(&target)
                .is_some_and(|i| seen[i..].contains("state-succeeded"))
        };
        while !done(&seen) {
            match mine.chunk().await? {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => anyhow::bail!("stream ended"),
            }
        }
        Ok(())
    })
    .await;
    finished.map_err(|_| anyhow::anyhow!("the task's part never showed succeeded: {seen}"))??;
    // The overview's stream got the tables, never the task.
    let mut overview = String::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(300), other.chunk()).await {
        match next? {
            Some(c) => overview.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    assert!(overview.contains("queue-table"), "{overview}");
    assert!(!overview.contains("target=\"task-"), "{overview}");
    Ok(())
}

/// The tasks page lists recent tasks newest first from the recent-task
/// index, filters them by state, queue, task and text (id, args or
/// error), pages them; a task's page shows its args, timeline and a link
/// to its trace; a list page's stream asks for a refresh when a task is
/// enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_page_filters_pages_and_links_a_task_to_its_trace() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "list-worker", "greetings,reporting", &[]).await?;
    // Tracing on (to a port nobody serves): tasks carry a traceparent.
    let otlp = format!("http://127.0.0.1:{}/v1/traces", stem_e2e::free_port());
    let enq = start_enqueuer(&url, &[("STEM_OTLP_ENDPOINT", otlp)]).await?;
    let dash = start_dashboard(
        &url,
        &[("STEM_TRACE_UI_URL", "http://localhost:8080/jaeger/".into())],
    )
    .await?;
    let ada = enq
        .api
        .enqueue_succeeded(json!({"name": "Ada Lovelace"}))
        .await?;
    let broken = enq
        .api
        .enqueue(json!({"task": "reports.publish", "name": "Bob", "delayMs": 1, "fail": true}))
        .await?;
    // Two retries, then failed for good (about 6 s of backoff).
    enq.api
        .wait_state(&broken, "failed", Duration::from_secs(30))
        .await?;
    let mut guests = Vec::new();
    for i in 0..30 {
        guests.push(
            enq.api
                .enqueue(json!({"name": format!("Guest {i}"), "delayMs": 1}))
                .await?,
        );
    }
    let shows = |page: &str, ids: &[&String]| ids.iter().all(|id| page.contains(id.as_str()));
    // A busy producer's index writes land together within 100 ms.
    let first = wait_page(&dash, "/tasks", &guests[29]).await?;
    let at = |id: &str| first.find(id).unwrap_or(usize::MAX);
    assert!(at(&guests[29]) < at(&guests[28]), "newest first");
    assert!(shows(&first, &guests[5..].iter().collect::<Vec<_>>()));
    assert!(
        !first.contains(&guests[4]) && !first.contains(&ada),
        "25 a page"
    );
    assert!(
        first.contains(r#"href="/tasks?page=2" rel="next""#),
        "{first}"
    );
    let (_, second) = get(&dash, "/tasks?page=2").await?;
    assert!(shows(&second, &[&guests[0], &broken, &ada]), "{second}");
    assert!(!second.contains("rel=\"next\"") && second.contains("rel=\"prev\""));
    let (_, all) = get(&dash, "/tasks?pageSize=50").await?;
    assert!(shows(
        &all,
        &guests.iter().chain([&ada, &broken]).collect::<Vec<_>>()
    ));

    for (query, hit, miss) in [
        ("state=failed", &broken, &ada),
        ("queue=reporting", &broken, &ada),
        ("task=greeting.send&q=LOVELACE", &ada, &broken),
        ("q=synthetic+FAILURE", &broken, &ada),
        ("q=", &ada, &broken),
    ] {
        let (status, page) = get(&dash, &format!("/tasks?{query}&pageSize=50")).await?;
        assert_eq!(status, 200, "{query}");
        assert!(page.contains(hit.as_str()), "{query} finds {hit}");
        if query != "q=" {
            assert!(!page.contains(miss.as_str()), "{query} leaves out {miss}");
        }
    }
    let (status, bogus) = get(&dash, "/tasks?state=bogus&page=x&pageSize=-1").await?;
    assert_eq!(status, 200, "bad filters fall back to none");
    assert!(bogus.contains(&guests[29]));

    // A task's page: args, timeline and its trace.
    let (_, task) = get(&dash, &format!("/tasks/{ada}")).await?;
    assert!(
        task.contains("<h2>Arguments</h2>\n<pre>{\n  &#34;name&#34;: &#34;Ada Lovelace&#34;"),
        "{task}"
    );
    assert!(
        task.contains("<h2>Timeline</h2>") && task.contains("succeeded (attempt 0)"),
        "{task}"
    );
    let link = "href=\"http://localhost:8080/jaeger/trace/";
    let trace = task
        .split(link)
        .nth(1)
        .map(|rest| &rest[..rest.find('"').unwrap_or(0)])
        .unwrap_or_default();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "a trace link: {task}"
    );

    // A list page follows new tasks: its stream asks Turbo to refresh.
    assert!(first.contains(r#"<turbo-stream-source src="/events?list=tasks">"#));
    // A filtered one does not (each refresh re-runs its scan): it offers a
    // refresh link instead.
    for query in [
        "state=failed",
        "q=nomatch",
        "queue=greetings&task=greeting.send",
    ] {
        let (_, page) = get(&dash, &format!("/tasks?{query}")).await?;
        assert!(
            page.contains(r#"<turbo-stream-source src="/events">"#),
            "{query} is not live: {page}"
        );
        assert!(page.contains(r#"id="refresh-list""#), "{query}");
    }
    // Once the guests finished, only the next enqueue changes the list.
    for id in &guests {
        enq.api
            .wait_state(id, "succeeded", Duration::from_secs(15))
            .await?;
    }
    let mut stream = client().get(dash.url("/events?list=tasks")).send().await?;
    let refresh = r#"<turbo-stream action="refresh">"#;
    // The first refresh comes with the first look (the page may predate it).
    stream_until(&mut stream, refresh, Duration::from_secs(5)).await?;
    enq.api.enqueue(json!({"name": "Latecomer"})).await?;
    stream_until(&mut stream, refresh, Duration::from_secs(2)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_setting_exits_78_naming_it() -> anyhow::Result<()> {
    for (key, value) in [
        ("DASHBOARD_BASE_PATH", "ops"),
        ("DASHBOARD_PORT", "http"),
        ("DASHBOARD_USERNAME", "only-a-user"),
        ("STEM_TRACE_UI_URL", "jaeger"),
    ] {
        let mut p = ServiceProcess::spawn(
            "dashboard",
            &[],
            &[
                ("STEM_BROKER_URL", "redis://127.0.0.1:1".to_string()),
                (key, value.to_string()),
            ],
        )?;
        assert_eq!(
            p.wait_exit(Duration::from_secs(15))?,
            Some(78),
            "{key}={value}"
        );
        let logs = p.logs();
        let named = if key == "DASHBOARD_USERNAME" {
            "DASHBOARD_PASSWORD"
        } else {
            key
        };
        assert!(logs.contains(named), "{key}={value}: {logs}");
    }
    Ok(())
}

/// Whether the queue page shows `queue` active (not paused).
async fn is_active(dash: &Dashboard, queue: &str) -> anyhow::Result<bool> {
    let (_, page) = get(dash, &format!("/queues/{queue}")).await?;
    Ok(page.contains(r#"<span class="value">active</span>"#))
}

/// A DNS-rebinding page reaches the dashboard under the attacker's host
/// name; a cross-site page posts with its own `Origin`; a stolen token
/// comes without its session cookie. Each is refused (403) and changes
/// nothing; pages under a foreign host carry no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_origins_and_sessions_change_nothing() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "guard-worker", "greetings", &[]).await?;
    let dash = start_dashboard(
        &url,
        &[("DASHBOARD_ALLOWED_HOSTS", "ops.example".to_string())],
    )
    .await?;
    let foreign = format!("attacker.example:{}", dash.port);

    // A first visit gets a session cookie no script or other site sees.
    let r = client_with(None).get(dash.url("/")).send().await?;
    let set = r.headers()["set-cookie"].to_str()?.to_string();
    assert!(set.starts_with("stem_csrf="), "{set}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }

    // Under a foreign host: no page, no token, no stream; health answers.
    for path in ["/", "/queues", "/events", "/assets/turbo.js"] {
        let r = client()
            .get(dash.url(path))
            .header("host", &foreign)
            .send()
            .await?;
        assert_eq!(r.status(), 403, "{path} under {foreign}");
        let body = r.text().await?;
        assert!(!body.contains("csrf-token"), "{body}");
        assert!(body.contains("DASHBOARD_ALLOWED_HOSTS"), "{body}");
    }
    let r = client()
        .get(dash.url("/healthz"))
        .header("host", &foreign)
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    let token = csrf_of(&get(&dash, "/queues").await?.1)?;
    let pause = dash.url("/queues/greetings/pause");
    let form = serde_urlencoded::to_string([("csrf_token", token.as_str())])?;
    let attempt = |host: Option<&str>, headers: &[(&str, &str)], cookie: Option<&str>| {
        let mut r = client_with(cookie)
            .post(&pause)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone());
        if let Some(h) = host {
            r = r.header("host", h);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let cases: Vec<(&str, reqwest::Response)> = vec![
        (
            "a foreign Host",
            attempt(Some(&foreign), &[], Some(SESSION)).await?,
        ),
        (
            "another site's Origin",
            attempt(
                None,
                &[("origin", "http://attacker.example")],
                Some(SESSION),
            )
            .await?,
        ),
        (
            "another port's Origin",
            attempt(None, &[("origin", "http://127.0.0.1:1")], Some(SESSION)).await?,
        ),
        (
            "Origin null",
            attempt(None, &[("origin", "null")], Some(SESSION)).await?,
        ),
        (
            "Sec-Fetch-Site cross-site",
            attempt(None, &[("sec-fetch-site", "cross-site")], Some(SESSION)).await?,
        ),
        ("no session cookie", attempt(None, &[], None).await?),
        (
            "another session's cookie",
            attempt(
                None,
                &[],
                Some("stem_csrf=b3RoZXItc2Vzc2lvbi1jb29raWUtb2YtdGhlLXRlc3RzIQ"),
            )
            .await?,
        ),
    ];
    for (what, r) in cases {
        assert_eq!(r.status(), 403, "{what}");
        assert!(
            is_active(&dash, "greetings").await?,
            "{what} changed the queue"
        );
    }

    // The same page's action, same origin (Origin with the port), acts.
    let origin = format!("http://127.0.0.1:{}", dash.port);
    let r = attempt(
        None,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        Some(SESSION),
    )
    .await?;
    assert_eq!(r.status(), 303);
    wait_page(
        &dash,
        "/queues/greetings",
        r#"<span class="value">paused</span>"#,
    )
    .await?;

    // An allowed name serves pages and takes its own page's actions.
    let named = format!("ops.example:{}", dash.port);
    let page = client()
        .get(dash.url("/queues"))
        .header("host", &named)
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    let token = csrf_of(&page.text().await?)?;
    let r = client()
        .post(dash.url("/queues/greetings/resume"))
        .header("host", &named)
        .header("origin", format!("http://{named}"))
        .header("x-csrf-token", &token)
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    wait_page(
        &dash,
        "/queues/greetings",
        r#"<span class="value">active</span>"#,
    )
    .await?;
    Ok(())
}

/// An open page holds an event stream that never ends by itself: SIGTERM
/// ends every stream, and the dashboard exits 0 within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_pages_exits_0_within_two_seconds() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mut dash = start_dashboard(&redis.url(), &[]).await?;
    let mut streams = Vec::new();
    for path in ["/events", "/events?list=tasks"] {
        let mut r = client().get(dash.url(path)).send().await?;
        assert_eq!(r.status(), 200);
        // Connected and served: the first picture arrives.
        stream_until(&mut r, "<turbo-stream", Duration::from_secs(5)).await?;
        streams.push(r);
    }
    let began = std::time::Instant::now();
    dash.process.sigterm()?;
    let code = dash.process.wait_exit(Duration::from_secs(2))?;
    assert_eq!(
        code,
        Some(0),
        "exit within 2 s with pages open: {}",
        dash.process.logs()
    );
    assert!(began.elapsed() < Duration::from_secs(2));
    // The streams were ended by the server, not left hanging.
    for mut r in streams {
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while r.chunk().await.ok().flatten().is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream ended with the process");
    }
    Ok(())
}

/// Streams naming ids that have no status take none of the poller's
/// watched places: after 100 of them, a real task's page still follows
/// its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_task_streams_do_not_crowd_out_a_real_task_page() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let _worker = start_worker(&url, "junk-worker", "greetings", &[]).await?;
    let enq = start_enqueuer(&url, &[]).await?;
    let dash = start_dashboard(&url, &[]).await?;
    let mut junk = Vec::new();
    for _ in 0..100 {
        let id = stem::envelope::new_task_id();
        let r = client()
            .get(dash.url(&format!("/events?task={id}")))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        junk.push(r);
    }
    let id = enq
        .api
        .enqueue(json!({"name": "Real", "delayMs": 1500}))
        .await?;
    let mut mine = client()
        .get(dash.url(&format!("/events?task={id}")))
        .send()
        .await?;
    stream_until(
        &mut mine,
        &format!(r#"<turbo-stream action="replace" target="task-{id}">"#),
        Duration::from_secs(10),
    )
    .await?;
    drop(junk);
    Ok(())
}

/// Open event streams are capped per process (`DASHBOARD_MAX_STREAMS`):
/// one more is told to retry later and ended at once (a browser's
/// EventSource would give up for good on an error status), and pages still
/// load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_past_the_cap_are_told_to_come_back_later() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let dash = start_dashboard(&redis.url(), &[("DASHBOARD_MAX_STREAMS", "2".to_string())]).await?;
    let mut open = Vec::new();
    for _ in 0..2 {
        let r = client().get(dash.url("/events")).send().await?;
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = client().get(dash.url("/events")).send().await?;
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), r.text())
        .await
        .map_err(|_| anyhow::anyhow!("the third stream did not end"))??;
    assert!(body.contains("retry: 30000"), "{body}");
    assert!(!body.contains("turbo-stream"), "{body}");
    assert_eq!(get(&dash, "/").await?.0, 200, "pages still load");
    drop(open);
    Ok(())
}
