//! The control protocol's vocabulary, typed: what a command asks
//! ([`Command`]) and what each one answers (the `*Reply` structs). On the
//! wire a command stays a [`ControlCommand`](super::ControlCommand) — a
//! name plus a JSON payload, signed over those bytes — so workers of any
//! release read it; in code nobody builds or reads that JSON by key.
//!
//! | command | payload | reply |
//! | --- | --- | --- |
//! | `ping` | — | [`PingReply`] |
//! | `stats` | — | [`WorkerInfo`](super::WorkerInfo) |
//! | `inspect` | — | [`InspectReply`] |
//! | `revoke` | `{"taskIds": […]}` | [`RevokeReply`] |
//! | `shutdown` | — | [`ShutdownReply`] |
//! | `pause`, `resume` | `{"queues": […]}` | [`PausedReply`] |

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Result, StemError};

/// A command to workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Are you alive?
    Ping,
    /// Your counters and settings.
    Stats,
    /// The tasks you are running.
    Inspect,
    /// Cancel these tasks if you run them.
    Revoke {
        /// Ids of the tasks to cancel.
        task_ids: Vec<String>,
    },
    /// Stop as on SIGTERM.
    Shutdown,
    /// Stop fetching from these queues.
    Pause {
        /// Queues to pause (a worker acts on those it consumes).
        queues: Vec<String>,
    },
    /// Fetch from these queues again.
    Resume {
        /// Queues to resume (a worker acts on those it consumes).
        queues: Vec<String>,
    },
}

impl Command {
    /// The name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Stats => "stats",
            Command::Inspect => "inspect",
            Command::Revoke { .. } => "revoke",
            Command::Shutdown => "shutdown",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
        }
    }

    /// Whether it changes what a worker does (and so must be signed where
    /// workers hold keys); `ping`, `stats` and `inspect` only read.
    pub fn is_mutating(&self) -> bool {
        is_mutating(self.name())
    }

    /// The payload on the wire.
    pub fn payload(&self) -> Value {
        match self {
            Command::Revoke { task_ids } => json!({ "taskIds": task_ids }),
            Command::Pause { queues } | Command::Resume { queues } => json!({ "queues": queues }),
            _ => json!({}),
        }
    }

    /// Reads a command back from its wire name and payload.
    pub fn parse(name: &str, payload: &Value) -> Result<Self> {
        let list = |key: &str| -> Vec<String> {
            payload
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(match name {
            "ping" => Command::Ping,
            "stats" => Command::Stats,
            "inspect" => Command::Inspect,
            "revoke" => Command::Revoke {
                task_ids: list("taskIds"),
            },
            "shutdown" => Command::Shutdown,
            "pause" => Command::Pause {
                queues: list("queues"),
            },
            "resume" => Command::Resume {
                queues: list("queues"),
            },
            other => {
                return Err(StemError::InvalidArgument(format!(
                    "unknown command {other:?}"
                )))
            }
        })
    }
}

/// Whether the command named `name` changes what a worker does. Unknown
/// names do not: a worker answers them with an error and does nothing.
pub fn is_mutating(name: &str) -> bool {
    matches!(name, "revoke" | "shutdown" | "pause" | "resume")
}

/// The answer to `ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    /// The worker's clock, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
}

/// One running task in an [`InspectReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTask {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Queue of the task.
    pub queue: String,
    /// Attempt being run; 0 for the first execution.
    pub attempt: u32,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// Milliseconds since the body started.
    pub runtime_ms: i64,
}

/// The answer to `inspect`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectReply {
    /// Tasks whose bodies run now.
    pub active: Vec<ActiveTask>,
    /// Entries the worker holds (running or prefetched).
    pub held: usize,
}

/// The answer to `revoke`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevokeReply {
    /// The revoked tasks this worker was running, now cancelled.
    pub cancelled: Vec<String>,
}

/// The answer to `shutdown`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShutdownReply {
    /// `stopping`.
    pub status: String,
    /// Entries held when the command arrived.
    pub active: usize,
}

/// The answer to `pause` and `resume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PausedReply {
    /// The worker's paused queues after the command, sorted.
    pub paused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_wire_form() {
        let all = [
            Command::Ping,
            Command::Stats,
            Command::Inspect,
            Command::Revoke {
                task_ids: vec!["t1".into()],
            },
            Command::Shutdown,
            Command::Pause {
                queues: vec!["a".into(), "b".into()],
            },
            Command::Resume {
                queues: vec!["a".into()],
            },
        ];
        for c in all {
            assert_eq!(Command::parse(c.name(), &c.payload()).ok(), Some(c.clone()));
            assert_eq!(c.is_mutating(), is_mutating(c.name()));
        }
        assert!(Command::parse("reboot", &json!({})).is_err());
        assert!(!is_mutating("reboot"));
    }

    #[test]
    fn replies_use_the_wire_names() {
        let v = serde_json::to_value(InspectReply {
            active: vec![ActiveTask {
                id: "t".into(),
                task: "x".into(),
                queue: "q".into(),
                attempt: 1,
                started_at: "2026-12-01T00:00:00.000Z".into(),
                runtime_ms: 5,
            }],
            held: 2,
        })
        .ok();
        assert_eq!(
            v,
            Some(
                json!({"active": [{"id": "t", "task": "x", "queue": "q", "attempt": 1,
                "startedAt": "2026-12-01T00:00:00.000Z", "runtimeMs": 5}], "held": 2})
            )
        );
    }
}
