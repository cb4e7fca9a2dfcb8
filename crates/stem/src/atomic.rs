//! Publishing and settling together with the result backend, where the
//! broker and the backend share one Redis.
//!
//! Two writes that must not be torn apart span both stores: a task's
//! first status and its publish (a reader must never see a queued status
//! without the entry, nor a marker without the task), and a result and the
//! ack of its delivery (an ack without its result would lose the result on
//! a crash). On one Redis both go in one round trip, atomically. Stores on
//! different servers cannot promise that; the caller falls back to separate
//! steps ordered so a crash repeats work instead of losing it (status
//! before publish, result before ack).
//!
//! The capability is resolved once, when the stores are built
//! ([`crate::client::Stem::connect`]): [`AtomicStore`] is present or not,
//! and no hot-path call asks "are you co-located?". It depends on both
//! adapters; neither depends on the other.

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::redis::{status_value, StatusWriter};
use crate::broker::redis::entry::push_outgoing;
use crate::broker::redis::RedisBroker;
use crate::broker::{Outgoing, Receipt, SubmitOnce};
use crate::envelope::TaskStatus;
use crate::error::Result;
use crate::keys;

/// Writes that span the broker and the result backend, each atomic.
#[async_trait]
pub trait AtomicStore: Send + Sync + 'static {
    /// Records the `queued` statuses (only where none exists) and publishes
    /// `batch`, in one round trip.
    async fn submit(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<()>;

    /// Publishes `out` unless `once.marker` is already set, setting the
    /// marker and writing `once.status` (a first record, only where none
    /// exists) in the same atomic step. `None`: published; `Some(v)`: the
    /// marker already held `v`, nothing was published.
    async fn submit_once(&self, once: &SubmitOnce<'_>, out: &Outgoing) -> Result<Option<String>>;

    /// Writes `statuses` (with the backend's never-backwards rule) and
    /// then acknowledges `acks`, in one transaction, so no ack lands
    /// without its result.
    async fn settle(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<()>;
}

/// [`AtomicStore`] on the Redis that holds both the broker's and the
/// backend's keys.
#[derive(Clone)]
pub struct RedisAtomicStore {
    broker: RedisBroker,
    writer: StatusWriter,
}

impl RedisAtomicStore {
    /// Over `broker`'s connection, for a backend keeping statuses `ttl`.
    pub fn new(broker: RedisBroker, ttl: Duration) -> Self {
        RedisAtomicStore {
            broker,
            writer: StatusWriter::new(ttl),
        }
    }
}

#[async_trait]
impl AtomicStore for RedisAtomicStore {
    async fn submit(&self, statuses: &[TaskStatus], batch: &[Outgoing]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.broker.remember(batch.iter().map(|o| &o.queue)).await?;
        let mut pipe = ::redis::pipe();
        self.writer.push_queued(&mut pipe, statuses)?;
        push_outgoing(&mut pipe, batch);
        self.broker.index_recent(&mut pipe, batch);
        pipe.exec_async(&mut self.broker.conn()).await?;
        Ok(())
    }

    async fn submit_once(&self, once: &SubmitOnce<'_>, out: &Outgoing) -> Result<Option<String>> {
        let status = match once.status {
            Some(s) => Some((keys::status(&s.id), status_value(s)?, self.writer.ttl_ms())),
            None => None,
        };
        self.broker.run_submit_once(once, out, status).await
    }

    async fn settle(&self, statuses: &[TaskStatus], acks: &[Receipt]) -> Result<()> {
        self.writer
            .write(
                &mut self.broker.conn(),
                statuses,
                RedisBroker::ack_cmds(acks),
            )
            .await
    }
}
