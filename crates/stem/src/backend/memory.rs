//! In-process result backend with TTLs, the same monotonic status rule and
//! group semantics as the Redis backend.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so tests of leases and TTLs can run on paused time.
use tokio::time::Instant;

use async_trait::async_trait;

use super::{rejected_may_fail, GroupProgress, GroupView, ResultBackend};
use crate::envelope::{TaskState, TaskStatus};
use crate::error::Result;

struct Expiring<T> {
    value: T,
    expires: Instant,
}

impl<T> Expiring<T> {
    fn live(&self) -> bool {
        self.expires > Instant::now()
    }
}

/// Expected count and results by task id.
type Group = (u64, BTreeMap<String, TaskStatus>);

#[derive(Default)]
struct State {
    statuses: HashMap<String, Expiring<TaskStatus>>,
    groups: HashMap<String, Expiring<Group>>,
    blobs: HashMap<String, Expiring<Vec<u8>>>,
}

/// The in-memory backend. Clones share state.
#[derive(Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    ttl: Duration,
}

impl MemoryBackend {
    /// Records live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        MemoryBackend {
            state: Arc::new(Mutex::new(State::default())),
            ttl,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

#[async_trait]
impl ResultBackend for MemoryBackend {
    async fn set_statuses(&self, statuses: &[TaskStatus]) -> Result<()> {
        let mut st = self.lock();
        let expires = Instant::now() + self.ttl;
        for s in statuses {
            let keep_old = st
                .statuses
                .get(&s.id)
                .is_some_and(|old| old.live() && old.value.rank() > s.rank());
            if !keep_old {
                st.statuses.insert(
                    s.id.clone(),
                    Expiring {
                        value: s.clone(),
                        expires,
                    },
                );
            }
        }
        Ok(())
    }

    async fn record_revocation(&self, status: &TaskStatus, ttl: Duration) -> Result<bool> {
        let mut st = self.lock();
        let finished = st
            .statuses
            .get(&status.id)
            .is_some_and(|old| old.live() && old.value.state.is_terminal());
        if finished {
            return Ok(false);
        }
        st.statuses.insert(
            status.id.clone(),
            Expiring {
                value: status.clone(),
                expires: Instant::now() + ttl,
            },
        );
        Ok(true)
    }

    async fn fail_rejected(&self, failures: &[TaskStatus]) -> Result<Vec<bool>> {
        // Under the lock, as the Redis script runs: compare and set in one
        // step.
        let mut st = self.lock();
        let expires = Instant::now() + self.ttl;
        let mut out = Vec::with_capacity(failures.len());
        for f in failures {
            let Some(fp) = f.fingerprint.as_deref() else {
                out.push(false);
                continue;
            };
            let stored = st.statuses.get(&f.id).filter(|e| e.live());
            let (matches, already) = match stored {
                Some(e) if e.value.fingerprint.as_deref() == Some(fp) => (
                    rejected_may_fail(&e.value, f.attempt),
                    e.value.state == TaskState::Failed,
                ),
                _ => (false, false),
            };
            if matches {
                st.statuses.insert(
                    f.id.clone(),
                    Expiring {
                        value: f.clone(),
                        expires,
                    },
                );
            }
            out.push(matches || already);
        }
        Ok(out)
    }

    async fn get_statuses(&self, ids: &[String]) -> Result<Vec<Option<TaskStatus>>> {
        let st = self.lock();
        Ok(ids
            .iter()
            .map(|id| {
                st.statuses
                    .get(id)
                    .filter(|e| e.live())
                    .map(|e| e.value.clone())
            })
            .collect())
    }

    async fn init_group(&self, id: &str, expected: u64) -> Result<()> {
        let mut st = self.lock();
        st.groups.insert(
            id.to_string(),
            Expiring {
                value: (expected, BTreeMap::new()),
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(())
    }

    async fn add_group_results(
        &self,
        results: &[(String, TaskStatus)],
    ) -> Result<Vec<GroupProgress>> {
        let mut st = self.lock();
        let mut out = Vec::new();
        for (gid, status) in results {
            let Some(g) = st.groups.get_mut(gid).filter(|g| g.live()) else {
                continue;
            };
            g.value.1.insert(status.id.clone(), status.clone());
            out.push(GroupProgress {
                group_id: gid.clone(),
                completed: g.value.1.len() as u64,
                expected: g.value.0,
            });
        }
        Ok(out)
    }

    async fn get_group(&self, id: &str) -> Result<Option<GroupView>> {
        let st = self.lock();
        Ok(st.groups.get(id).filter(|g| g.live()).map(|g| GroupView {
            id: id.to_string(),
            expected: g.value.0,
            results: g.value.1.clone(),
        }))
    }

    async fn put_blob(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        self.lock().blobs.insert(
            key.to_string(),
            Expiring {
                value: value.to_vec(),
                expires: Instant::now() + ttl,
            },
        );
        Ok(())
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .blobs
            .get(key)
            .filter(|e| e.live())
            .map(|e| e.value.clone()))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
