//! A real headless browser for the dashboard's tests: Debian's `chromium`
//! driven through `chromedriver` over the W3C WebDriver protocol (JSON over
//! HTTP, spoken here with the workspace's reqwest), on a free loopback
//! port, torn down when dropped. An action's click must open its
//! confirmation dialog (`data-turbo-confirm`): [`Browser::click_confirmed`]
//! accepts it and [`Browser::click_declined`] declines it, and both fail
//! when no dialog opened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};

use stem_testkit::free_port;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

fn find_tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280×900).
    /// Fails saying what to install when either is missing.
    pub async fn start() -> anyhow::Result<Self> {
        let driver_bin = find_tool(&["chromedriver"]).context(
            "chromedriver is not installed: install Debian's chromium-driver package (scripts/test.sh does)",
        )?;
        let chrome = find_tool(&["chromium", "chromium-browser"]).context(
            "chromium is not installed: install Debian's chromium package (scripts/test.sh does)",
        )?;
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver_bin.display()))?;
        stem::redis_conn::install_crypto_provider();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "accept",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let created = browser.call("POST", "/session", Some(caps)).await?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?
            .to_string();
        Ok(browser)
    }

    /// One WebDriver command; returns its `value`, failing on an error
    /// answer with the driver's message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let reply: Value = req.send().await?.json().await?;
        let value = reply["value"].clone();
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            bail!(
                "WebDriver {method} {path}: {error}: {}",
                value["message"].as_str().unwrap_or_default()
            );
        }
        Ok(value)
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// The address the page shows now.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", &self.at("/url"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the
    /// page and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The visible text of the first element matching `css` (empty when
    /// none does).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                json!([css]),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Clicks the first element matching `css`. A live part of the page
    /// (the worker table, replaced every second) may swap the element out
    /// between finding and clicking it: then it is found again, for up to
    /// 5 s.
    async fn press(&self, css: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .call(
                    "POST",
                    &self.at("/element"),
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await
                .with_context(|| format!("finding {css}"))?;
            let id = found[ELEMENT]
                .as_str()
                .with_context(|| format!("no element id for {css}: {found}"))?
                .to_string();
            match self
                .call("POST", &self.at(&format!("/element/{id}/click")), None)
                .await
            {
                Err(e) if e.to_string().contains("stale element") && Instant::now() < deadline => {
                    continue
                }
                other => return other.map(drop),
            }
        }
    }

    /// The text of the confirmation dialog the last click opened; an
    /// error when none is open (every action of the dashboard asks first).
    async fn dialog(&self, css: &str) -> anyhow::Result<String> {
        let text = self
            .call("GET", &self.at("/alert/text"), None)
            .await
            .with_context(|| format!("clicking {css} opened no confirmation dialog"))?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// Clicks the action button `css`, which must ask for confirmation,
    /// and accepts; returns the question asked.
    pub async fn click_confirmed(&self, css: &str) -> anyhow::Result<String> {
        self.press(css).await?;
        let asked = self.dialog(css).await?;
        self.call("POST", &self.at("/alert/accept"), None).await?;
        Ok(asked)
    }

    /// Clicks the action button `css`, which must ask for confirmation,
    /// and declines; returns the question asked.
    pub async fn click_declined(&self, css: &str) -> anyhow::Result<String> {
        self.press(css).await?;
        let asked = self.dialog(css).await?;
        self.call("POST", &self.at("/alert/dismiss"), None).await?;
        Ok(asked)
    }

    /// Polls until the element `css` contains `needle` (within `timeout`),
    /// without touching the page.
    pub async fn wait_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).await?;
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{css} did not show {needle:?} within {timeout:?}; it shows: {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The addresses of every resource the page loaded (scripts, styles,
    /// images, fetches), from the Resource Timing API.
    pub async fn resources(&self) -> anyhow::Result<Vec<String>> {
        let v = self
            .eval(
                "return performance.getEntriesByType('resource').map(e => e.name);",
                json!([]),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Writes a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.call("GET", &self.at("/screenshot"), None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Browser {
    /// Ends the session (Chromium exits) and stops the driver.
    pub async fn close(mut self) {
        let path = self.at("");
        let _ = self.call("DELETE", &path, None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ends with its driver; Chromium exits with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
