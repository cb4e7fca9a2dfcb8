//! Replay-all as background work: `POST /dead-letters/{queue}/replay-all`
//! starts a job and answers at once; the job replays the queue's dead
//! letters [`BATCH`] at a time, newest batch first (each batch replayed
//! oldest first, through the same library call as a single replay), at
//! most as many as the queue held when it started and at most
//! [`REPLAY_ALL_MAX`]. Letters newer than the newest one at the start
//! (tasks that died again while it runs) and letters it could not replay
//! (no envelope that decodes: they stay where they are) are passed over,
//! never read as the next batch. One job per queue at a time; the
//! dead-letters page shows each job's progress, live. A request never
//! holds the work, so no proxy timeout (nginx's 60 s) cuts it off. A job
//! stops between two letters when the dashboard begins to stop, and the
//! process waits for it (a letter is never left half replayed).

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::AppState;

/// Letters read and replayed per step.
pub(crate) const BATCH: usize = 500;

/// Most dead letters one replay-all moves.
pub(crate) const REPLAY_ALL_MAX: usize = 10_000;

/// Where one queue's replay-all stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
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
    pub(crate) fn describe(&self) -> String {
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
/// one of each queue, and the tasks running them.
#[derive(Default)]
pub(crate) struct Replays {
    progress: Mutex<BTreeMap<String, Progress>>,
    running: Mutex<Vec<JoinHandle<()>>>,
}

impl Replays {
    fn jobs(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, Progress>> {
        self.progress.lock()
    }

    /// Waits (at most `within`) for the jobs to stop, which they do
    /// between two letters once the dashboard is closing.
    pub(crate) async fn wait(&self, within: Duration) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.running.lock());
        if handles.is_empty() {
            return;
        }
        if tokio::time::timeout(within, futures::future::join_all(handles))
            .await
            .is_err()
        {
            tracing::warn!("a replay-all job did not stop in time");
        }
    }

    /// Every job's progress, by queue name.
    pub(crate) fn all(&self) -> Vec<Progress> {
        self.jobs().values().cloned().collect()
    }

    fn update(&self, queue: &str, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = self.jobs().get_mut(queue) {
            f(p);
        }
    }
}

/// Starts replaying `queue`'s dead letters in the background; the notice
/// to show, or the store's error when the queue could not be read.
pub(crate) async fn start(st: &AppState, queue: &str) -> stem::Result<String> {
    let total = (st.stem().admin().stats(queue).await?.dead as usize).min(REPLAY_ALL_MAX);
    if total == 0 {
        return Ok(format!("{queue} has no dead letters to replay"));
    }
    {
        let mut jobs = st.0.replays.jobs();
        if let Some(p) = jobs.get(queue).filter(|p| p.running) {
            return Ok(format!("Already running: {}", p.describe()));
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
    let job = tokio::spawn(run(st.clone(), queue.to_string(), total));
    let mut running = st.0.replays.running.lock();
    running.retain(|h| !h.is_finished());
    running.push(job);
    drop(running);
    Ok(format!(
        "Replaying {total} dead letters of {queue} in the background"
    ))
}

/// A stream entry id's parts as numbers (`1700000000000-3` on Redis, a
/// counter in memory), so ids compare in the order they were added.
fn order(id: &str) -> Vec<u64> {
    id.split('-')
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

/// The job: batches until `total` letters are handled or none is left.
async fn run(st: AppState, queue: String, total: usize) {
    let replays = &st.0.replays;
    let admin = st.stem().admin();
    let mut handled = 0;
    let mut passed: HashSet<String> = HashSet::new();
    let outcome = async {
        // Letters added after this one died while the job ran.
        let newest = admin
            .list_dead_letters(&queue, 1)
            .await
            .map_err(|e| e.to_string())?;
        let Some(newest) = newest.into_iter().next() else {
            return Ok(());
        };
        let bound = order(&newest.id);
        // The newest letters are read first; a window over what was passed
        // over (and what died again) reaches the ones not handled yet.
        let mut window = BATCH;
        while handled < total {
            if st.0.closing.is_cancelled() {
                return Err("stopped: the dashboard is shutting down".to_string());
            }
            let listed = admin
                .list_dead_letters(&queue, window)
                .await
                .map_err(|e| e.to_string())?;
            let full = listed.len() == window;
            let mut batch: Vec<_> = listed
                .into_iter()
                .filter(|l| order(&l.id) <= bound && !passed.contains(&l.id))
                .take(BATCH.min(total - handled))
                .collect();
            if batch.is_empty() {
                if !full || window >= 2 * REPLAY_ALL_MAX + BATCH {
                    break;
                }
                window *= 2;
                continue;
            }
            batch.reverse();
            for letter in batch {
                if st.0.closing.is_cancelled() {
                    return Err("stopped: the dashboard is shutting down".to_string());
                }
                let replayed = st
                    .stem()
                    .replay_dead_letter(&queue, &letter)
                    .await
                    .map_err(|e| e.to_string())?;
                handled += 1;
                if replayed.is_none() {
                    passed.insert(letter.id);
                }
                replays.update(&queue, |p| match replayed {
                    Some(_) => p.replayed += 1,
                    None => p.skipped += 1,
                });
            }
        }
        Ok(())
    }
    .await;
    match &outcome {
        Err(e) => tracing::warn!(error = %e, queue = %queue, handled, "replay-all stopped early"),
        Ok(()) => tracing::info!(queue = %queue, handled, "replay-all finished"),
    }
    replays.update(&queue, |p| {
        p.running = false;
        p.error = outcome.err();
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
