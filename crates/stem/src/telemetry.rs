//! What the library says about its own metrics: the exporters
//! `STEM_METRIC_EXPORTERS` names, metric families (worker and beat build
//! theirs), and the Prometheus text format. Serving them, like logging,
//! is a process concern: `crates/stem-service` does it.

/// One metrics exporter named in `STEM_METRIC_EXPORTERS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exporter {
    /// Serve Prometheus text on `0.0.0.0:<port>/metrics` (default 9464).
    Prometheus {
        /// Port to listen on (default [`PROMETHEUS_PORT`]).
        port: u16,
    },
    /// Log a snapshot at info level every 15 s.
    Console,
    /// OTLP/HTTP push (accepted; not exported yet — a warning says so).
    Otlp {
        /// Collector URL from `otlp:URL`; `None` when only `otlp` was named.
        url: Option<String>,
    },
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
    /// Metric name, e.g. `stem_tasks_started_total`.
    pub name: &'static str,
    /// One-line description (the `# HELP` text).
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
