//! Throw-away TLS material for tests: a private CA, a server certificate for
//! `localhost` / `127.0.0.1`, a client certificate for mutual TLS, and an
//! unrelated second CA (with its own client certificate) that must be refused.
//!
//! Everything is generated in-process with rcgen (ECDSA P-256), written as
//! PEM files; private keys are PKCS#8 PEM with mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the PEM files written by [`TlsAssets::generate`].
#[derive(Debug, Clone)]
pub struct TlsAssets {
    /// Directory holding every file below.
    pub dir: PathBuf,
    /// CA certificate that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// Server certificate: SANs DNS `localhost` and IP `127.0.0.1`, EKU serverAuth.
    pub server_cert: PathBuf,
    /// Server private key (PKCS#8 PEM).
    pub server_key: PathBuf,
    /// Client certificate: CN `stem-client`, EKU clientAuth, signed by `ca_cert`.
    pub client_cert: PathBuf,
    /// Client private key (PKCS#8 PEM).
    pub client_key: PathBuf,
    /// An unrelated CA: the server certificate does NOT verify against it.
    pub other_ca_cert: PathBuf,
    /// A client certificate (CN `stem-intruder`) signed by the unrelated CA,
    /// which a mutual-TLS server must refuse.
    pub other_client_cert: PathBuf,
    /// Private key of `other_client_cert` (PKCS#8 PEM).
    pub other_client_key: PathBuf,
}

/// Common name of the client certificate.
pub const CLIENT_CN: &str = "stem-client";

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Stem tests");
    dn
}

fn make_ca(cn: &str) -> anyhow::Result<Ca> {
    let key = KeyPair::generate().with_context(|| format!("generating key for CA {cn}"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .with_context(|| format!("CA {cn} parameters"))?;
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("self-signing CA {cn}"))?;
    Ok(Ca { cert, key })
}

fn make_leaf(
    ca: &Ca,
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(Certificate, KeyPair)> {
    let key = KeyPair::generate().with_context(|| format!("generating key for {cn}"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .with_context(|| format!("certificate parameters for {cn}"))?;
    params.distinguished_name = dn(cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .with_context(|| format!("signing certificate for {cn}"))?;
    Ok((cert, key))
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

impl TlsAssets {
    /// Generates a fresh CA, server and client certificates (and an unrelated
    /// CA with its own client certificate) into `dir`, creating it if needed.
    ///
    /// Files: `ca.crt`, `ca.key`, `server.crt`, `server.key`, `client.crt`,
    /// `client.key`, `other-ca.crt`, `other-ca.key`, `other-client.crt`,
    /// `other-client.key`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let ca = make_ca("stem-test-ca")?;
        let other_ca = make_ca("stem-unrelated-ca")?;

        let localhost = "localhost"
            .to_string()
            .try_into()
            .context("encoding DNS name localhost")?;
        let (server_cert, server_key) = make_leaf(
            &ca,
            "localhost",
            vec![
                SanType::DnsName(localhost),
                SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = make_leaf(
            &ca,
            CLIENT_CN,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let (other_client_cert, other_client_key) = make_leaf(
            &other_ca,
            "stem-intruder",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let assets = TlsAssets {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.crt"),
            other_client_cert: dir.join("other-client.crt"),
            other_client_key: dir.join("other-client.key"),
        };

        write_file(&assets.ca_cert, &ca.cert.pem(), false)?;
        write_file(&dir.join("ca.key"), &ca.key.serialize_pem(), true)?;
        write_file(&assets.server_cert, &server_cert.pem(), false)?;
        write_file(&assets.server_key, &server_key.serialize_pem(), true)?;
        write_file(&assets.client_cert, &client_cert.pem(), false)?;
        write_file(&assets.client_key, &client_key.serialize_pem(), true)?;
        write_file(&assets.other_ca_cert, &other_ca.cert.pem(), false)?;
        write_file(
            &dir.join("other-ca.key"),
            &other_ca.key.serialize_pem(),
            true,
        )?;
        write_file(&assets.other_client_cert, &other_client_cert.pem(), false)?;
        write_file(
            &assets.other_client_key,
            &other_client_key.serialize_pem(),
            true,
        )?;
        Ok(assets)
    }
}
