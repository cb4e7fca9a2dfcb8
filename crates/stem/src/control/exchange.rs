//! One request/answer exchange with workers over the control plane: send a
//! command to the named workers (or every live one), collect replies until
//! each addressed worker answered or the timeout passed. The CLI's
//! `stem worker …` commands and the dashboard use it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{Command, ControlCommand, ControlPlane, ControlReply};
use crate::error::Result;
use crate::signing::Signer;

/// The answer of one addressed worker.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub worker: String,
    /// `ok`, `error` or `no reply`.
    pub status: &'static str,
    /// The worker's reply payload (`null` without a reply).
    pub reply: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    /// The reply as the reply type `T` of the command (see
    /// [`Command`]); `None` without a reply or for another shape.
    pub fn reply_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.reply.clone()).ok()
    }

    fn from_reply(r: ControlReply) -> Self {
        Answer {
            worker: r.worker,
            status: if r.ok { "ok" } else { "error" },
            reply: r.payload,
            error: r.error,
        }
    }

    fn missing(worker: String) -> Self {
        Answer {
            worker,
            status: "no reply",
            reply: Value::Null,
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
pub struct Exchange {
    pub answers: Vec<Answer>,
    /// Nobody was addressed: no targets given and no live worker.
    pub nobody_alive: bool,
}

impl Exchange {
    /// The workers that did not answer.
    pub fn missing(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter(|a| !a.answered())
            .map(|a| a.worker.as_str())
            .collect()
    }

    /// The answers that came back.
    pub fn answered(&self) -> impl Iterator<Item = &Answer> {
        self.answers.iter().filter(|a| a.answered())
    }
}

/// Sends `command` to `targets` (empty = every live worker), signed with
/// `signer` when given (workers with keys act on mutating commands only
/// when signed), and collects the replies within `timeout`.
pub async fn exchange(
    control: &dyn ControlPlane,
    signer: Option<&Signer>,
    command: &Command,
    targets: &[String],
    timeout: Duration,
) -> Result<Exchange> {
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
    let mut answers: Vec<Answer> = got.into_iter().map(Answer::from_reply).collect();
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
