//! What the library says about its own metrics: the exporters
//! `STEM_METRIC_EXPORTERS` names and the histogram buckets. The worker,
//! beat and client record through the OpenTelemetry metrics API when they
//! are given a meter (`WorkerMetrics::export_to`,
//! `SchedulerMetrics::export_to`); building the meter provider, serving
//! `/metrics` and pushing OTLP are process concerns, done by
//! `crates/stem-service`.

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
    /// OTLP/HTTP push of metrics to a collector, every
    /// `OTEL_METRIC_EXPORT_INTERVAL` ms (default 15 s).
    Otlp {
        /// Metrics URL from `otlp:URL`; `None` when only `otlp` was named
        /// (then `STEM_OTLP_ENDPOINT` + `/v1/metrics`).
        url: Option<String>,
    },
}

/// Default port of the Prometheus exporter.
pub const PROMETHEUS_PORT: u16 = 9464;

/// Parses `STEM_METRIC_EXPORTERS`: CSV of `prometheus[:PORT]`, `console`,
/// `otlp[:URL]`. Unknown names are configuration errors.
pub fn parse_exporters(raw: &str) -> crate::error::Result<Vec<Exporter>> {
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
                        crate::error::StemError::config(
                            "STEM_METRIC_EXPORTERS",
                            format!("invalid port in {item:?}"),
                        )
                    })?,
                },
            },
            "console" => Exporter::Console,
            "otlp" => Exporter::Otlp {
                url: arg
                    .map(|url| http_url("STEM_METRIC_EXPORTERS", url))
                    .transpose()?,
            },
            other => {
                return Err(crate::error::StemError::config(
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

/// `url` when it is an `http://` or `https://` URL with a host; else a
/// configuration error naming `variable`.
pub fn http_url(variable: &str, url: &str) -> crate::error::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            Ok(url.to_string())
        }
        _ => Err(crate::error::StemError::config(
            variable,
            format!("expected an http:// or https:// URL, got {url:?}"),
        )),
    }
}

/// The collector's base URL from a `STEM_OTLP_ENDPOINT` value, which
/// README "Configuration" lets name either the base (`http://otel-collector:4318`)
/// or the full traces URL as the reference writes it (`…/v1/traces`);
/// the exporters add `/v1/traces` and `/v1/metrics` to the base, so a
/// full URL kept whole posted every span to `/v1/traces/v1/traces`, where
/// a collector answers 404 and the spans were lost.
pub fn otlp_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    ["/v1/traces", "/v1/metrics"]
        .iter()
        .find_map(|signal| url.strip_suffix(signal))
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

/// Histogram bucket bounds, in seconds, for durations from 1 ms to 60 s
/// (task bodies, scheduler drift): fine where most tasks are, coarse where
/// few are.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints_name_the_collector_either_way() {
        for url in [
            "http://c:4318",
            "http://c:4318/",
            "http://c:4318/v1/traces",
            "http://c:4318/v1/traces/",
            "http://c:4318/v1/metrics",
        ] {
            assert_eq!(otlp_base(url), "http://c:4318", "{url}");
        }
        assert_eq!(otlp_base("https://c/otlp/v1/traces"), "https://c/otlp");
    }

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
        assert!(parse_exporters("otlp:collector:4318").is_err(), "not a URL");
        assert!(parse_exporters("otlp:http://").is_err(), "no host");
        assert!(http_url("STEM_OTLP_ENDPOINT", "https://c:4318").is_ok());
    }
}
