//! The Stem services as child processes: the `enqueuer` and `dashboard`
//! started on a free port and awaited until healthy, the `worker` until it
//! logs that it is ready, and a ticking `beat`. Owns the retry on a port
//! taken meanwhile, so no test repeats it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use stem_testkit::{free_port, ServiceProcess};

use crate::api::{http_client, Api};
use crate::logs::wait_log;
use crate::wait::POLL_INTERVAL;

/// Builds `[(key, value)]` environment pairs for [`ServiceProcess::spawn`].
pub fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// A unique, readable name for a worker (`e2e-<label>-<n>-<pid>`).
pub fn worker_name(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "e2e-{label}-{}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

/// A running `enqueuer` and a client for its API.
#[derive(Debug)]
pub struct Enqueuer {
    pub process: ServiceProcess,
    pub api: Api,
    pub port: u16,
}

/// Starts the `enqueuer` on a free port with `STEM_BROKER_URL=broker_url`
/// plus `extra` variables, and waits until `GET /healthz` answers.
pub async fn start_enqueuer(
    broker_url: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Enqueuer> {
    let (process, port) = start_http("enqueuer", "PORT", "", broker_url, extra).await?;
    let api = Api::new(format!("http://127.0.0.1:{port}"))?;
    Ok(Enqueuer { process, api, port })
}

/// A running `dashboard` and where it answers.
#[derive(Debug)]
pub struct Dashboard {
    pub process: ServiceProcess,
    pub port: u16,
    /// `http://127.0.0.1:PORT` plus the base path.
    pub base: String,
}

impl Dashboard {
    /// The absolute URL of `path` (under the base path).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Starts the `dashboard` on a free port with `STEM_BROKER_URL=broker_url`
/// plus `extra` variables (a `DASHBOARD_BASE_PATH` among them is honoured),
/// and waits until its `/healthz` answers.
pub async fn start_dashboard(
    broker_url: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Dashboard> {
    let base_path = extra
        .iter()
        .find(|(k, _)| *k == "DASHBOARD_BASE_PATH")
        .map(|(_, v)| v.trim_end_matches('/').to_string())
        .unwrap_or_default();
    let (process, port) =
        start_http("dashboard", "DASHBOARD_PORT", &base_path, broker_url, extra).await?;
    Ok(Dashboard {
        process,
        port,
        base: format!("http://127.0.0.1:{port}{base_path}"),
    })
}

/// Starts `binary` with its port variable `port_var` set to a free port,
/// `STEM_BROKER_URL=broker_url` and `extra`, and waits until
/// `GET <prefix>/healthz` answers 200. Retries on another port if the
/// process exits (its port was taken meanwhile).
async fn start_http(
    binary: &str,
    port_var: &'static str,
    prefix: &str,
    broker_url: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(ServiceProcess, u16)> {
    let mut last_error = None;
    let client = http_client();
    for _attempt in 0..3 {
        let port = free_port();
        let mut envs: Vec<(&str, String)> = vec![
            (port_var, port.to_string()),
            ("STEM_BROKER_URL", broker_url.to_string()),
        ];
        envs.extend(extra.iter().cloned());
        let mut process = ServiceProcess::spawn(binary, &[], &envs)?;
        let health = format!("http://127.0.0.1:{port}{prefix}/healthz");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(&health).send().await {
                if r.status() == 200 {
                    return Ok((process, port));
                }
            }
            if !process.is_running() {
                last_error = Some(anyhow::anyhow!(
                    "{binary} on port {port} exited with {:?}; log:\n{}",
                    process.exit_status(),
                    process.logs()
                ));
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{binary} on port {port} did not answer GET {health} within 20s; log:\n{}",
                    process.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{binary} did not start")))
}

/// Starts a `worker` named `name` on `queues` (CSV) with
/// `STEM_BROKER_URL=broker_url` plus `extra`, and waits until it logs
/// `worker ready`.
pub async fn start_worker(
    broker_url: &str,
    name: &str,
    queues: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<ServiceProcess> {
    let process = spawn_worker(broker_url, name, queues, extra)?;
    wait_log(&process, "worker ready", Duration::from_secs(20)).await?;
    Ok(process)
}

/// A beat seeded with one entry firing `greeting.send` on `greetings` every
/// second, serving Prometheus metrics on `metrics_port`. The directory
/// holds the schedule file; keep it as long as the beat.
pub fn spawn_ticking_beat(
    broker_url: &str,
    metrics_port: u16,
) -> anyhow::Result<(tempfile::TempDir, ServiceProcess)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("schedules.yaml");
    std::fs::write(
        &file,
        "entries:\n  - id: tick\n    task: greeting.send\n    queue: greetings\n    spec: every:1s\n",
    )?;
    let beat = ServiceProcess::spawn(
        "beat",
        &[],
        &[
            ("STEM_BROKER_URL", broker_url.to_string()),
            ("STEM_SCHEDULE_FILE", file.display().to_string()),
            (
                "STEM_METRIC_EXPORTERS",
                format!("prometheus:{metrics_port}"),
            ),
        ],
    )?;
    Ok((dir, beat))
}

/// Spawns a `worker` without waiting for it to be ready.
pub fn spawn_worker(
    broker_url: &str,
    name: &str,
    queues: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<ServiceProcess> {
    let mut envs: Vec<(&str, String)> = vec![
        ("STEM_BROKER_URL", broker_url.to_string()),
        ("STEM_WORKER_NAME", name.to_string()),
        ("STEM_WORKER_QUEUES", queues.to_string()),
    ];
    envs.extend(extra.iter().cloned());
    ServiceProcess::spawn("worker", &[], &envs)
}
