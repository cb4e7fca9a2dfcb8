//! A private Prometheus server (Debian's `prometheus`) scraping the given
//! loopback ports every second, with its own storage in a temporary
//! directory, for tests that send real PromQL to a real Prometheus.

use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, installed, ServiceProcess};

/// A running Prometheus; killed (and its storage removed) when dropped.
pub struct PrometheusServer {
    process: ServiceProcess,
    port: u16,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `127.0.0.1:<port>/metrics` for each of
    /// `targets` every second. Fails saying what to install when the
    /// `prometheus` binary is missing.
    pub fn start(targets: &[u16]) -> anyhow::Result<Self> {
        let binary = installed("prometheus", "prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("stem-prometheus-")
            .tempdir()?;
        let list = targets
            .iter()
            .map(|p| format!("'127.0.0.1:{p}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: stem\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )?;
        let port = free_port();
        let process = ServiceProcess::spawn_path(
            "prometheus",
            &binary,
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &[],
        )?;
        process.wait_for_log(
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        )?;
        Ok(PrometheusServer {
            process,
            port,
            _dir: dir,
        })
    }

    /// The base URL of its HTTP API, e.g. `http://127.0.0.1:9090`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}
