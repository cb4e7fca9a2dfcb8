//! The Grafana dashboards of `deploy/grafana/dashboards` against a real
//! Prometheus scraping the real worker, beat and enqueuer: every panel's
//! PromQL (with Grafana's `$__rate_interval` and the template variables
//! substituted) must parse, and return series once traffic ran — the
//! failure panels included, since the traffic has a task that fails for
//! good. The template variables' label queries must find values too.

use std::time::Duration;

use serde_json::{json, Value};
use stem_e2e::{start_enqueuer, start_worker};
use stem_testkit::{free_port, PrometheusServer, RedisServer};

/// What `$__rate_interval` becomes: four scrape intervals of the test's
/// Prometheus (1 s), as Grafana computes it, with room to spare.
const RATE_INTERVAL: &str = "10s";

fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            out.push((path.display().to_string(), serde_json::from_str(&text)?));
        }
    }
    anyhow::ensure!(out.len() == 3, "three dashboards in {}", dir.display());
    Ok(out)
}

/// Every panel target's expression, with the panel title.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or("?").to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    out
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", ".*")
        .replace("$queue", ".*")
}

/// A GET of Prometheus's HTTP API, as JSON.
async fn api(
    prom: &PrometheusServer,
    path: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<Value> {
    Ok(stem_e2e::http_client()
        .get(format!("{}/api/v1/{path}", prom.url()))
        .query(params)
        .send()
        .await?
        .json()
        .await?)
}

async fn query(prom: &PrometheusServer, expr: &str) -> anyhow::Result<Value> {
    api(prom, "query", &[("query", expr)]).await
}

fn series_count(reply: &Value) -> usize {
    reply["data"]["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_the_real_services() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let (wport, eport, bport) = (free_port(), free_port(), free_port());
    let _worker = start_worker(
        &redis.url(),
        "dash-worker",
        "greetings,reporting",
        &[("STEM_METRIC_EXPORTERS", format!("prometheus:{wport}"))],
    )
    .await?;
    let enq = start_enqueuer(
        &redis.url(),
        &[("STEM_METRIC_EXPORTERS", format!("prometheus:{eport}"))],
    )
    .await?;
    let _beat = stem_e2e::spawn_ticking_beat(&redis.url(), bport)?;
    let prom = PrometheusServer::start(&[wport, eport, bport])?;

    // Traffic: tasks that succeed, and one that fails for good after its
    // two retries (about 6 s of backoff).
    let doomed = enq
        .api
        .enqueue(json!({"task": "reports.aggregate", "fail": true}))
        .await?;
    for i in 0..20 {
        enq.api
            .enqueue(json!({"name": format!("n{i}"), "delayMs": 5}))
            .await?;
    }
    enq.api
        .wait_state(&doomed, "failed", Duration::from_secs(30))
        .await?;
    // Let Prometheus scrape the final counts a few times.
    stem_e2e::poll_until(
        "prometheus has the failure",
        Duration::from_secs(20),
        || async {
            let r = query(&prom, "sum(stem_tasks_dead_lettered_total)").await?;
            Ok((series_count(&r) > 0).then_some(()))
        },
    )
    .await?;
    stem_e2e::poll_until(
        "three scrape targets up",
        Duration::from_secs(20),
        || async {
            let r = query(&prom, "count(up == 1)").await?;
            Ok((r["data"]["result"][0]["value"][1] == "3").then_some(()))
        },
    )
    .await?;

    let mut checked = 0;
    for (file, dashboard) in dashboards()? {
        for (title, expr) in queries(&dashboard) {
            let promql = substitute(&expr);
            let what = format!("{file}: panel {title:?}: {promql}");
            let reply = stem_e2e::poll_until(&what, Duration::from_secs(20), || {
                let (promql, what, prom) = (promql.clone(), what.clone(), &prom);
                async move {
                    let reply = query(prom, &promql).await?;
                    anyhow::ensure!(reply["status"] == "success", "{what} does not run: {reply}");
                    Ok((series_count(&reply) > 0).then_some(reply))
                }
            })
            .await?;
            assert!(series_count(&reply) > 0);
            checked += 1;
        }
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let q = var["query"]["query"].as_str().unwrap_or_default();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| anyhow::anyhow!("{file}: variable query {q:?}"))?;
            let (metric, label) = inner
                .split_once(',')
                .ok_or_else(|| anyhow::anyhow!("{file}: variable query {q:?}"))?;
            let path = format!("label/{}/values", label.trim());
            let reply = api(&prom, &path, &[("match[]", metric.trim())]).await?;
            assert!(
                reply["data"].as_array().is_some_and(|v| !v.is_empty()),
                "{file}: variable {q:?} finds no values: {reply}"
            );
        }
    }
    assert!(checked >= 30, "only {checked} queries checked");
    Ok(())
}
