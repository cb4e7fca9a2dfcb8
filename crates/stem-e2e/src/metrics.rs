//! The services' Prometheus pages as a scraper sees them: fetching
//! `/metrics`, summing a series or listing its samples, and asking
//! `promtool` whether the exposition follows Prometheus's rules. Apart from
//! [`crate::api`] because these pages are the exposition format, not the
//! API's JSON.

use crate::api::http_client;

/// The Prometheus page a service serves on `127.0.0.1:port/metrics`.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    Ok(http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?)
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
