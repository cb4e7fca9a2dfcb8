//! The one place that turns a Redis URL plus [`TlsConfig`] into
//! connections: an [`Endpoint`] is one server (`redis://`, `rediss://`) or
//! a Redis Cluster reached through seed nodes (`redis+cluster://h1:p1,…`,
//! `rediss+cluster://…`). Connections to one server are
//! `ConnectionManager`s, to a cluster the cluster client's connection: both
//! multiplexed, lazily connected (a service starts even while Redis is
//! down) and reconnecting by themselves after an outage; the cluster one
//! also follows slot moves and failovers. Plain pipelines to a cluster
//! go one per master (`redis_conn/cluster.rs`).

mod any_node;
mod cluster;
pub mod url;

pub use any_node::AnyNode;
pub use url::cluster_seeds;

use cluster::by_slot;
use url::{host_port, TlsConfig};

use std::sync::{Arc, Once};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, ClientTlsConfig, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::error::{Result, StemError};

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `url` with this crate's [`tcp_settings`].
fn connection_info(url: &str) -> Result<ConnectionInfo> {
    Ok(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

/// How long data sent to a cluster node may stay unacknowledged by the
/// peer's kernel before the connection is given up (`TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(4);

/// Every connection's socket settings: `TCP_NODELAY` on, since requests
/// are small and awaited, so Nagle's algorithm would only hold a second
/// in-flight request back until the first is acknowledged (the redis
/// crate leaves it off by default).
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// A cluster node connection's socket settings: [`tcp_settings`] and
/// `TCP_USER_TIMEOUT` below the command timeout. A node cut off by the
/// network (not stopped: nothing refuses or resets) leaves the socket
/// open for as long as the kernel retransmits, a quarter of an hour by
/// default. The cluster client retries a timed-out request on the same
/// connection and learns the new slot map only from a connection it sees
/// fail, so after a partitioned master's replica took over, every request
/// for its slots stalled on the dead connection. With the timeout the
/// kernel drops the connection within seconds, the client reconnects,
/// fails, and reads the slot map again from the nodes that answer (found
/// by the container partition test, `tests/containers.rs`). A blocking
/// read is not affected: its request is acknowledged at once, and waiting
/// for the reply leaves nothing unacknowledged.
///
/// One server has no other node to turn to, and there the dropped
/// connection only delays the answer: the connection manager reconnects
/// and retries before its response timeout ends the request (an enqueuer
/// cut from Redis answered 503 after 13.8 s with it, 5 s without), so
/// single-server connections keep the command timeout alone.
fn cluster_tcp_settings() -> TcpSettings {
    tcp_settings().set_user_timeout(TCP_USER_TIMEOUT)
}

/// Logs, once per process, that server certificates go unverified.
fn warn_insecure() {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "STEM_TLS_ALLOW_INSECURE is set: the Redis server's certificate is NOT verified; \
             anyone on the network path can impersonate it"
        )
    });
}

/// The CA and client certificate of `tls`, when it names any.
fn certificates(tls: &TlsConfig) -> Option<TlsCertificates> {
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        _ => None,
    };
    (tls.ca_cert.is_some() || client_tls.is_some()).then(|| TlsCertificates {
        client_tls,
        root_cert: tls.ca_cert.clone(),
    })
}

/// Builds a Redis client for the one server at `url` with the TLS
/// material in `tls`.
pub fn client(url: &str, tls: &TlsConfig) -> Result<Client> {
    install_crypto_provider();
    if !url.starts_with("rediss://") {
        return Ok(Client::open(connection_info(url)?)?);
    }
    let mut url = url.to_string();
    if tls.allow_insecure && !url.contains("#insecure") {
        warn_insecure();
        url.push_str("#insecure");
    }
    match certificates(tls) {
        None => Ok(Client::open(connection_info(&url)?)?),
        Some(certs) => Client::build_with_tls(connection_info(&url)?, certs)
            .map_err(|e| StemError::Tls(format!("invalid TLS material: {e}"))),
    }
}

/// Where a store's connections go.
// Built once per store and cloned a handful of times: the size of a
// variant does not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Endpoint {
    /// One Redis server.
    Single(Client),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster(ClusterEndpoint),
}

/// A Redis Cluster's clients.
#[derive(Clone)]
pub struct ClusterEndpoint {
    /// The cluster client (slot routing, redirects, failover).
    pub cluster: ClusterClient,
    /// The first seed's URL (credentials included: never logged), the
    /// model of a URL of any node.
    seed_url: String,
    /// Every seed's `host:port`, the nodes pub/sub tries when it knows
    /// no other ([`AnyNode`]).
    seed_nodes: Vec<(String, u16)>,
    /// TLS material for connections to single nodes.
    tls: TlsConfig,
}

impl ClusterEndpoint {
    /// Every seed node's `host:port`, in the URL's order.
    pub(crate) fn seed_nodes(&self) -> &[(String, u16)] {
        &self.seed_nodes
    }

    /// A client of the node at `host:port`, with the seeds' scheme,
    /// credentials and TLS material.
    pub(crate) fn node_client(&self, host: &str, port: u16) -> Result<Client> {
        let prefix_end = match self.seed_url.rfind('@') {
            Some(at) => at + 1,
            None => self.seed_url.find("://").map_or(0, |i| i + 3),
        };
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        client(
            &format!("{}{address}", &self.seed_url[..prefix_end]),
            &self.tls,
        )
    }
}

impl From<Client> for Endpoint {
    fn from(client: Client) -> Self {
        Endpoint::Single(client)
    }
}

impl Endpoint {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }
}

/// The [`Endpoint`] of `url`: a cluster for `redis+cluster://` and
/// `rediss+cluster://`, else one server; TLS material from `tls`.
pub fn endpoint(url: &str, tls: &TlsConfig) -> Result<Endpoint> {
    let seeds = match cluster_seeds(url) {
        Ok(None) => return Ok(Endpoint::Single(client(url, tls)?)),
        Ok(Some(seeds)) => seeds,
        Err(why) => return Err(StemError::config("cluster URL", why)),
    };
    let first = seeds
        .first()
        .ok_or_else(|| StemError::config("cluster URL", "no seed node"))?;
    // Fails early, naming the URL, when the first seed's URL does not
    // parse (its TLS material included).
    client(first, tls)?;
    let mut builder = ClusterClientBuilder::new(
        seeds
            .iter()
            .map(|s| Ok(connection_info(s)?.set_tcp_settings(cluster_tcp_settings())))
            .collect::<Result<Vec<_>>>()?,
    )
    .tcp_settings(cluster_tcp_settings())
    // Retries (redirects, a failover's refused connections, TRYAGAIN,
    // CLUSTERDOWN) wait 100 ms to 1 s, not the client's 1.28 s and up:
    // every request is bounded by its `Conn` anyway (`Inner::Cluster`'s
    // bound: the command timeout for ordinary requests), and what is
    // still down after that is this crate's to retry — the worker holds
    // its results, the enqueuer answers 503 — instead of a request
    // hanging for a minute while a master is down (issue 24, W9).
    .retries(CLUSTER_RETRIES)
    .min_retry_wait(100)
    .max_retry_wait(1000)
    .retry_wait_formula(100, 2)
    // A backstop only: without it a request the client never answered
    // would wait forever.
    .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT));
    if url.starts_with("rediss+cluster://") {
        builder = builder.tls(if tls.allow_insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(certs) = certificates(tls) {
            builder = builder.certs(certs);
        }
    }
    let cluster = builder
        .build()
        .map_err(|e| StemError::Tls(format!("invalid cluster client settings: {e}")))?;
    let seed_nodes = seeds.iter().filter_map(|s| host_port(s)).collect();
    Ok(Endpoint::Cluster(ClusterEndpoint {
        cluster,
        seed_url: first.clone(),
        seed_nodes,
        tls: tls.clone(),
    }))
}

/// A lazily connected, self-reconnecting connection. `response_timeout`
/// bounds every command; blocking reads need a timeout above their BLOCK.
pub fn manager(client: Client, response_timeout: Duration) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// Default timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster client's own bound on a request with all its retries and
/// redirects, a backstop above every [`Conn`]'s bound.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts the cluster client makes after the first (each redirect
/// counts): enough for a slot migration's `MOVED`/`ASK` and a few waits,
/// few enough that a `CLUSTERDOWN` is answered within seconds.
const CLUSTER_RETRIES: u32 = 6;

/// How long a request through a cluster [`Conn`] whose commands are
/// bounded by `response_timeout` may take with every retry: the command
/// timeout for ordinary requests; a blocking read's own bound (its BLOCK
/// plus margin) plus the command timeout.
fn cluster_bound(response_timeout: Duration) -> Duration {
    if response_timeout <= COMMAND_TIMEOUT {
        COMMAND_TIMEOUT
    } else {
        response_timeout + COMMAND_TIMEOUT
    }
}

/// A `MOVED` or `ASK` the cluster client gives back is one it could not
/// follow within its retries: the slot's master is down with no replica
/// promoted yet (the other nodes keep pointing at it), or the slot keeps
/// moving. Either way the part of the cluster serving the request is out
/// of reach, which callers must treat as an outage (503, hold and retry),
/// so it becomes an I/O error. Only on cluster connections: on one server
/// a `MOVED` means the URL names a cluster node without `+cluster`, a
/// mistake that must not look like an outage.
fn unreachable_slot(e: redis::RedisError) -> redis::RedisError {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("the cluster node serving this slot is out of reach ({e})"),
        )
        .into(),
        _ => e,
    }
}

/// `request` cut off after `bound`, as an I/O timeout (unavailable and
/// transient to [`StemError`]; never resent, since it may have run); a
/// slot out of reach as [`unreachable_slot`] says. Every request through a
/// cluster connection goes through here.
/// Dropping the cluster client's future is safe: a queued request is
/// discarded, a running one stops at its next wake-up.
async fn bounded<T>(
    bound: Duration,
    request: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(bound, request).await {
        Ok(reply) => reply.map_err(unreachable_slot),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the Redis Cluster within {bound:?}"),
        )
        .into()),
    }
}

static ROUND_TRIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Requests (single commands or whole pipelines) this process has sent to
/// Redis through [`Conn`]s: the benchmark's round-trip count.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `e` says the request never left this process: the write to a
/// socket the server had already closed failed (`EPIPE`), or there was no
/// connection. Such a request is safe to send again whatever it does; an
/// error *after* the write (a reset while waiting for the reply) is not
/// retried, since Redis may have run the command.
///
/// redis 1.8 keeps the `io::Error` private, so the kind is read from the
/// error's text ("broken pipe", "not connected"), within I/O errors only.
fn never_sent(e: &redis::RedisError) -> bool {
    if !e.is_connection_dropped() {
        return false;
    }
    let text = e.to_string().to_ascii_lowercase();
    text.contains("broken pipe") || text.contains("not connected")
}

/// The connection under a [`Conn`].
#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    /// The cluster client's connection, the slot map its plain pipelines
    /// are split by, and how long one request may take in all
    /// ([`cluster_bound`]).
    Cluster(ClusterConnection, Arc<cluster::Slots>, Duration),
}

impl Inner {
    async fn send(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        use redis::aio::ConnectionLike;
        match self {
            Inner::Single(c) => c.req_packed_command(cmd).await,
            Inner::Cluster(c, _, bound) => bounded(*bound, c.req_packed_command(cmd)).await,
        }
    }

    async fn send_many(
        &mut self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        use redis::aio::ConnectionLike;
        match self {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count).await,
            Inner::Cluster(c, _, bound) if pipeline.is_transaction() => {
                bounded(*bound, c.req_packed_commands(pipeline, offset, count)).await
            }
            Inner::Cluster(c, slots, bound) => {
                bounded(*bound, cluster::send(c, slots, pipeline)).await
            }
        }
    }
}

/// A [`ConnectionManager`] that counts round trips and sends a request a
/// second time when the first attempt never left the process. After a
/// Redis restart the first request on each connection meets the dead
/// socket (`broken pipe`); the manager reconnects on that error, and the
/// second attempt goes out on the new connection, so callers (an HTTP
/// request, a settle) do not fail for a restart that is already over.
/// Every adapter talks to Redis through one of these.
#[derive(Clone)]
pub struct Conn(Inner);

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self.0.send(cmd).await {
                Err(e) if never_sent(&e) => {
                    ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.0.send(cmd).await
                }
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A plain pipeline to a cluster went to several masters, and
            // some parts may have run when one failed: the cluster module
            // resends what was never sent itself, part by part.
            let whole = !matches!(self.0, Inner::Cluster(..)) || pipeline.is_transaction();
            match self.0.send_many(pipeline, offset, count).await {
                Err(e) if whole && never_sent(&e) => {
                    ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.0.send_many(pipeline, offset, count).await
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c, ..) => c.get_db(),
        }
    }
}

/// A lazily connected, self-reconnecting, round-trip-counting connection
/// to `endpoint`.
pub fn connection(endpoint: impl Into<Endpoint>, response_timeout: Duration) -> Result<Conn> {
    Ok(Conn(match endpoint.into() {
        Endpoint::Single(client) => Inner::Single(manager(client, response_timeout)?),
        Endpoint::Cluster(c) => {
            let config = ClusterConfig::new()
                .set_response_timeout(response_timeout)
                .set_connection_timeout(Duration::from_secs(3));
            Inner::Cluster(
                c.cluster.get_pending_async_connection_with_config(config),
                Arc::new(cluster::Slots::new(&c, response_timeout)),
                cluster_bound(response_timeout),
            )
        }
    }))
}

impl Conn {
    /// Whether this connection goes to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(..))
    }

    /// `items` in the groups one script or transaction may name: all of
    /// them on one server, one group per slot on a cluster ([`by_slot`]);
    /// empty for no items.
    pub(crate) fn slot_groups<T>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> Option<Vec<u8>>,
    ) -> Vec<Vec<T>> {
        match self.0 {
            _ if items.is_empty() => Vec::new(),
            Inner::Single(_) => vec![items],
            Inner::Cluster(..) => by_slot(items, key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_url(cluster_url: &str, host: &str, port: u16) -> String {
        let Ok(Endpoint::Cluster(c)) = endpoint(cluster_url, &TlsConfig::default()) else {
            panic!("{cluster_url} is a cluster URL");
        };
        let client = c.node_client(host, port).expect("a node client");
        let info = client.get_connection_info();
        format!(
            "{:?} {:?} {:?}",
            info.addr(),
            info.redis_settings().username(),
            info.redis_settings().password()
        )
    }

    /// A `MOVED` the cluster client gives back is an outage of that slot
    /// (503, hold and retry); other errors pass unchanged — and on one
    /// server nothing maps it, so a URL naming a cluster node without
    /// `+cluster` fails plainly instead of looking like an outage.
    #[test]
    fn a_moved_the_cluster_client_gave_back_is_a_slot_out_of_reach() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let moved = RedisError::from((
            ErrorKind::Server(ServerErrorKind::Moved),
            "15810 10.0.0.9:7002",
        ));
        assert!(!StemError::Redis(moved.clone()).is_unavailable());
        let mapped = StemError::Redis(unreachable_slot(moved));
        assert!(mapped.is_unavailable() && mapped.is_transient(), "{mapped}");
        assert!(mapped.to_string().contains("out of reach"), "{mapped}");
        let other = RedisError::from((ErrorKind::Server(ServerErrorKind::CrossSlot), "x"));
        assert_eq!(
            unreachable_slot(other).kind(),
            ErrorKind::Server(ServerErrorKind::CrossSlot)
        );
    }

    #[test]
    fn node_clients_keep_the_seeds_credentials_and_scheme() {
        let url = node_url(
            "redis+cluster://user:p@ss@seed:7000,seed2:7001",
            "10.0.0.5",
            7003,
        );
        assert!(url.contains("10.0.0.5") && url.contains("7003"), "{url}");
        assert!(
            url.contains("\"user\"") && url.contains("\"p@ss\""),
            "{url}"
        );
        let url = node_url("redis+cluster://seed:7000", "::1", 7004);
        assert!(url.contains("::1") && url.contains("7004"), "{url}");
        assert!(url.contains("None None"), "{url}");
    }
}
