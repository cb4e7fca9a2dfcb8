//! The control plane: worker heartbeats (who is alive, doing what),
//! broadcast commands to workers (ping, stats, inspect, revoke, shutdown,
//! pause, resume) with replies, and persisted queue pauses.
//!
//! Every worker subscribes whatever its namespace, so one `stem worker
//! ping` reaches the whole fleet (the namespace is only a label). Redis
//! carries commands over pub/sub and replies in a short-lived list per
//! request; the in-memory implementation uses tokio channels.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;

/// What a worker publishes about itself on every heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    pub name: String,
    pub namespace: String,
    pub queues: Vec<String>,
    #[serde(default)]
    pub paused: Vec<String>,
    pub host: String,
    pub pid: u32,
    pub concurrency: usize,
    pub prefetch: usize,
    pub inflight: usize,
    /// Epoch ms.
    pub started_at: i64,
    /// Epoch ms.
    pub heartbeat_at: i64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
}

/// A command to workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlCommand {
    pub id: String,
    /// `ping`, `stats`, `inspect`, `revoke`, `shutdown`, `pause`, `resume`.
    pub command: String,
    /// Worker names; empty means every worker.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub payload: Value,
}

impl ControlCommand {
    /// A command with a fresh id.
    pub fn new(command: &str, targets: Vec<String>, payload: Value) -> Self {
        ControlCommand {
            id: uuid::Uuid::now_v7().to_string(),
            command: command.to_string(),
            targets,
            payload,
        }
    }

    /// True when `worker` should act on it.
    pub fn addresses(&self, worker: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == worker)
    }
}

/// A worker's answer to a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    pub worker: String,
    pub ok: bool,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Heartbeats, commands, replies and pauses.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Records `info` as alive for `ttl`.
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<()>;
    /// Removes a worker that stopped cleanly.
    async fn forget(&self, worker: &str) -> Result<()>;
    /// Live workers, sorted by name (expired ones are pruned).
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;
    /// Broadcasts a command to every subscribed worker.
    async fn send(&self, command: &ControlCommand) -> Result<()>;
    /// The commands sent from now on. The stream ends when the connection
    /// drops; subscribe again.
    async fn subscribe(&self) -> Result<BoxStream<'static, ControlCommand>>;
    /// Answers command `id`.
    async fn reply(&self, id: &str, reply: &ControlReply) -> Result<()>;
    /// Collects replies to command `id` until `expected` arrived or
    /// `timeout` passed.
    async fn replies(
        &self,
        id: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>>;
    /// Queues paused by operators (persisted; workers skip them).
    async fn paused_queues(&self) -> Result<Vec<String>>;
    /// Pauses or resumes queues.
    async fn set_paused(&self, queues: &[String], paused: bool) -> Result<()>;
}
