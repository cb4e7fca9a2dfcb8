//! # Stem
//!
//! Distributed background tasks on Redis Streams, with signed envelopes.
//!
//! The map of the crate:
//! - [`config`]: every `STEM_*` variable, validated once; [`env`](mod@env): the
//!   lookup seam and the shared variable parsers it composes.
//! - [`envelope`]: [`TaskSpec`](envelope::TaskSpec) (the signed body),
//!   [`WireEnvelope`](envelope::WireEnvelope) (body + delivery state),
//!   [`TaskStatus`](envelope::TaskStatus).
//! - [`signing`]: HMAC-SHA256 and Ed25519 key rings, signer, verifier.
//! - [`broker`]: the [`Broker`](broker::Broker) trait, Redis Streams and
//!   in-memory implementations; [`lanes`]: which stream of a queue holds
//!   which priority band.
//! - [`recent`]: finding tasks through the recent-task index;
//!   [`task_index`]: what that index keeps of one task.
//! - [`backend`]: the [`ResultBackend`](backend::ResultBackend) trait
//!   (statuses, groups), Redis and in-memory.
//! - [`task`]: the [`Task`] trait, registry and task context.
//! - [`client`]: [`Stem`], the producer API (enqueue, status,
//!   wait) and canvas entry points; [`canvas`] holds group/chain/chord.
//! - [`control`]: worker heartbeats, commands to workers, queue pauses.
//! - [`worker`]: the runtime that fetches, leases, runs, retries and
//!   dead-letters.
//! - [`schedule`]: periodic tasks: specs (every/cron, time zones), the
//!   schedule and lock stores (Redis, memory), the YAML seed file, and the
//!   leader-leased [`Beat`] scheduler.
//! - [`keys`]: every Redis key. [`atomic`]: submit and settle in one step
//!   when broker and backend share a Redis.
//! - [`redis_conn`]: URL + TLS → connections ([`redis_conn::url`]: store
//!   URLs and TLS settings). [`telemetry`]: the metrics
//!   exporters' configuration; [`trace`]: a task's `traceparent` and spans. [`error`]: [`StemError`].
//!
//! Process concerns (logging, exit codes, signals, HTTP endpoints) live in
//! `crates/stem-service`, the demo catalogue in `crates/stem-demo`: the
//! library never exits the process, installs a logger or opens a port.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use stem::task::{Task, TaskContext, TaskResult};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { width: u32 }
//!
//! struct ResizeImage;
//!
//! #[stem::async_trait]
//! impl Task for ResizeImage {
//!     const NAME: &'static str = "images.resize";
//!     type Args = Resize;
//!     type Output = String;
//!     async fn run(&self, _ctx: TaskContext, args: Resize) -> TaskResult<String> {
//!         Ok(format!("resized to {}", args.width))
//!     }
//! }
//!
//! # async fn demo() -> stem::Result<()> {
//! let stem = stem::client::Stem::memory();
//! stem.registry().register(ResizeImage);
//! let id = stem.enqueue::<ResizeImage>(Resize { width: 64 }).await?;
//! # let _ = id; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod atomic;
pub mod backend;
pub mod broker;
pub mod canvas;
pub mod client;
pub mod config;
pub mod control;
pub mod env;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod lanes;
pub mod recent;
pub mod redis_conn;
pub mod replay;
pub mod schedule;
pub mod signing;
pub mod task;
pub mod task_index;
pub mod telemetry;
pub mod trace;
pub mod worker;

pub use async_trait::async_trait;
pub use client::{EnqueueOptions, Stem, Stores};
pub use config::{StemConfig, WorkerConfig};
pub use error::{Result, StemError};
pub use schedule::{Beat, BeatConfig};
pub use task::{Task, TaskContext, TaskFailure, TaskOptions, TaskRegistry, TaskResult};
pub use worker::Worker;
