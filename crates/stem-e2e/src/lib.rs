//! Shared helpers for Stem's black-box end-to-end tests.
//!
//! The tests in `tests/` drive the real system the way an operator would:
//! a private `redis-server` (from [`stem_testkit`]), the real `enqueuer` and
//! `worker` binaries as child processes, the HTTP API over the loopback
//! interface, and the workers' logs. The binaries must be built first
//! (`cargo build --workspace --bins`; `cargo test` does not rebuild another
//! package's binaries): [`stem_testkit::binary_path`] fails when they are
//! missing or older than their sources.
//!
//! [`browser::Browser`] drives a real headless Chromium for the
//! dashboard's tests.
//!
//! Nothing here sleeps for a fixed time to wait for an outcome: every wait
//! is [`poll_until`] with a deadline, and fails with a message saying what
//! was awaited and what was last seen.

pub mod browser;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use stem::broker::redis::RedisBroker;
use stem::broker::{DeadLetter, QueueAdmin};
use stem::config::TlsConfig;

pub use stem_testkit::{
    binary_path, free_port, ClusterOptions, Fault, FaultProxy, Pattern, RedisCluster, RedisOptions,
    RedisServer, RedisUnderTest, ServiceProcess, TlsAssets, TlsMode, Victim,
};

/// What the demo task body logs at the start of every execution.
pub const BODY_RUNNING: &str = "demo task body running";

/// Interval between two evaluations in [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Generous deadline for outcomes that only need the system to get round
/// to them (a 2-core machine running several tests at once can be slow).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls until `f` yields `Some(value)` (the test kit's one async poll;
/// errors count as "not yet" and are reported at the deadline).
pub use stem_testkit::poll as poll_until;

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

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// One HTTP answer of the enqueue API.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `content-type` header, if any.
    pub content_type: Option<String>,
    /// The body as text.
    pub text: String,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    /// Fails unless the reply is JSON (`content-type: application/json…`
    /// and a body that parses).
    pub fn expect_json(&self) -> anyhow::Result<&Value> {
        let ct = self.content_type.as_deref().unwrap_or("");
        if !ct.starts_with("application/json") {
            bail!(
                "expected content-type application/json, got {ct:?} (status {}, body {})",
                self.status,
                self.text
            );
        }
        if self.json.is_null() {
            bail!(
                "expected a JSON body, got {:?} (status {})",
                self.text,
                self.status
            );
        }
        Ok(&self.json)
    }

    /// Reads `resp` whole.
    pub async fn of(resp: reqwest::Response) -> anyhow::Result<Reply> {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.context("reading the response body")?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            content_type,
            text,
            json,
        })
    }

    /// The `"error"` sentence of a JSON error reply.
    pub fn error_message(&self) -> anyhow::Result<&str> {
        self.expect_json()?
            .get("error")
            .and_then(Value::as_str)
            .with_context(|| format!("no string \"error\" in {}", self.text))
    }
}

/// A client of the enqueue API at one base URL.
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: impl Into<String>) -> anyhow::Result<Self> {
        stem::redis_conn::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            base: base.into(),
            http,
        })
    }

    /// A client for `base` sending through `http` (e.g. one that resolves
    /// a virtual host such as `api.localhost` to a loopback port).
    pub fn with_client(base: impl Into<String>, http: reqwest::Client) -> Self {
        Api {
            base: base.into(),
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn reply(resp: reqwest::Response) -> anyhow::Result<Reply> {
        Reply::of(resp).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Self::reply(resp).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url} {body}"))?;
        Self::reply(resp).await
    }

    /// `POST path` with raw bytes as `content-type: application/json`.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url} (raw body)"))?;
        Self::reply(resp).await
    }

    /// Enqueues `body` and waits (up to 15 s) until the task succeeded.
    pub async fn enqueue_succeeded(&self, body: Value) -> anyhow::Result<String> {
        let id = self.enqueue(body).await?;
        self.wait_state(&id, "succeeded", Duration::from_secs(15))
            .await?;
        Ok(id)
    }

    /// `POST /enqueue` that must succeed; returns the task id.
    pub async fn enqueue(&self, body: Value) -> anyhow::Result<String> {
        let reply = self.post_json("/enqueue", &body).await?;
        if reply.status != 200 {
            bail!(
                "POST /enqueue {body} answered {}: {}",
                reply.status,
                reply.text
            );
        }
        reply
            .expect_json()?
            .get("taskId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("no taskId in {}", reply.text))
    }

    /// `GET /tasks/{id}`: `Some(status)` on 200, `None` on 404.
    pub async fn task(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let reply = self.get(&format!("/tasks/{id}")).await?;
        match reply.status {
            200 => Ok(Some(reply.expect_json()?.clone())),
            404 => Ok(None),
            s => bail!("GET /tasks/{id} answered {s}: {}", reply.text),
        }
    }

    /// `POST /group` of a greeting per name, then polls `GET /group/{id}`
    /// until every member has completed; the group id.
    pub async fn run_group(&self, names: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let group = self
            .post_json("/group", &serde_json::json!({ "names": names }))
            .await?;
        ensure!(group.status == 200, "POST /group: {}", group.text);
        let gid = group.json["groupId"]
            .as_str()
            .context("groupId in the POST /group answer")?
            .to_string();
        poll_until("the group to complete", timeout, || async {
            let g = self.get(&format!("/group/{gid}")).await?;
            Ok((g.json["completed"] == names.len()).then_some(()))
        })
        .await?;
        Ok(gid)
    }

    /// Polls `GET /tasks/{id}` until its state is `state`. Fails at once if
    /// the task reaches another terminal state, and on timeout with the
    /// last status seen.
    pub async fn wait_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<Value> = None;
        loop {
            match self.task(id).await {
                Ok(Some(s)) => {
                    let current = state_of(&s).to_string();
                    if current == state {
                        return Ok(s);
                    }
                    if is_terminal(&current) {
                        bail!("task {id} reached {current:?} while waiting for {state:?}: {s}");
                    }
                    last = Some(s);
                }
                Ok(None) => {}
                Err(e) => last = Some(Value::String(format!("error: {e:#}"))),
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for task {id} to be {state:?}; last status: {}",
                    last.map(|v| v.to_string()).unwrap_or_else(|| "none (404)".into())
                );
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        poll_until("GET /healthz to answer 200", timeout, || async {
            Ok((self.get("/healthz").await?.status == 200).then_some(()))
        })
        .await
    }
}

/// The `"state"` of a status document (`""` when missing).
pub fn state_of(status: &Value) -> &str {
    status.get("state").and_then(Value::as_str).unwrap_or("")
}

/// Whether `state` is final (succeeded, failed, cancelled).
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

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

/// Polls `process`'s log until it contains `needle`; fails early if the
/// process exits without having logged it.
pub async fn wait_log(
    process: &ServiceProcess,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = process.logs();
        if logs.contains(needle) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for `{}` (pid {}) to log {needle:?}; log:\n{logs}",
                process.name(),
                process.pid()
            );
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// Lines of `logs` that announce the demo body running for `task_id`.
pub fn body_run_lines<'a>(logs: &'a str, task_id: &str) -> Vec<&'a str> {
    let field = format!("task_id={task_id}");
    logs.lines()
        .filter(|l| l.contains(BODY_RUNNING) && l.contains(&field))
        .collect()
}

/// How many times the demo body started for `task_id` according to `logs`.
pub fn body_runs(logs: &str, task_id: &str) -> usize {
    body_run_lines(logs, task_id).len()
}

/// The tasks of `ids` in the order their demo bodies started, by `logs`.
pub fn start_order<'a>(logs: &str, ids: &[&'a String]) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains(BODY_RUNNING))
        .filter_map(|l| {
            ids.iter()
                .find(|id| l.contains(&format!("task_id={id}")))
                .map(|id| id.as_str())
        })
        .collect()
}

/// Polls until every task of `ids` has `state`.
pub async fn wait_all(api: &Api, ids: &[&String], state: &str) -> anyhow::Result<()> {
    poll_until(
        &format!("{} tasks to be {state}", ids.len()),
        SETTLE,
        || async {
            for id in ids {
                if api.task(id).await?.as_ref().map(state_of) != Some(state) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// Polls until `process` logs the demo body starting for `task_id`.
pub async fn wait_body_running(
    process: &ServiceProcess,
    task_id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    poll_until(
        &format!("`{}` to log {BODY_RUNNING:?} for {task_id}", process.name()),
        timeout,
        || async { Ok((body_runs(&process.logs(), task_id) > 0).then_some(())) },
    )
    .await
    .with_context(|| format!("log of `{}`:\n{}", process.name(), process.logs()))
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// The Prometheus page a service serves on `127.0.0.1:port/metrics`.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    Ok(http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// A plain HTTP client for the tests (rustls needs the process's crypto
/// provider before any client is built).
pub fn http_client() -> reqwest::Client {
    stem::redis_conn::install_crypto_provider();
    reqwest::Client::new()
}

/// Reads a streamed response (server-sent events) until it has carried
/// `needle`, at most `within`; the error shows what did arrive.
pub async fn stream_until(
    stream: &mut reqwest::Response,
    needle: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let mut seen = String::new();
    let found = tokio::time::timeout(within, async {
        while !seen.contains(needle) {
            match stream.chunk().await? {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => anyhow::bail!("stream ended"),
            }
        }
        Ok(())
    })
    .await;
    found.map_err(|_| anyhow::anyhow!("{needle:?} not streamed within {within:?}: {seen}"))?
}

/// Value of the first series of `name` in a Prometheus text page.
pub fn series(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The sample lines of metric `name` (one per label set).
pub fn samples<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .collect()
}

/// Runs `promtool check metrics` on `page`: the exposition parses and
/// follows Prometheus's naming rules (counters end in `_total`, units are
/// spelled out, every family has help text). Fails saying what to install
/// when promtool is missing.
pub fn promtool_accepts(page: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("promtool not runnable ({e}): install Debian's prometheus package")
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("promtool stdin"))?
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics refused the page ({:?}): {}{}\n--- page\n{page}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The operator CLI
// ---------------------------------------------------------------------------

/// One finished `stem` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Fails unless the exit code is `code`.
    pub fn expect(self, code: i32) -> anyhow::Result<Run> {
        ensure!(
            self.code == Some(code),
            "expected exit {code}, got {}",
            self.describe()
        );
        Ok(self)
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {}", self.describe()))
    }
}

/// The `stem` binary with a clean `STEM_*` environment plus `envs`.
#[derive(Clone, Debug)]
pub struct Stem {
    envs: Vec<(String, String)>,
    removed: Vec<String>,
}

impl Stem {
    pub fn new(url: &str) -> Self {
        Stem {
            envs: vec![("STEM_BROKER_URL".into(), url.into())],
            removed: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs without `key` in the environment (unless [`Stem::with`] sets
    /// it).
    pub fn without(mut self, key: &str) -> Self {
        self.removed.push(key.into());
        self
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(binary_path("stem")?);
        for (k, _) in std::env::vars() {
            if k.starts_with("STEM_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        for k in &self.removed {
            cmd.env_remove(k);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v))).args(args);
        Ok(cmd)
    }

    /// Starts `stem args` in the background (stdout and stderr piped);
    /// [`Stem::finish`] collects it.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<std::process::Child> {
        self.command(args)?
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning stem {args:?}"))
    }

    /// Waits for a [`Stem::spawn`]ed run (on a blocking thread).
    pub async fn finish(child: std::process::Child) -> anyhow::Result<Run> {
        let Output {
            status,
            stdout,
            stderr,
        } = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .context("joining the stem run")?
            .context("waiting for stem")?;
        Ok(Run {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs `stem args` to completion.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        let mut cmd = self.command(args)?;
        let Output {
            status,
            stdout,
            stderr,
        } = cmd
            .output()
            .with_context(|| format!("running stem {args:?}"))?;
        Ok(Run {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs and requires exit 0.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Run> {
        self.run(args)?
            .expect(0)
            .with_context(|| format!("stem {}", args.join(" ")))
    }

    /// Runs with `--json` appended, requires exit 0, parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        self.ok(&all)?.json()
    }

    /// `task status ID --json` → state.
    pub fn state(&self, id: &str) -> anyhow::Result<String> {
        let v = self.json(&["task", "status", id])?;
        Ok(v["state"].as_str().unwrap_or_default().to_string())
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// The packed entries (`attempt\nkid\nsig\nbody`) of stream `key`, oldest
/// first, read with a plain Redis client.
pub async fn packed_entries(url: &str, key: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|e| match e.map.get("e") {
            Some(redis::Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        })
        .collect())
}

/// Splits a packed entry into `(attempt, kid, sig, body)`.
pub fn unpack(packed: &[u8]) -> anyhow::Result<(String, String, String, Vec<u8>)> {
    let mut parts = packed.splitn(4, |b| *b == b'\n');
    let mut text = || -> anyhow::Result<String> {
        Ok(String::from_utf8(
            parts.next().context("short packed entry")?.to_vec(),
        )?)
    };
    let (attempt, kid, sig) = (text()?, text()?, text()?);
    let body = parts.next().context("packed entry without body")?.to_vec();
    Ok((attempt, kid, sig, body))
}

/// A packed entry from its parts, as a stream writer would forge it.
pub fn pack(attempt: &str, kid: &str, sig: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{attempt}\n{kid}\n{sig}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

/// `XADD key * e packed`, as anyone who can write to the stream can.
pub async fn inject(url: &str, key: &str, packed: &[u8]) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("e")
        .arg(packed)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// The broker (and its [`QueueAdmin`] view) on a plain `redis://` URL,
/// for reading dead letters: gray-box, as an operator tool would read them.
pub fn broker(url: &str) -> anyhow::Result<RedisBroker> {
    let client = stem::redis_conn::client(url, &TlsConfig::default())?;
    Ok(RedisBroker::new(client, 1000)?)
}

/// The newest (at most 100) dead letters of `queue`.
pub async fn dead_letters(url: &str, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(broker(url)?.list_dead_letters(queue, 100).await?)
}

/// Polls the dead letters of `queue` until one matches `pred`.
pub async fn wait_dead_letter<P>(
    url: &str,
    queue: &str,
    timeout: Duration,
    pred: P,
) -> anyhow::Result<DeadLetter>
where
    P: Fn(&DeadLetter) -> bool,
{
    let b = broker(url)?;
    let pred = &pred;
    let b = &b;
    poll_until(
        &format!("a matching dead letter in queue {queue}"),
        timeout,
        || async move {
            let letters = b.list_dead_letters(queue, 100).await?;
            Ok(letters.into_iter().find(|l| pred(l)))
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------

/// `id:<fresh base64 HMAC secret>`, one entry of `STEM_SIGNING_KEYS`.
pub fn hmac_key(id: &str) -> String {
    format!("{id}:{}", stem::signing::generate_hmac_secret())
}

/// The signing variables of a process that signs with (and verifies by)
/// `key`, an entry made by `hmac_key("k1")`: `STEM_SIGNING_KEYS=key`,
/// `STEM_SIGNING_ACTIVE_KEY=k1`.
pub fn signed(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STEM_SIGNING_KEYS", key.to_string()),
        ("STEM_SIGNING_ACTIVE_KEY", "k1".into()),
    ]
}

/// The demo catalogue's producer on `url`, unsigned, from the library
/// (chains and chords have no HTTP endpoint).
pub fn library_producer(url: &str) -> anyhow::Result<stem::client::Stem> {
    let url = url.to_string();
    let config = stem::config::StemConfig::from_lookup(&move |k: &str| {
        (k == "STEM_BROKER_URL").then(|| url.clone())
    })?;
    Ok(stem::client::Stem::connect(&config)?.with_registry(stem_demo::registry()))
}

/// An enqueue of `task` with `args` and default options.
pub fn request(task: &str, args: Value) -> stem::client::EnqueueRequest {
    stem::client::EnqueueRequest {
        name: task.into(),
        args,
        options: Default::default(),
    }
}

/// The `STEM_TLS_*` variables of a client presenting `tls`'s client
/// certificate and trusting `ca`.
pub fn tls_env(tls: &TlsAssets, ca: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("STEM_TLS_CA_CERT", ca.display().to_string()),
        (
            "STEM_TLS_CLIENT_CERT",
            tls.client_cert.display().to_string(),
        ),
        ("STEM_TLS_CLIENT_KEY", tls.client_key.display().to_string()),
    ]
}

/// A fresh Ed25519 key: `(id:public, id:seed)` entries for
/// `STEM_SIGNING_PUBLIC_KEYS` and `STEM_SIGNING_PRIVATE_KEYS`.
pub fn ed25519_key(id: &str) -> (String, String) {
    let (public, seed) = stem::signing::generate_ed25519_pair();
    (format!("{id}:{public}"), format!("{id}:{seed}"))
}

/// Epoch ms of an RFC 3339 UTC timestamp (`…Z`), as the CLI and beat
/// write them.
pub fn rfc3339_utc_ms(s: &str) -> anyhow::Result<i64> {
    anyhow::ensure!(s.ends_with('Z'), "{s:?} is not an RFC 3339 UTC timestamp");
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 timestamp"))?
        .timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lines_are_matched_by_task_id() {
        let logs = "2024 INFO demo task body running task=\"greeting.send\" task_id=abc attempt=0 name=Ada\n\
                    2024 INFO demo task body running task=\"greeting.send\" task_id=abd attempt=0 name=Bo\n\
                    2024 INFO Processed greeting.send for Ada (attempt 0) task_id=abc\n";
        assert_eq!(body_runs(logs, "abc"), 1);
        assert_eq!(body_runs(logs, "abd"), 1);
        assert_eq!(body_runs(logs, "zzz"), 0);
    }

    #[tokio::test]
    async fn poll_until_reports_what_it_waited_for() {
        let err =
            poll_until::<(), _, _>("never", Duration::from_millis(120), || async { Ok(None) })
                .await
                .expect_err("never ready");
        assert!(err.to_string().contains("waiting for never"), "{err}");
        let mut n = 0;
        let v = poll_until("third call", Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move { Ok((k >= 3).then_some(k)) }
        })
        .await
        .expect("ready on the third call");
        assert_eq!(v, 3);
    }
}
