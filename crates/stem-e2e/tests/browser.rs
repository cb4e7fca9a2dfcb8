//! The dashboard in a real headless Chromium (Debian's `chromium` through
//! `chromedriver`), against the real binaries and Redis: the overview loads
//! nothing from another origin, an open page follows a task enqueued
//! through the API without a reload, the open tasks page lists it within
//! 2 s, a dead letter is replayed by a click, a running task revoked by a
//! click shows `cancelled`, a queue is paused, resumed and purged, a
//! schedule disabled and enabled, a worker shut down — each action asking
//! its confirmation first (a declined one changes nothing) — at the root
//! and again under `DASHBOARD_BASE_PATH=/ops`.
//! Screenshots of every page land in `target/screenshots/<root|ops>/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use stem_e2e::browser::Browser;
use stem_e2e::{hmac_key, signed, start_dashboard, start_enqueuer, start_worker, Stem};
use stem_testkit::RedisServer;

/// How long a change may take to show on an open page: the poller reads
/// every second.
const LIVE: Duration = Duration::from_secs(2);

fn shots(label: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots")
        .join(label)
}

async fn journeys(base_path: &str, label: &str) -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let key = hmac_key("k1");
    let mut greeter = start_worker(&url, "ui-greeter", "greetings", &signed(&key)).await?;
    // Billing tasks meet a worker with another secret: dead letters.
    let mut wrong = start_worker(&url, "ui-wrong-key", "billing", &signed(&hmac_key("k1"))).await?;
    let enq = start_enqueuer(&url, &signed(&key)).await?;
    let mut extra = signed(&key);
    if !base_path.is_empty() {
        extra.push(("DASHBOARD_BASE_PATH", base_path.to_string()));
    }
    let dash = start_dashboard(&url, &extra).await?;
    let dir = shots(label);
    let browser = Browser::start().await?;

    // The overview, with nothing loaded from elsewhere and Turbo running.
    browser.goto(&dash.url("/")).await?;
    browser.wait_text("h1", "Overview", LIVE).await?;
    let origin = format!("http://127.0.0.1:{}/", dash.port);
    let loaded = browser.resources().await?;
    assert!(
        loaded.iter().any(|r| r.ends_with("/assets/turbo.js")),
        "Turbo is loaded: {loaded:?}"
    );
    for r in &loaded {
        assert!(
            r.starts_with(&format!("{origin}{}", base_path.trim_start_matches('/'))),
            "{r} is not this dashboard's"
        );
    }
    let turbo = browser
        .eval("return typeof window.Turbo;", json!([]))
        .await?;
    assert_eq!(turbo, "object", "Turbo started");
    browser.screenshot(&dir.join("overview.png")).await?;

    // A task enqueued through the API shows on the open page without a
    // reload (the marker survives).
    browser.eval("window.stemMarker = 42;", json!([])).await?;
    let slow = enq
        .api
        .enqueue(json!({"name": "Live", "delayMs": 20000}))
        .await?;
    browser
        .wait_text("#queue-greetings td:nth-child(3)", "1", LIVE)
        .await?;
    let marker = browser.eval("return window.stemMarker;", json!([])).await?;
    assert_eq!(marker, 42, "the page was updated in place, not reloaded");

    // The open tasks page lists a task enqueued through the API within
    // 2 s, newest first, without a reload.
    browser.goto(&dash.url("/tasks")).await?;
    browser.wait_text("h1", "Tasks", LIVE).await?;
    browser.eval("window.stemMarker = 9;", json!([])).await?;
    let listed = enq.api.enqueue(json!({"name": "Listed"})).await?;
    browser
        .wait_text("#task-table tbody tr:first-child", &listed, LIVE)
        .await?;
    let marker = browser.eval("return window.stemMarker;", json!([])).await?;
    assert_eq!(marker, 9, "the tasks page was refreshed in place");
    browser.screenshot(&dir.join("tasks-live.png")).await?;

    // A task's page follows it to the end without a reload.
    let brief = enq
        .api
        .enqueue(json!({"name": "Brief", "delayMs": 1200}))
        .await?;
    browser.goto(&dash.url(&format!("/tasks/{brief}"))).await?;
    browser.eval("window.stemMarker = 7;", json!([])).await?;
    browser
        .wait_text(".state", "succeeded", Duration::from_secs(10))
        .await?;
    let marker = browser.eval("return window.stemMarker;", json!([])).await?;
    assert_eq!(marker, 7, "the task page was updated in place");
    browser.screenshot(&dir.join("task-succeeded.png")).await?;

    // Revoke the running task by a click: the page shows cancelled.
    enq.api
        .wait_state(&slow, "running", Duration::from_secs(15))
        .await?;
    browser.goto(&dash.url(&format!("/tasks/{slow}"))).await?;
    browser.wait_text(".state", "running", LIVE).await?;
    browser.screenshot(&dir.join("task-running.png")).await?;
    let asked = browser
        .click_confirmed("form[action$='/revoke'] button")
        .await?;
    assert!(asked.starts_with("Revoke"), "{asked}");
    browser.wait_text(".state", "cancelled", LIVE).await?;
    browser.wait_text(".notice", "Revoked", LIVE).await?;
    browser.screenshot(&dir.join("task-revoked.png")).await?;
    enq.api
        .wait_state(&slow, "cancelled", Duration::from_secs(15))
        .await?;

    // A dead letter, replayed by a click once a worker with the right key
    // serves the queue.
    let letter = enq
        .api
        .enqueue(json!({"task": "billing.charge", "name": "Bob", "delayMs": 10}))
        .await?;
    browser.goto(&dash.url("/dead-letters")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !browser.text("table").await?.contains(&letter) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the dead letter {letter} never showed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.goto(&dash.url("/dead-letters")).await?;
    }
    browser.screenshot(&dir.join("dead-letters.png")).await?;
    wrong.sigterm()?;
    wrong.wait_exit(Duration::from_secs(15))?;
    let _biller = start_worker(&url, "ui-biller", "billing", &signed(&key)).await?;
    browser
        .click_confirmed("form[action$='/replay'] button")
        .await?;
    browser
        .wait_text(".notice", "Replayed billing.charge", LIVE)
        .await?;
    enq.api
        .wait_state(&letter, "succeeded", Duration::from_secs(20))
        .await?;

    // A queue paused and resumed, a declined purge changing nothing, then
    // a purge: reports wait in `reporting`, which no worker serves.
    for _ in 0..2 {
        enq.api
            .enqueue(json!({"task": "reports.aggregate", "name": "Q"}))
            .await?;
    }
    browser.goto(&dash.url("/queues/reporting")).await?;
    let ready = "section.cards .card:nth-child(1) .value";
    browser.wait_text(ready, "2", LIVE).await?;
    let asked = browser
        .click_confirmed("form[action$='/reporting/pause'] button")
        .await?;
    assert!(asked.starts_with("Pause queue reporting"), "{asked}");
    browser
        .wait_text(".notice", "Paused reporting", LIVE)
        .await?;
    browser
        .click_confirmed("form[action$='/reporting/resume'] button")
        .await?;
    browser
        .wait_text(".notice", "Resumed reporting", LIVE)
        .await?;
    let asked = browser
        .click_declined("form[action$='/reporting/purge'] button")
        .await?;
    assert!(asked.starts_with("Purge queue reporting"), "{asked}");
    browser.goto(&dash.url("/queues/reporting")).await?;
    browser.wait_text(ready, "2", LIVE).await?;
    browser
        .click_confirmed("form[action$='/reporting/purge'] button")
        .await?;
    browser
        .wait_text(".notice", "Purged 2 tasks from reporting", LIVE)
        .await?;
    browser.wait_text(ready, "0", LIVE).await?;
    browser.screenshot(&dir.join("queue-purged.png")).await?;

    // A schedule disabled and enabled.
    let seeds = tempfile::tempdir()?;
    let file = seeds.path().join("s.yaml");
    std::fs::write(
        &file,
        "entries:\n  - id: nightly\n    task: greeting.send\n    queue: greetings\n    spec: \"0 3 * * *\"\n",
    )?;
    Stem::new(&url).ok(&["schedule", "apply", "--file", &file.display().to_string()])?;
    browser.goto(&dash.url("/schedules")).await?;
    browser.wait_text("table", "nightly", LIVE).await?;
    let asked = browser
        .click_confirmed("form[action$='/nightly/disable'] button")
        .await?;
    assert!(asked.starts_with("Disable schedule nightly"), "{asked}");
    browser
        .wait_text(".notice", "Disabled schedule nightly", LIVE)
        .await?;
    browser
        .click_confirmed("form[action$='/nightly/enable'] button")
        .await?;
    browser
        .wait_text(".notice", "Enabled schedule nightly", LIVE)
        .await?;

    // The other pages, for the record.
    for (path, name) in [
        ("/queues", "queues"),
        ("/workers", "workers"),
        ("/schedules", "schedules"),
        ("/tasks", "tasks"),
    ] {
        browser.goto(&dash.url(path)).await?;
        browser.screenshot(&dir.join(format!("{name}.png"))).await?;
    }
    let here = browser.url().await?;
    assert!(here.starts_with(&dash.url("/tasks")), "{here}");

    // A worker shut down by a click: it says so and exits 0.
    browser.goto(&dash.url("/workers")).await?;
    let asked = browser
        .click_confirmed("form[action$='/ui-greeter/shutdown'] button")
        .await?;
    assert!(asked.starts_with("Shut worker ui-greeter down"), "{asked}");
    // The action waits up to 2 s for the worker's answer before its 303.
    browser
        .wait_text(
            ".notice",
            "ui-greeter is shutting down",
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(greeter.wait_exit(Duration::from_secs(15))?, Some(0));
    browser.close().await;
    Ok(())
}

/// One test for both, one after the other: two browsers at once on a
/// two-core machine would make the 2 s bounds a measure of the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_browser_at_the_root_and_under_a_base_path() -> anyhow::Result<()>
{
    journeys("", "root").await?;
    journeys("/ops", "ops").await
}
