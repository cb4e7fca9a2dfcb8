//! Adapter factories and polling helpers shared by the contract suites.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Polls `f` every 20 ms until it yields `Some`, or fails after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks `f` every 20 ms for the whole of `window` and fails the first
/// time it answers false: for claims that something does *not* happen
/// (a paused queue is not fetched), where there is no event to wait for.
pub async fn holds<F, Fut>(what: &str, window: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        anyhow::ensure!(f().await?, "{what} stopped holding within {window:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs each listed async test function against both adapters.
#[macro_export]
macro_rules! contract_suite {
    ($($name:ident),* $(,)?) => {
        mod memory_adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::common::memory()?).await
                }
            )*
        }
        mod redis_adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::common::redis()?).await
                }
            )*
        }
        mod redis_colocated {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::common::redis_colocated()?).await
                }
            )*
        }
    };
}
