//! The credentials a process is started with: fresh HMAC and Ed25519
//! signing keys in the form `STEM_SIGNING_*` expects, and the `STEM_TLS_*`
//! variables of a client certificate. Every test makes its own keys, so no
//! secret is shared between tests or committed.

use stem_testkit::TlsAssets;

/// `id:<fresh base64 HMAC secret>`, one entry of `STEM_SIGNING_KEYS`.
pub fn hmac_key(id: &str) -> String {
    format!("{id}:{}", stem::signing::generate_hmac_secret())
}

/// The signing variables of a process that signs with (and verifies by)
/// `key`, an entry made by `hmac_key("k1")`: `STEM_SIGNING_KEYS=key`,
/// `STEM_SIGNING_ACTIVE_KEY=k1`.
pub fn signed(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STEM_SIGNING_KEYS", key.to_string()),
        ("STEM_SIGNING_ACTIVE_KEY", "k1".into()),
    ]
}

/// The `STEM_TLS_*` variables of a client presenting `tls`'s client
/// certificate and trusting `ca`.
pub fn tls_env(tls: &TlsAssets, ca: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("STEM_TLS_CA_CERT", ca.display().to_string()),
        (
            "STEM_TLS_CLIENT_CERT",
            tls.client_cert.display().to_string(),
        ),
        ("STEM_TLS_CLIENT_KEY", tls.client_key.display().to_string()),
    ]
}

/// A fresh Ed25519 key: `(id:public, id:seed)` entries for
/// `STEM_SIGNING_PUBLIC_KEYS` and `STEM_SIGNING_PRIVATE_KEYS`.
pub fn ed25519_key(id: &str) -> (String, String) {
    let (public, seed) = stem::signing::generate_ed25519_pair();
    (format!("{id}:{public}"), format!("{id}:{seed}"))
}
