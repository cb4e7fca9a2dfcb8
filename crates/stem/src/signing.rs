//! Envelope signing: a [`KeyRing`] parsed from `STEM_SIGNING_*`, a [`Signer`]
//! for producers and a [`Verifier`] for workers.
//!
//! What is signed is the exact body bytes of an envelope (see
//! [`crate::envelope`]); verification never re-serialises. HMAC-SHA256 is
//! `ring::hmac` (keys are expanded once, at parse time; assembly SHA-256;
//! constant-time comparison in `ring::hmac::verify`). Ed25519 workers
//! need only public keys. Secrets never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::env::Lookup;
use crate::error::{Result, StemError};

/// Signature algorithm (`STEM_SIGNING_ALGORITHM`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256 with shared secrets (`hmac-sha256`, the default).
    #[default]
    HmacSha256,
    /// Ed25519: producers hold private keys, workers need only public ones
    /// (`ed25519`).
    Ed25519,
}

impl Algorithm {
    /// The variable spelling: `hmac-sha256` or `ed25519`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

#[derive(Clone)]
struct Material {
    algorithm: Algorithm,
    hmac: BTreeMap<String, ring::hmac::Key>,
    public: BTreeMap<String, VerifyingKey>,
    private: BTreeMap<String, SigningKey>,
    active: Option<String>,
    /// The placeholder keys of the shipped `.env` profiles are configured,
    /// with `STEM_ALLOW_DEMO_KEYS` (without it they are refused).
    demo: bool,
}

/// What every placeholder secret of the shipped `.env` profiles starts
/// with once decoded (`REPLACE-ME-run-stem-keys-…`): public in the
/// repository, so anyone could sign with it.
const PLACEHOLDER_PREFIX: &[u8] = b"REPLACE-ME";

/// The Ed25519 seed the shipped profiles carry; its public key (which a
/// worker holds alone) is recognised by deriving it.
const PLACEHOLDER_ED25519_SEED: &[u8; 32] = b"REPLACE-ME-run-stem-keys-ed25519";

/// The variable allowing the placeholder keys (for a demo on one machine).
pub const ALLOW_DEMO_KEYS: &str = "STEM_ALLOW_DEMO_KEYS";

/// The first placeholder among `keys` (secrets or seeds), by id.
fn placeholder(keys: &[(String, Vec<u8>)], is_placeholder: impl Fn(&[u8]) -> bool) -> Option<&str> {
    keys.iter()
        .find(|(_, bytes)| is_placeholder(bytes))
        .map(|(id, _)| id.as_str())
}

/// `Ok(true)` when `id` (a placeholder key of `variable`) is allowed
/// because `allow` is set, `Ok(false)` without a placeholder, and the
/// configuration error naming `variable` otherwise.
fn allow_placeholder(variable: &str, id: Option<&str>, allow: bool) -> Result<bool> {
    let Some(id) = id else { return Ok(false) };
    if allow {
        return Ok(true);
    }
    let kind = if variable == "STEM_SIGNING_KEYS" {
        "hmac"
    } else {
        "ed25519"
    };
    Err(StemError::config(
        variable,
        format!(
            "key {id:?} is the placeholder shipped in the .env profiles, public in the \
             repository: make a real key with `stem keys {kind}` (or set \
             {ALLOW_DEMO_KEYS}=true for a demo nobody else can reach)"
        ),
    ))
}

/// Every configured key, by id. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing(Arc<Material>);

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing(Arc::new(Material {
            algorithm: Algorithm::HmacSha256,
            hmac: BTreeMap::new(),
            public: BTreeMap::new(),
            private: BTreeMap::new(),
            active: None,
            demo: false,
        }))
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        f.debug_struct("KeyRing")
            .field("algorithm", &m.algorithm)
            .field("hmac_ids", &m.hmac.keys().collect::<Vec<_>>())
            .field("public_ids", &m.public.keys().collect::<Vec<_>>())
            .field("private_ids", &m.private.keys().collect::<Vec<_>>())
            .field("active", &m.active)
            .finish()
    }
}

fn parse_list(
    variable: &str,
    raw: &str,
    expected_len: Option<usize>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, b64)) = item.split_once(':') else {
            return Err(StemError::config(
                variable,
                "expected keyId:base64 pairs separated by commas",
            ));
        };
        let id = id.trim();
        if id.is_empty() {
            return Err(StemError::config(variable, "empty key id"));
        }
        // Key ids travel inside packed stream entries, newline-separated.
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StemError::config(
                variable,
                format!("key id {id:?} must be printable ASCII without spaces"),
            ));
        }
        let bytes = B64
            .decode(b64.trim())
            .map_err(|_| StemError::config(variable, format!("key {id:?} is not valid base64")))?;
        if bytes.is_empty() {
            return Err(StemError::config(variable, format!("key {id:?} is empty")));
        }
        if let Some(n) = expected_len {
            if bytes.len() != n {
                return Err(StemError::config(
                    variable,
                    format!("key {id:?} must decode to {n} bytes, got {}", bytes.len()),
                ));
            }
        }
        out.push((id.to_string(), bytes));
    }
    Ok(out)
}

fn as_32(bytes: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&bytes[..32]);
    a
}

impl KeyRing {
    /// Parses `STEM_SIGNING_ALGORITHM`, `_KEYS`, `_PUBLIC_KEYS`,
    /// `_PRIVATE_KEYS` and `_ACTIVE_KEY`.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let algorithm = match get("STEM_SIGNING_ALGORITHM").map(|a| a.to_ascii_lowercase()) {
            None => Algorithm::HmacSha256,
            Some(a) if a == "hmac-sha256" => Algorithm::HmacSha256,
            Some(a) if a == "ed25519" => Algorithm::Ed25519,
            Some(other) => {
                return Err(StemError::config(
                    "STEM_SIGNING_ALGORITHM",
                    format!("unknown algorithm {other:?} (use hmac-sha256 or ed25519)"),
                ))
            }
        };
        let active = get("STEM_SIGNING_ACTIVE_KEY");
        let mut m = Material {
            algorithm,
            hmac: BTreeMap::new(),
            public: BTreeMap::new(),
            private: BTreeMap::new(),
            active: active.clone(),
            demo: false,
        };
        let allow_demo = crate::env::bool_var(env, ALLOW_DEMO_KEYS, false)?;
        match algorithm {
            Algorithm::HmacSha256 => {
                if let Some(raw) = get("STEM_SIGNING_KEYS") {
                    let keys = parse_list("STEM_SIGNING_KEYS", &raw, None)?;
                    let shipped = placeholder(&keys, |k| k.starts_with(PLACEHOLDER_PREFIX));
                    m.demo |= allow_placeholder("STEM_SIGNING_KEYS", shipped, allow_demo)?;
                    m.hmac = keys
                        .into_iter()
                        .map(|(id, secret)| {
                            (id, ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
                        })
                        .collect();
                }
                if let Some(a) = &active {
                    if !m.hmac.is_empty() && !m.hmac.contains_key(a) {
                        return Err(StemError::config(
                            "STEM_SIGNING_ACTIVE_KEY",
                            format!("unknown active key {a:?}: not in STEM_SIGNING_KEYS"),
                        ));
                    }
                }
            }
            Algorithm::Ed25519 => {
                if let Some(raw) = get("STEM_SIGNING_PUBLIC_KEYS") {
                    let keys = parse_list("STEM_SIGNING_PUBLIC_KEYS", &raw, Some(32))?;
                    let shipped_public =
                        SigningKey::from_bytes(PLACEHOLDER_ED25519_SEED).verifying_key();
                    let shipped = placeholder(&keys, |k| k == shipped_public.as_bytes());
                    m.demo |= allow_placeholder("STEM_SIGNING_PUBLIC_KEYS", shipped, allow_demo)?;
                    for (id, bytes) in keys {
                        let key = VerifyingKey::from_bytes(&as_32(&bytes)).map_err(|_| {
                            StemError::config(
                                "STEM_SIGNING_PUBLIC_KEYS",
                                format!("key {id:?} is not a valid Ed25519 public key"),
                            )
                        })?;
                        m.public.insert(id, key);
                    }
                }
                if let Some(raw) = get("STEM_SIGNING_PRIVATE_KEYS") {
                    let keys = parse_list("STEM_SIGNING_PRIVATE_KEYS", &raw, Some(32))?;
                    let shipped = placeholder(&keys, |k| k.starts_with(PLACEHOLDER_PREFIX));
                    m.demo |= allow_placeholder("STEM_SIGNING_PRIVATE_KEYS", shipped, allow_demo)?;
                    for (id, bytes) in keys {
                        let key = SigningKey::from_bytes(&as_32(&bytes));
                        m.public
                            .entry(id.clone())
                            .or_insert_with(|| key.verifying_key());
                        m.private.insert(id, key);
                    }
                }
                if let Some(a) = &active {
                    let known = if m.private.is_empty() {
                        m.public.is_empty() || m.public.contains_key(a)
                    } else {
                        m.private.contains_key(a)
                    };
                    if !known {
                        return Err(StemError::config(
                            "STEM_SIGNING_ACTIVE_KEY",
                            format!("unknown active key {a:?}: no such Ed25519 key"),
                        ));
                    }
                }
            }
        }
        Ok(KeyRing(Arc::new(m)))
    }

    /// True when the placeholder keys of the shipped `.env` profiles are
    /// configured (allowed by `STEM_ALLOW_DEMO_KEYS`): a service says so at
    /// start, the dashboard on every page.
    pub fn uses_demo_keys(&self) -> bool {
        self.0.demo
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }

    /// True when this process holds material to sign with.
    pub fn has_signing_material(&self) -> bool {
        match self.0.algorithm {
            Algorithm::HmacSha256 => !self.0.hmac.is_empty(),
            Algorithm::Ed25519 => !self.0.private.is_empty(),
        }
    }

    /// The producer's signer: `None` without signing material, an error
    /// when there is material but no `STEM_SIGNING_ACTIVE_KEY`.
    pub fn signer(&self) -> Result<Option<Signer>> {
        if !self.has_signing_material() {
            return Ok(None);
        }
        let Some(active) = self.0.active.clone() else {
            return Err(StemError::config(
                "STEM_SIGNING_ACTIVE_KEY",
                "required when signing keys are configured",
            ));
        };
        let key = match self.0.algorithm {
            Algorithm::HmacSha256 => self.0.hmac.get(&active).cloned().map(SignKey::Hmac),
            Algorithm::Ed25519 => self.0.private.get(&active).cloned().map(SignKey::Ed25519),
        };
        match key {
            Some(key) => Ok(Some(Signer(Arc::new((active, key))))),
            None => Err(StemError::config(
                "STEM_SIGNING_ACTIVE_KEY",
                format!("unknown active key {active:?}"),
            )),
        }
    }

    /// The worker's verifier: `None` when no verification key is configured.
    pub fn verifier(&self) -> Option<Verifier> {
        let has = match self.0.algorithm {
            Algorithm::HmacSha256 => !self.0.hmac.is_empty(),
            Algorithm::Ed25519 => !self.0.public.is_empty(),
        };
        has.then(|| Verifier(self.0.clone()))
    }
}

#[derive(Clone)]
enum SignKey {
    Hmac(ring::hmac::Key),
    Ed25519(SigningKey),
}

/// Signs envelope bodies with the active key.
#[derive(Clone)]
pub struct Signer(Arc<(String, SignKey)>);

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.0 .0)
    }
}

impl Signer {
    /// The active key id.
    pub fn key_id(&self) -> &str {
        &self.0 .0
    }

    /// Returns the base64 signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        match &self.0 .1 {
            SignKey::Hmac(key) => B64.encode(ring::hmac::sign(key, body).as_ref()),
            SignKey::Ed25519(key) => B64.encode(key.sign(body).to_bytes()),
        }
    }
}

/// Why a signature was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No key id or no signature (or an empty one).
    #[error("envelope is unsigned")]
    Missing,
    /// No key with this id (carried) is configured.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not decode as base64.
    #[error("signature is not valid base64")]
    NotBase64,
    /// The signature does not match the body under that key.
    #[error("signature mismatch")]
    Mismatch,
}

/// Verifies envelope bodies against every configured key id.
#[derive(Clone)]
pub struct Verifier(Arc<Material>);

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({})", self.0.algorithm.as_str())
    }
}

impl Verifier {
    /// Checks `signature` (base64) by key `key_id` over `body`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (Some(kid), Some(sig)) = (key_id, signature) else {
            return Err(SignatureError::Missing);
        };
        if kid.is_empty() || sig.is_empty() {
            return Err(SignatureError::Missing);
        }
        let raw = B64.decode(sig).map_err(|_| SignatureError::NotBase64)?;
        match self.0.algorithm {
            Algorithm::HmacSha256 => {
                let key = self
                    .0
                    .hmac
                    .get(kid)
                    .ok_or_else(|| SignatureError::UnknownKey(kid.to_string()))?;
                ring::hmac::verify(key, body, &raw).map_err(|_| SignatureError::Mismatch)
            }
            Algorithm::Ed25519 => {
                let key = self
                    .0
                    .public
                    .get(kid)
                    .ok_or_else(|| SignatureError::UnknownKey(kid.to_string()))?;
                let sig = ed25519_dalek::Signature::from_slice(&raw)
                    .map_err(|_| SignatureError::Mismatch)?;
                key.verify(body, &sig).map_err(|_| SignatureError::Mismatch)
            }
        }
    }
}

/// Bytes of SHA-256 kept in an [`envelope_fingerprint`]: 128 bits, far
/// beyond a collision anyone could search for, and short because it is
/// stored with every waiting task's status.
pub const FINGERPRINT_BYTES: usize = 16;

/// The fingerprint of a signed envelope: a truncated SHA-256 over the key
/// id, the signature and the body, base64url without padding (22
/// characters).
///
/// The producer records it in the task's `queued` status; a worker that
/// rejects an envelope (`signature-invalid`) fails that status only when
/// the rejected envelope has the same fingerprint, i.e. is byte for byte
/// the envelope its producer sent (see `worker/admit.rs`). The fields are
/// length-prefixed, and an absent key id or signature is told apart from
/// an empty one, so bytes cannot be moved from one field to another to
/// reach the same digest with another envelope.
pub fn envelope_fingerprint(key_id: Option<&str>, signature: Option<&str>, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"stem-envelope-v1");
    for field in [key_id.map(str::as_bytes), signature.map(str::as_bytes)] {
        match field {
            None => ctx.update(&[0]),
            Some(bytes) => {
                ctx.update(&[1]);
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(bytes);
            }
        }
    }
    ctx.update(&(body.len() as u64).to_be_bytes());
    ctx.update(body);
    let digest = ctx.finish();
    B64URL.encode(&digest.as_ref()[..FINGERPRINT_BYTES])
}

/// A fresh 32-byte HMAC secret, base64.
pub fn generate_hmac_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    B64.encode(bytes)
}

/// A fresh Ed25519 key pair: `(public key, private seed)`, both base64.
pub fn generate_ed25519_pair() -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    (
        B64.encode(key.verifying_key().to_bytes()),
        B64.encode(key.to_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ring(pairs: &[(&str, &str)]) -> Result<KeyRing> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KeyRing::from_lookup(&move |k: &str| map.get(k).cloned())
    }

    /// The keys of every shipped `.env` profile, read from the files: each
    /// is refused naming its variable unless `STEM_ALLOW_DEMO_KEYS` is on;
    /// the workers' view of the Ed25519 profile (public key only) too.
    #[test]
    fn the_shipped_placeholder_keys_are_refused_without_the_opt_in() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for profile in [
            ".env.example",
            ".env.hmac",
            ".env.hmac_tls",
            ".env.ed25519_tls",
        ] {
            let text = std::fs::read_to_string(root.join(profile)).expect(profile);
            let vars: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.starts_with("STEM_SIGNING_"))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let pairs: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let worker: Vec<(&str, &str)> = pairs
                .iter()
                .copied()
                .filter(|(k, _)| *k != "STEM_SIGNING_PRIVATE_KEYS")
                .collect();
            for env in [&pairs, &worker] {
                let refused = ring(env).map(drop).expect_err(profile).to_string();
                assert!(refused.contains("placeholder"), "{profile}: {refused}");
                assert!(refused.starts_with("STEM_SIGNING_"), "{profile}: {refused}");
                let mut allowed = env.clone();
                allowed.push((ALLOW_DEMO_KEYS, "true"));
                assert!(ring(&allowed).expect(profile).uses_demo_keys(), "{profile}");
            }
        }
        // Real keys are no demo keys.
        let real = ring(&[
            (
                "STEM_SIGNING_KEYS",
                &format!("k:{}", generate_hmac_secret()),
            ),
            ("STEM_SIGNING_ACTIVE_KEY", "k"),
        ])
        .expect("real key");
        assert!(!real.uses_demo_keys());
    }

    #[test]
    fn fingerprints_bind_key_id_signature_and_body() {
        let fp = envelope_fingerprint(Some("k1"), Some("c2ln"), b"{}");
        assert_eq!(fp.len(), 22, "{fp}");
        assert_eq!(fp, envelope_fingerprint(Some("k1"), Some("c2ln"), b"{}"));
        for other in [
            envelope_fingerprint(Some("k2"), Some("c2ln"), b"{}"),
            envelope_fingerprint(Some("k1"), Some("c2lo"), b"{}"),
            envelope_fingerprint(Some("k1"), Some("c2ln"), b"{ }"),
            // Bytes moved between fields, and absent against empty.
            envelope_fingerprint(Some("k1c"), Some("2ln"), b"{}"),
            envelope_fingerprint(Some("k1"), Some("c2ln{"), b"}"),
            envelope_fingerprint(None, None, b"{}"),
            envelope_fingerprint(Some(""), Some(""), b"{}"),
        ] {
            assert_ne!(fp, other);
        }
        assert_ne!(
            envelope_fingerprint(None, Some(""), b""),
            envelope_fingerprint(Some(""), None, b"")
        );
    }

    #[test]
    fn hmac_signs_and_verifies_with_rotation() -> Result<()> {
        let old = generate_hmac_secret();
        let new = generate_hmac_secret();
        let keys = format!("old:{old},new:{new}");
        let producer_old = ring(&[
            ("STEM_SIGNING_KEYS", &keys),
            ("STEM_SIGNING_ACTIVE_KEY", "old"),
        ])?;
        let producer_new = ring(&[
            ("STEM_SIGNING_KEYS", &keys),
            ("STEM_SIGNING_ACTIVE_KEY", "new"),
        ])?;
        let worker = ring(&[("STEM_SIGNING_KEYS", &keys)])?;
        let v = worker.verifier().expect("verifier");
        for p in [producer_old, producer_new] {
            let s = p.signer()?.expect("signer");
            let sig = s.sign(b"body");
            assert_eq!(v.verify(Some(s.key_id()), Some(&sig), b"body"), Ok(()));
            assert_eq!(
                v.verify(Some(s.key_id()), Some(&sig), b"bodY"),
                Err(SignatureError::Mismatch)
            );
        }
        Ok(())
    }

    #[test]
    fn rejections_have_reasons() -> Result<()> {
        let worker = ring(&[(
            "STEM_SIGNING_KEYS",
            &format!("a:{}", generate_hmac_secret()),
        )])?;
        let v = worker.verifier().expect("verifier");
        assert_eq!(v.verify(None, None, b"x"), Err(SignatureError::Missing));
        assert_eq!(
            v.verify(Some("zz"), Some("AAAA"), b"x"),
            Err(SignatureError::UnknownKey("zz".into()))
        );
        assert_eq!(
            v.verify(Some("a"), Some("!!!"), b"x"),
            Err(SignatureError::NotBase64)
        );
        Ok(())
    }

    #[test]
    fn ed25519_verify_only_worker() -> Result<()> {
        let (public, seed) = generate_ed25519_pair();
        let producer = ring(&[
            ("STEM_SIGNING_ALGORITHM", "ed25519"),
            ("STEM_SIGNING_PRIVATE_KEYS", &format!("p:{seed}")),
            ("STEM_SIGNING_ACTIVE_KEY", "p"),
        ])?;
        let worker = ring(&[
            ("STEM_SIGNING_ALGORITHM", "ed25519"),
            ("STEM_SIGNING_PUBLIC_KEYS", &format!("p:{public}")),
        ])?;
        assert!(
            worker.signer()?.is_none(),
            "a verify-only worker cannot sign"
        );
        let s = producer.signer()?.expect("signer");
        let sig = s.sign(b"payload");
        let v = worker.verifier().expect("verifier");
        assert_eq!(v.verify(Some("p"), Some(&sig), b"payload"), Ok(()));
        assert_eq!(
            v.verify(Some("p"), Some(&sig), b"payloaD"),
            Err(SignatureError::Mismatch)
        );
        Ok(())
    }

    #[test]
    fn configuration_errors_name_the_variable() {
        let e = ring(&[("STEM_SIGNING_KEYS", "a:not base64!")]).expect_err("bad b64");
        assert!(e.to_string().starts_with("STEM_SIGNING_KEYS"), "{e}");
        let e = ring(&[(
            "STEM_SIGNING_KEYS",
            &format!("a\u{7f}b:{}", generate_hmac_secret()),
        )])
        .expect_err("key id with a control character");
        assert!(e.to_string().contains("printable ASCII"), "{e}");
        let e = ring(&[
            (
                "STEM_SIGNING_KEYS",
                &format!("a:{}", generate_hmac_secret()),
            ),
            ("STEM_SIGNING_ACTIVE_KEY", "b"),
        ])
        .expect_err("unknown active");
        assert!(e.to_string().starts_with("STEM_SIGNING_ACTIVE_KEY"), "{e}");
        let r = ring(&[(
            "STEM_SIGNING_KEYS",
            &format!("a:{}", generate_hmac_secret()),
        )])
        .expect("worker ring");
        let e = r.signer().expect_err("producer without active key");
        assert!(e.to_string().starts_with("STEM_SIGNING_ACTIVE_KEY"), "{e}");
    }

    #[test]
    fn debug_output_hides_secrets() -> Result<()> {
        let secret = generate_hmac_secret();
        let r = ring(&[
            ("STEM_SIGNING_KEYS", &format!("a:{secret}")),
            ("STEM_SIGNING_ACTIVE_KEY", "a"),
        ])?;
        let shown = format!("{r:?} {:?}", r.signer()?);
        assert!(!shown.contains(&secret), "{shown}");
        Ok(())
    }
}
