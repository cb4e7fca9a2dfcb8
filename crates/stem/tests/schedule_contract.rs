//! The schedule-store and lock-store contract (`stem_contract::schedule`),
//! run against the in-memory stores, the Redis stores on a private
//! `redis-server` and on a private three-master Redis Cluster.

use std::sync::Arc;

use stem::config::TlsConfig;
use stem::schedule::memory::{MemoryLockStore, MemoryScheduleStore};
use stem::schedule::redis::{RedisLockStore, RedisScheduleStore};
use stem::schedule::ScheduleStores;
use stem_contract::schedule::ScheduleAdapters;
use stem_testkit::{RedisCluster, RedisServer};

fn memory() -> anyhow::Result<ScheduleAdapters> {
    let stores = ScheduleStores {
        schedules: Arc::new(MemoryScheduleStore::new()),
        locks: Arc::new(MemoryLockStore::new()),
    };
    Ok(ScheduleAdapters::new(stores, ()))
}

fn redis() -> anyhow::Result<ScheduleAdapters> {
    let server = RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &TlsConfig::default())?;
    let stores = ScheduleStores {
        schedules: Arc::new(RedisScheduleStore::new(client.clone())?),
        locks: Arc::new(RedisLockStore::new(client)?),
    };
    Ok(ScheduleAdapters::new(stores, server))
}

fn cluster() -> anyhow::Result<ScheduleAdapters> {
    let cluster = RedisCluster::start()?;
    let endpoint = stem::redis_conn::endpoint(&cluster.url(), &TlsConfig::default())?;
    let stores = ScheduleStores {
        schedules: Arc::new(RedisScheduleStore::new(endpoint.clone())?),
        locks: Arc::new(RedisLockStore::new(endpoint)?),
    };
    Ok(ScheduleAdapters::new(stores, cluster))
}

stem_contract::schedule_suite!(
    memory_stores => crate::memory,
    redis_stores => crate::redis,
    redis_cluster => crate::cluster,
);
