//! HTTPS for the enqueuer: rustls server config from PEM files, with a
//! required client-certificate verifier when `ENQUEUER_TLS_CLIENT_CA` is set.
//! Built once while the settings are read, so a bad file is a
//! configuration error (exit 78) naming its variable, not a failure of
//! `serve`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use stem::StemError;

/// HTTPS material: the files, and the server configuration built from
/// them while the settings were read.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// [`TlsFiles`] with the rustls configuration they make.
#[derive(Clone, Debug)]
pub struct Tls {
    pub files: TlsFiles,
    pub config: std::sync::Arc<rustls::ServerConfig>,
}

pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, StemError> {
    stem::redis_conn::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            StemError::config(
                "ENQUEUER_TLS_CERT",
                format!("no certificate in {}: {e}", files.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(StemError::config(
            "ENQUEUER_TLS_CERT",
            format!("no certificate in {}", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        StemError::config(
            "ENQUEUER_TLS_KEY",
            format!("no private key in {}: {e}", files.key.display()),
        )
    })?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let bad = |e: String| StemError::config("ENQUEUER_TLS_CLIENT_CA", e);
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("no certificate in {}: {e}", ca.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("unusable certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| bad(format!("cannot build the client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        StemError::config(
            "ENQUEUER_TLS_KEY",
            format!("does not match the certificate of ENQUEUER_TLS_CERT: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
