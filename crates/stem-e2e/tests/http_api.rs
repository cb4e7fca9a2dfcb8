//! The enqueue API as a client sees it (README "HTTP API (enqueuer)"): enqueue and follow a
//! task to its result, groups, every documented error, idempotency keys.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use stem_e2e::{
    is_terminal, start_enqueuer, start_worker, state_of, worker_name, RedisServer, POLL_INTERVAL,
    SETTLE,
};

/// Fields every `GET /tasks/{id}` document carries.
const STATUS_FIELDS: [&str; 12] = [
    "id",
    "task",
    "queue",
    "state",
    "attempt",
    "maxRetries",
    "result",
    "error",
    "progress",
    "meta",
    "createdAt",
    "updatedAt",
];

fn check_status_shape(s: &Value, id: &str) {
    for f in STATUS_FIELDS {
        assert!(s.get(f).is_some(), "status lacks {f:?}: {s}");
    }
    assert_eq!(s["id"], id, "{s}");
    assert_eq!(s["task"], "greeting.send", "{s}");
    assert_eq!(s["queue"], "greetings", "{s}");
    assert!(s["attempt"].is_u64(), "attempt: {s}");
    assert_eq!(s["maxRetries"], 5, "greeting.send has 5 retries: {s}");
    assert!(s["meta"].is_object(), "meta: {s}");
    assert!(
        s["createdAt"].is_string() && s["updatedAt"].is_string(),
        "{s}"
    );
    if let Some(f) = s["progress"].get("fraction").and_then(Value::as_f64) {
        assert!((0.0..=1.0).contains(&f), "progress fraction {f}: {s}");
    }
}

fn rank(state: &str) -> u8 {
    match state {
        "queued" => 0,
        "running" => 1,
        "retried" => 2,
        _ => 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_task_progresses_to_its_result() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let _worker = start_worker(&redis.url(), &worker_name("api"), "greetings", &[]).await?;

    let id = enq
        .api
        .enqueue(json!({"task": "greeting.send", "name": "Ada", "delayMs": 1000}))
        .await?;

    // Follow the status until it is final; it must only move forward and
    // keep its documented shape at every step.
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + SETTLE;
    let last = loop {
        let s = enq
            .api
            .task(&id)
            .await?
            .unwrap_or_else(|| panic!("GET /tasks/{id} is 404 right after enqueue"));
        check_status_shape(&s, &id);
        let state = state_of(&s).to_string();
        if let Some(prev) = seen.last() {
            assert!(
                rank(prev) <= rank(&state),
                "status moved backwards: {seen:?} then {state}"
            );
        }
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if is_terminal(&state) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task not finished after {SETTLE:?}; states seen {seen:?}, last {s}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert_eq!(state_of(&last), "succeeded", "{last}");
    assert_eq!(last["result"], "Processed greeting.send for Ada", "{last}");
    assert_eq!(last["error"], Value::Null, "{last}");
    assert_eq!(last["attempt"], 0, "{last}");
    assert!(
        seen.iter().any(|s| s == "running"),
        "a 1 s task was never seen running: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| ["queued", "running", "succeeded"].contains(&s.as_str())),
        "unexpected states {seen:?}"
    );
    assert!(
        last["createdAt"].as_str() <= last["updatedAt"].as_str(),
        "createdAt after updatedAt: {last}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_three_completes() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let _worker = start_worker(&redis.url(), &worker_name("group"), "greetings", &[]).await?;

    let names = ["Ada", "Grace", "Edsger"];
    let reply = enq
        .api
        .post_json("/group", &json!({ "names": names }))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.expect_json()?;
    assert_eq!(body["count"], 3, "{body}");
    let gid = body["groupId"]
        .as_str()
        .unwrap_or_else(|| panic!("no groupId in {body}"))
        .to_string();
    assert!(gid.starts_with("grp-"), "group id {gid}");

    let api = &enq.api;
    let path = format!("/group/{gid}");
    let group = stem_e2e::poll_until("the group to complete", SETTLE, || async {
        let r = api.get(&path).await?;
        anyhow::ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text);
        let g = r.expect_json()?.clone();
        Ok((g["completed"] == 3).then_some(g))
    })
    .await?;
    assert_eq!(group["id"], gid.as_str(), "{group}");
    assert_eq!(group["expected"], 3, "{group}");
    let results = group["results"]
        .as_object()
        .unwrap_or_else(|| panic!("results is not an object: {group}"));
    assert_eq!(results.len(), 3, "{group}");
    let mut messages = BTreeSet::new();
    for (task_id, r) in results {
        assert_eq!(r["state"], "succeeded", "{task_id}: {r}");
        assert!(r.get("attempt").is_some() && r["meta"].is_object(), "{r}");
        messages.insert(r["result"].as_str().unwrap_or_default().to_string());
        // Each member is also a task of its own.
        let s = api.task(task_id).await?;
        assert_eq!(
            s.as_ref().map(state_of),
            Some("succeeded"),
            "GET /tasks/{task_id}: {s:?}"
        );
    }
    let expected: BTreeSet<String> = names
        .iter()
        .map(|n| format!("Processed greeting.send for {n}"))
        .collect();
    assert_eq!(messages, expected);
    Ok(())
}

fn expect_error(reply: stem_e2e::Reply, status: u16, what: &str) -> Value {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    let msg = reply
        .error_message()
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(!msg.is_empty(), "{what}: empty error");
    reply.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_documented_status() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let api = &enq.api;

    // Malformed JSON.
    let r = api.post_raw("/enqueue", b"{\"name\": ".to_vec()).await?;
    expect_error(r, 400, "malformed JSON");

    // Unknown task: 400 naming the six known ones.
    let r = api
        .post_json("/enqueue", &json!({"task": "no.such.task"}))
        .await?;
    let body = expect_error(r, 400, "unknown task");
    let known: BTreeSet<&str> = body["knownTasks"]
        .as_array()
        .unwrap_or_else(|| panic!("knownTasks missing: {body}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let catalogue: BTreeSet<&str> = [
        "greeting.send",
        "customer.followup",
        "billing.charge",
        "billing.settlement",
        "reports.aggregate",
        "reports.publish",
    ]
    .into_iter()
    .collect();
    assert_eq!(known, catalogue, "{body}");

    // Wrong types.
    for bad in [
        json!({"name": 5}),
        json!({"delayMs": "soon"}),
        json!({"fail": "yes"}),
        json!({"priority": 10}),
    ] {
        let r = api.post_json("/enqueue", &bad).await?;
        expect_error(r, 400, &format!("wrong type {bad}"));
    }
    let r = api.post_json("/group", &json!({"names": []})).await?;
    expect_error(r, 400, "empty group");

    // 2 MiB body: 413 JSON.
    let mut big = b"{\"name\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    big.extend(b"\"}");
    let r = api.post_raw("/enqueue", big).await?;
    expect_error(r, 413, "2 MiB body");

    // At the edges: a body of exactly 1 MiB is read (and enqueued), one
    // byte more is 413.
    let sized = |total: usize| {
        let mut b = b"{\"name\": \"".to_vec();
        let pad = total - b.len() - 2;
        b.extend(std::iter::repeat_n(b'x', pad));
        b.extend(b"\"}");
        assert_eq!(b.len(), total);
        b
    };
    let r = api.post_raw("/enqueue", sized(1024 * 1024)).await?;
    assert_eq!(
        r.status,
        200,
        "exactly 1 MiB: {}",
        &r.text[..r.text.len().min(200)]
    );
    let r = api.post_raw("/enqueue", sized(1024 * 1024 + 1)).await?;
    expect_error(r, 413, "1 MiB + 1 byte");

    // A group of 10 000 names is accepted, 10 001 are refused.
    let names = |n: usize| json!({"names": (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>()});
    let r = api.post_json("/group", &names(10_000)).await?;
    assert_eq!(r.status, 200, "10 000 names: {}", r.text);
    assert_eq!(r.json["count"], 10_000, "{}", r.text);
    let r = api.post_json("/group", &names(10_001)).await?;
    expect_error(r, 400, "10 001 names");

    // Unknown route, unknown task id, unknown group.
    let r = api.get("/nope").await?;
    expect_error(r, 404, "GET /nope");
    let r = api.get("/tasks/unknown").await?;
    expect_error(r, 404, "GET /tasks/unknown");
    let r = api.get("/group/unknown").await?;
    let body = expect_error(r, 404, "GET /group/unknown");
    assert_eq!(body, json!({"error": "Unknown group or expired results"}));

    // Successes are JSON too.
    for path in ["/healthz", "/readyz"] {
        let r = api.get(path).await?;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.expect_json()?;
    }
    let r = api.post_json("/enqueue", &json!({"name": "Ada"})).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.expect_json()?;
    assert_eq!(body["task"], "greeting.send", "default task: {body}");
    assert!(body["taskId"].is_string(), "{body}");
    assert!(body.get("duplicate").is_none(), "{body}");
    Ok(())
}

/// A web page can send a cross-site `POST` without a CORS preflight only
/// as `text/plain`, a form or multipart: the API refuses every body not
/// declared `application/json` (415), and an empty one (400); a page that
/// rebinds its own name to the API is refused by name (403); each
/// enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_declared_json_bodies_are_enqueued() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let http = stem_e2e::http_client();
    let keys_before = redis.cli(&["DBSIZE"])?;
    let body = r#"{"name": "from-a-web-page"}"#;
    for path in ["/enqueue", "/group"] {
        let url = format!("{}{path}", enq.api.base());
        for content_type in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let mut request = http.post(&url).body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let r = stem_e2e::Reply::of(request.send().await?).await?;
            let what = format!("POST {path} as {content_type:?}");
            expect_error(r, 415, &what);
        }
        for empty in ["", "  \n"] {
            let r = enq.api.post_raw(path, empty.as_bytes().to_vec()).await?;
            let body = expect_error(r, 400, &format!("POST {path} with {empty:?}"));
            assert!(
                body["error"].as_str().unwrap_or_default().contains("empty"),
                "{body}"
            );
        }
    }
    assert_eq!(
        redis.cli(&["DBSIZE"])?,
        keys_before,
        "a refused request wrote to Redis"
    );
    // A DNS-rebinding page sends its own host name (and may send JSON):
    // the API answers only local names, IP addresses and
    // ENQUEUER_ALLOWED_HOSTS; health checks answer any name.
    for path in ["/enqueue", "/group"] {
        let r = http
            .post(format!("{}{path}", enq.api.base()))
            .header("host", "attacker.example:8081")
            .json(&serde_json::json!({"name": "rebound", "names": ["x"]}))
            .send()
            .await?;
        let r = stem_e2e::Reply::of(r).await?;
        let body = expect_error(r, 403, &format!("{path} under a foreign host"));
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("ENQUEUER_ALLOWED_HOSTS"),
            "{body}"
        );
    }
    assert_eq!(
        redis.cli(&["DBSIZE"])?,
        keys_before,
        "a refused request wrote to Redis"
    );
    let r = http
        .get(format!("{}/healthz", enq.api.base()))
        .header("host", "attacker.example")
        .send()
        .await?;
    assert_eq!(r.status(), 200, "health answers any name");
    for host in ["localhost:8081", "api.localhost", "127.0.0.1"] {
        let r = http
            .get(format!(
                "{}/tasks/{}",
                enq.api.base(),
                stem::envelope::new_task_id()
            ))
            .header("host", host)
            .send()
            .await?;
        assert_eq!(r.status(), 404, "{host} is served");
    }

    // Parameters are allowed: JSON with a charset is enqueued.
    let r = http
        .post(format!("{}/enqueue", enq.api.base()))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_task() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let _worker = start_worker(&redis.url(), &worker_name("idem"), "greetings", &[]).await?;
    let api = &enq.api;

    let req = json!({"name": "Ada", "delayMs": 1, "idempotencyKey": "order-42"});
    let first = api.post_json("/enqueue", &req).await?;
    assert_eq!(first.status, 200, "{}", first.text);
    let first = first.expect_json()?.clone();
    assert!(first.get("duplicate").is_none(), "{first}");
    let second = api.post_json("/enqueue", &req).await?;
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.expect_json()?.clone();
    assert_eq!(second["taskId"], first["taskId"], "{first} vs {second}");
    assert_eq!(second["duplicate"], true, "{second}");

    // A different key is a different task.
    let other = api
        .enqueue(json!({"name": "Ada", "delayMs": 1, "idempotencyKey": "order-43"}))
        .await?;
    assert_ne!(Some(other.as_str()), first["taskId"].as_str());

    // The task ran once and succeeded.
    let id = first["taskId"].as_str().unwrap_or_default();
    let s = api
        .wait_state(id, "succeeded", Duration::from_secs(20))
        .await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    Ok(())
}
