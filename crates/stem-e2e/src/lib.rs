//! Shared helpers for Stem's black-box end-to-end tests.
//!
//! The tests in `tests/` drive the real system the way an operator would:
//! a private `redis-server` (from [`stem_testkit`]), the real `enqueuer` and
//! `worker` binaries as child processes, the HTTP API over the loopback
//! interface, and the workers' logs. The binaries must be built first
//! (`cargo build --workspace --bins`; `cargo test` does not rebuild another
//! package's binaries): [`stem_testkit::binary_path`] fails when they are
//! missing or older than their sources.
//!
//! The helpers live in one module per job, and everything is re-exported
//! at the crate root, so a test imports `stem_e2e::start_worker` without
//! knowing which module owns it:
//!
//! - [`api`]: the enqueue API over HTTP ([`Api`], [`Reply`]), the plain
//!   client and the event-stream reader;
//! - [`services`]: the `enqueuer`, `dashboard`, `worker` and `beat` as
//!   child processes;
//! - [`logs`]: waiting for a log line, counting the demo body's runs;
//! - [`metrics`]: Prometheus pages and `promtool`;
//! - [`cli`]: the operator CLI, `stem`;
//! - [`wire`]: packed stream entries and dead letters, read and written in
//!   Redis directly (gray-box);
//! - [`keys`]: signing keys and TLS client variables;
//! - [`library`]: the demo producer from the library;
//! - [`wait`]: the polling interval and deadlines;
//! - [`browser`]: a real headless Chromium for the dashboard's tests.
//!
//! Nothing here sleeps for a fixed time to wait for an outcome: every wait
//! is [`poll_until`] with a deadline, and fails with a message saying what
//! was awaited and what was last seen.

pub mod api;
pub mod browser;
pub mod cli;
pub mod keys;
pub mod library;
pub mod logs;
pub mod metrics;
pub mod services;
pub mod wait;
pub mod wire;

pub use api::*;
pub use cli::*;
pub use keys::*;
pub use library::*;
pub use logs::*;
pub use metrics::*;
pub use services::*;
pub use wait::*;
pub use wire::*;

pub use stem_testkit::{
    binary_path, free_port, ClusterOptions, Fault, FaultProxy, Pattern, RedisCluster, RedisOptions,
    RedisServer, RedisUnderTest, ServiceProcess, TlsAssets, TlsMode, Victim,
};
