//! Adapter factories and polling helpers shared by the contract suites.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use stem::atomic::{AtomicStore, RedisAtomicStore};
use stem::backend::memory::MemoryBackend;
use stem::backend::redis::RedisBackend;
use stem::backend::ResultBackend;
use stem::broker::memory::MemoryBroker;
use stem::broker::redis::RedisBroker;
use stem::broker::{Broker, QueueAdmin};
use stem::client::Stores;
use stem::config::TlsSettings;
use stem::control::memory::MemoryControl;
use stem::control::redis::RedisControl;
use stem::control::ControlPlane;
use stem::envelope::TaskStatus;
pub use stem_testkit::poll;
use stem_testkit::RedisServer;

/// One adapter pair under test; keeps its redis-server alive.
pub struct Adapters {
    pub broker: Arc<dyn Broker>,
    pub admin: Arc<dyn QueueAdmin>,
    pub backend: Arc<dyn ResultBackend>,
    pub atomic: Option<Arc<dyn AtomicStore>>,
    pub control: Arc<dyn ControlPlane>,
    pub redis: Option<RedisServer>,
}

impl Adapters {
    /// Writes statuses the way production does on these adapters: through
    /// the atomic settle when broker and backend share a Redis, else
    /// through the backend.
    pub async fn set_statuses(&self, statuses: &[TaskStatus]) -> stem::Result<()> {
        match &self.atomic {
            Some(atomic) => atomic.settle(statuses, &[]).await,
            None => self.backend.set_statuses(statuses).await,
        }
    }

    /// The same stores with statuses kept only `ttl` (a new backend, and
    /// atomic store, on the same server).
    pub fn with_ttl(mut self, ttl: Duration) -> anyhow::Result<Self> {
        match &self.redis {
            None => self.backend = Arc::new(MemoryBackend::new(ttl)),
            Some(server) => {
                let client = stem::redis_conn::client(&server.url(), &TlsSettings::default())?;
                self.backend = Arc::new(RedisBackend::new(client.clone(), ttl)?);
                if self.atomic.is_some() {
                    let broker = RedisBroker::new(client, 1000)?;
                    self.atomic = Some(Arc::new(RedisAtomicStore::new(broker, ttl)));
                }
            }
        }
        Ok(self)
    }

    /// The adapters as a client's stores.
    pub fn stores(&self) -> Stores {
        Stores {
            broker: self.broker.clone(),
            admin: self.admin.clone(),
            backend: self.backend.clone(),
            atomic: self.atomic.clone(),
            control: self.control.clone(),
        }
    }
}

pub fn memory_with_ttl(ttl: Duration) -> anyhow::Result<Adapters> {
    let broker = Arc::new(MemoryBroker::new());
    Ok(Adapters {
        broker: broker.clone(),
        admin: broker,
        backend: Arc::new(MemoryBackend::new(ttl)),
        atomic: None,
        control: Arc::new(MemoryControl::new()),
        redis: None,
    })
}

pub fn redis_with_ttl(ttl: Duration) -> anyhow::Result<Adapters> {
    let server = RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &TlsSettings::default())?;
    let broker = Arc::new(RedisBroker::new(client.clone(), 1000)?);
    Ok(Adapters {
        broker: broker.clone(),
        admin: broker,
        backend: Arc::new(RedisBackend::new(client.clone(), ttl)?),
        atomic: None,
        control: Arc::new(RedisControl::new(client)?),
        redis: Some(server),
    })
}

/// Broker and backend on one Redis with the atomic submit and settle
/// (one round trip each), as `Stores::connect` builds them when both URLs
/// are equal.
pub fn redis_colocated() -> anyhow::Result<Adapters> {
    let ttl = Duration::from_secs(3600);
    let server = RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &TlsSettings::default())?;
    let broker = RedisBroker::new(client.clone(), 1000)?;
    let atomic = RedisAtomicStore::new(broker.clone(), ttl);
    let broker = Arc::new(broker);
    Ok(Adapters {
        broker: broker.clone(),
        admin: broker,
        backend: Arc::new(RedisBackend::new(client.clone(), ttl)?),
        atomic: Some(Arc::new(atomic)),
        control: Arc::new(RedisControl::new(client)?),
        redis: Some(server),
    })
}

pub fn memory() -> anyhow::Result<Adapters> {
    memory_with_ttl(Duration::from_secs(3600))
}

pub fn redis() -> anyhow::Result<Adapters> {
    redis_with_ttl(Duration::from_secs(3600))
}
