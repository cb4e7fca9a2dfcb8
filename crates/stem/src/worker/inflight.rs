//! In-flight accounting: every entry the worker holds, from the read that
//! fetched it until its settle released it, and how much more it may fetch.
//!
//! Two bounds meet here. `STEM_PREFETCH_MULTIPLIER` bounds entries fetched
//! but not started (`unstarted`): the fetch loop asks for exactly
//! `concurrency × prefetch − unstarted`. Running and finished-but-unsettled
//! entries do not count against it, so fetching overlaps with settling; a
//! second cap (that bound + concurrency + one settle batch) keeps the total
//! held bounded when Redis is slow to settle. Two notifications serve two
//! waiters: `room` wakes the fetch loop (something started or settled),
//! `settled` wakes a draining shutdown (something left for good).

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::{Held, RunningTask, WorkerMetrics};
use crate::broker::{Fetched, Receipt};

pub(super) struct Inflight {
    /// Held entries by receipt; `running` is set once the body runs.
    held: Mutex<HashMap<Receipt, Held>>,
    /// Fetched entries that have not started (admission, waiting queue).
    unstarted: AtomicUsize,
    /// Signalled when an entry starts or is settled (wakes the fetch loop).
    room: Notify,
    /// Signalled when entries are released (wakes a draining shutdown).
    settled: Notify,
    /// `concurrency × prefetch_multiplier`: most entries fetched ahead.
    bound: usize,
    /// Most entries held in all.
    cap: usize,
    metrics: Arc<WorkerMetrics>,
}

impl Inflight {
    pub(super) fn new(bound: usize, cap: usize, metrics: Arc<WorkerMetrics>) -> Self {
        Inflight {
            held: Mutex::new(HashMap::new()),
            unstarted: AtomicUsize::new(0),
            room: Notify::new(),
            settled: Notify::new(),
            bound,
            cap,
            metrics,
        }
    }

    /// The held entries.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Receipt, Held>> {
        self.held.lock()
    }

    /// How many entries are held.
    pub(super) fn count(&self) -> usize {
        self.lock().len()
    }

    /// The receipts of every held entry (for lease renewal).
    pub(super) fn receipts(&self) -> Vec<Receipt> {
        self.lock().keys().cloned().collect()
    }

    /// The tasks whose bodies run now.
    pub(super) fn running(&self) -> Vec<RunningTask> {
        self.lock()
            .values()
            .filter_map(|h| h.running.clone())
            .collect()
    }

    /// The most entries fetched ahead (`concurrency × prefetch`).
    pub(super) fn bound(&self) -> usize {
        self.bound
    }

    /// Records a fetched batch as held and not started (so the fetch
    /// loop's room is right at once); returns the entries not held yet
    /// (a recovery can return one this worker already holds).
    pub(super) fn take_in(&self, batch: Vec<Fetched>) -> Vec<Fetched> {
        let mut held = self.lock();
        let fresh: Vec<Fetched> = batch
            .into_iter()
            .filter(|f| {
                if held.contains_key(f.receipt()) {
                    return false;
                }
                held.insert(f.receipt().clone(), Held { running: None });
                true
            })
            .collect();
        self.metrics
            .inflight
            .store(held.len() as u64, Ordering::Relaxed);
        self.unstarted.fetch_add(fresh.len(), Ordering::Relaxed);
        fresh
    }

    /// Marks `receipt`'s body as running.
    pub(super) fn start(&self, receipt: &Receipt, running: RunningTask) {
        if let Some(h) = self.lock().get_mut(receipt) {
            h.running = Some(running);
        }
    }

    /// `n` fetched entries started running or left without running.
    pub(super) fn left_waiting(&self, n: usize) {
        if n > 0 {
            self.unstarted.fetch_sub(n, Ordering::Relaxed);
            self.room.notify_one();
        }
    }

    /// Forgets settled (or handed back) entries.
    pub(super) fn release(&self, receipts: &[Receipt]) {
        {
            let mut held = self.lock();
            for r in receipts {
                held.remove(r);
            }
            self.metrics
                .inflight
                .store(held.len() as u64, Ordering::Relaxed);
        }
        self.settled.notify_waiters();
        self.room.notify_one();
    }

    /// How many entries the fetch loop may ask for now.
    pub(super) fn room_to_fetch(&self) -> usize {
        let waiting = self
            .bound
            .saturating_sub(self.unstarted.load(Ordering::Relaxed));
        waiting.min(self.cap.saturating_sub(self.count()))
    }

    /// Resolves when an entry starts or is settled; take it before
    /// reading [`Inflight::room_to_fetch`] so no wake-up is missed.
    pub(super) fn room_changed(&self) -> Notified<'_> {
        self.room.notified()
    }

    /// Waits until nothing is held.
    pub(super) async fn drained(&self) {
        loop {
            let notified = self.settled.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}
