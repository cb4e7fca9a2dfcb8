//! Replay-all as background work: `POST /dead-letters/{queue}/replay-all`
//! starts a job and answers at once; the job replays the queue's dead
//! letters [`BATCH`] at a time (each batch read whole, replayed oldest
//! first, through the same library call as a single replay), at most as
//! many as the queue held when it started (letters that die again while
//! it runs wait for the next replay) and at most [`REPLAY_ALL_MAX`]. One
//! job per queue at a time; the dead-letters page shows each job's
//! progress, live. A request never holds the work, so no proxy timeout
//! (nginx's 60 s) cuts it off, and no more than one batch of letters is in
//! memory at once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::AppState;

/// Letters read and replayed per step.
pub const BATCH: usize = 500;

/// Most dead letters one replay-all moves.
pub const REPLAY_ALL_MAX: usize = 10_000;

/// Where one queue's replay-all stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub queue: String,
    /// Letters the job set out to replay.
    pub total: usize,
    pub replayed: usize,
    /// Letters left where they were (gone already, or holding no task).
    pub skipped: usize,
    pub running: bool,
    /// Why the job stopped early.
    pub error: Option<String>,
}

impl Progress {
    /// What the page says of it.
    pub fn describe(&self) -> String {
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!("; {n} not replayed (gone already, or holding no task)"),
        };
        match (&self.error, self.running) {
            (Some(e), _) => format!(
                "Replay of {} stopped after {} of {}{skipped}: {e}",
                self.queue, self.replayed, self.total
            ),
            (None, true) => format!(
                "Replaying the dead letters of {}: {} of {} done{skipped}",
                self.queue,
                self.replayed + self.skipped,
                self.total
            ),
            (None, false) => format!(
                "Replayed {} dead letters of {}{skipped}",
                self.replayed, self.queue
            ),
        }
    }
}

/// The jobs of this process, by queue: running ones and the last finished
/// one of each queue.
#[derive(Default)]
pub struct Replays(Mutex<BTreeMap<String, Progress>>);

impl Replays {
    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Progress>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every job's progress, by queue name.
    pub fn all(&self) -> Vec<Progress> {
        self.jobs().values().cloned().collect()
    }

    fn update(&self, queue: &str, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = self.jobs().get_mut(queue) {
            f(p);
        }
    }
}

/// Starts replaying `queue`'s dead letters in the background; the notice
/// to show.
pub async fn start(st: &AppState, queue: &str) -> String {
    let total = match st.stem().admin().stats(queue).await {
        Ok(s) => (s.dead as usize).min(REPLAY_ALL_MAX),
        Err(e) => return crate::actions::failed(&format!("replay of {queue}"), e),
    };
    if total == 0 {
        return format!("{queue} has no dead letters to replay");
    }
    {
        let mut jobs = st.0.replays.jobs();
        if let Some(p) = jobs.get(queue).filter(|p| p.running) {
            return format!("Already running: {}", p.describe());
        }
        jobs.insert(
            queue.to_string(),
            Progress {
                queue: queue.to_string(),
                total,
                replayed: 0,
                skipped: 0,
                running: true,
                error: None,
            },
        );
    }
    tokio::spawn(run(st.clone(), queue.to_string(), total));
    format!("Replaying {total} dead letters of {queue} in the background")
}

/// The job: batches until `total` letters are handled or none is left.
async fn run(st: AppState, queue: String, total: usize) {
    let replays = &st.0.replays;
    let mut handled = 0;
    let outcome = async {
        while handled < total {
            let want = BATCH.min(total - handled);
            let mut letters = st.stem().admin().list_dead_letters(&queue, want).await?;
            if letters.is_empty() {
                break;
            }
            letters.reverse();
            for letter in letters {
                let replayed = st.stem().replay_dead_letter(&queue, &letter).await?;
                handled += 1;
                replays.update(&queue, |p| match replayed {
                    Some(_) => p.replayed += 1,
                    None => p.skipped += 1,
                });
            }
        }
        Ok::<_, stem::StemError>(())
    }
    .await;
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, queue = %queue, handled, "replay-all stopped early");
    } else {
        tracing::info!(queue = %queue, handled, "replay-all finished");
    }
    replays.update(&queue, |p| {
        p.running = false;
        p.error = outcome.err().map(|e| e.to_string());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_as_a_sentence() {
        let mut p = Progress {
            queue: "billing".into(),
            total: 1200,
            replayed: 500,
            skipped: 0,
            running: true,
            error: None,
        };
        assert_eq!(
            p.describe(),
            "Replaying the dead letters of billing: 500 of 1200 done"
        );
        p.running = false;
        p.replayed = 1198;
        p.skipped = 2;
        assert!(p
            .describe()
            .starts_with("Replayed 1198 dead letters of billing; 2 not"));
    }
}
