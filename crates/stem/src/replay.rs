//! Replaying dead letters, the one way the CLI (`stem dlq replay`) and the
//! dashboard both do it: the task's next attempt is recorded as `queued`
//! first, so its old `failed` status no longer stands for it (a reader
//! sees it waiting again, and the new result is not ranked below the old
//! one) — but only for a letter whose envelope was authenticated (not
//! `signature-invalid`, `malformed-envelope`, `wrong-queue` or
//! `attempt-out-of-range`, which may claim a real task's id), or for a
//! `signature-invalid` letter that is byte for byte the envelope the
//! task's status records (same [fingerprint](crate::envelope::WireEnvelope::fingerprint):
//! the producer's own envelope, which a worker without its key failed) —
//! and only then is the envelope published again by
//! [`QueueAdmin::replay_dead_letter`](crate::broker::QueueAdmin::replay_dead_letter)
//! (same task id, same signature, `attempt + 1`). The reopened `queued`
//! status carries the envelope's fingerprint, as the producer's did: the
//! same envelope lives on.

use serde::Serialize;

use crate::broker::{DeadLetter, DeadLetterReason};
use crate::client::Stem;
use crate::envelope::{TaskState, TaskStatus};
use crate::error::Result;

/// One replayed dead letter.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// The dead letter's entry id (gone now).
    pub id: String,
    /// The task's id.
    pub task_id: String,
    /// The task's name.
    pub task: String,
    /// The attempt the replayed copy runs as.
    pub attempt: u32,
    /// The task was revoked: workers drop the replayed copy unrun.
    #[serde(skip)]
    pub revoked: bool,
}

/// What [`Stem::replay_dead_letters`] did.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// The dead letters replayed, oldest first.
    pub replayed: Vec<Replayed>,
    /// Dead letters left where they were: malformed (no envelope that
    /// decodes) or replayed by someone else meanwhile.
    pub skipped: Vec<String>,
}

impl Stem {
    /// Replays `letter` of `queue`; `None` when it holds no envelope that
    /// decodes, or is gone (replayed or purged meanwhile).
    pub async fn replay_dead_letter(
        &self,
        queue: &str,
        letter: &DeadLetter,
    ) -> Result<Option<Replayed>> {
        let Some((old, spec)) = letter.wire.as_ref().and_then(|w| Some((w, w.spec().ok()?))) else {
            return Ok(None);
        };
        // Only a letter whose envelope was authenticated reopens its task:
        // a forged or mangled one never wrote a status, and its (claimed)
        // task id may name a real task whose result must stand.
        let authentic = letter.reason_kind().is_some_and(|r| {
            !matches!(
                r,
                DeadLetterReason::SignatureInvalid
                    | DeadLetterReason::MalformedEnvelope
                    | DeadLetterReason::WrongQueue
                    | DeadLetterReason::AttemptOutOfRange
            )
        });
        let fingerprint = old.fingerprint();
        // A rejected envelope that is the producer's own: the task's status
        // (its `failed`, or a `queued` the rejection did not reach) records
        // this very fingerprint; a forged copy's cannot match it.
        let recorded = || async {
            Ok::<_, crate::error::StemError>(
                self.status(&spec.id)
                    .await?
                    .is_some_and(|s| s.fingerprint.as_deref() == Some(fingerprint.as_str())),
            )
        };
        let reopen = authentic
            || (letter.reason_kind() == Some(DeadLetterReason::SignatureInvalid)
                && recorded().await?);
        if reopen {
            self.backend()
                .set_statuses(&[TaskStatus::for_spec(
                    &spec,
                    TaskState::Queued,
                    old.attempt.saturating_add(1),
                )
                .waiting_on(old)])
                .await?;
        }
        let Some(wire) = self.admin().replay_dead_letter(queue, &letter.id).await? else {
            return Ok(None);
        };
        let revoked = self
            .status(&spec.id)
            .await?
            .is_some_and(|s| s.state == TaskState::Cancelled);
        Ok(Some(Replayed {
            id: letter.id.clone(),
            task_id: spec.id,
            task: spec.name,
            attempt: wire.attempt,
            revoked,
        }))
    }

    /// Replays the newest `max` dead letters of `queue` (all of them when
    /// there are fewer), oldest first.
    pub async fn replay_dead_letters(&self, queue: &str, max: usize) -> Result<ReplayReport> {
        let mut letters = self.admin().list_dead_letters(queue, max).await?;
        letters.reverse();
        let mut report = ReplayReport::default();
        for letter in letters {
            match self.replay_dead_letter(queue, &letter).await? {
                Some(r) => report.replayed.push(r),
                None => report.skipped.push(letter.id),
            }
        }
        Ok(report)
    }
}
