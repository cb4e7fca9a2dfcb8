//! Which of its queues the worker reads next: all of them except those an
//! operator paused and those set aside because their keys are broken.
//!
//! Kept apart from the fetch loop because three parties change it (the
//! fetch loop quarantines, `pause`/`resume` commands and the heartbeat's
//! refresh of persisted pauses) and one reads it; the gate that makes a
//! `pause` reply mean "nothing more is fetched" lives here too.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::WorkerMetrics;

/// How long a queue with a broken key is left out of fetches before the
/// worker tries it again.
pub(super) const QUARANTINE: Duration = Duration::from_secs(30);

/// The worker's queues and what keeps some of them out of a read.
pub(super) struct QueueSelection {
    /// Every queue the worker consumes, in its configured order.
    queues: Vec<String>,
    /// Queues paused by operators; not fetched from.
    paused: Mutex<HashSet<String>>,
    /// Queues whose keys are broken, and when they were set aside; not
    /// fetched from until [`QUARANTINE`] has passed, then tried again.
    quarantined: Mutex<HashMap<String, Instant>>,
    /// Held by the fetch loop from choosing its queues to the end of the
    /// read; a pause takes it before answering (see [`Self::settled`]).
    gate: tokio::sync::Mutex<()>,
    metrics: Arc<WorkerMetrics>,
}

impl QueueSelection {
    pub(super) fn new(queues: Vec<String>, metrics: Arc<WorkerMetrics>) -> Self {
        QueueSelection {
            queues,
            paused: Mutex::default(),
            quarantined: Mutex::default(),
            gate: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// Whether the worker consumes `queue`.
    pub(super) fn consumes(&self, queue: &str) -> bool {
        self.queues.iter().any(|q| q == queue)
    }

    /// Takes the gate for one read: hold the guard until the read returns.
    pub(super) async fn gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Waits until a read already under way has ended, so that a pause
    /// answered afterwards means no later read takes from the paused queue.
    pub(super) async fn settled(&self) {
        drop(self.gate.lock().await);
    }

    /// The queues to read now; forgets quarantines that have run out.
    pub(super) fn active(&self) -> Vec<String> {
        let paused = self.paused.lock();
        let mut quarantined = self.quarantined.lock();
        quarantined.retain(|_, since| since.elapsed() < QUARANTINE);
        self.count_quarantined(quarantined.len());
        self.queues
            .iter()
            .filter(|q| !paused.contains(*q) && !quarantined.contains_key(*q))
            .cloned()
            .collect()
    }

    /// Sets `queue` aside for [`QUARANTINE`]; true when it was not already.
    pub(super) fn quarantine(&self, queue: &str) -> bool {
        let mut quarantined = self.quarantined.lock();
        let fresh = quarantined
            .insert(queue.to_string(), Instant::now())
            .is_none();
        self.count_quarantined(quarantined.len());
        fresh
    }

    fn count_quarantined(&self, n: usize) {
        self.metrics.quarantined.store(n as u64, Ordering::Relaxed);
    }

    /// The paused queues, sorted.
    pub(super) fn paused(&self) -> Vec<String> {
        let mut paused: Vec<String> = self.paused.lock().iter().cloned().collect();
        paused.sort();
        paused
    }

    /// Pauses (or resumes) those of `queues` this worker consumes; returns
    /// the paused set, sorted.
    pub(super) fn set_paused(&self, queues: &[String], pause: bool) -> Vec<String> {
        {
            let mut paused = self.paused.lock();
            for q in queues.iter().filter(|q| self.consumes(q)) {
                if pause {
                    paused.insert(q.clone());
                } else {
                    paused.remove(q);
                }
            }
        }
        self.paused()
    }

    /// Replaces the paused set with the persisted one (those of `persisted`
    /// this worker consumes); true when it changed.
    pub(super) fn adopt_paused(&self, persisted: Vec<String>) -> bool {
        let mine: HashSet<String> = persisted.into_iter().filter(|q| self.consumes(q)).collect();
        let mut paused = self.paused.lock();
        if *paused == mine {
            return false;
        }
        *paused = mine;
        true
    }
}
