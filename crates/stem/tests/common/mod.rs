//! Stem's own adapters for the contract suites of `stem_contract`: the
//! in-memory stores, Redis (with and without the atomic store) and a
//! three-master Redis Cluster, each on a private server the harness keeps
//! alive, plus what each can show a suite from outside.
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
pub(crate) use stem_contract::Adapters;
use stem_contract::Harness;
use stem_testkit::{RedisCluster, RedisServer};

/// The in-memory stores: one process, nothing to show from outside.
struct Memory;

impl Harness for Memory {
    fn with_ttl(&self, stores: &Stores, ttl: Duration) -> anyhow::Result<Stores> {
        let mut stores = stores.clone();
        stores.backend = Arc::new(MemoryBackend::new(ttl));
        Ok(stores)
    }
}

/// Stores on one private redis-server (shared with the Redis-only tests,
/// which talk to it directly).
struct Redis {
    server: Arc<RedisServer>,
}

/// Broker and backend on `url`; with `colocated`, the atomic submit and
/// settle (one round trip each) too, as `Stores::connect` builds them when
/// both URLs are equal.
fn redis_stores(url: &str, ttl: Duration, colocated: bool) -> anyhow::Result<Stores> {
    let client = stem::redis_conn::client(url, &TlsConfig::default())?;
    let broker = RedisBroker::new(client.clone(), 1000)?;
    let atomic: Option<Arc<dyn AtomicStore>> =
        colocated.then(|| Arc::new(RedisAtomicStore::new(broker.clone(), ttl)) as _);
    let broker = Arc::new(broker);
    Ok(Stores {
        broker: broker.clone(),
        admin: broker,
        backend: Arc::new(RedisBackend::new(client.clone(), ttl)?),
        atomic,
        control: Arc::new(RedisControl::new(client)?),
    })
}

impl Harness for Redis {
    fn with_ttl(&self, stores: &Stores, ttl: Duration) -> anyhow::Result<Stores> {
        // A backend (and atomic store) keeping statuses `ttl`; the rest as
        // they were.
        let fresh = redis_stores(&self.server.url(), ttl, stores.atomic.is_some())?;
        Ok(Stores {
            backend: fresh.backend,
            atomic: fresh.atomic,
            ..stores.clone()
        })
    }

    fn second_process(&self, stores: &Stores) -> anyhow::Result<Stores> {
        let mut other = redis_stores(&self.server.url(), Duration::from_secs(600), false)?;
        other.control = stores.control.clone();
        Ok(other)
    }

    fn blocked_fetches(&self) -> Option<anyhow::Result<usize>> {
        Some(self.server.cli(&["CLIENT", "LIST"]).map(|clients| {
            clients
                .lines()
                .filter(|l| l.contains("cmd=xreadgroup") && l.contains(" flags=b "))
                .count()
        }))
    }
}

/// Stores on a private three-master Redis Cluster, as `Stores::connect`
/// builds them for a `redis+cluster://` URL (no atomic store: a cluster
/// keeps a task's status and its queue on different slots).
struct Cluster {
    cluster: RedisCluster,
}

fn cluster_stores(url: &str, ttl: Duration) -> anyhow::Result<Stores> {
    let endpoint = stem::redis_conn::endpoint(url, &TlsConfig::default())?;
    let broker = Arc::new(RedisBroker::new(endpoint.clone(), 1000)?);
    Ok(Stores {
        broker: broker.clone(),
        admin: broker,
        backend: Arc::new(RedisBackend::new(endpoint.clone(), ttl)?),
        atomic: None,
        control: Arc::new(RedisControl::new(endpoint)?),
    })
}

impl Harness for Cluster {
    fn with_ttl(&self, stores: &Stores, ttl: Duration) -> anyhow::Result<Stores> {
        let fresh = cluster_stores(&self.cluster.url(), ttl)?;
        Ok(Stores {
            backend: fresh.backend,
            ..stores.clone()
        })
    }
}

const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn memory() -> anyhow::Result<Adapters> {
    Ok(Adapters::new(Stores::memory(HOUR), Memory))
}

pub(crate) fn redis() -> anyhow::Result<Adapters> {
    Ok(redis_and_server(false)?.0)
}

pub(crate) fn redis_colocated() -> anyhow::Result<Adapters> {
    Ok(redis_and_server(true)?.0)
}

/// Stores on a private redis-server (with the atomic store when
/// `colocated`), and that server, for the tests of what only Redis shows.
pub(crate) fn redis_and_server(colocated: bool) -> anyhow::Result<(Adapters, Arc<RedisServer>)> {
    let server = Arc::new(RedisServer::start()?);
    let stores = redis_stores(&server.url(), HOUR, colocated)?;
    let harness = Redis {
        server: server.clone(),
    };
    Ok((Adapters::new(stores, harness), server))
}

pub(crate) fn cluster() -> anyhow::Result<Adapters> {
    let cluster = RedisCluster::start()?;
    let stores = cluster_stores(&cluster.url(), HOUR)?;
    Ok(Adapters::new(stores, Cluster { cluster }))
}
