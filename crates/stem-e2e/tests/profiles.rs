//! The shipped `.env` profiles of the compose stack: each one's signing
//! settings load as the services load them, what a producer signs the
//! workers verify, and in the Ed25519 profile the workers (whose compose
//! entries blank `STEM_SIGNING_PRIVATE_KEYS`) hold no signing key at all.

use std::collections::HashMap;
use std::path::PathBuf;

use stem::signing::KeyRing;

/// `KEY=value` lines of a profile, as Compose reads an env file.
fn profile(name: &str) -> anyhow::Result<HashMap<String, String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    let text = std::fs::read_to_string(&path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

#[test]
fn shipped_profiles_sign_what_their_workers_verify() -> anyhow::Result<()> {
    for name in [
        ".env.example",
        ".env.hmac",
        ".env.hmac_tls",
        ".env.ed25519_tls",
    ] {
        let env = profile(name)?;
        let producer = KeyRing::from_lookup(&|k: &str| env.get(k).cloned())?;
        let signer = producer
            .signer()?
            .ok_or_else(|| anyhow::anyhow!("{name}: no signing key"))?;
        let mut worker_env = env.clone();
        worker_env.insert("STEM_SIGNING_PRIVATE_KEYS".into(), String::new());
        let worker = KeyRing::from_lookup(&|k: &str| worker_env.get(k).cloned())?;
        let verifier = worker
            .verifier()
            .ok_or_else(|| anyhow::anyhow!("{name}: workers cannot verify"))?;
        let body = br#"{"id":"t","name":"greeting.send"}"#;
        let signature = signer.sign(body);
        verifier
            .verify(Some(signer.key_id()), Some(&signature), body)
            .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        if env.get("STEM_SIGNING_ALGORITHM").map(String::as_str) == Some("ed25519") {
            assert!(
                worker.signer()?.is_none(),
                "{name}: workers hold only the public key"
            );
        }
        let tls = env
            .get("STEM_BROKER_URL")
            .is_some_and(|u| u.starts_with("rediss://"));
        assert_eq!(
            tls,
            name.ends_with("_tls"),
            "{name}: TLS profiles and only they use rediss://"
        );
    }
    Ok(())
}
