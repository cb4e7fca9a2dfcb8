//! [`Stem`], the producer API: build envelopes, sign them, record `queued`,
//! publish; read statuses and wait for results. This file holds the handle
//! and its stores; its methods live by job in `enqueue.rs` (prepare, sign,
//! publish, submit once), `read.rs` (status, wait, find, revoke, forget)
//! and `stores.rs` ([`Stores`]); the canvas entry points in
//! [`crate::canvas`] as further `impl Stem` blocks.

use std::sync::Arc;
use std::time::Duration;

use crate::atomic::AtomicStore;
use crate::backend::ResultBackend;
use crate::broker::{Broker, QueueAdmin};
use crate::config::StemConfig;
use crate::control::ControlPlane;
use crate::error::Result;
use crate::signing::Signer;
use crate::task::TaskRegistry;

mod enqueue;
mod read;
mod stores;

pub(crate) use enqueue::{submit_once, Prepared};
pub use enqueue::{EnqueueOptions, EnqueueRequest, Enqueued};
pub use stores::Stores;

/// How long an idempotency key remembers its task.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Longest countdown an enqueue accepts. A revocation is kept at least this
/// long (see [`REVOCATION_TTL`]), so a revoked delayed task cannot outlive
/// its revocation and run later.
pub const MAX_COUNTDOWN: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a revocation (`cancelled`) is kept: past the latest not-before
/// time any task can have, plus a day for a backlog to drain.
pub const REVOCATION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

/// The producer client. Cheap to clone.
#[derive(Clone)]
pub struct Stem {
    stores: Stores,
    signer: Option<Signer>,
    registry: TaskRegistry,
}

impl Stem {
    /// A client on `config`'s stores, signing with the producer's key.
    /// Fails when signing keys are configured without
    /// `STEM_SIGNING_ACTIVE_KEY`.
    pub fn connect(config: &StemConfig) -> Result<Self> {
        Ok(Stem::new(
            Stores::connect(config)?,
            config.keys.signer()?,
            TaskRegistry::new(),
        ))
    }

    /// Like [`connect`](Self::connect) for processes that never sign
    /// (workers: least privilege). Envelopes it would publish go unsigned,
    /// so use it only to consume.
    pub fn connect_consumer(config: &StemConfig) -> Result<Self> {
        Ok(Stem::new(
            Stores::connect(config)?,
            None,
            TaskRegistry::new(),
        ))
    }

    /// A client on fresh in-memory stores, without signing.
    pub fn memory() -> Self {
        Stem::new(
            Stores::memory(Duration::from_secs(86_400)),
            None,
            TaskRegistry::new(),
        )
    }

    /// A client on `stores`.
    pub fn new(stores: Stores, signer: Option<Signer>, registry: TaskRegistry) -> Self {
        Stem {
            stores,
            signer,
            registry,
        }
    }

    /// The same stores with another signer (`None`: publish unsigned).
    pub fn with_signer(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// The same stores with another registry.
    pub fn with_registry(mut self, registry: TaskRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Every store.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }
    /// The control plane (heartbeats, worker commands, pauses).
    pub fn control(&self) -> Arc<dyn ControlPlane> {
        self.stores.control.clone()
    }
    /// The broker (hot path).
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.stores.broker.clone()
    }
    /// The operator's view of the queues.
    pub fn admin(&self) -> Arc<dyn QueueAdmin> {
        self.stores.admin.clone()
    }
    /// The result backend.
    pub fn backend(&self) -> Arc<dyn ResultBackend> {
        self.stores.backend.clone()
    }
    /// The atomic submit/settle, when broker and backend share a Redis.
    pub fn atomic(&self) -> Option<Arc<dyn AtomicStore>> {
        self.stores.atomic.clone()
    }
    /// The registry (task names, queues, retry budgets).
    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }
    /// The signer, when this producer signs.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// A handle for sending control commands to live workers, signed with
    /// this client's key when it has one.
    pub fn workers(&self) -> crate::control::Workers {
        crate::control::Workers::new(self.control(), self.signer.clone())
    }
}
