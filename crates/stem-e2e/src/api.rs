//! The enqueue API as a client sees it over HTTP: [`Api`] sends requests
//! and waits for task states, [`Reply`] is one answer read whole, plus the
//! plain client and the event-stream reader the dashboard's tests share.
//! Kept apart from the processes that serve it so a test can point an
//! [`Api`] at any base URL (a started enqueuer, a virtual host, a stack).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::wait::{poll_until, POLL_INTERVAL, SETTLE};

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
