//! The operator CLI, `stem`, run as a child process: [`Stem`] builds an
//! invocation with a clean `STEM_*` environment (so the developer's own
//! settings never leak into a test) and [`Run`] is one finished run. Also
//! reads the timestamps the CLI (and beat) print.

use std::process::{Command, Output};

use anyhow::{ensure, Context};
use serde_json::Value;
use stem_testkit::binary_path;

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

/// Epoch ms of an RFC 3339 UTC timestamp (`…Z`), as the CLI and beat
/// write them.
pub fn rfc3339_utc_ms(s: &str) -> anyhow::Result<i64> {
    anyhow::ensure!(s.ends_with('Z'), "{s:?} is not an RFC 3339 UTC timestamp");
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 timestamp"))?
        .timestamp_millis())
}
