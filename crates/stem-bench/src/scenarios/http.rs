//! `stem-bench http`: `POST /enqueue` against the real `enqueuer` binary,
//! loaded by `wrk`; requests per second and p99, read from wrk's report.

use std::time::Duration;

use stem_testkit::ServiceProcess;

use super::rig::rig;
use super::{Opts, Report};

pub async fn http(opts: &Opts, connections: u32, seconds: u64) -> anyhow::Result<Report> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!(
            "wrk not found: install it with `apt-get install wrk` (scripts/bench.sh does this)"
        );
    }
    let mut report = Report::new("http");
    let (mut rps, mut p99) = (Vec::new(), Vec::new());
    let script = std::env::temp_dir().join("stem-bench-post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"name\":\"bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    for run in 0..opts.runs {
        let r = rig()?;
        let port = stem_testkit::free_port();
        let mut enq = ServiceProcess::spawn(
            "enqueuer",
            &[],
            &[
                ("PORT", port.to_string()),
                ("STEM_BROKER_URL", r.store.url()),
                ("STEM_SIGNING_KEYS", r.keys.clone()),
                ("STEM_SIGNING_ACTIVE_KEY", "bench".into()),
                ("RUST_LOG", "warn".into()),
            ],
        )?;
        let url = format!("http://127.0.0.1:{port}");
        stem_testkit::wait_until("enqueuer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        let out = std::process::Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(format!("{url}/enqueue"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        let q99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| parse_wrk_duration(v.trim()))
            .unwrap_or(f64::NAN);
        let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
        tracing::info!(run, rate, p99_ms = q99, non2xx, "http run");
        if non2xx {
            tracing::warn!("wrk saw non-2xx responses:\n{text}");
        }
        rps.push(rate);
        p99.push(q99);
        enq.sigterm()?;
        enq.wait_exit(Duration::from_secs(15))?;
    }
    report.add(
        &format!("POST /enqueue, {connections} connections, {seconds} s"),
        "requests/s",
        rps,
    );
    report.add("POST /enqueue p99", "ms", p99);
    Ok(report)
}

fn parse_wrk_duration(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}
