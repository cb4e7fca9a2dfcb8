//! Process edges: HTTPS with required client certificates, `stem dev`,
//! the worker's health endpoint, exit code 78 on bad configuration, and a
//! verify-only HMAC worker.

use std::time::Duration;

use serde_json::json;
use stem_e2e::{hmac_key, scrape, series, start_enqueuer, start_worker, Api};
use stem_testkit::{free_port, RedisServer, ServiceProcess, TlsAssets};

/// Which client certificate an HTTPS test client presents.
#[derive(Clone, Copy)]
enum Identity {
    None,
    /// Signed by the CA the server trusts.
    Trusted,
    /// Signed by another CA.
    Foreign,
}

fn https_client(tls: &TlsAssets, identity: Identity) -> anyhow::Result<reqwest::Client> {
    stem::redis_conn::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca_cert)?)?;
    let mut b = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10));
    let files = match identity {
        Identity::None => None,
        Identity::Trusted => Some((&tls.client_cert, &tls.client_key)),
        Identity::Foreign => Some((&tls.other_client_cert, &tls.other_client_key)),
    };
    if let Some((cert, key)) = files {
        let mut pem = std::fs::read(cert)?;
        pem.extend(std::fs::read(key)?);
        b = b.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_enqueuer_requires_client_certificates() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let dir = tempfile_dir()?;
    let tls = TlsAssets::generate(&dir)?;
    let port = free_port();
    let mut enq = ServiceProcess::spawn(
        "enqueuer",
        &[],
        &[
            ("PORT", port.to_string()),
            ("STEM_BROKER_URL", redis.url()),
            ("ENQUEUER_TLS_CERT", tls.server_cert.display().to_string()),
            ("ENQUEUER_TLS_KEY", tls.server_key.display().to_string()),
            ("ENQUEUER_TLS_CLIENT_CA", tls.ca_cert.display().to_string()),
        ],
    )?;
    enq.wait_for_log("client certificates required", Duration::from_secs(20))?;
    let url = format!("https://localhost:{port}");
    let trusted = https_client(&tls, Identity::Trusted)?;
    let r = trusted
        .post(format!("{url}/enqueue"))
        .json(&json!({"name": "Ada"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await?;
    assert!(body["taskId"].is_string());
    // Without a certificate, and with one from another CA, the TLS
    // session is refused before any HTTP exchange (a transport error, not
    // an HTTP status) ...
    for (label, identity) in [
        ("no certificate", Identity::None),
        ("a certificate from another CA", Identity::Foreign),
    ] {
        let client = https_client(&tls, identity)?;
        match client.get(format!("{url}/healthz")).send().await {
            Ok(r) => panic!("a client with {label} was served: {}", r.status()),
            Err(e) => assert!(
                e.is_connect() || e.is_request(),
                "with {label}: not a transport refusal: {e:#}"
            ),
        }
    }
    // ... by a server that is up and serves a client with the right one.
    let again = trusted.get(format!("{url}/healthz")).send().await?;
    assert_eq!(again.status(), 200);
    enq.sigterm()?;
    assert_eq!(enq.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "stem-e2e-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stem_dev_runs_the_stack_in_one_process() -> anyhow::Result<()> {
    let (port, board) = (free_port(), free_port());
    let mut dev = ServiceProcess::spawn(
        "stem",
        &[
            "dev",
            "--port",
            &port.to_string(),
            "--dashboard-port",
            &board.to_string(),
        ],
        &[
            ("STEM_BROKER_URL", "memory://".to_string()),
            (
                "STEM_SCHEDULE_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../schedules.example.yaml").to_string(),
            ),
        ],
    )?;
    dev.wait_for_log("Enqueue API listening", Duration::from_secs(20))?;
    // The beat service runs inside too, and leads its private store.
    dev.wait_for_log("became leader", Duration::from_secs(20))?;
    assert!(
        dev.logs().contains("Enqueue API: http://127.0.0.1:"),
        "prints its URLs"
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"))?;
    for task in ["greeting.send", "billing.charge", "reports.aggregate"] {
        let id = api
            .enqueue(json!({"task": task, "name": "Dev", "delayMs": 10}))
            .await?;
        let status = api
            .wait_state(&id, "succeeded", Duration::from_secs(15))
            .await?;
        assert_eq!(status["result"], json!(format!("Processed {task} for Dev")));
    }
    // The dashboard is served too, on the same (memory) stores.
    assert!(
        dev.logs()
            .contains(&format!("Dashboard:   http://127.0.0.1:{board}/")),
        "prints the dashboard's URL"
    );
    dev.wait_for_log("Dashboard listening", Duration::from_secs(20))?;
    let page = stem_e2e::http_client()
        .get(format!("http://127.0.0.1:{board}/queues"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains("reporting"),
        "the dashboard sees the dev queues: {page}"
    );
    stem_e2e::poll_until(
        "the beat's schedules on the dashboard",
        Duration::from_secs(10),
        || async {
            let page = stem_e2e::http_client()
                .get(format!("http://127.0.0.1:{board}/schedules"))
                .send()
                .await?
                .text()
                .await?;
            Ok(page.contains("greetings-reminder").then_some(()))
        },
    )
    .await?;
    dev.sigterm()?;
    assert_eq!(dev.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_health_endpoint_and_verify_only_hmac_worker() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let key = hmac_key("primary");
    let health = free_port();
    // A worker holds verification keys only: no STEM_SIGNING_ACTIVE_KEY.
    let _worker = start_worker(
        &redis.url(),
        "health-worker",
        "greetings",
        &[
            ("STEM_SIGNING_KEYS", key.clone()),
            ("STEM_WORKER_HEALTH_PORT", health.to_string()),
        ],
    )
    .await?;
    let api = Api::new(format!("http://127.0.0.1:{health}"))?;
    let h = api.get("/healthz").await?;
    assert_eq!(
        (h.status, h.json["worker"].clone()),
        (200, json!("health-worker"))
    );
    assert_eq!(api.get("/readyz").await?.status, 200);
    let enq = start_enqueuer(
        &redis.url(),
        &[
            ("STEM_SIGNING_KEYS", key),
            ("STEM_SIGNING_ACTIVE_KEY", "primary".to_string()),
        ],
    )
    .await?;
    enq.api
        .enqueue_succeeded(json!({"name": "Ada", "delayMs": 10}))
        .await?;
    Ok(())
}

#[test]
fn invalid_configuration_exits_78_naming_the_variable() -> anyhow::Result<()> {
    let cases: [(&str, &str, &str); 8] = [
        ("worker", "STEM_SIGNING_KEYS", "primary:not-base64!"),
        ("worker", "STEM_VISIBILITY_TIMEOUT", "soon"),
        ("enqueuer", "STEM_BROKER_URL", "http://localhost:6379"),
        ("enqueuer", "STEM_TLS_CA_CERT", "/nonexistent/ca.pem"),
        ("worker", "STEM_METRIC_EXPORTERS", "otlp:collector:4318"),
        ("beat", "STEM_METRIC_EXPORTERS", "statsd"),
        ("beat", "STEM_BEAT_HEALTH_PORT", "http"),
        ("enqueuer", "STEM_OTLP_ENDPOINT", "collector:4318"),
    ];
    for (bin, var, value) in cases {
        let mut p = ServiceProcess::spawn(
            bin,
            &[],
            &[(var, value.to_string()), ("PORT", free_port().to_string())],
        )?;
        let code = p.wait_exit(Duration::from_secs(15))?;
        assert_eq!(code, Some(78), "{bin} with {var}={value}: {}", p.logs());
        let logs = p.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("configuration error"))
            .unwrap_or_default();
        assert!(line.contains(var), "{bin}: the error names {var}: {logs}");
    }
    // HTTPS files that exist but hold no certificate: refused while the
    // configuration is read, not when the server starts.
    let garbage = std::env::temp_dir().join(format!("stem-e2e-garbage-{}.pem", std::process::id()));
    std::fs::write(&garbage, "not a certificate\n")?;
    let mut p = ServiceProcess::spawn(
        "enqueuer",
        &[],
        &[
            ("ENQUEUER_TLS_CERT", garbage.display().to_string()),
            ("ENQUEUER_TLS_KEY", garbage.display().to_string()),
            ("PORT", free_port().to_string()),
        ],
    )?;
    let code = p.wait_exit(Duration::from_secs(15))?;
    let _ = std::fs::remove_file(&garbage);
    assert_eq!(code, Some(78), "garbage ENQUEUER_TLS_CERT: {}", p.logs());
    assert!(
        p.logs()
            .lines()
            .any(|l| l.contains("configuration error") && l.contains("ENQUEUER_TLS_CERT")),
        "the error names ENQUEUER_TLS_CERT: {}",
        p.logs()
    );
    let mut p = ServiceProcess::spawn(
        "enqueuer",
        &[],
        &[
            ("STEM_SIGNING_KEYS", hmac_key("a")),
            ("STEM_SIGNING_ACTIVE_KEY", "b".to_string()),
            ("PORT", free_port().to_string()),
        ],
    )?;
    assert_eq!(
        p.wait_exit(Duration::from_secs(15))?,
        Some(78),
        "unknown active key: {}",
        p.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_insecure_skips_verification_and_says_so() -> anyhow::Result<()> {
    use stem_testkit::{RedisOptions, TlsMode};
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(TlsMode::MutualTls),
        ..Default::default()
    })?;
    let tls = redis
        .tls()
        .ok_or_else(|| anyhow::anyhow!("TLS assets"))?
        .clone();
    // The CA does not match the server: only STEM_TLS_ALLOW_INSECURE lets it in.
    let worker = start_worker(
        &redis.url(),
        "insecure-worker",
        "greetings",
        &[
            ("STEM_TLS_CA_CERT", tls.other_ca_cert.display().to_string()),
            (
                "STEM_TLS_CLIENT_CERT",
                tls.client_cert.display().to_string(),
            ),
            ("STEM_TLS_CLIENT_KEY", tls.client_key.display().to_string()),
            ("STEM_TLS_ALLOW_INSECURE", "true".to_string()),
        ],
    )
    .await?;
    assert!(
        worker.logs().contains("NOT verified"),
        "warns at start: {}",
        worker.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_from_worker_and_beat() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let (wport, bport) = (free_port(), free_port());
    let _worker = start_worker(
        &redis.url(),
        "metrics-worker",
        "greetings",
        &[("STEM_METRIC_EXPORTERS", format!("prometheus:{wport}"))],
    )
    .await?;
    let eport = free_port();
    let enq = start_enqueuer(
        &redis.url(),
        &[("STEM_METRIC_EXPORTERS", format!("prometheus:{eport}"))],
    )
    .await?;
    enq.api
        .enqueue_succeeded(json!({"name": "Ada", "delayMs": 10}))
        .await?;
    let page = stem_e2e::poll_until("worker metrics", Duration::from_secs(10), || async {
        let page = scrape(wport).await.unwrap_or_default();
        Ok((series(&page, "stem_tasks_succeeded_total") == Some(1.0)).then_some(page))
    })
    .await?;
    let succeeded = stem_e2e::samples(&page, "stem_tasks_succeeded_total");
    assert_eq!(succeeded.len(), 1, "{page}");
    for label in [
        "task=\"greeting.send\"",
        "queue=\"greetings\"",
        "worker=\"metrics-worker\"",
        "namespace=\"stem\"",
    ] {
        assert!(succeeded[0].contains(label), "{label} in {page}");
    }
    assert_eq!(series(&page, "stem_tasks_started_total"), Some(1.0));
    assert_eq!(
        series(&page, "stem_worker_concurrency").map(|c| c >= 1.0),
        Some(true)
    );
    assert_eq!(
        series(&page, "stem_task_duration_seconds_count"),
        Some(1.0),
        "one body ran: {page}"
    );
    assert!(
        series(&page, "stem_task_duration_seconds_sum").is_some_and(|s| s >= 0.01),
        "it slept 10 ms: {page}"
    );
    stem_e2e::promtool_accepts(&page)?;
    // The queue depth is sampled every few seconds, not per task.
    let depth = stem_e2e::poll_until("queue depth", Duration::from_secs(15), || async {
        let page = scrape(wport).await.unwrap_or_default();
        Ok(stem_e2e::samples(&page, "stem_queue_depth")
            .iter()
            .any(|l| l.contains("queue=\"greetings\""))
            .then_some(page))
    })
    .await?;
    assert_eq!(series(&depth, "stem_queue_depth"), Some(0.0), "{depth}");

    let api = scrape(eport).await?;
    let enqueued = stem_e2e::samples(&api, "stem_enqueued_total");
    assert!(
        enqueued.len() == 1
            && enqueued[0].contains("task=\"greeting.send\"")
            && enqueued[0].contains("queue=\"greetings\"")
            && enqueued[0].ends_with(" 1"),
        "{api}"
    );
    assert!(
        stem_e2e::samples(&api, "http_server_request_duration_seconds_count")
            .iter()
            .any(|l| l.contains("route=\"/enqueue\"") && l.contains("status=\"200\"")),
        "{api}"
    );
    stem_e2e::promtool_accepts(&api)?;

    let (_schedules, mut beat) = stem_e2e::spawn_ticking_beat(&redis.url(), bport)?;
    let page = stem_e2e::poll_until("beat dispatch metrics", Duration::from_secs(15), || async {
        let page = scrape(bport).await.unwrap_or_default();
        let fired = series(&page, "stem_scheduler_dispatch_success_total").filter(|v| *v >= 1.0);
        Ok(fired.map(|_| page))
    })
    .await?;
    assert!(
        series(&page, "stem_scheduler_drift_seconds_count").is_some_and(|n| n >= 1.0),
        "each dispatch records its drift: {page}"
    );
    stem_e2e::promtool_accepts(&page)?;
    beat.sigterm()?;
    assert_eq!(beat.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

/// `otlp` pushes the same series to a collector: a real OTLP/HTTP receiver
/// gets the worker's task counters with their labels, under the worker's
/// `service.name`, and the enqueuer's `stem_enqueued` counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_pushes_metrics_to_a_collector() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let collector = stem_testkit::OtlpReceiver::start().await?;
    let otlp = [
        ("STEM_METRIC_EXPORTERS", "otlp".to_string()),
        ("STEM_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_string()),
    ];
    let _worker = start_worker(&redis.url(), "otlp-worker", "greetings", &otlp).await?;
    let enq = start_enqueuer(&redis.url(), &otlp).await?;
    enq.api
        .enqueue_succeeded(json!({"name": "Ada", "delayMs": 10}))
        .await?;
    let point = stem_e2e::poll_until("the worker's counters", Duration::from_secs(15), || async {
        Ok(collector
            .points("stem_tasks_succeeded")
            .into_iter()
            .find(|p| p.value >= 1.0))
    })
    .await?;
    assert_eq!(point.service, "stem-worker");
    for (k, v) in [
        ("task", "greeting.send"),
        ("queue", "greetings"),
        ("worker", "otlp-worker"),
        ("namespace", "stem"),
    ] {
        assert_eq!(
            point.attributes.get(k).map(String::as_str),
            Some(v),
            "{point:?}"
        );
    }
    let enqueued = stem_e2e::poll_until(
        "the enqueuer's counter",
        Duration::from_secs(15),
        || async {
            Ok(collector
                .points("stem_enqueued")
                .into_iter()
                .find(|p| p.value >= 1.0))
        },
    )
    .await?;
    assert_eq!(enqueued.service, "stem-enqueuer");
    assert_eq!(
        enqueued.attributes.get("queue").map(String::as_str),
        Some("greetings")
    );
    Ok(())
}

/// A collector that accepts connections and never answers does not slow
/// tasks: the push runs on its own thread with a timeout, and its failure
/// is logged, not waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_does_not_slow_tasks() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", stalled.local_addr()?);
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = tried.clone();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = stalled.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            open.push(conn); // read nothing, answer nothing
        }
    });
    let otlp = [
        ("STEM_METRIC_EXPORTERS", "otlp".to_string()),
        ("STEM_OTLP_ENDPOINT", endpoint),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_string()),
    ];
    let worker = start_worker(&redis.url(), "stalled-otlp", "greetings", &otlp).await?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            enq.api
                .enqueue(json!({"name": format!("n{i}"), "delayMs": 10}))
                .await?,
        );
    }
    for id in &ids {
        enq.api
            .wait_state(id, "succeeded", Duration::from_secs(10))
            .await?;
    }
    // 20 tasks of 10 ms on two slots: well under the 5 s export timeout
    // that a blocking push would add to each.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        tried.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the worker did try to push"
    );
    held.abort();
    drop(worker);
    Ok(())
}

/// An unreachable collector is logged and counted: the SDK's warnings go
/// to the log, and `stem_telemetry_errors_total` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_and_counted() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let (closed, port) = (free_port(), free_port());
    let worker = start_worker(
        &redis.url(),
        "lonely-worker",
        "greetings",
        &[
            ("STEM_METRIC_EXPORTERS", format!("otlp,prometheus:{port}")),
            ("STEM_OTLP_ENDPOINT", format!("http://127.0.0.1:{closed}")),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_string()),
        ],
    )
    .await?;
    let page = stem_e2e::poll_until("the error counter", Duration::from_secs(20), || async {
        let page = scrape(port).await.unwrap_or_default();
        Ok((series(&page, "stem_telemetry_errors_total").unwrap_or(0.0) >= 1.0).then_some(page))
    })
    .await?;
    stem_e2e::promtool_accepts(&page)?;
    assert!(
        worker.logs().contains("export"),
        "the failed export is logged: {}",
        worker.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_counters_count_what_happened() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let key = hmac_key("k");
    let keys = vec![
        ("STEM_SIGNING_KEYS", key.clone()),
        ("STEM_SIGNING_ACTIVE_KEY", "k".to_string()),
    ];
    let port = free_port();
    let mut worker_env = keys.clone();
    worker_env.push(("STEM_METRIC_EXPORTERS", format!("prometheus:{port}")));
    let _worker = start_worker(&url, "counting-worker", "reporting,greetings", &worker_env).await?;
    let enq = start_enqueuer(&url, &keys).await?;
    // Two retries, then a failure; and one unsigned entry.
    let id = enq
        .api
        .enqueue(json!({"task": "reports.publish", "name": "q", "delayMs": 1, "fail": true}))
        .await?;
    let body =
        json!({"id": "forged", "name": "greeting.send", "queue": "greetings", "enqueuedAt": 1});
    stem_e2e::inject(
        &url,
        "stem:{greetings}:p0",
        &stem_e2e::pack("0", "", "", body.to_string().as_bytes()),
    )
    .await?;
    enq.api
        .wait_state(&id, "failed", Duration::from_secs(30))
        .await?;
    let page = stem_e2e::poll_until("the counters", Duration::from_secs(10), || async {
        let page = scrape(port).await.unwrap_or_default();
        let ready = series(&page, "stem_tasks_failed_total") == Some(1.0)
            && series(&page, "stem_tasks_signature_invalid_total") == Some(1.0);
        Ok(ready.then_some(page))
    })
    .await?;
    assert_eq!(
        series(&page, "stem_tasks_retried_total"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        series(&page, "stem_tasks_started_total"),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        series(&page, "stem_tasks_succeeded_total").unwrap_or(0.0),
        0.0,
        "{page}"
    );
    // The failed task and the forged entry.
    assert_eq!(
        series(&page, "stem_tasks_dead_lettered_total"),
        Some(2.0),
        "{page}"
    );
    Ok(())
}

/// A process's environment, as the start helpers take it.
type Env = Vec<(&'static str, String)>;

/// The `STEM_SIGNING_*` (and `STEM_ALLOW_DEMO_KEYS`) lines of a `.env`
/// text, as a process's environment (names leaked: the start helpers take
/// `&'static str`, and a test makes a handful).
fn signing_lines(text: &str) -> Vec<(&'static str, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("STEM_SIGNING_") || *k == "STEM_ALLOW_DEMO_KEYS")
        .map(|(k, v)| (&*Box::leak(k.to_string().into_boxed_str()), v.to_string()))
        .collect()
}

/// A shipped profile's signing lines, read from the repository.
fn profile(name: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    Ok(signing_lines(&std::fs::read_to_string(path)?))
}

/// What a worker of the compose stack holds: no private key.
fn verify_only(env: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    env.iter()
        .filter(|(k, _)| *k != "STEM_SIGNING_PRIVATE_KEYS")
        .cloned()
        .collect()
}

/// The placeholder keys shipped in the `.env` profiles are public: every
/// service refuses them (exit 78 naming the variable) unless
/// `STEM_ALLOW_DEMO_KEYS` is on, the workers' public-key-only view of the
/// Ed25519 profile included.
#[test]
fn placeholder_keys_exit_78_without_the_opt_in() -> anyhow::Result<()> {
    for name in [".env.hmac", ".env.ed25519_tls"] {
        let mut env = profile(name)?;
        assert!(
            env.iter()
                .any(|(k, v)| *k == "STEM_ALLOW_DEMO_KEYS" && v == "true"),
            "{name} opts in, with its comment"
        );
        env.retain(|(k, _)| *k != "STEM_ALLOW_DEMO_KEYS");
        let worker_env = verify_only(&env);
        let cases: [(&str, &Env, &str); 4] = [
            ("enqueuer", &env, "PORT"),
            ("dashboard", &env, "DASHBOARD_PORT"),
            ("beat", &env, "STEM_BEAT_HEALTH_PORT"),
            ("worker", &worker_env, "STEM_WORKER_HEALTH_PORT"),
        ];
        for (bin, signing, port_var) in cases {
            let mut envs: Vec<(&str, String)> = signing.to_vec();
            envs.push((port_var, free_port().to_string()));
            let mut p = ServiceProcess::spawn(bin, &[], &envs)?;
            let code = p.wait_exit(Duration::from_secs(15))?;
            let logs = p.logs();
            assert_eq!(code, Some(78), "{bin} on {name}'s keys: {logs}");
            let line = logs
                .lines()
                .find(|l| l.contains("configuration error"))
                .unwrap_or_default();
            assert!(
                line.contains("STEM_SIGNING_") && line.contains("placeholder"),
                "{bin} on {name}: the error names the variable: {logs}"
            );
        }
    }
    Ok(())
}

/// With `STEM_ALLOW_DEMO_KEYS=true` (as the shipped profiles set it) the
/// services run on the placeholder keys and warn at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_keys_run_and_warn_with_the_opt_in() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let env = profile(".env.hmac")?;
    let worker = start_worker(&redis.url(), "demo-keys", "greetings", &verify_only(&env)).await?;
    let enq = start_enqueuer(&redis.url(), &env).await?;
    enq.api
        .enqueue_succeeded(json!({"name": "Ada", "delayMs": 1}))
        .await?;
    let dash = stem_e2e::start_dashboard(&redis.url(), &env).await?;
    for (what, logs) in [
        ("worker", worker.logs()),
        ("enqueuer", enq.process.logs()),
        ("dashboard", dash.process.logs()),
    ] {
        assert!(
            logs.contains("STEM_ALLOW_DEMO_KEYS is on"),
            "{what} warns at start: {logs}"
        );
    }
    // And every dashboard page says so.
    for path in ["/", "/queues", "/no/such/page"] {
        let page = stem_e2e::http_client()
            .get(dash.url(path))
            .send()
            .await?
            .text()
            .await?;
        assert!(
            page.contains(r#"<p class="banner" role="alert">Demo keys"#),
            "{path} shows the demo-keys banner"
        );
    }
    Ok(())
}

/// `stem keys hmac|ed25519` print `.env` lines: pasted in place of a
/// profile's placeholders (and its opt-in removed), a producer signs with
/// them and a worker (the Ed25519 one holding only the public key)
/// verifies them, with no demo-key warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stem_keys_output_pasted_into_env_just_works() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    for kind in ["hmac", "ed25519"] {
        let out = stem_e2e::Stem::new("").run(&["keys", kind])?;
        assert_eq!(out.code, Some(0), "stem keys {kind}: {}", out.stderr);
        let env = signing_lines(&out.stdout);
        assert!(
            env.iter().any(|(k, _)| *k == "STEM_SIGNING_ACTIVE_KEY"),
            "{}",
            out.stdout
        );
        let queue = if kind == "hmac" {
            "greetings"
        } else {
            "billing"
        };
        let worker = start_worker(
            &redis.url(),
            &format!("keys-{kind}"),
            queue,
            &verify_only(&env),
        )
        .await?;
        let enq = start_enqueuer(&redis.url(), &env).await?;
        let task = if kind == "hmac" {
            "greeting.send"
        } else {
            "billing.charge"
        };
        enq.api
            .enqueue_succeeded(json!({"task": task, "name": "Ada", "delayMs": 1}))
            .await?;
        for logs in [worker.logs(), enq.process.logs()] {
            assert!(!logs.contains("STEM_ALLOW_DEMO_KEYS"), "{logs}");
        }
    }
    Ok(())
}
