//! In-process control plane (`stem dev`, tests): a broadcast channel for
//! commands and per-command reply channels.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so tests of leases and TTLs can run on paused time.
use tokio::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::{
    minutes_between, CommandBus, ControlCommand, ControlReply, QueuePauses, Throughput,
    ThroughputLog, WorkerInfo, WorkerRegistry, THROUGHPUT_TTL,
};
use crate::error::Result;

#[derive(Default)]
struct State {
    workers: BTreeMap<String, (WorkerInfo, Instant)>,
    replies: HashMap<
        String,
        (
            mpsc::UnboundedSender<ControlReply>,
            Option<mpsc::UnboundedReceiver<ControlReply>>,
        ),
    >,
    paused: BTreeSet<String>,
    /// Minute → counts; minutes older than [`THROUGHPUT_TTL`] are dropped
    /// when another is added.
    throughput: BTreeMap<i64, Throughput>,
}

/// The in-memory control plane. Clones share state.
#[derive(Clone)]
pub struct MemoryControl {
    state: Arc<Mutex<State>>,
    commands: broadcast::Sender<ControlCommand>,
}

impl Default for MemoryControl {
    fn default() -> Self {
        MemoryControl {
            state: Arc::new(Mutex::new(State::default())),
            commands: broadcast::channel(256).0,
        }
    }
}

impl MemoryControl {
    /// An empty control plane.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn channel(&self, id: &str) -> mpsc::UnboundedSender<ControlReply> {
        let mut st = self.lock();
        st.replies
            .entry(id.to_string())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            })
            .0
            .clone()
    }
}

#[async_trait]
impl WorkerRegistry for MemoryControl {
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        self.lock()
            .workers
            .insert(info.name.clone(), (info.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn forget(&self, worker: &str, started_at: i64) -> Result<()> {
        let mut st = self.lock();
        if st
            .workers
            .get(worker)
            .is_some_and(|(info, _)| info.started_at == started_at)
        {
            st.workers.remove(worker);
        }
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut st = self.lock();
        let now = Instant::now();
        st.workers.retain(|_, (_, expires)| *expires > now);
        Ok(st.workers.values().map(|(i, _)| i.clone()).collect())
    }
}

#[async_trait]
impl CommandBus for MemoryControl {
    async fn send(&self, command: &ControlCommand) -> Result<()> {
        self.channel(&command.id);
        let _ = self.commands.send(command.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, ControlCommand>> {
        let rx = self.commands.subscribe();
        Ok(tokio_stream_from(rx))
    }

    async fn reply(&self, id: &str, reply: &ControlReply) -> Result<()> {
        let _ = self.channel(id).send(reply.clone());
        Ok(())
    }

    async fn replies(
        &self,
        id: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>> {
        self.channel(id);
        let rx = self
            .lock()
            .replies
            .get_mut(id)
            .and_then(|(_, rx)| rx.take());
        let Some(mut rx) = rx else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => out.push(r),
                _ => break,
            }
        }
        self.lock().replies.remove(id);
        Ok(out)
    }
}

#[async_trait]
impl QueuePauses for MemoryControl {
    async fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    async fn set_paused(&self, queues: &[String], paused: bool) -> Result<()> {
        let mut st = self.lock();
        for q in queues {
            if paused {
                st.paused.insert(q.clone());
            } else {
                st.paused.remove(q);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ThroughputLog for MemoryControl {
    async fn add_throughput(&self, minute_ms: i64, counts: &Throughput) -> Result<()> {
        let oldest = crate::envelope::now_ms() - THROUGHPUT_TTL.as_millis() as i64;
        let mut st = self.lock();
        let slot = st.throughput.entry(minute_ms).or_default();
        slot.succeeded += counts.succeeded;
        slot.failed += counts.failed;
        slot.retried += counts.retried;
        st.throughput.retain(|minute, _| *minute >= oldest);
        Ok(())
    }

    async fn throughput(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Throughput)>> {
        let st = self.lock();
        Ok(minutes_between(from_ms, to_ms)
            .into_iter()
            .map(|m| (m, st.throughput.get(&m).copied().unwrap_or_default()))
            .collect())
    }
}

fn tokio_stream_from(
    rx: broadcast::Receiver<ControlCommand>,
) -> BoxStream<'static, ControlCommand> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(c) => return Some((c, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}
