//! Clauses of the contract that no test exercised (a clause-by-clause
//! audit of 2026-12-06, its gap 8; issue 24): signals and `--help` on every
//! binary, the warnings at start, the worker's queue and heartbeat
//! settings, the `console` metrics exporter, whose retry budget counts, a
//! network cut on a worker's own connection, readiness and logging during
//! an outage, and `stem keys` into a closed pipe. Each test drives the real
//! binaries against a private `redis-server`.

use std::io::Read as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stem_e2e::{
    body_runs, free_port, poll_until, start_dashboard, start_enqueuer, start_worker, wait_log,
    worker_name, Api, Fault, FaultProxy, Pattern, RedisServer, ServiceProcess, SETTLE,
};

/// How long a service may take to exit after a signal.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// A worker named `name` on `url`, with exactly `envs` besides the broker
/// URL and its name (no queue variable unless given), once ready.
async fn worker_with(
    url: &str,
    name: &str,
    envs: &[(&'static str, &str)],
) -> anyhow::Result<ServiceProcess> {
    let mut all: Vec<(&str, String)> = vec![
        ("STEM_BROKER_URL", url.to_string()),
        ("STEM_WORKER_NAME", name.to_string()),
    ];
    all.extend(envs.iter().map(|(k, v)| (*k, v.to_string())));
    let p = ServiceProcess::spawn("worker", &[], &all)?;
    wait_log(&p, "worker ready", Duration::from_secs(20)).await?;
    Ok(p)
}

/// A producer on `url` with no task registry: it names queues and retry
/// budgets itself (or leaves the defaults).
fn unregistered_producer(url: &str) -> anyhow::Result<stem::client::Stem> {
    let url = url.to_string();
    let config = stem::config::StemConfig::from_lookup(&move |k: &str| {
        (k == "STEM_BROKER_URL").then(|| url.clone())
    })?;
    Ok(stem::client::Stem::connect(&config)?)
}

/// The worker record `name` as stored (`stem:{workers}:<name>`).
fn record(redis: &RedisServer, name: &str) -> anyhow::Result<Value> {
    let text = redis.cli(&["GET", &format!("stem:{{workers}}:{name}")])?;
    Ok(serde_json::from_str(&text)?)
}

/// `--help` answers on every binary with its usage and exit 0 (README
/// "Exit codes" and "CLI").
#[test]
fn every_binary_prints_its_help() -> anyhow::Result<()> {
    for binary in ["enqueuer", "worker", "beat", "dashboard", "stem"] {
        let out = std::process::Command::new(stem_e2e::binary_path(binary)?)
            .arg("--help")
            .env_clear()
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{binary} --help: {stdout}");
        assert!(stdout.contains("Usage:"), "{binary} --help: {stdout}");
    }
    Ok(())
}

/// SIGINT (Ctrl-C in a terminal) stops every service as SIGTERM does:
/// exit 0 (README "Exit codes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_every_service_with_exit_0() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let mut enq = start_enqueuer(&url, &[]).await?;
    let mut worker = start_worker(&url, &worker_name("sigint"), "greetings", &[]).await?;
    let mut dash = start_dashboard(&url, &[]).await?;
    let mut beat = ServiceProcess::spawn(
        "beat",
        &[],
        &[
            ("STEM_BROKER_URL", url.clone()),
            ("STEM_BEAT_HEALTH_PORT", free_port().to_string()),
        ],
    )?;
    wait_log(&beat, "beat started", Duration::from_secs(20)).await?;
    for p in [&mut enq.process, &mut worker, &mut dash.process, &mut beat] {
        p.sigint()?;
    }
    for p in [&mut enq.process, &mut worker, &mut dash.process, &mut beat] {
        let code = p.wait_exit(EXIT_WITHIN)?;
        assert_eq!(code, Some(0), "{} after SIGINT:\n{}", p.name(), p.logs());
    }
    Ok(())
}

/// What an operator must hear at start: a worker without verification
/// keys runs unsigned envelopes, an enqueuer without a signing key sends
/// them, a dashboard bound beyond loopback without credentials is open to
/// whoever reaches it (README "Exit codes"; README "Security"; README "Dashboard").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_settings_are_warned_about_at_start() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let worker = start_worker(&url, &worker_name("keyless"), "greetings", &[]).await?;
    wait_log(
        &worker,
        "no verification keys configured: unsigned envelopes will run",
        SETTLE,
    )
    .await?;
    let enq = start_enqueuer(&url, &[]).await?;
    wait_log(&enq.process, "no signing keys configured", SETTLE).await?;
    let open = start_dashboard(&url, &[("DASHBOARD_HOST", "0.0.0.0".to_string())]).await?;
    wait_log(&open.process, "dashboard bound beyond loopback", SETTLE).await?;
    // Bound to loopback, or with credentials: nothing to warn about.
    let local = start_dashboard(&url, &[]).await?;
    let guarded = start_dashboard(
        &url,
        &[
            ("DASHBOARD_HOST", "0.0.0.0".to_string()),
            ("DASHBOARD_USERNAME", "ops".to_string()),
            ("DASHBOARD_PASSWORD", "a-long-enough-password".to_string()),
        ],
    )
    .await?;
    for quiet in [&local, &guarded] {
        assert!(
            !quiet.process.logs().contains("beyond loopback"),
            "{}",
            quiet.process.logs()
        );
    }
    Ok(())
}

/// `STEM_WORKER_QUEUE` (one queue) is honoured, a worker given no queue
/// serves `default` — where a task nobody registered lands — and
/// `STEM_HEARTBEAT_INTERVAL` sets how often the record is refreshed and
/// how long it lives (three intervals) (README "Configuration"); the throughput
/// history expires too (issue 24, W16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_queue_and_heartbeat_settings_take_effect() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let single = worker_name("one-queue");
    let _single = worker_with(
        &url,
        &single,
        &[
            ("STEM_WORKER_QUEUE", "billing"),
            ("STEM_HEARTBEAT_INTERVAL", "300ms"),
        ],
    )
    .await?;
    let first = record(&redis, &single)?;
    assert_eq!(first["queues"], json!(["billing"]), "{first}");
    let pttl: i64 = redis
        .cli(&["PTTL", &format!("stem:{{workers}}:{single}")])?
        .parse()?;
    assert!(
        (1..=900).contains(&pttl),
        "the record lives three 300 ms intervals: PTTL {pttl}"
    );
    let beat_at = first["heartbeatAt"].clone();
    poll_until("a second heartbeat", Duration::from_secs(2), || async {
        let now = record(&redis, &single)?;
        Ok((now["heartbeatAt"] != beat_at).then_some(()))
    })
    .await?;

    let plain = worker_name("no-queue");
    let plain_worker = worker_with(&url, &plain, &[("STEM_HEARTBEAT_INTERVAL", "300ms")]).await?;
    assert_eq!(record(&redis, &plain)?["queues"], json!(["default"]));
    // A producer without the catalogue publishes to `default`.
    let producer = unregistered_producer(&url)?;
    let id = producer
        .enqueue_raw(
            "greeting.send",
            json!({"name": "Dee", "delayMs": 1}),
            Default::default(),
        )
        .await?
        .task_id;
    poll_until("the default queue's task to succeed", SETTLE, || async {
        let s = producer.status(&id).await?;
        Ok(s.filter(|s| s.state.as_str() == "succeeded").map(|_| ()))
    })
    .await?;
    assert_eq!(body_runs(&plain_worker.logs(), &id), 1);
    // The throughput history the worker adds with its heartbeat expires
    // (three days), as the worker records do (above).
    let minute = poll_until("the throughput history", Duration::from_secs(5), || async {
        let keys = redis.cli(&["KEYS", "stem:throughput:*"])?;
        Ok(keys.lines().next().map(str::to_string))
    })
    .await?;
    let pttl: i64 = redis.cli(&["PTTL", &minute])?.parse()?;
    assert!(
        (1..=3 * 86_400_000).contains(&pttl),
        "{minute} expires within three days: PTTL {pttl}"
    );
    Ok(())
}

/// `STEM_METRIC_EXPORTERS=console` logs the metrics page, at
/// `OTEL_METRIC_EXPORT_INTERVAL` (README "Observability").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_exporter_logs_the_metrics_page() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let worker = start_worker(
        &redis.url(),
        &worker_name("console"),
        "greetings",
        &[
            ("STEM_METRIC_EXPORTERS", "console".to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_string()),
        ],
    )
    .await?;
    wait_log(&worker, "# TYPE stem_", Duration::from_secs(10)).await?;
    Ok(())
}

/// The worker's catalogue decides the retry budget, whatever the producer
/// asked: `reports.aggregate` allows 2 retries, so a producer's 10 end
/// after 3 attempts (README "Behaviour an operator can rely on").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_retry_budget_overrides_the_producers() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let worker = start_worker(&url, &worker_name("budget"), "reporting", &[]).await?;
    // No registry: the producer's own budget goes into the envelope.
    let producer = unregistered_producer(&url)?;
    let id = producer
        .enqueue_raw(
            "reports.aggregate",
            json!({"name": "Budget", "delayMs": 1, "fail": true}),
            stem::client::EnqueueOptions {
                queue: Some("reporting".into()),
                max_retries: Some(10),
                ..Default::default()
            },
        )
        .await?
        .task_id;
    // Retries wait 1.5–2 s, then 3–4 s.
    let failed = poll_until(
        "the task to fail for good",
        Duration::from_secs(30),
        || async {
            let s = producer.status(&id).await?;
            Ok(s.filter(|s| s.state.as_str() == "failed"))
        },
    )
    .await?;
    assert_eq!(failed.attempt, 2, "{failed:?}");
    assert_eq!(body_runs(&worker.logs(), &id), 3, "{}", worker.logs());
    Ok(())
}

/// A worker whose own connection to Redis is cut while it settles a task
/// (the fault proxy closes the connection on the settle's request) holds
/// the result, reconnects, and writes it: the task succeeds, run once
/// (README "Behaviour an operator can rely on").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_worker_connection_loses_nothing_and_runs_nothing_twice() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let proxy = FaultProxy::start(redis.port())?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let worker = start_worker(&proxy.url(), &worker_name("cut"), "greetings", &[]).await?;
    // The settle names the terminal status key, then the result; nothing
    // else the worker sends holds both.
    let name = format!("cut-{}", std::process::id());
    let result = format!("Processed greeting.send for {name}");
    proxy.once(Pattern::all(&["stem:done:", result.as_str()]), Fault::Cut);
    let id = enq
        .api
        .enqueue(json!({"name": name, "delayMs": 200}))
        .await?;
    let done = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(done["attempt"], 0, "{done}");
    assert_eq!(proxy.fired(), 1, "the cut happened");
    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &id), 1, "{logs}");
    Ok(())
}

/// During a Redis outage the worker and the dashboard stay up, report
/// not-ready, log the outage once (not once per retry), and are ready
/// again by themselves when Redis is back (README "Behaviour an operator can rely on").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_dashboard_are_not_ready_and_log_once_during_an_outage() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let url = redis.url();
    let health = free_port();
    let worker = start_worker(
        &url,
        &worker_name("outage"),
        "greetings",
        &[("STEM_WORKER_HEALTH_PORT", health.to_string())],
    )
    .await?;
    let dash = start_dashboard(&url, &[]).await?;
    let worker_api = Api::new(format!("http://127.0.0.1:{health}"))?;
    let dash_api = Api::new(dash.url(""))?;
    // An open page keeps the dashboard's poller reading.
    let events = stem_e2e::http_client()
        .get(dash.url("/events"))
        .header("host", "localhost")
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    for api in [&worker_api, &dash_api] {
        assert_eq!(api.get("/readyz").await?.status, 200);
    }

    redis.stop()?;
    let down = Instant::now();
    for api in [&worker_api, &dash_api] {
        poll_until("not ready", Duration::from_secs(10), || async {
            Ok((api.get("/readyz").await?.status == 503).then_some(()))
        })
        .await?;
        assert_eq!(api.get("/healthz").await?.status, 200, "alive all along");
    }
    // Several retries' worth of outage (backoff 100 ms doubling).
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down.elapsed())).await;
    let once = |logs: &str, line: &str| logs.matches(line).count();
    let worker_logs = worker.logs();
    assert_eq!(
        once(&worker_logs, "fetch failed: broker unavailable"),
        1,
        "{worker_logs}"
    );
    let dash_logs = dash.process.logs();
    assert_eq!(once(&dash_logs, "dashboard poll failed"), 1, "{dash_logs}");

    redis.restart()?;
    for api in [&worker_api, &dash_api] {
        poll_until("ready again", SETTLE, || async {
            Ok((api.get("/readyz").await?.status == 200).then_some(()))
        })
        .await?;
    }
    drop(events);
    Ok(())
}

/// `stem keys hmac | head -1` (the reader gone before the lines are
/// written) ends quietly with 0, no panic (README "CLI").
#[test]
fn stem_keys_into_a_closed_pipe_exits_0_without_a_panic() -> anyhow::Result<()> {
    for kind in ["hmac", "ed25519"] {
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        let mut child = std::process::Command::new(stem_e2e::binary_path("stem")?)
            .args(["keys", kind])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut stderr)?;
        }
        let status = child.wait()?;
        assert_eq!(status.code(), Some(0), "stem keys {kind}: {stderr}");
        assert!(!stderr.contains("panicked"), "stem keys {kind}: {stderr}");
    }
    Ok(())
}
