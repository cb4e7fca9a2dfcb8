//! Key ring parsing, signing, verification and fingerprints.

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
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
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
