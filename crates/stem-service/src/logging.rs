//! The `tracing` subscriber of every Stem process: stderr, text or JSON
//! (`STEM_LOG_FORMAT`), level from `RUST_LOG`, else the caller's default
//! (`info` for services, `warn` for the operator CLI).

use stem::config::LogFormat;
use tracing_subscriber::EnvFilter;

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
