//! Test harness for Stem's integration and end-to-end tests.
//!
//! This crate owns everything a test needs to run the real system locally:
//!
//! * [`RedisServer`]: a private `redis-server` child process on a free port,
//!   in its own temporary directory, optionally with AOF persistence and TLS
//!   or mutual TLS (see [`RedisOptions`] and [`TlsMode`]);
//! * [`RedisCluster`]: a private Redis Cluster (three masters by default,
//!   optionally a replica each, optionally over TLS) of such servers;
//! * [`RedisUnderTest`]: either of them as a scenario sees it (URL and
//!   `redis-cli`), so one scenario runs on both;
//! * [`TlsAssets`]: a throw-away CA with server and client certificates (plus
//!   an unrelated CA for "wrong CA is refused" tests), generated with rcgen;
//! * [`ServiceProcess`]: one of the workspace's real binaries (`enqueuer`,
//!   `worker`, `stem`) run as a child process with its output captured to a
//!   log file, found through [`binary_path`];
//! * [`FaultProxy`]: a TCP proxy between one process and Redis that kills
//!   the process, cuts the connection or stalls it when the process sends a
//!   matching command, for crash-window and stall tests;
//! * [`PrometheusServer`]: a private Prometheus scraping given ports;
//! * [`OtlpReceiver`]: an OTLP/HTTP receiver (what a collector accepts),
//!   decoding the metrics and spans the services push;
//! * [`poll`], [`wait_until`], [`holds`]: deadline-bounded polling instead
//!   of fixed sleeps.
//!
//! The contract suites themselves are the `stem-contract` crate.
//!
//! Every process started here is killed when its handle is dropped, and all
//! files live in [`tempfile::TempDir`]s removed at the same time.

pub mod cluster;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod redis;
pub mod tls;
pub mod under_test;
pub mod wait;

pub use cluster::{ClusterOptions, RedisCluster};
pub use otlp::OtlpReceiver;
pub use process::{binary_path, free_port, installed, ServiceProcess};
pub use prometheus::PrometheusServer;
pub use proxy::{Fault, FaultProxy, Pattern, Victim};
pub use redis::{RedisOptions, RedisServer, TlsMode};
pub use tls::TlsAssets;
pub use under_test::RedisUnderTest;
pub use wait::{holds, poll, wait_until};

/// Last `n` lines of `text` (all of it when it has fewer lines).
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}
