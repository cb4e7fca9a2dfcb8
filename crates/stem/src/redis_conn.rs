//! The one place that turns a Redis URL plus [`TlsConfig`] into
//! connections. Connections are `ConnectionManager`s: multiplexed, lazily
//! connected (a service starts even while Redis is down) and reconnecting
//! by themselves after an outage.

use std::sync::Once;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

/// Builds a Redis client for `url` with the TLS material in `tls`.
pub fn client(url: &str, tls: &TlsConfig) -> Result<Client> {
    install_crypto_provider();
    if !url.starts_with("rediss://") {
        return Ok(Client::open(connection_info(url)?)?);
    }
    let mut url = url.to_string();
    if tls.allow_insecure && !url.contains("#insecure") {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "STEM_TLS_ALLOW_INSECURE is set: the Redis server's certificate is NOT verified; \
                 anyone on the network path can impersonate it"
            )
        });
        url.push_str("#insecure");
    }
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        _ => None,
    };
    if tls.ca_cert.is_none() && client_tls.is_none() {
        return Ok(Client::open(connection_info(&url)?)?);
    }
    Client::build_with_tls(
        connection_info(&url)?,
        TlsCertificates {
            client_tls,
            root_cert: tls.ca_cert.clone(),
        },
    )
    .map_err(|e| StemError::Tls(format!("invalid TLS material: {e}")))
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

/// A [`ConnectionManager`] that counts round trips and sends a request a
/// second time when the first attempt never left the process. After a
/// Redis restart the first request on each connection meets the dead
/// socket (`broken pipe`); the manager reconnects on that error, and the
/// second attempt goes out on the new connection, so callers (an HTTP
/// request, a settle) do not fail for a restart that is already over.
/// Every adapter talks to Redis through one of these.
#[derive(Clone)]
pub struct Conn(ConnectionManager);

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self.0.req_packed_command(cmd).await {
                Err(e) if never_sent(&e) => {
                    ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.0.req_packed_command(cmd).await
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
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(e) if never_sent(&e) => {
                    ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A lazily connected, self-reconnecting, round-trip-counting connection.
pub fn connection(client: Client, response_timeout: Duration) -> Result<Conn> {
    Ok(Conn(manager(client, response_timeout)?))
}
