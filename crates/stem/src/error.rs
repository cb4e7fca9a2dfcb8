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
            StemError::Redis(e) => redis_unavailable(e),
            _ => false,
        }
    }
}

/// Whether Redis's error says the store, or the part of a cluster that
/// serves the request, cannot answer right now: the connection failed or
/// timed out; the cluster client has no connection to the slot's node
/// (`ClusterConnectionNotFound`, every node down) or dropped the request
/// with its connection task ("request wasn't handled due to internal
/// failure"); or a node answered that the cluster or its master is down,
/// that a slot is migrating (`TRYAGAIN`), that it is loading its data or
/// that it became a replica (`READONLY`, a failover); a `MOVED` the
/// cluster client could not follow arrives as an I/O error
/// (`redis_conn::unreachable_slot`), while on one server a `MOVED` stays a
/// refusal (a URL naming a cluster node without `+cluster`). Each passes
/// by itself: callers answer 503, hold what they have and retry with
/// backoff, and never treat it as a refusal of the request (a worker that
/// did dead-lettered results it had run, and they ran twice).
fn redis_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::ReadOnly
                )
        )
        || (e.kind() == ErrorKind::Client && e.to_string().contains("internal failure"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    fn classify(e: RedisError) -> (bool, bool) {
        let e = StemError::Redis(e);
        (e.is_unavailable(), e.is_transient())
    }

    /// Every kind of error the redis crate returns, and what the worker,
    /// the enqueuer and the CLI make of it: (unavailable: 503, hold and
    /// retry; transient: retry later). A whole-cluster outage surfaced as
    /// `ClusterConnectionNotFound`, which counted as a refusal: the worker
    /// dead-lettered results it had run, and every task ran twice.
    #[test]
    fn every_redis_error_kind_is_classified() {
        let kind = |k: ErrorKind| RedisError::from((k, "test"));
        let server = |k: ServerErrorKind| kind(ErrorKind::Server(k));
        let io = |k: std::io::ErrorKind| RedisError::from(std::io::Error::new(k, "test"));
        let table: Vec<(&str, RedisError, (bool, bool))> = vec![
            ("Parse", kind(ErrorKind::Parse), (false, false)),
            (
                "AuthenticationFailed",
                kind(ErrorKind::AuthenticationFailed),
                (false, false),
            ),
            (
                "UnexpectedReturnType",
                kind(ErrorKind::UnexpectedReturnType),
                (false, false),
            ),
            (
                "InvalidClientConfig",
                kind(ErrorKind::InvalidClientConfig),
                (false, false),
            ),
            ("Io", kind(ErrorKind::Io), (true, true)),
            ("Client", kind(ErrorKind::Client), (false, false)),
            (
                "Client, request dropped by the cluster client",
                RedisError::from((
                    ErrorKind::Client,
                    "request wasn't handled due to internal failure",
                )),
                (true, true),
            ),
            ("Extension", kind(ErrorKind::Extension), (false, false)),
            (
                "MasterNameNotFoundBySentinel",
                kind(ErrorKind::MasterNameNotFoundBySentinel),
                (true, true),
            ),
            (
                "NoValidReplicasFoundBySentinel",
                kind(ErrorKind::NoValidReplicasFoundBySentinel),
                (true, true),
            ),
            (
                "EmptySentinelList",
                kind(ErrorKind::EmptySentinelList),
                (false, false),
            ),
            (
                "ClusterConnectionNotFound",
                kind(ErrorKind::ClusterConnectionNotFound),
                (true, true),
            ),
            (
                "RESP3NotSupported",
                kind(ErrorKind::RESP3NotSupported),
                (false, false),
            ),
            (
                "ERR",
                server(ServerErrorKind::ResponseError),
                (false, false),
            ),
            (
                "EXECABORT",
                server(ServerErrorKind::ExecAbort),
                (false, false),
            ),
            (
                "LOADING",
                server(ServerErrorKind::BusyLoading),
                (true, true),
            ),
            (
                "NOSCRIPT",
                server(ServerErrorKind::NoScript),
                (false, false),
            ),
            ("MOVED", server(ServerErrorKind::Moved), (false, false)),
            ("ASK", server(ServerErrorKind::Ask), (false, false)),
            (
                "a slot out of reach (a MOVED the cluster client could not follow)",
                io(std::io::ErrorKind::NotConnected),
                (true, true),
            ),
            ("TRYAGAIN", server(ServerErrorKind::TryAgain), (true, true)),
            (
                "CLUSTERDOWN",
                server(ServerErrorKind::ClusterDown),
                (true, true),
            ),
            (
                "CROSSSLOT",
                server(ServerErrorKind::CrossSlot),
                (false, false),
            ),
            (
                "MASTERDOWN",
                server(ServerErrorKind::MasterDown),
                (true, true),
            ),
            ("READONLY", server(ServerErrorKind::ReadOnly), (true, true)),
            ("NOTBUSY", server(ServerErrorKind::NotBusy), (false, false)),
            ("NOSUB", server(ServerErrorKind::NoSub), (false, false)),
            ("NOPERM", server(ServerErrorKind::NoPerm), (false, false)),
            (
                "connection refused",
                io(std::io::ErrorKind::ConnectionRefused),
                (true, true),
            ),
            (
                "connection reset",
                io(std::io::ErrorKind::ConnectionReset),
                (true, true),
            ),
            (
                "broken pipe",
                io(std::io::ErrorKind::BrokenPipe),
                (true, true),
            ),
            ("timed out", io(std::io::ErrorKind::TimedOut), (true, true)),
            (
                "unexpected eof",
                io(std::io::ErrorKind::UnexpectedEof),
                (true, true),
            ),
        ];
        for (what, e, want) in table {
            assert_eq!(classify(e), want, "{what}: (unavailable, transient)");
        }
    }
}
