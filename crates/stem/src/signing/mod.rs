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

use crate::error::{Result, StemError};

mod parse;

/// The variable allowing the placeholder keys (for a demo on one machine).
pub const ALLOW_DEMO_KEYS: &str = "STEM_ALLOW_DEMO_KEYS";

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

impl KeyRing {
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
mod tests;
