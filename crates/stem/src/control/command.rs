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

/// A command to workers. Serde writes and reads it: the variant is the
/// wire name (`name`), its fields the payload, so the table above is the
/// type itself rather than code that builds or reads JSON by key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
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
        #[serde(rename = "taskIds", default)]
        task_ids: Vec<String>,
    },
    /// Stop as on SIGTERM.
    Shutdown,
    /// Stop fetching from these queues.
    Pause {
        /// Queues to pause (a worker acts on those it consumes).
        #[serde(default)]
        queues: Vec<String>,
    },
    /// Fetch from these queues again.
    Resume {
        /// Queues to resume (a worker acts on those it consumes).
        #[serde(default)]
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

    /// The payload on the wire: the command's fields (`{}` for none).
    pub fn payload(&self) -> Value {
        let mut doc = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Some(fields) = doc.as_object_mut() {
            fields.remove("name");
        }
        doc
    }

    /// Reads a command back from its wire name and payload; an unknown
    /// name or a payload of the wrong shape is an error the worker answers
    /// with (and acts on nothing).
    pub fn parse(name: &str, payload: &Value) -> Result<Self> {
        let mut doc = match payload {
            Value::Object(fields) => fields.clone(),
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(StemError::InvalidArgument(format!(
                    "the payload of {name:?} is not an object: {other}"
                )))
            }
        };
        doc.insert("name".into(), Value::String(name.to_string()));
        serde_json::from_value(Value::Object(doc))
            .map_err(|e| StemError::InvalidArgument(format!("command {name:?}: {e}")))
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
        // What older or other producers may send: fields a command does
        // not take are ignored, missing lists are empty, a list of the
        // wrong shape is refused rather than read as something else.
        assert_eq!(
            Command::parse("ping", &json!({"extra": 1})).ok(),
            Some(Command::Ping)
        );
        assert_eq!(
            Command::parse("pause", &json!({})).ok(),
            Some(Command::Pause { queues: vec![] })
        );
        assert!(Command::parse("revoke", &json!({"taskIds": "t1"})).is_err());
        assert!(Command::parse("stats", &json!([1])).is_err());
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
