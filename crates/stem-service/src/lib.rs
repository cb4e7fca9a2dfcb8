//! Process concerns shared by the Stem services (`enqueuer`, `worker`,
//! `beat`, `dashboard`) and the `stem` CLI, kept out of the library so that embedding
//! `stem` in another program never installs a logger, exits the process
//! or opens a port behind its back:
//!
//! - [`exit`]: the exit codes and configuration errors as one line plus
//!   exit 78;
//! - [`logging`]: the `tracing` subscriber (text or JSON to stderr);
//! - [`shutdown_token`]: a token cancelled by SIGTERM or SIGINT;
//! - [`http`]: the health endpoint and the Prometheus endpoint, on axum;
//! - [`metrics`]: the meter provider and its exporters (Prometheus, console,
//!   OTLP/HTTP);
//! - [`depth`]: the queue-depth gauge, sampled off the task path;
//! - [`flags`]: value parsers for duration flags.

pub mod depth;
pub mod exit;
pub mod flags;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
mod signal;

pub use exit::{config_or_exit, stem_config_or_exit};
pub use signal::shutdown_token;
