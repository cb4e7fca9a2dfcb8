//! One request/answer exchange with workers over the control plane: send a
//! command to the named workers (or every live one), collect replies until
//! each addressed worker answered or the timeout passed. [`Workers`] is the
//! typed handle the CLI's `stem worker …` commands and the dashboard use:
//! one method per command, each answer decoded as that command's reply.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{
    Command, ControlCommand, ControlPlane, ControlReply, InspectReply, PausedReply, PingReply,
    RevokeReply, ShutdownReply, WorkerInfo,
};
use crate::error::Result;
use crate::signing::Signer;

/// How long [`Workers`] waits for replies unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// The workers a command goes to, and how to reach them: every live worker
/// or the named ones, signed with the operator's key when there is one
/// (workers with keys act on mutating commands only when signed).
///
/// ```no_run
/// # async fn demo(stem: &stem::Stem) -> stem::error::Result<()> {
/// let workers = stem.workers().timeout(std::time::Duration::from_secs(1));
/// for answer in workers.inspect().await?.answers {
///     let running = answer.reply.map_or(0, |r| r.active.len());
///     println!("{}: {} ({running} running)", answer.worker, answer.status);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Workers {
    control: Arc<dyn ControlPlane>,
    signer: Option<Signer>,
    targets: Vec<String>,
    timeout: Duration,
}

impl Workers {
    /// Every live worker, waiting [`DEFAULT_REPLY_TIMEOUT`] for replies.
    pub fn new(control: Arc<dyn ControlPlane>, signer: Option<Signer>) -> Self {
        Workers {
            control,
            signer,
            targets: Vec::new(),
            timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Only the named workers (empty: every live one).
    pub fn only(mut self, targets: &[String]) -> Self {
        self.targets = targets.to_vec();
        self
    }

    /// How long to wait for replies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Are you alive?
    pub async fn ping(&self) -> Result<Exchange<PingReply>> {
        self.send(&Command::Ping).await
    }

    /// Each worker's counters and settings.
    pub async fn stats(&self) -> Result<Exchange<WorkerInfo>> {
        self.send(&Command::Stats).await
    }

    /// The tasks each worker is running.
    pub async fn inspect(&self) -> Result<Exchange<InspectReply>> {
        self.send(&Command::Inspect).await
    }

    /// Cancel these tasks where they run. (Persisting the revocation is
    /// [`crate::client::Stem::revoke`]'s job; this only reaches running copies.)
    pub async fn revoke(&self, task_ids: &[String]) -> Result<Exchange<RevokeReply>> {
        self.send(&Command::Revoke {
            task_ids: task_ids.to_vec(),
        })
        .await
    }

    /// Stop as on SIGTERM.
    pub async fn shutdown(&self) -> Result<Exchange<ShutdownReply>> {
        self.send(&Command::Shutdown).await
    }

    /// Stop fetching from `queues`: persisted first
    /// ([`QueuePauses::set_paused`](super::QueuePauses::set_paused)), so workers that miss the command or
    /// start later apply it at their next heartbeat; the command makes it
    /// immediate for the ones that answer.
    pub async fn pause(&self, queues: &[String]) -> Result<Exchange<PausedReply>> {
        self.control.set_paused(queues, true).await?;
        self.send(&Command::Pause {
            queues: queues.to_vec(),
        })
        .await
    }

    /// Fetch from `queues` again: persisted first, like [`Workers::pause`].
    pub async fn resume(&self, queues: &[String]) -> Result<Exchange<PausedReply>> {
        self.control.set_paused(queues, false).await?;
        self.send(&Command::Resume {
            queues: queues.to_vec(),
        })
        .await
    }

    /// Sends `command` and decodes each reply as `T`.
    pub async fn send<T: DeserializeOwned>(&self, command: &Command) -> Result<Exchange<T>> {
        exchange(
            self.control.as_ref(),
            self.signer.as_ref(),
            command,
            &self.targets,
            self.timeout,
        )
        .await
    }
}

/// The answer of one addressed worker, its reply decoded as `T`.
#[derive(Clone, Debug, Serialize)]
pub struct Answer<T = Value> {
    /// Name of the addressed worker.
    pub worker: String,
    /// `ok`, `error` or `no reply`.
    pub status: &'static str,
    /// The worker's reply (`null` without a reply, or when it does not
    /// decode as `T`: a worker of another release).
    pub reply: Option<T>,
    /// The worker's error message, when it answered with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T: DeserializeOwned> Answer<T> {
    fn from_reply(r: ControlReply) -> Self {
        Answer {
            worker: r.worker,
            status: if r.ok { "ok" } else { "error" },
            reply: serde_json::from_value(r.payload).ok(),
            error: r.error,
        }
    }
}

impl<T> Answer<T> {
    fn missing(worker: String) -> Self {
        Answer {
            worker,
            status: "no reply",
            reply: None,
            error: None,
        }
    }

    /// True when the worker answered (ok or error).
    pub fn answered(&self) -> bool {
        self.status != "no reply"
    }
}

/// Every addressed worker's answer, sorted by worker name.
#[derive(Debug)]
pub struct Exchange<T = Value> {
    /// One answer per addressed worker (`no reply` for each that stayed
    /// silent), sorted by worker name.
    pub answers: Vec<Answer<T>>,
    /// Nobody was addressed: no targets given and no live worker.
    pub nobody_alive: bool,
}

impl<T> Exchange<T> {
    /// The workers that did not answer.
    pub fn missing(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter(|a| !a.answered())
            .map(|a| a.worker.as_str())
            .collect()
    }

    /// The answers that came back.
    pub fn answered(&self) -> impl Iterator<Item = &Answer<T>> {
        self.answers.iter().filter(|a| a.answered())
    }
}

/// Sends `command` to `targets` (empty = every live worker), signed with
/// `signer` when given, and collects the replies within `timeout`.
async fn exchange<T: DeserializeOwned>(
    control: &dyn ControlPlane,
    signer: Option<&Signer>,
    command: &Command,
    targets: &[String],
    timeout: Duration,
) -> Result<Exchange<T>> {
    let expected: BTreeSet<String> = if targets.is_empty() {
        control
            .workers()
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect()
    } else {
        targets.iter().cloned().collect()
    };
    if expected.is_empty() {
        return Ok(Exchange {
            answers: Vec::new(),
            nobody_alive: true,
        });
    }
    let mut cmd = ControlCommand::of(command, targets.to_vec());
    if let Some(signer) = signer {
        cmd.sign(signer);
    }
    control.send(&cmd).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got: Vec<ControlReply> = Vec::new();
    loop {
        let waiting = expected
            .iter()
            .filter(|w| !got.iter().any(|r| &r.worker == *w))
            .count();
        let now = tokio::time::Instant::now();
        if waiting == 0 || now >= deadline {
            break;
        }
        let more = control.replies(&cmd.id, waiting, deadline - now).await?;
        for r in more {
            if !got.iter().any(|g| g.worker == r.worker) {
                got.push(r);
            }
        }
    }
    let mut answers: Vec<Answer<T>> = got.into_iter().map(Answer::from_reply).collect();
    for w in expected {
        if !answers.iter().any(|a| a.worker == w) {
            answers.push(Answer::missing(w));
        }
    }
    answers.sort_by(|a, b| a.worker.cmp(&b.worker));
    Ok(Exchange {
        answers,
        nobody_alive: false,
    })
}
