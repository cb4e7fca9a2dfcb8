//! A private Redis Cluster per test: `masters` redis-servers started with
//! `--cluster-enabled yes` on free loopback ports (each with its cluster
//! bus on a free port of its own, `--cluster-port`), optionally a replica
//! for each, joined by `redis-cli --cluster create`, and waited for until
//! every node reports `cluster_state:ok` and knows every other node. Nodes
//! can be killed (a master's replica then takes over); everything is
//! killed and removed when dropped. With TLS every node serves one shared
//! CA's certificate, and the cluster bus and replication run over TLS too.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::redis::{RedisOptions, RedisServer, TlsMode};
use crate::tls::TlsAssets;
use crate::wait::POLL_INTERVAL;

/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of [`RedisCluster::start_with`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Master nodes (at least 3, as `redis-cli --cluster create` asks).
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
    /// `cluster-node-timeout`: how long a master may be unreachable before
    /// its replica is promoted.
    pub node_timeout: Duration,
    /// AOF persistence on every node (`appendfsync always`).
    pub persistence: bool,
    /// Serve TLS only, every node with a certificate of one CA
    /// ([`RedisCluster::tls`]).
    pub tls: Option<TlsMode>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas: 0,
            node_timeout: Duration::from_millis(2000),
            persistence: false,
            tls: None,
        }
    }
}

/// A running Redis Cluster owned by a test.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The shared certificates and the directory holding them.
    tls: Option<(tempfile::TempDir, TlsAssets)>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions::default())
    }

    /// Starts the nodes, creates the cluster and waits until it serves.
    pub fn start_with(opts: ClusterOptions) -> anyhow::Result<Self> {
        if opts.masters < 3 {
            bail!(
                "a Redis Cluster needs at least 3 masters, not {}",
                opts.masters
            );
        }
        let count = opts.masters * (1 + opts.replicas);
        let tls = match opts.tls {
            Some(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("stem-cluster-tls-")
                    .tempdir()
                    .context("creating a directory for the cluster's certificates")?;
                let assets = TlsAssets::generate(dir.path())?;
                Some((dir, assets))
            }
            None => None,
        };
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(RedisServer::start_with(RedisOptions {
                persistence: opts.persistence,
                cluster_node_timeout: Some(opts.node_timeout),
                tls: opts.tls,
                tls_assets: tls.as_ref().map(|(_, assets)| assets.clone()),
            })?);
        }
        let cluster = RedisCluster { nodes, tls };
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let first = cluster.node(0)?;
        let out = first
            .cli_command()
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args([
                "--cluster-replicas",
                &opts.replicas.to_string(),
                "--cluster-yes",
            ])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create {addresses:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_formed(count)?;
        Ok(cluster)
    }

    /// Polls every node until it reports `cluster_state:ok` and knows all
    /// `count` nodes.
    fn wait_formed(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut pending = None;
            for node in &self.nodes {
                let info = node.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                let known = node
                    .cli(&["CLUSTER", "NODES"])
                    .unwrap_or_default()
                    .lines()
                    .count();
                if !info.contains("cluster_state:ok") || known < count {
                    pending = Some(format!(
                        "node {} knows {known}/{count} nodes: {}",
                        node.port(),
                        info.lines().next().unwrap_or("")
                    ));
                    break;
                }
            }
            let Some(why) = pending else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!("the cluster did not form within {FORM_TIMEOUT:?}: {why}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…` (every node a seed),
    /// `rediss+cluster://…` with TLS (the nodes announce themselves by IP,
    /// which the server certificate names).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", seeds.join(","))
    }

    /// The shared certificates, when TLS is on.
    pub fn tls(&self) -> Option<&TlsAssets> {
        self.tls.as_ref().map(|(_, assets)| assets)
    }

    /// Runs `redis-cli -c ARGS...` through the first live master (`-c`
    /// follows MOVED redirections to the node owning the key) and returns
    /// its trimmed stdout, like [`RedisServer::cli`].
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let first = self
            .masters()
            .first()
            .copied()
            .context("the cluster has no live master")?;
        let mut with_redirects = vec!["-c"];
        with_redirects.extend_from_slice(args);
        self.nodes[first].cli(&with_redirects)
    }

    /// Every node's port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Node `i` (in start order).
    pub fn node(&self, i: usize) -> anyhow::Result<&RedisServer> {
        self.nodes
            .get(i)
            .with_context(|| format!("the cluster has no node {i}"))
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> anyhow::Result<&mut RedisServer> {
        self.nodes
            .get_mut(i)
            .with_context(|| format!("the cluster has no node {i}"))
    }

    /// The nodes that are masters now, by `ROLE`.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .cli(&["ROLE"])
                    .is_ok_and(|r| r.lines().next() == Some("master"))
            })
            .collect()
    }

    /// The node index serving `key`'s slot as master now.
    pub fn master_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot: u16 = self
            .node(0)?
            .cli(&["CLUSTER", "KEYSLOT", key])?
            .parse()
            .context("CLUSTER KEYSLOT")?;
        for i in self.masters() {
            if self
                .slots_of(i)?
                .iter()
                .any(|&(lo, hi)| lo <= slot && slot <= hi)
            {
                return Ok(i);
            }
        }
        bail!("no master owns slot {slot} of {key}")
    }

    /// Waits until every live master's replicas have applied everything
    /// the master had written when this was called (`INFO replication`:
    /// each replica's `offset` reaches the master's `master_repl_offset`
    /// read first), so killing a master afterwards loses nothing it had
    /// acknowledged by then. Writes go on meanwhile; they are not waited
    /// for.
    pub fn wait_replicated(&self, timeout: Duration) -> anyhow::Result<()> {
        let info = |i: usize| self.nodes[i].cli(&["INFO", "replication"]);
        let mut targets = Vec::new();
        for i in self.masters() {
            let offset: u64 = info(i)?
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .and_then(|v| v.trim().parse().ok())
                .context("master_repl_offset in INFO replication")?;
            targets.push((i, offset));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut lagging = None;
            for &(i, target) in &targets {
                let text = info(i)?;
                let replicas: Vec<u64> = text
                    .lines()
                    .filter(|l| l.starts_with("slave"))
                    .filter_map(|l| {
                        l.split(',')
                            .find_map(|kv| kv.strip_prefix("offset="))
                            .and_then(|o| o.parse().ok())
                    })
                    .collect();
                if replicas.iter().any(|&o| o < target) {
                    lagging = Some(format!(
                        "master {i}: replicas at {replicas:?}, target {target}"
                    ));
                    break;
                }
            }
            let Some(why) = lagging else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!("replicas not caught up within {timeout:?}: {why}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The slot ranges master `i` serves, from its own `CLUSTER NODES`
    /// line, as `(first, last)`.
    pub fn slots_of(&self, i: usize) -> anyhow::Result<Vec<(u16, u16)>> {
        let nodes = self.node(i)?.cli(&["CLUSTER", "NODES"])?;
        let me = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .context("CLUSTER NODES without a myself line")?;
        Ok(me
            .split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                Some((lo.parse().ok()?, hi.parse().ok()?))
            })
            .collect())
    }

    /// Moves `count` slots of master `from` (all of them for `None`), keys
    /// and all, to master `to` (`redis-cli --cluster reshard`), as an
    /// operator rebalancing does.
    pub fn move_slots(&self, from: usize, to: usize, count: Option<u32>) -> anyhow::Result<()> {
        let held: u32 = self
            .slots_of(from)?
            .iter()
            .map(|(lo, hi)| u32::from(hi - lo) + 1)
            .sum();
        let count = count.unwrap_or(held).min(held);
        let id = |i: usize| self.node(i)?.cli(&["CLUSTER", "MYID"]);
        let source = self.node(from)?;
        let out = source
            .cli_command()
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", source.port()))
            .args(["--cluster-from", &id(from)?, "--cluster-to", &id(to)?])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster reshard")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster reshard of {count} slots from node {from} to node {to} \
                 failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `DBSIZE` of node `i`.
    pub fn dbsize(&self, i: usize) -> anyhow::Result<u64> {
        self.node(i)?.cli(&["DBSIZE"])?.parse().context("DBSIZE")
    }
}
