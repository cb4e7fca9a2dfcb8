//! The one place that turns a Redis URL plus [`TlsConfig`] into
//! connections: an [`Endpoint`] is one server (`redis://`, `rediss://`) or
//! a Redis Cluster reached through seed nodes (`redis+cluster://h1:p1,…`,
//! `rediss+cluster://…`). Connections to one server are
//! `ConnectionManager`s, to a cluster the cluster client's connection: both
//! multiplexed, lazily connected (a service starts even while Redis is
//! down) and reconnecting by themselves after an outage; the cluster one
//! also follows slot moves and failovers.

use std::sync::Once;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, ClientTlsConfig, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::config::TlsConfig;
use crate::error::{Result, StemError};

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `url` with `TCP_NODELAY` on: requests are small and awaited, so
/// Nagle's algorithm would only hold a second in-flight request back until
/// the first is acknowledged (the redis crate leaves it off by default).
fn connection_info(url: &str) -> Result<ConnectionInfo> {
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true)))
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

/// The seed nodes of a cluster URL (`redis+cluster://[user:pass@]h1:p1,h2:p2[/0]`
/// or `rediss+cluster://…`) as one single-node URL each (`redis://` or
/// `rediss://`, with the credentials); `Ok(None)` for any other URL; `Err`
/// says what is wrong with a malformed one (never quoting the password).
pub fn cluster_seeds(url: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    // The last '@' ends the credentials (a password may hold a raw '@').
    let (userinfo, hosts) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !(db.is_empty() || db == "0") {
        return Err("a Redis Cluster has only database 0".into());
    }
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
            !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!("seed node {host:?} is not host:port"));
        }
        seeds.push(match userinfo {
            Some(u) => format!("{scheme}://{u}@{host}"),
            None => format!("{scheme}://{host}"),
        });
    }
    Ok(Some(seeds))
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
    /// A client of the first seed node alone, for pub/sub: a cluster
    /// delivers a `PUBLISH` to the subscribers of every node.
    pub seed: Client,
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

    /// A client of one server: the server itself, or a cluster's first
    /// seed node (for pub/sub).
    pub fn node(&self) -> &Client {
        match self {
            Endpoint::Single(client) => client,
            Endpoint::Cluster(c) => &c.seed,
        }
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
    let seed = client(first, tls)?;
    let mut builder = ClusterClientBuilder::new(
        seeds
            .iter()
            .map(|s| connection_info(s))
            .collect::<Result<Vec<_>>>()?,
    )
    .tcp_settings(TcpSettings::default().set_nodelay(true));
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
    Ok(Endpoint::Cluster(ClusterEndpoint { cluster, seed }))
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
    Cluster(ClusterConnection),
}

impl Inner {
    async fn send(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        use redis::aio::ConnectionLike;
        match self {
            Inner::Single(c) => c.req_packed_command(cmd).await,
            Inner::Cluster(c) => c.req_packed_command(cmd).await,
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
            Inner::Cluster(c) if pipeline.is_transaction() => {
                c.req_packed_commands(pipeline, offset, count).await
            }
            Inner::Cluster(c) => send_by_slot(c, pipeline).await,
        }
    }
}

/// The first key `cmd` names, as Redis Cluster routes it: after `numkeys`
/// for scripts, after `STREAMS` for stream reads, after the subcommand for
/// `XGROUP`, `XINFO`, `OBJECT` and `MEMORY`, else the first argument;
/// `None` for commands without a key (`PING`, `SCRIPT LOAD`, `PUBLISH`).
fn first_key(cmd: &redis::Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)?
        }
        // Subcommand first, then the key.
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2)?,
        b"PING" | b"SCRIPT" | b"PUBLISH" | b"INFO" | b"TIME" | b"CLUSTER" | b"CLIENT" => {
            return None
        }
        _ => args.get(1)?,
    };
    Some(key.to_vec())
}

/// `items` grouped by the Redis Cluster slot of the key `key` names for
/// each, groups in order of first appearance and items in order within a
/// group; an item without a key joins the first group. The one grouping
/// of every per-slot split (pipelines here, status scripts in the
/// backend).
pub(crate) fn by_slot<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> Option<Vec<u8>>,
) -> Vec<Vec<T>> {
    use redis::cluster_routing::Slot;
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: std::collections::HashMap<Slot, usize> = std::collections::HashMap::new();
    for item in items {
        let at = match key(&item).map(Slot::for_key) {
            None if !groups.is_empty() => 0,
            None => {
                groups.push(Vec::new());
                0
            }
            Some(slot) => *index.entry(slot).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            }),
        };
        groups[at].push(item);
    }
    groups
}

/// Sends a plain (non-transaction) pipeline to a cluster: the commands are
/// grouped by the slot of their first key, each group goes to its node as
/// a pipeline of its own (all at once), and the replies come back in the
/// pipeline's order. The cluster client itself sends a pipeline to one
/// node only and refuses one whose keys span slots; a batch of settles or
/// status writes names many tasks, so it does span them. Keyless commands
/// ride with the first group.
async fn send_by_slot(
    conn: &mut ClusterConnection,
    pipeline: &redis::Pipeline,
) -> redis::RedisResult<Vec<redis::Value>> {
    use redis::aio::ConnectionLike;
    let cmds: Vec<&redis::Cmd> = pipeline.cmd_iter().collect();
    let groups = by_slot(0..cmds.len(), |&i| first_key(cmds[i]));
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }
    let sends = groups.iter().map(|members| {
        let mut sub = redis::pipe();
        for &i in members {
            sub.add_command(cmds[i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let replies = conn.req_packed_commands(&sub, 0, sub.len()).await?;
            Ok::<_, redis::RedisError>((members, replies))
        }
    });
    let mut out = vec![redis::Value::Nil; pipeline.len()];
    for (members, replies) in futures::future::try_join_all(sends).await? {
        for (&i, reply) in members.iter().zip(replies) {
            out[i] = reply;
        }
    }
    Ok(out)
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
            match self.0.send_many(pipeline, offset, count).await {
                Err(e) if never_sent(&e) => {
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
            Inner::Cluster(c) => c.get_db(),
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
            Inner::Cluster(c.cluster.get_pending_async_connection_with_config(config))
        }
    }))
}

impl Conn {
    /// Whether this connection goes to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }
}

#[cfg(test)]
mod tests {
    use super::by_slot;

    #[test]
    fn by_slot_groups_by_hash_tag_in_order_and_keyless_items_join_the_first() {
        let keys = [
            Some("stem:{a}:p0"),
            Some("stem:{b}:p0"),
            None,
            Some("stem:{a}:delayed"),
            Some("stem:{b}:dead"),
        ];
        let groups = by_slot(0..keys.len(), |&i| keys[i].map(|k| k.as_bytes().to_vec()));
        assert_eq!(groups, vec![vec![0, 2, 3], vec![1, 4]]);
        assert_eq!(by_slot(Vec::<u8>::new(), |_| None), Vec::<Vec<u8>>::new());
    }
}
