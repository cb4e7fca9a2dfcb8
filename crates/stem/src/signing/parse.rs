//! Parsing a [`KeyRing`] from `STEM_SIGNING_*`: the algorithm, the
//! `keyId:base64` lists, which key signs, and the refusal of the
//! placeholder keys the shipped `.env` profiles carry (public in the
//! repository, so anyone could sign with them) unless a demo allows them.
//! Apart from the signing itself because it runs once, at start, and every
//! error here must name its variable.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{Algorithm, KeyRing, Material, ALLOW_DEMO_KEYS};
use crate::env::Lookup;
use crate::error::{Result, StemError};

/// What every placeholder secret of the shipped `.env` profiles starts
/// with once decoded (`REPLACE-ME-run-stem-keys-…`): public in the
/// repository, so anyone could sign with it.
const PLACEHOLDER_PREFIX: &[u8] = b"REPLACE-ME";

/// The Ed25519 seed the shipped profiles carry; its public key (which a
/// worker holds alone) is recognised by deriving it.
const PLACEHOLDER_ED25519_SEED: &[u8; 32] = b"REPLACE-ME-run-stem-keys-ed25519";

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

/// `keyId:base64` pairs of `variable`, each decoded (to `expected_len`
/// bytes when given).
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
        let algorithm = parse_algorithm(get("STEM_SIGNING_ALGORITHM"))?;
        let mut m = Material {
            algorithm,
            hmac: BTreeMap::new(),
            public: BTreeMap::new(),
            private: BTreeMap::new(),
            active: get("STEM_SIGNING_ACTIVE_KEY"),
            demo: false,
        };
        let allow_demo = crate::env::bool_var(env, ALLOW_DEMO_KEYS, false)?;
        match algorithm {
            Algorithm::HmacSha256 => {
                if let Some(raw) = get("STEM_SIGNING_KEYS") {
                    m.add_hmac_keys(&raw, allow_demo)?;
                }
            }
            Algorithm::Ed25519 => {
                if let Some(raw) = get("STEM_SIGNING_PUBLIC_KEYS") {
                    m.add_public_keys(&raw, allow_demo)?;
                }
                if let Some(raw) = get("STEM_SIGNING_PRIVATE_KEYS") {
                    m.add_private_keys(&raw, allow_demo)?;
                }
            }
        }
        m.check_active()?;
        Ok(KeyRing(Arc::new(m)))
    }
}

/// `STEM_SIGNING_ALGORITHM`: HMAC-SHA256 unless it says `ed25519`.
fn parse_algorithm(raw: Option<String>) -> Result<Algorithm> {
    match raw.map(|a| a.to_ascii_lowercase()) {
        None => Ok(Algorithm::HmacSha256),
        Some(a) if a == "hmac-sha256" => Ok(Algorithm::HmacSha256),
        Some(a) if a == "ed25519" => Ok(Algorithm::Ed25519),
        Some(other) => Err(StemError::config(
            "STEM_SIGNING_ALGORITHM",
            format!("unknown algorithm {other:?} (use hmac-sha256 or ed25519)"),
        )),
    }
}

impl Material {
    /// `STEM_SIGNING_KEYS`: HMAC secrets, expanded once here.
    fn add_hmac_keys(&mut self, raw: &str, allow_demo: bool) -> Result<()> {
        let keys = parse_list("STEM_SIGNING_KEYS", raw, None)?;
        let shipped = placeholder(&keys, |k| k.starts_with(PLACEHOLDER_PREFIX));
        self.demo |= allow_placeholder("STEM_SIGNING_KEYS", shipped, allow_demo)?;
        self.hmac = keys
            .into_iter()
            .map(|(id, secret)| (id, ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)))
            .collect();
        Ok(())
    }

    /// `STEM_SIGNING_PUBLIC_KEYS`: Ed25519 verification keys (all a
    /// worker needs).
    fn add_public_keys(&mut self, raw: &str, allow_demo: bool) -> Result<()> {
        let keys = parse_list("STEM_SIGNING_PUBLIC_KEYS", raw, Some(32))?;
        let shipped_public = SigningKey::from_bytes(PLACEHOLDER_ED25519_SEED).verifying_key();
        let shipped = placeholder(&keys, |k| k == shipped_public.as_bytes());
        self.demo |= allow_placeholder("STEM_SIGNING_PUBLIC_KEYS", shipped, allow_demo)?;
        for (id, bytes) in keys {
            let key = VerifyingKey::from_bytes(&as_32(&bytes)).map_err(|_| {
                StemError::config(
                    "STEM_SIGNING_PUBLIC_KEYS",
                    format!("key {id:?} is not a valid Ed25519 public key"),
                )
            })?;
            self.public.insert(id, key);
        }
        Ok(())
    }

    /// `STEM_SIGNING_PRIVATE_KEYS`: Ed25519 seeds; each also verifies.
    fn add_private_keys(&mut self, raw: &str, allow_demo: bool) -> Result<()> {
        let keys = parse_list("STEM_SIGNING_PRIVATE_KEYS", raw, Some(32))?;
        let shipped = placeholder(&keys, |k| k.starts_with(PLACEHOLDER_PREFIX));
        self.demo |= allow_placeholder("STEM_SIGNING_PRIVATE_KEYS", shipped, allow_demo)?;
        for (id, bytes) in keys {
            let key = SigningKey::from_bytes(&as_32(&bytes));
            self.public
                .entry(id.clone())
                .or_insert_with(|| key.verifying_key());
            self.private.insert(id, key);
        }
        Ok(())
    }

    /// `STEM_SIGNING_ACTIVE_KEY` must name a configured key of the
    /// algorithm (one that can sign, when any can).
    fn check_active(&self) -> Result<()> {
        let Some(a) = &self.active else {
            return Ok(());
        };
        let (known, why) = match self.algorithm {
            Algorithm::HmacSha256 => (
                self.hmac.is_empty() || self.hmac.contains_key(a),
                "not in STEM_SIGNING_KEYS",
            ),
            Algorithm::Ed25519 if self.private.is_empty() => (
                self.public.is_empty() || self.public.contains_key(a),
                "no such Ed25519 key",
            ),
            Algorithm::Ed25519 => (self.private.contains_key(a), "no such Ed25519 key"),
        };
        if known {
            return Ok(());
        }
        Err(StemError::config(
            "STEM_SIGNING_ACTIVE_KEY",
            format!("unknown active key {a:?}: {why}"),
        ))
    }
}
