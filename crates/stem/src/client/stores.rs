//! [`Stores`]: the broker, result backend, control plane and (when broker
//! and backend share one Redis) the atomic store a [`super::Stem`] talks
//! to, connected from the configuration or made in process.

use std::sync::Arc;
use std::time::Duration;

use crate::atomic::{AtomicStore, RedisAtomicStore};
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::RedisBackend;
use crate::backend::ResultBackend;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, QueueAdmin};
use crate::config::{StemConfig, StoreUrl};
use crate::control::memory::MemoryControl;
use crate::control::redis::RedisControl;
use crate::control::ControlPlane;
use crate::error::Result;
use crate::redis_conn;

/// The stores a client and its workers share: the hot-path broker, the
/// operator's view of the same queues, the result backend, the atomic
/// submit/settle when broker and backend share one Redis, and the control
/// plane. [`Stores::connect`] is the one place that turns `STEM_*` URLs
/// into adapters.
#[derive(Clone)]
pub struct Stores {
    /// Publishes and delivers envelopes (the hot path).
    pub broker: Arc<dyn Broker>,
    /// The operator's view of the same queues: counts, purges, dead letters.
    pub admin: Arc<dyn QueueAdmin>,
    /// The result backend: statuses, groups, claims and blobs.
    pub backend: Arc<dyn ResultBackend>,
    /// Present when the broker and the backend live on the same Redis.
    pub atomic: Option<Arc<dyn AtomicStore>>,
    /// Heartbeats, commands to workers and queue pauses.
    pub control: Arc<dyn ControlPlane>,
}

impl Stores {
    /// Builds every store from `config` (Redis or memory). Connections are
    /// made lazily.
    pub fn connect(config: &StemConfig) -> Result<Self> {
        let backend: Arc<dyn ResultBackend> = match &config.result_backend_url {
            StoreUrl::Memory => Arc::new(MemoryBackend::new(config.result_ttl)),
            StoreUrl::Redis(url) => Arc::new(RedisBackend::new(
                redis_conn::endpoint(url, &config.tls)?,
                config.result_ttl,
            )?),
        };
        Ok(match &config.broker_url {
            StoreUrl::Memory => Stores::memory_with(
                backend,
                MemoryBroker::new()
                    .with_recent_tasks(config.recent_tasks)
                    .with_recent_ttl(config.result_ttl),
            ),
            StoreUrl::Redis(url) => {
                let client = redis_conn::endpoint(url, &config.tls)?;
                let broker = RedisBroker::new(client.clone(), config.dead_letter_maxlen)?
                    .with_recent_tasks(config.recent_tasks)
                    .with_recent_ttl(config.result_ttl);
                // One server holding both stores makes a status and a
                // publish (or a result and an ack) one atomic step. A
                // cluster keeps a task's keys and its queue's on different
                // slots, so there the stores work as on two servers.
                let atomic: Option<Arc<dyn AtomicStore>> = (config.result_backend_url
                    == config.broker_url
                    && !client.is_cluster())
                .then(|| Arc::new(RedisAtomicStore::new(broker.clone(), config.result_ttl)) as _);
                let broker = Arc::new(broker);
                Stores {
                    broker: broker.clone(),
                    admin: broker,
                    backend,
                    atomic,
                    control: Arc::new(RedisControl::new(client)?),
                }
            }
        })
    }

    /// Fresh in-memory stores; statuses kept `result_ttl`.
    pub fn memory(result_ttl: Duration) -> Self {
        Stores::memory_with(
            Arc::new(MemoryBackend::new(result_ttl)),
            MemoryBroker::new(),
        )
    }

    fn memory_with(backend: Arc<dyn ResultBackend>, broker: MemoryBroker) -> Self {
        let broker = Arc::new(broker);
        Stores {
            broker: broker.clone(),
            admin: broker,
            backend,
            atomic: None,
            control: Arc::new(MemoryControl::new()),
        }
    }
}
