//! HTTPS for the enqueuer: rustls server config from PEM files, with a
//! required client-certificate verifier when `ENQUEUER_TLS_CLIENT_CA` is set.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::settings::TlsFiles;

pub(crate) fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    stem::redis_conn::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("ENQUEUER_TLS_CERT: cannot read {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("ENQUEUER_TLS_CERT: invalid PEM in {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "ENQUEUER_TLS_KEY: cannot read a private key from {}",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("ENQUEUER_TLS_CLIENT_CA: cannot read {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| {
                        format!("ENQUEUER_TLS_CLIENT_CA: invalid PEM in {}", ca.display())
                    })?)
                    .context("ENQUEUER_TLS_CLIENT_CA: unusable certificate")?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .context("ENQUEUER_TLS_CLIENT_CA: cannot build the client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("ENQUEUER_TLS_CERT/KEY: certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
