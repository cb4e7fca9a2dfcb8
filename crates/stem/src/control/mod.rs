//! The control plane: worker heartbeats (who is alive, doing what),
//! broadcast commands to workers (ping, stats, inspect, revoke, shutdown,
//! pause, resume) with replies, and persisted queue pauses.
//!
//! Every worker subscribes whatever its namespace, so one `stem worker
//! ping` reaches the whole fleet (the namespace is only a label). Redis
//! carries commands over pub/sub and replies in a short-lived list per
//! request; the in-memory implementation uses tokio channels.

mod command;
mod exchange;
pub mod memory;
pub mod redis;

pub use command::{
    is_mutating, ActiveTask, Command, InspectReply, PausedReply, PingReply, RevokeReply,
    ShutdownReply,
};
pub use exchange::{Answer, Exchange, Workers, DEFAULT_REPLY_TIMEOUT};

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
    /// Worker name, also its consumer name in Redis.
    pub name: String,
    /// Metrics label the worker runs under (`STEM_WORKER_NAMESPACE`).
    pub namespace: String,
    /// Queues the worker consumes.
    pub queues: Vec<String>,
    /// Those of its queues it does not fetch from now, sorted.
    #[serde(default)]
    pub paused: Vec<String>,
    /// Host name of the worker's machine.
    pub host: String,
    /// Process id of the worker.
    pub pid: u32,
    /// Task bodies the worker runs at once.
    pub concurrency: usize,
    /// Most entries the worker fetches ahead (concurrency × prefetch
    /// multiplier).
    pub prefetch: usize,
    /// Entries the worker holds now (fetched and not yet settled).
    pub inflight: usize,
    /// Epoch ms.
    pub started_at: i64,
    /// Epoch ms.
    pub heartbeat_at: i64,
    /// Task executions started since the worker started.
    pub started: u64,
    /// Task executions that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
}

/// A command to workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlCommand {
    /// Fresh UUID v7; replies are collected under it.
    pub id: String,
    /// `ping`, `stats`, `inspect`, `revoke`, `shutdown`, `pause`, `resume`.
    pub command: String,
    /// Worker names; empty means every worker.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The command's arguments as JSON (see [`Command::payload`]).
    #[serde(default)]
    pub payload: Value,
    /// Epoch ms when the command was issued (signed; commands older or
    /// newer than [`COMMAND_WINDOW`] are refused).
    #[serde(default)]
    pub issued_at: i64,
    /// Key id of the signature, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Signature (base64) over [`ControlCommand::signed_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// How far a signed command's `issuedAt` may be from the worker's clock.
pub const COMMAND_WINDOW: Duration = Duration::from_secs(300);

impl ControlCommand {
    /// `command` for `targets` (empty: every worker), with a fresh id,
    /// issued now, unsigned.
    pub fn of(command: &Command, targets: Vec<String>) -> Self {
        Self::new(command.name(), targets, command.payload())
    }

    /// What the command asks, typed; an error for a name this release does
    /// not know.
    pub fn kind(&self) -> Result<Command> {
        Command::parse(&self.command, &self.payload)
    }

    /// A command with a fresh id, issued now.
    pub fn new(command: &str, targets: Vec<String>, payload: Value) -> Self {
        ControlCommand {
            id: uuid::Uuid::now_v7().to_string(),
            command: command.to_string(),
            targets,
            payload,
            issued_at: crate::envelope::now_ms(),
            key_id: None,
            signature: None,
        }
    }

    /// The bytes a signature covers: id, command, issue time, targets and
    /// payload (serde_json writes object keys sorted, so a receiver that
    /// parsed the payload rebuilds the same bytes).
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "stem-control\n{}\n{}\n{}\n{}\n{}",
            self.id,
            self.command,
            self.issued_at,
            self.targets.join(","),
            self.payload
        )
        .into_bytes()
    }

    /// Signs the command with `signer` (the producer key: whoever may
    /// enqueue may also steer workers).
    pub fn sign(&mut self, signer: &crate::signing::Signer) {
        self.key_id = Some(signer.key_id().to_string());
        self.signature = Some(signer.sign(&self.signed_bytes()));
    }

    /// Checks the signature and the issue time against `now_ms`.
    pub fn verify(&self, verifier: &crate::signing::Verifier, now_ms: i64) -> Result<()> {
        verifier
            .verify(
                self.key_id.as_deref(),
                self.signature.as_deref(),
                &self.signed_bytes(),
            )
            .map_err(|e| crate::error::StemError::Signature(e.to_string()))?;
        if (now_ms - self.issued_at).unsigned_abs() > COMMAND_WINDOW.as_millis() as u64 {
            return Err(crate::error::StemError::Signature(format!(
                "issued at {} ms, more than {} s from now",
                self.issued_at,
                COMMAND_WINDOW.as_secs()
            )));
        }
        Ok(())
    }

    /// True when `worker` should act on it.
    pub fn addresses(&self, worker: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == worker)
    }
}

/// A worker's answer to a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Name of the answering worker.
    pub worker: String,
    /// False when the worker refused the command or could not carry it out.
    pub ok: bool,
    /// The reply of the command's type (see [`Command`]'s table), as JSON.
    #[serde(default)]
    pub payload: Value,
    /// Why, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tasks that finished in one minute, summed over every worker: what the
/// dashboard's throughput chart draws. Workers add their counts with each
/// heartbeat (so a minute's figures come in up to one heartbeat interval
/// late, and a worker killed with `kill -9` loses at most one interval's),
/// and each minute is kept [`THROUGHPUT_TTL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    /// Executions that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
}

impl Throughput {
    /// What `self` adds to `before` (counters only grow).
    pub fn since(&self, before: &Throughput) -> Throughput {
        Throughput {
            succeeded: self.succeeded.saturating_sub(before.succeeded),
            failed: self.failed.saturating_sub(before.failed),
            retried: self.retried.saturating_sub(before.retried),
        }
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Throughput::default()
    }
}

/// How long a minute of [`Throughput`] is kept: three days.
pub const THROUGHPUT_TTL: Duration = Duration::from_secs(72 * 3600);

/// The start of the minute holding `ms` (epoch milliseconds).
pub fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// Who is alive: each worker's heartbeat record.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Records `info` as alive for `ttl`.
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<()>;
    /// Removes the record of a worker that stopped cleanly, only while it
    /// is still that process's (`started_at` of its [`WorkerInfo`]): a
    /// worker started under the same name meanwhile keeps its record.
    async fn forget(&self, worker: &str, started_at: i64) -> Result<()>;
    /// Live workers, sorted by name (expired ones are pruned).
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;
}

/// Commands to workers and their replies.
#[async_trait]
pub trait CommandBus: Send + Sync + 'static {
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
}

/// Queues paused by operators, persisted so that every worker, also one
/// started later, skips them.
#[async_trait]
pub trait QueuePauses: Send + Sync + 'static {
    /// Queues paused by operators.
    async fn paused_queues(&self) -> Result<Vec<String>>;
    /// Pauses or resumes queues.
    async fn set_paused(&self, queues: &[String], paused: bool) -> Result<()>;
}

/// Finished tasks per minute, kept [`THROUGHPUT_TTL`].
#[async_trait]
pub trait ThroughputLog: Send + Sync + 'static {
    /// Adds `counts` to the minute starting at `minute_ms` (see
    /// [`minute_of`]).
    async fn add_throughput(&self, minute_ms: i64, counts: &Throughput) -> Result<()>;
    /// Every minute from the one holding `from_ms` to the one holding
    /// `to_ms`, oldest first, with its counts (zero where nothing was
    /// recorded or the record expired).
    async fn throughput(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Throughput)>>;
}

/// The control plane a store provides: the worker registry, the command
/// bus, queue pauses and the throughput log, split by job like `Broker`
/// and `QueueAdmin` (each a small trait a caller names for what it uses)
/// and held together as one object, since every store keeps all four in
/// one place (one Redis, or one process). Any type implementing the four
/// is a `ControlPlane`.
pub trait ControlPlane: WorkerRegistry + CommandBus + QueuePauses + ThroughputLog {}

impl<T: WorkerRegistry + CommandBus + QueuePauses + ThroughputLog> ControlPlane for T {}

/// The minutes of `from_ms..=to_ms`, at most a day of them (a longer span
/// is cut at its newest day).
pub fn minutes_between(from_ms: i64, to_ms: i64) -> Vec<i64> {
    let (from, to) = (minute_of(from_ms), minute_of(to_ms));
    let from = from.max(to - 1439 * 60_000);
    (0..)
        .map(|i| from + i * 60_000)
        .take_while(|m| *m <= to)
        .collect()
}

#[cfg(test)]
mod throughput_tests {
    use super::*;

    #[test]
    fn minutes_are_whole_and_bounded() {
        assert_eq!(minute_of(125_000), 120_000);
        assert_eq!(minute_of(-1), -60_000);
        assert_eq!(
            minutes_between(61_000, 185_000),
            vec![60_000, 120_000, 180_000]
        );
        assert_eq!(
            minutes_between(0, 10 * 86_400_000).len(),
            1440,
            "a day at most"
        );
        let t = Throughput {
            succeeded: 5,
            failed: 2,
            retried: 1,
        };
        let before = Throughput {
            succeeded: 3,
            failed: 2,
            retried: 0,
        };
        assert_eq!(
            t.since(&before),
            Throughput {
                succeeded: 2,
                failed: 0,
                retried: 1
            }
        );
        assert!(t.since(&t).is_zero());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{generate_hmac_secret, KeyRing};

    fn ring(secret: &str) -> KeyRing {
        let keys = format!("k1:{secret}");
        KeyRing::from_lookup(&|k: &str| match k {
            "STEM_SIGNING_KEYS" => Some(keys.clone()),
            "STEM_SIGNING_ACTIVE_KEY" => Some("k1".to_string()),
            _ => None,
        })
        .expect("valid keys")
    }

    #[test]
    fn signed_commands_verify_and_tampered_or_stale_ones_do_not() {
        let secret = generate_hmac_secret();
        let keys = ring(&secret);
        let signer = keys.signer().expect("signer").expect("a key");
        let verifier = keys.verifier().expect("verifier");
        let mut cmd = ControlCommand::new(
            "pause",
            vec!["w1".into()],
            serde_json::json!({"queues": ["b", "a"]}),
        );
        cmd.sign(&signer);
        let now = cmd.issued_at;
        assert!(cmd.verify(&verifier, now).is_ok());
        // Through the wire and back: the same bytes are signed.
        let back: ControlCommand =
            serde_json::from_str(&serde_json::to_string(&cmd).expect("json")).expect("parse");
        assert!(back.verify(&verifier, now).is_ok());

        let mut other_target = back.clone();
        other_target.targets = vec!["w2".into()];
        assert!(other_target.verify(&verifier, now).is_err());
        let mut other_command = back.clone();
        other_command.command = "shutdown".into();
        assert!(other_command.verify(&verifier, now).is_err());
        let stale = now + COMMAND_WINDOW.as_millis() as i64 + 1;
        assert!(back.verify(&verifier, stale).is_err());
        let unsigned = ControlCommand::new("shutdown", vec![], Value::Null);
        assert!(unsigned.verify(&verifier, now).is_err());
        let other_key = ring(&generate_hmac_secret()).verifier().expect("verifier");
        assert!(back.verify(&other_key, now).is_err());
    }
}
