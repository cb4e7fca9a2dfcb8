//! Adapter factories and polling helpers shared by the contract suites.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use stem::atomic::{AtomicStore, RedisAtomicStore};
use stem::backend::memory::MemoryBackend;
use stem::backend::redis::RedisBackend;
use stem::broker::redis::RedisBroker;
use stem::client::Stores;
use stem::config::TlsConfig;
use stem::control::redis::RedisControl;
use stem::envelope::TaskStatus;
pub use stem_testkit::poll;
use stem_testkit::{RedisCluster, RedisServer};

/// One set of stores under test; keeps its redis-server alive. Derefs to
/// its [`Stores`], so a test reads `a.broker`, `a.admin`, `a.backend`.
pub struct Adapters {
    pub stores: Stores,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

impl std::ops::Deref for Adapters {
    type Target = Stores;
    fn deref(&self) -> &Stores {
        &self.stores
    }
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
        let url = match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server.url()),
            (None, Some(cluster)) => Some(cluster.url()),
            (None, None) => None,
        };
        match url {
            None => self.stores.backend = Arc::new(MemoryBackend::new(ttl)),
            Some(url) => {
                let client = stem::redis_conn::endpoint(&url, &TlsConfig::default())?;
                self.stores.backend = Arc::new(RedisBackend::new(client.clone(), ttl)?);
                if self.atomic.is_some() {
                    let broker = RedisBroker::new(client, 1000)?;
                    self.stores.atomic = Some(Arc::new(RedisAtomicStore::new(broker, ttl)));
                }
            }
        }
        Ok(self)
    }

    /// The adapters as a client's stores.
    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }
}

pub fn memory_with_ttl(ttl: Duration) -> anyhow::Result<Adapters> {
    Ok(Adapters {
        stores: Stores::memory(ttl),
        redis: None,
        cluster: None,
    })
}

/// Broker and backend on a private Redis; with `colocated`, the atomic
/// submit and settle (one round trip each) too, as `Stores::connect`
/// builds them when both URLs are equal.
fn redis_stores(ttl: Duration, colocated: bool) -> anyhow::Result<Adapters> {
    let server = RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &TlsConfig::default())?;
    let broker = RedisBroker::new(client.clone(), 1000)?;
    let atomic: Option<Arc<dyn AtomicStore>> =
        colocated.then(|| Arc::new(RedisAtomicStore::new(broker.clone(), ttl)) as _);
    let broker = Arc::new(broker);
    Ok(Adapters {
        stores: Stores {
            broker: broker.clone(),
            admin: broker,
            backend: Arc::new(RedisBackend::new(client.clone(), ttl)?),
            atomic,
            control: Arc::new(RedisControl::new(client)?),
        },
        redis: Some(server),
        cluster: None,
    })
}

/// Broker, backend and control plane on a private three-master Redis
/// Cluster, as `Stores::connect` builds them for a `redis+cluster://` URL
/// (no atomic store: a cluster keeps a task's status and its queue on
/// different slots).
pub fn cluster_with_ttl(ttl: Duration) -> anyhow::Result<Adapters> {
    let cluster = RedisCluster::start()?;
    let endpoint = stem::redis_conn::endpoint(&cluster.url(), &TlsConfig::default())?;
    let broker = Arc::new(RedisBroker::new(endpoint.clone(), 1000)?);
    Ok(Adapters {
        stores: Stores {
            broker: broker.clone(),
            admin: broker,
            backend: Arc::new(RedisBackend::new(endpoint.clone(), ttl)?),
            atomic: None,
            control: Arc::new(RedisControl::new(endpoint)?),
        },
        redis: None,
        cluster: Some(cluster),
    })
}

pub fn cluster() -> anyhow::Result<Adapters> {
    cluster_with_ttl(Duration::from_secs(3600))
}

pub fn redis_with_ttl(ttl: Duration) -> anyhow::Result<Adapters> {
    redis_stores(ttl, false)
}

pub fn redis_colocated() -> anyhow::Result<Adapters> {
    redis_stores(Duration::from_secs(3600), true)
}

pub fn memory() -> anyhow::Result<Adapters> {
    memory_with_ttl(Duration::from_secs(3600))
}

pub fn redis() -> anyhow::Result<Adapters> {
    redis_with_ttl(Duration::from_secs(3600))
}
