//! The task envelope and its wire form.
//!
//! An envelope has two parts:
//! - [`TaskSpec`]: what the task *is* (id, name, args, queue, headers, meta,
//!   enqueue time, retry budget, priority). Serialised once to JSON bytes at
//!   enqueue; those exact bytes are signed and travel unchanged.
//! - delivery state the broker mutates (attempt, not-before), carried beside
//!   the body and never signed, so retries, lease renewals, requeues and
//!   dead-letter replays keep signatures valid.
//!
//! [`TaskStatus`] is the record the result backend keeps per task.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, StemError};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC text (millisecond precision) for epoch milliseconds.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads an RFC 3339 time (as [`format_ms`] writes) back into epoch ms.
pub fn parse_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A new time-ordered task id (UUID v7).
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `id` has the form [`new_task_id`] generates (a UUID). Ids from
/// outside (HTTP paths) are checked with it before they reach a key, so
/// `x:results` cannot address another key's namespace.
pub fn is_task_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok()
}

/// Highest priority; priorities run 0 (default) to 9.
pub const MAX_PRIORITY: u8 = 9;

/// The immutable, signed description of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Task id, a UUID v7 from [`new_task_id`].
    pub id: String,
    /// Registered task name the worker dispatches on, e.g. `images.resize`.
    pub name: String,
    /// Queue the task is published to; a worker that reads it from another
    /// queue dead-letters it.
    pub queue: String,
    /// Task arguments, as JSON (`null` when absent).
    #[serde(default)]
    pub args: Value,
    /// String headers; the canvas sets the `stem-*` ones (see
    /// [`crate::canvas`]). Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Free-form metadata, copied into the task's status. Left out of the JSON
    /// when empty.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    /// Epoch milliseconds of the first enqueue; kept across retries.
    pub enqueued_at: i64,
    /// Retries allowed after the first attempt, as set at enqueue (default 0);
    /// copied into the status. Workers retry by the registered task's own
    /// [`TaskOptions::max_retries`](crate::task::TaskOptions::max_retries).
    #[serde(default)]
    pub max_retries: u32,
    /// Priority band, 0 (default) to [`MAX_PRIORITY`]; higher runs first.
    #[serde(default)]
    pub priority: u8,
}

impl TaskSpec {
    /// Serialises the spec to the bytes that get signed.
    pub fn to_body(&self) -> Result<Bytes> {
        Ok(Bytes::from(serde_json::to_vec(self)?))
    }

    /// Decodes a body produced by [`TaskSpec::to_body`].
    pub fn from_body(body: &[u8]) -> Result<Self> {
        let spec: TaskSpec = serde_json::from_slice(body)
            .map_err(|e| StemError::Malformed(format!("envelope body: {e}")))?;
        if spec.id.is_empty() || spec.name.is_empty() || spec.queue.is_empty() {
            return Err(StemError::Malformed(
                "envelope body lacks id, name or queue".into(),
            ));
        }
        if spec.priority > MAX_PRIORITY {
            return Err(StemError::Malformed(format!(
                "priority {} > 9",
                spec.priority
            )));
        }
        Ok(spec)
    }
}

/// What travels through the broker: signed body bytes plus unsigned
/// delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireEnvelope {
    /// The signed bytes of a [`TaskSpec`].
    pub body: Bytes,
    /// Id of the key that signed `body`, if signed.
    pub key_id: Option<String>,
    /// Base64 signature over `body`, if signed.
    pub signature: Option<String>,
    /// 0 for the first execution; +1 per retry.
    pub attempt: u32,
}

impl WireEnvelope {
    /// Decodes the body (does not verify the signature).
    pub fn spec(&self) -> Result<TaskSpec> {
        TaskSpec::from_body(&self.body)
    }

    /// The fingerprint of what was signed: key id, signature and body
    /// ([`crate::signing::envelope_fingerprint`]); the delivery state
    /// (attempt) is not part of it, so a retried or replayed copy keeps it.
    pub fn fingerprint(&self) -> String {
        crate::signing::envelope_fingerprint(
            self.key_id.as_deref(),
            self.signature.as_deref(),
            &self.body,
        )
    }
}

/// Life-cycle state of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Published and waiting for a worker (or for its not-before time).
    Queued,
    /// A worker runs the body (recorded once it has run a few milliseconds or
    /// reports progress).
    Running,
    /// An attempt failed and another one is scheduled.
    Retried,
    /// The body returned a result (in [`TaskStatus::result`]).
    Succeeded,
    /// Failed for good: no further attempt runs (see [`TaskStatus::error`]).
    Failed,
    /// Revoked by an operator, or a chain step dropped because an earlier step
    /// failed.
    Cancelled,
}

impl TaskState {
    /// True for succeeded, failed and cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retried => "retried",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    fn phase(self) -> u64 {
        match self {
            TaskState::Queued => 0,
            TaskState::Running => 1,
            TaskState::Retried => 2,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => 3,
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = StemError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "retried" => TaskState::Retried,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            other => {
                return Err(StemError::InvalidArgument(format!(
                    "unknown state {other:?}"
                )))
            }
        })
    }
}

/// Why an entry was dead-lettered. Stored as its kebab-case name (the
/// `reason` field of a dead letter, and of a failed task's error), which
/// operators filter on; `docs/architecture.md` ("Bad input, defined
/// outcomes") says when each is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetterReason {
    /// The task failed on its last allowed attempt.
    MaxRetriesExhausted,
    /// The task failed with a failure that must not be retried.
    NonRetryable,
    /// The entry's signature is missing or does not verify.
    SignatureInvalid,
    /// The entry does not decode as an envelope.
    MalformedEnvelope,
    /// No task of that name is registered on the worker.
    UnregisteredTask,
    /// The signed spec names another queue than the stream it was read from.
    WrongQueue,
    /// The unsigned attempt is beyond the retry budget plus replays.
    AttemptOutOfRange,
    /// Delivered `STEM_MAX_DELIVERIES` times without finishing (its runs
    /// kill their worker).
    DeliveryLimit,
    /// The result backend refuses the task's result for good.
    ResultUnwritable,
}

impl DeadLetterReason {
    /// Every reason, for listings and tests.
    pub const ALL: [DeadLetterReason; 9] = [
        Self::MaxRetriesExhausted,
        Self::NonRetryable,
        Self::SignatureInvalid,
        Self::MalformedEnvelope,
        Self::UnregisteredTask,
        Self::WrongQueue,
        Self::AttemptOutOfRange,
        Self::DeliveryLimit,
        Self::ResultUnwritable,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxRetriesExhausted => "max-retries-exhausted",
            Self::NonRetryable => "non-retryable",
            Self::SignatureInvalid => "signature-invalid",
            Self::MalformedEnvelope => "malformed-envelope",
            Self::UnregisteredTask => "unregistered-task",
            Self::WrongQueue => "wrong-queue",
            Self::AttemptOutOfRange => "attempt-out-of-range",
            Self::DeliveryLimit => "delivery-limit",
            Self::ResultUnwritable => "result-unwritable",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadLetterReason {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown dead-letter reason {s:?}"))
    }
}

/// What kind of failure a [`TaskError`] records. Stored as its kebab-case
/// name (the error's `type`), so a dashboard or a script filters on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TaskErrorKind {
    /// The task's body failed (`task-error`).
    TaskError,
    /// An earlier step of its chain failed, so it never ran (`chain-aborted`).
    ChainAborted,
    /// A chord callback whose header tasks did not all succeed (`chord-failed`).
    ChordFailed,
    /// Revoked by an operator (`revoked`).
    Revoked,
    /// Refused before it ran, for a dead-letter reason (its name).
    Rejected(DeadLetterReason),
    /// A kind this release does not know (written by hand or by a newer
    /// release), as stored.
    Other(String),
}

impl TaskErrorKind {
    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::TaskError => "task-error",
            Self::ChainAborted => "chain-aborted",
            Self::ChordFailed => "chord-failed",
            Self::Revoked => "revoked",
            Self::Rejected(reason) => reason.as_str(),
            Self::Other(s) => s,
        }
    }
}

impl From<String> for TaskErrorKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "task-error" => Self::TaskError,
            "chain-aborted" => Self::ChainAborted,
            "chord-failed" => Self::ChordFailed,
            "revoked" => Self::Revoked,
            other => match other.parse() {
                Ok(reason) => Self::Rejected(reason),
                Err(_) => Self::Other(s),
            },
        }
    }
}

impl From<TaskErrorKind> for String {
    fn from(k: TaskErrorKind) -> String {
        match k {
            TaskErrorKind::Other(s) => s,
            k => k.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a task failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// What kind of failure.
    #[serde(rename = "type")]
    pub kind: TaskErrorKind,
    /// Human-readable description of the failure.
    pub message: String,
    /// Dead-letter reason when the task was dead-lettered (or `revoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TaskError {
    /// An error of `kind`, not dead-lettered.
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            reason: None,
        }
    }

    /// The same error, recording that the task was dead-lettered for `reason`.
    pub fn dead_lettered(mut self, reason: DeadLetterReason) -> Self {
        self.reason = Some(reason.as_str().to_string());
        self
    }

    /// The dead-letter reason, when it is one this release knows.
    pub fn reason_kind(&self) -> Option<DeadLetterReason> {
        self.reason.as_deref().and_then(|r| r.parse().ok())
    }
}

/// Progress reported by a running task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0.0 to 1.0.
    pub fraction: f64,
    /// Free-form JSON the task attached; `null` (and left out of the JSON) when
    /// none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// The result backend's record of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Queue the task was published to.
    pub queue: String,
    /// Where the task is in its life cycle.
    pub state: TaskState,
    /// Attempt this status was written for; 0 for the first execution.
    pub attempt: u32,
    /// Retry budget from the task's spec.
    pub max_retries: u32,
    /// The body's result once `succeeded`; `null` otherwise.
    pub result: Value,
    /// Why the task failed or was cancelled, or (when `retried`) why the last
    /// attempt failed; `None` otherwise.
    pub error: Option<TaskError>,
    /// Progress the running body reported; set only by its progress reports
    /// (a revocation keeps the last one), `None` otherwise.
    pub progress: Option<Progress>,
    /// The spec's meta.
    pub meta: Map<String, Value>,
    /// When the task was first enqueued: RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// When this status was written: RFC 3339 UTC with milliseconds.
    pub updated_at: String,
    /// The [fingerprint](WireEnvelope::fingerprint) of the envelope the
    /// task waits on, on the statuses that say it waits (`queued`,
    /// `retried`), and on the `failed` status a rejected envelope of that
    /// fingerprint wrote (`signature-invalid`); `None` (and left out of
    /// the JSON) otherwise. It is what lets a worker that cannot verify an
    /// envelope fail the task only when the envelope is the producer's own
    /// ([`ResultBackend::fail_rejected`](crate::backend::ResultBackend::fail_rejected)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl TaskStatus {
    /// A status for `spec` in `state` at `attempt`, stamped now.
    pub fn for_spec(spec: &TaskSpec, state: TaskState, attempt: u32) -> Self {
        TaskStatus {
            id: spec.id.clone(),
            task: spec.name.clone(),
            queue: spec.queue.clone(),
            state,
            attempt,
            max_retries: spec.max_retries,
            result: Value::Null,
            error: None,
            progress: None,
            meta: spec.meta.clone(),
            created_at: format_ms(spec.enqueued_at),
            updated_at: format_ms(now_ms()),
            fingerprint: None,
        }
    }

    /// The same status recording the fingerprint of `wire`, the envelope
    /// the task waits on.
    pub fn waiting_on(mut self, wire: &WireEnvelope) -> Self {
        self.fingerprint = Some(wire.fingerprint());
        self
    }

    /// Ordering key that only grows over a task's life: a write whose rank
    /// is lower than the stored one is a late write and is dropped.
    /// Retries and replays raise `attempt`, so a new run outranks an old
    /// terminal state.
    /// A cancellation (revocation) is final: it outranks everything.
    pub fn rank(&self) -> u64 {
        if self.state == TaskState::Cancelled {
            return u64::from(u32::MAX) * 4 + 3;
        }
        u64::from(self.attempt) * 4 + self.state.phase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_keep_their_stored_names() {
        for (kind, name) in [
            (TaskErrorKind::TaskError, "task-error"),
            (TaskErrorKind::ChainAborted, "chain-aborted"),
            (TaskErrorKind::ChordFailed, "chord-failed"),
            (TaskErrorKind::Revoked, "revoked"),
            (
                TaskErrorKind::Rejected(DeadLetterReason::SignatureInvalid),
                "signature-invalid",
            ),
            (
                TaskErrorKind::Other("from-the-future".into()),
                "from-the-future",
            ),
        ] {
            let error = TaskError::new(kind.clone(), "m");
            let json = serde_json::to_value(&error).expect("encodes");
            assert_eq!(json["type"], name);
            let back: TaskError = serde_json::from_value(json).expect("decodes");
            assert_eq!(back.kind, kind);
        }
        for reason in DeadLetterReason::ALL {
            let kind = TaskErrorKind::from(reason.as_str().to_string());
            assert_eq!(kind, TaskErrorKind::Rejected(reason));
        }
        let dead = TaskError::new(TaskErrorKind::TaskError, "m")
            .dead_lettered(DeadLetterReason::NonRetryable);
        assert_eq!(dead.reason_kind(), Some(DeadLetterReason::NonRetryable));
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            id: new_task_id(),
            name: "greeting.send".into(),
            queue: "greetings".into(),
            args: serde_json::json!({"name": "Ada"}),
            headers: BTreeMap::new(),
            meta: Map::new(),
            enqueued_at: now_ms(),
            max_retries: 5,
            priority: 0,
        }
    }

    #[test]
    fn body_round_trips() -> Result<()> {
        let s = spec();
        assert_eq!(TaskSpec::from_body(&s.to_body()?)?, s);
        Ok(())
    }

    #[test]
    fn garbage_bodies_are_malformed() {
        assert!(matches!(
            TaskSpec::from_body(b"nope"),
            Err(StemError::Malformed(_))
        ));
        assert!(matches!(
            TaskSpec::from_body(b"{}"),
            Err(StemError::Malformed(_))
        ));
    }

    #[test]
    fn ranks_only_grow_through_a_life_cycle() {
        let s = spec();
        let seq = [
            (TaskState::Queued, 0),
            (TaskState::Running, 0),
            (TaskState::Retried, 0),
            (TaskState::Running, 1),
            (TaskState::Succeeded, 1),
        ];
        let ranks: Vec<u64> = seq
            .iter()
            .map(|(st, a)| TaskStatus::for_spec(&s, *st, *a).rank())
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert!(
            TaskStatus::for_spec(&s, TaskState::Queued, 0).rank()
                < TaskStatus::for_spec(&s, TaskState::Cancelled, 0).rank()
        );
    }
}
