//! The library's error type: one enum, so callers can match on what went wrong
//! (configuration, Redis, signing, encoding) without parsing strings.

use thiserror::Error;

/// Every fallible library operation returns this error.
#[derive(Debug, Error)]
pub enum StemError {
    /// A configuration value is invalid. `variable` names the setting.
    #[error("{variable}: {message}")]
    Config {
        /// The setting at fault, usually a `STEM_*` variable.
        variable: String,
        /// What is wrong with its value.
        message: String,
    },
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// An envelope failed signature verification.
    #[error("signature invalid: {0}")]
    Signature(String),
    /// Bytes that should hold an envelope or status did not decode.
    #[error("malformed data: {0}")]
    Malformed(String),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The task name is not in the registry.
    #[error("unknown task \"{0}\"")]
    UnknownTask(String),
    /// A caller passed an argument outside its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A bounded wait for a task ([`crate::client::Stem::wait`]) ran out
    /// of time; the task may still finish. Not an outage: an unreachable
    /// Redis is [`StemError::Redis`], see [`StemError::is_unavailable`].
    #[error("wait timed out: {0}")]
    WaitTimedOut(String),
    /// A task of the library's own panicked or was cancelled: a bug, not
    /// bad input.
    #[error("internal: {0}")]
    Internal(String),
    /// TLS material could not be read or is invalid.
    #[error("tls: {0}")]
    Tls(String),
    /// A queue's keys hold something other than what the broker wrote (a
    /// string where a stream should be): the queue is set aside, the
    /// others keep running.
    #[error("queue {queue:?} is broken: {reason}")]
    BrokenQueue {
        /// The queue set aside.
        queue: String,
        /// Which key holds what, and the Redis error.
        reason: String,
    },
}

impl StemError {
    /// Shorthand for a configuration error naming `variable`.
    pub fn config(variable: impl Into<String>, message: impl Into<String>) -> Self {
        StemError::Config {
            variable: variable.into(),
            message: message.into(),
        }
    }

    /// True when the error means the store is unreachable rather than the
    /// request being wrong (used to answer 503 and to retry with backoff).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StemError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(e.kind(), redis::ErrorKind::Io)
            }
            _ => false,
        }
    }
}

/// Redis error codes that describe a passing state of the server (out of
/// memory, loading, a replica, a busy script, a cluster in transition), not
/// a fault of the request: the same request can succeed later.
const TRANSIENT_CODES: [&str; 9] = [
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "UNBLOCKED",
];

impl StemError {
    /// True when retrying the same request later can succeed: the store is
    /// unavailable, or Redis answered with a passing condition (OOM,
    /// LOADING, READONLY, …). False for deterministic errors such as
    /// `WRONGTYPE`, which retrying would only repeat forever.
    pub fn is_transient(&self) -> bool {
        if self.is_unavailable() {
            return true;
        }
        match self {
            StemError::Redis(e) => {
                e.code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
                    || e.to_string().contains("UNBLOCKED")
            }
            _ => false,
        }
    }
}

/// Library result alias.
pub type Result<T, E = StemError> = std::result::Result<T, E>;
