//! [`RedisUnderTest`]: what a black-box scenario needs of the Redis it runs
//! on, so one scenario body runs against a single [`RedisServer`] and a
//! [`RedisCluster`] alike (the binaries only ever see the URL).

use crate::cluster::RedisCluster;
use crate::redis::RedisServer;

/// One server or a cluster, as a scenario sees it.
pub trait RedisUnderTest {
    /// The URL the binaries get (`redis://…`, `redis+cluster://…`, …).
    fn url(&self) -> String;
    /// `redis-cli ARGS...` wherever the keys named in `args` live; trimmed
    /// stdout.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String>;
}

impl RedisUnderTest for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        RedisServer::cli(self, args)
    }
}

impl RedisUnderTest for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        RedisCluster::cli(self, args)
    }
}
