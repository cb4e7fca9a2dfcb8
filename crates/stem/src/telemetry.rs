//! Logging set-up for every binary: `tracing` to stderr, text or JSON
//! (`STEM_LOG_FORMAT`), level from `RUST_LOG` (default: the caller's, `info`
//! for services, `warn` for the operator CLI).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, filtering by `RUST_LOG` or else by
/// `default_filter`. Safe to call more than once (later calls are ignored).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The log format named by `STEM_LOG_FORMAT`, before full configuration is
/// parsed (so configuration errors are logged in the right format).
pub fn log_format_from_env() -> LogFormat {
    match std::env::var("STEM_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// One metrics exporter named in `STEM_METRIC_EXPORTERS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exporter {
    /// Serve Prometheus text on `0.0.0.0:<port>/metrics` (default 9464).
    Prometheus { port: u16 },
    /// Log a snapshot at info level every 15 s.
    Console,
    /// OTLP/HTTP push (accepted; not exported yet — a warning says so).
    Otlp { url: Option<String> },
}

/// Default port of the Prometheus exporter.
pub const PROMETHEUS_PORT: u16 = 9464;

/// Parses `STEM_METRIC_EXPORTERS`: CSV of `prometheus[:PORT]`, `console`,
/// `otlp[:URL]`. Unknown names are configuration errors.
pub fn parse_exporters(raw: &str) -> crate::Result<Vec<Exporter>> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, arg) = match item.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (item, None),
        };
        out.push(match name {
            "prometheus" => Exporter::Prometheus {
                port: match arg {
                    None => PROMETHEUS_PORT,
                    Some(p) => p.parse().map_err(|_| {
                        crate::StemError::config(
                            "STEM_METRIC_EXPORTERS",
                            format!("invalid port in {item:?}"),
                        )
                    })?,
                },
            },
            "console" => Exporter::Console,
            "otlp" => Exporter::Otlp {
                url: arg.map(str::to_string),
            },
            other => {
                return Err(crate::StemError::config(
                    "STEM_METRIC_EXPORTERS",
                    format!(
                        "unknown exporter {other:?} (use prometheus[:PORT], console, otlp[:URL])"
                    ),
                ))
            }
        });
    }
    Ok(out)
}

/// A metric family to render.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Label pairs and value, one per series.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Renders families in the Prometheus text exposition format.
pub fn render(families: &[Family]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", f.name, value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", f.name, labels.join(","), value);
            }
        }
    }
    out
}

/// Something that can render its metrics on demand.
pub type MetricsSource = std::sync::Arc<dyn Fn() -> Vec<Family> + Send + Sync>;

/// Starts the configured exporters for `source`; they stop with `stop`.
pub fn start_exporters(
    exporters: &[Exporter],
    source: MetricsSource,
    stop: tokio_util::sync::CancellationToken,
) {
    for e in exporters {
        match e.clone() {
            Exporter::Prometheus { port } => {
                let (source, stop) = (source.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_prometheus(port, source, stop).await {
                        tracing::error!(port, error = %e, "prometheus exporter failed");
                    }
                });
            }
            Exporter::Console => {
                let (source, stop) = (source.clone(), stop.clone());
                tokio::spawn(async move {
                    loop {
                        if stop
                            .run_until_cancelled(tokio::time::sleep(
                                std::time::Duration::from_secs(15),
                            ))
                            .await
                            .is_none()
                        {
                            return;
                        }
                        tracing::info!(target: "stem::metrics", "\n{}", render(&source()));
                    }
                });
            }
            Exporter::Otlp { url } => tracing::warn!(
                url = url.as_deref().unwrap_or("-"),
                "the otlp metrics exporter is not implemented yet; use prometheus[:PORT]"
            ),
        }
    }
}

/// A minimal HTTP server for `GET /metrics` (and `/healthz`).
pub async fn serve_prometheus(
    port: u16,
    source: MetricsSource,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    tracing::info!(
        "prometheus metrics on http://{}/metrics",
        listener.local_addr()?
    );
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = stop.cancelled() => return Ok(()),
        };
        let source = source.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while len < buf.len() {
                match sock.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = if path.starts_with("/metrics") {
                ("200 OK", "text/plain; version=0.0.4", render(&source()))
            } else if path.starts_with("/healthz") {
                (
                    "200 OK",
                    "application/json",
                    "{\"status\":\"ok\"}".to_string(),
                )
            } else {
                (
                    "404 Not Found",
                    "application/json",
                    "{\"error\":\"Route not found.\"}".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporters_parse() {
        assert_eq!(
            parse_exporters("prometheus:9100, console,otlp:http://c:4318/v1/metrics")
                .expect("valid"),
            vec![
                Exporter::Prometheus { port: 9100 },
                Exporter::Console,
                Exporter::Otlp {
                    url: Some("http://c:4318/v1/metrics".into())
                }
            ]
        );
        assert_eq!(
            parse_exporters("prometheus").expect("valid"),
            vec![Exporter::Prometheus {
                port: PROMETHEUS_PORT
            }]
        );
        assert!(parse_exporters("statsd").is_err());
    }

    #[test]
    fn renders_the_text_format() {
        let text = render(&[Family {
            name: "stem_tasks_started_total",
            help: "Tasks started.",
            kind: "counter",
            samples: vec![(vec![("worker", "w\"1".into())], 3.0)],
        }]);
        assert!(text.contains("# TYPE stem_tasks_started_total counter"));
        assert!(
            text.contains("stem_tasks_started_total{worker=\"w\\\"1\"} 3"),
            "{text}"
        );
    }
}
