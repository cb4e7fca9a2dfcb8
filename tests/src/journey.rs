//! What a user does with the stack through its gateway, shared by the two
//! ways the tests run it (on loopback, `tests/stack.rs`; in containers,
//! `tests/containers.rs`): each step asserts what the user would see.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use stem_e2e::{poll_until, stream_until, Api, SETTLE};

/// The demo task of each queue, as docker-compose.yml's workers serve them.
pub const QUEUE_TASKS: [(&str, &str); 3] = [
    ("greeting.send", "greetings"),
    ("billing.charge", "billing"),
    ("reports.aggregate", "reporting"),
];

/// The schedules `schedules.example.yaml` seeds.
pub const SEEDED_SCHEDULES: [&str; 3] =
    ["greetings-reminder", "billing-charge", "reports-aggregate"];

/// `POST /enqueue` of each queue's task through `api` (the gateway's
/// `/api/`), each succeeding on that queue; returns the task ids.
pub async fn a_task_on_every_queue(api: &Api, context: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (task, queue) in QUEUE_TASKS {
        let reply = api
            .post_json(
                "/enqueue",
                &json!({"task": task, "name": "Ada", "delayMs": 1}),
            )
            .await?;
        assert_eq!(
            reply.status, 200,
            "{context} POST /api/enqueue: {}",
            reply.text
        );
        let id = reply.json["taskId"].as_str().context("taskId")?.to_string();
        let status = api.wait_state(&id, "succeeded", SETTLE).await?;
        assert_eq!(status["queue"], queue, "{status}");
        assert_eq!(status["task"], task, "{status}");
        ids.push(id);
    }
    Ok(ids)
}

/// The API at the root of `Host: api.localhost` on the gateway's `port`
/// (the name resolves to loopback, as curl and browsers resolve
/// `*.localhost`): a task enqueued there succeeds; returns its id.
pub async fn the_api_on_its_own_host(port: u16) -> anyhow::Result<String> {
    let vhost = reqwest::Client::builder()
        .resolve("api.localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(15))
        .build()?;
    let vhost = Api::with_client(format!("http://api.localhost:{port}"), vhost);
    let id = vhost
        .enqueue(json!({"name": "Grace", "delayMs": 1}))
        .await?;
    let status = vhost.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(status["result"], "Processed greeting.send for Grace");
    Ok(id)
}

/// The dashboard's overview at `gw` lists every queue, and its event
/// stream delivers an update after a task is enqueued through `api`.
pub async fn the_dashboard_lists_and_streams(gw: &str, api: &Api) -> anyhow::Result<()> {
    let http = stem_e2e::http_client();
    let page = http.get(format!("{gw}/")).send().await?;
    assert_eq!(page.status(), 200);
    let page = page.text().await?;
    for (_, queue) in QUEUE_TASKS {
        assert!(page.contains(queue), "the overview lists {queue}");
    }
    let mut events = http
        .get(format!("{gw}/events?list=tasks"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    assert_eq!(
        events
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    api.enqueue(json!({"name": "Live", "delayMs": 1})).await?;
    stream_until(&mut events, "<turbo-stream", Duration::from_secs(30)).await
}

/// Prometheus under the gateway's `/prometheus/` scrapes exactly the
/// `expected` instances of job `stem`, all up.
pub async fn prometheus_scrapes(gw: &str, mut expected: Vec<String>) -> anyhow::Result<()> {
    let http = stem_e2e::http_client();
    expected.sort();
    let targets_url = format!("{gw}/prometheus/api/v1/targets");
    poll_until(
        "Prometheus to scrape every Stem service",
        Duration::from_secs(90),
        || async {
            let body: Value = http.get(&targets_url).send().await?.json().await?;
            let stem: Vec<&Value> = body["data"]["activeTargets"]
                .as_array()
                .context("activeTargets")?
                .iter()
                .filter(|t| t["labels"]["job"] == "stem")
                .collect();
            let mut up: Vec<String> = stem
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_string))
                .collect();
            up.sort();
            if up == expected {
                return Ok(Some(()));
            }
            // Not yet: say which targets are not up and why, so a timeout
            // names them (the poll reports its last error).
            let not_up: Vec<String> = stem
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| {
                    format!(
                        "{} {} ({})",
                        t["labels"]["instance"], t["health"], t["lastError"]
                    )
                })
                .collect();
            anyhow::bail!("up: {up:?}; not up: {not_up:?}; expected: {expected:?}")
        },
    )
    .await
}

/// `stem schedule list`'s output (run in the beat service) lists every
/// seeded schedule.
pub fn the_schedules_are_listed(out: &std::process::Output) {
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stem schedule list: {out:?}");
    for id in SEEDED_SCHEDULES {
        assert!(listed.contains(id), "{id} is seeded: {listed}");
    }
}
