//! The Redis a scenario measures: one `redis-server`, or (`--cluster`) a
//! private three-master Redis Cluster beside it. Owns what differs between
//! the two: the URL, flushing and resetting every master, and reading CPU
//! time and command counts node by node (a cluster's cost is the sum over
//! its masters; its scaling depends on how that sum splits between them).

use std::collections::BTreeMap;

use stem_testkit::{RedisCluster, RedisServer};

use crate::measure::{command_calls, redis_cpu};

// One or two per bench run: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Store {
    /// One server, or a cluster of three masters without replicas.
    pub fn start(cluster: bool) -> anyhow::Result<Self> {
        Ok(if cluster {
            Store::Cluster(RedisCluster::start()?)
        } else {
            Store::Single(RedisServer::start()?)
        })
    }

    /// How reports name it.
    pub fn label(&self) -> &'static str {
        match self {
            Store::Single(_) => "single node",
            Store::Cluster(_) => "3-master cluster",
        }
    }

    pub fn url(&self) -> String {
        match self {
            Store::Single(r) => r.url(),
            Store::Cluster(c) => c.url(),
        }
    }

    /// The one server of a single-node store (scenarios that read keys
    /// with `redis-cli` directly run on one node only).
    pub fn single(&self) -> anyhow::Result<&RedisServer> {
        match self {
            Store::Single(r) => Ok(r),
            Store::Cluster(_) => anyhow::bail!("this scenario runs on a single node only"),
        }
    }

    /// Every node, in start order (all masters: the bench's cluster has no
    /// replicas and loses no node, so the order is the same at every
    /// reading).
    fn nodes(&self) -> anyhow::Result<Vec<&RedisServer>> {
        match self {
            Store::Single(r) => Ok(vec![r]),
            Store::Cluster(c) => (0..c.ports().len()).map(|i| c.node(i)).collect(),
        }
    }

    /// `FLUSHALL` on every node.
    pub fn flushall(&self) -> anyhow::Result<()> {
        for n in self.nodes()? {
            n.cli(&["FLUSHALL"])?;
        }
        Ok(())
    }

    /// `CONFIG RESETSTAT` on every node.
    pub fn reset_stats(&self) -> anyhow::Result<()> {
        for n in self.nodes()? {
            n.cli(&["CONFIG", "RESETSTAT"])?;
        }
        Ok(())
    }

    /// CPU seconds each node has used so far, in node order.
    pub fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        self.nodes()?.into_iter().map(redis_cpu).collect()
    }

    /// CPU seconds each node has used since `before` (a [`Store::cpu`]
    /// reading) per 10 000 of `tasks` tasks, in node order.
    pub fn cpu_per_10k(&self, before: &[f64], tasks: usize) -> anyhow::Result<Vec<f64>> {
        let per10k = 10_000.0 / tasks as f64;
        Ok(self
            .cpu()?
            .iter()
            .zip(before)
            .map(|(after, before)| (after - before) * per10k)
            .collect())
    }

    /// `INFO commandstats` of each node, in node order.
    pub fn command_calls(&self) -> anyhow::Result<Vec<BTreeMap<String, (u64, u64)>>> {
        self.nodes()?.into_iter().map(command_calls).collect()
    }
}
