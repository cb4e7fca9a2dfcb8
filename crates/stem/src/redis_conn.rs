//! The one place that turns a Redis URL plus [`TlsSettings`] into
//! connections. Connections are `ConnectionManager`s: multiplexed, lazily
//! connected (a service starts even while Redis is down) and reconnecting
//! by themselves after an outage.

use std::sync::Once;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ClientTlsConfig, TlsCertificates};

use crate::config::TlsSettings;
use crate::error::{Result, StemError};

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds a Redis client for `url` with the TLS material in `tls`.
pub fn client(url: &str, tls: &TlsSettings) -> Result<Client> {
    install_crypto_provider();
    if !url.starts_with("rediss://") {
        return Ok(Client::open(url)?);
    }
    let mut url = url.to_string();
    if tls.allow_insecure && !url.contains("#insecure") {
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
        return Ok(Client::open(url.as_str())?);
    }
    Client::build_with_tls(
        url.as_str(),
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
