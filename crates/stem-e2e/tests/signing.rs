//! Envelope signing between separate processes (README "Configuration", signing keys): a worker
//! refuses what it cannot verify, Ed25519 workers need only public keys,
//! and key rotation keeps the backlog verifiable.

use std::time::{Duration, Instant};

use serde_json::json;
use stem_e2e::{
    body_runs, ed25519_key, hmac_key, start_enqueuer, start_worker, wait_dead_letter, worker_name,
    RedisServer, Stem, SETTLE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_rejected_without_running() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(
        &url,
        &[
            ("STEM_SIGNING_KEYS", hmac_key("a")),
            ("STEM_SIGNING_ACTIVE_KEY", "a".into()),
        ],
    )
    .await?;
    // The worker needs STEM_SIGNING_ACTIVE_KEY too: with HMAC keys and no
    // active key it exits 78 (it builds a producer client at start).
    let worker = start_worker(
        &url,
        &worker_name("verifier"),
        "greetings",
        &[
            ("STEM_SIGNING_KEYS", hmac_key("b")),
            ("STEM_SIGNING_ACTIVE_KEY", "b".into()),
        ],
    )
    .await?;

    let id = enq.api.enqueue(json!({"name": "Mallory"})).await?;
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    // The producer's own envelope (its status records the fingerprint):
    // the task fails, before its dead letter is written.
    let s = enq.api.task(&id).await?.expect("the producer's status");
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(letter.reason, "signature-invalid", "{letter:?}");
    // The envelope is kept as sent, signature included.
    let wire = letter
        .wire
        .as_ref()
        .expect("dead letter keeps the envelope");
    assert_eq!(wire.key_id.as_deref(), Some("a"), "{letter:?}");
    assert!(wire.signature.is_some(), "{letter:?}");

    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &id), 0, "body must never run:\n{logs}");
    assert!(logs.contains("signature invalid"), "{logs}");
    Ok(())
}

/// README "Security": a producer signing with a key the worker does not know
/// sees its task end `failed` (`signature-invalid`) in `GET /tasks/{id}`,
/// and `stem task wait` ends with the failure's exit code instead of
/// waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_signed_with_an_unknown_key_fails_and_task_wait_ends() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(
        &url,
        &[
            ("STEM_SIGNING_KEYS", hmac_key("a")),
            ("STEM_SIGNING_ACTIVE_KEY", "a".into()),
        ],
    )
    .await?;
    let id = enq.api.enqueue(json!({"name": "Misconfigured"})).await?;
    let queued = enq.api.task(&id).await?.expect("the producer's status");
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(
        queued["fingerprint"].as_str().map(str::len),
        Some(22),
        "the status records the envelope's fingerprint: {queued}"
    );
    // Waiting starts while the task is queued and no worker runs.
    let wait = Stem::new(&url).spawn(&["task", "wait", &id, "--timeout", "120s", "--json"])?;
    let started = Instant::now();
    let worker = start_worker(
        &url,
        &worker_name("key-b-only"),
        "greetings",
        &[
            ("STEM_SIGNING_KEYS", hmac_key("b")),
            ("STEM_SIGNING_ACTIVE_KEY", "b".into()),
        ],
    )
    .await?;

    let s = enq.api.wait_state(&id, "failed", SETTLE).await?;
    assert_eq!(s["error"]["reason"], "signature-invalid", "{s}");
    assert_eq!(s["error"]["type"], "signature-invalid", "{s}");
    assert_eq!(s["attempt"], 0, "{s}");
    let run = tokio::time::timeout(SETTLE, Stem::finish(wait))
        .await
        .map_err(|_| anyhow::anyhow!("stem task wait still runs after {SETTLE:?}"))??;
    assert_eq!(
        run.code,
        Some(1),
        "the failure's exit code: {}",
        run.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "ended by the failure, not the timeout: {}",
        run.describe()
    );
    let shown = run.json()?;
    assert_eq!(shown["state"], "failed", "{shown}");
    assert_eq!(shown["error"]["reason"], "signature-invalid", "{shown}");

    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    assert_eq!(letter.reason, "signature-invalid", "{letter:?}");
    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &id), 0, "body must never run:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_worker_verifies_with_public_keys_only() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let (public, private) = ed25519_key("ed1");
    let enq = start_enqueuer(
        &url,
        &[
            ("STEM_SIGNING_ALGORITHM", "ed25519".into()),
            ("STEM_SIGNING_PRIVATE_KEYS", private),
            ("STEM_SIGNING_ACTIVE_KEY", "ed1".into()),
        ],
    )
    .await?;
    let worker = start_worker(
        &url,
        &worker_name("ed25519"),
        "billing",
        &[
            ("STEM_SIGNING_ALGORITHM", "ed25519".into()),
            ("STEM_SIGNING_PUBLIC_KEYS", public),
        ],
    )
    .await?;

    let id = enq
        .api
        .enqueue(json!({"task": "billing.charge", "name": "Ada", "delayMs": 1}))
        .await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed billing.charge for Ada", "{s}");
    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &id), 1, "{logs}");
    assert!(
        !logs.contains("no verification keys"),
        "the worker must verify, not run unsigned:\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_both_verify() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let (old, new) = (hmac_key("old"), hmac_key("new"));
    let both = format!("{old},{new}");

    // The worker already knows both ids.
    let worker = start_worker(
        &url,
        &worker_name("rotation"),
        "greetings",
        &[
            ("STEM_SIGNING_KEYS", both.clone()),
            ("STEM_SIGNING_ACTIVE_KEY", "new".into()),
        ],
    )
    .await?;

    // The producer signs with `old` …
    let mut enq = start_enqueuer(
        &url,
        &[
            ("STEM_SIGNING_KEYS", old.clone()),
            ("STEM_SIGNING_ACTIVE_KEY", "old".into()),
        ],
    )
    .await?;
    let before = enq.api.enqueue(json!({"name": "before"})).await?;
    let s = enq.api.wait_state(&before, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for before", "{s}");
    enq.process.sigterm()?;
    assert_eq!(
        enq.process.wait_exit(Duration::from_secs(15))?,
        Some(0),
        "enqueuer must exit 0 on SIGTERM:\n{}",
        enq.process.logs()
    );

    // … and is restarted with `new` active.
    let enq = start_enqueuer(
        &url,
        &[
            ("STEM_SIGNING_KEYS", both),
            ("STEM_SIGNING_ACTIVE_KEY", "new".into()),
        ],
    )
    .await?;
    let after = enq.api.enqueue(json!({"name": "after"})).await?;
    let s = enq.api.wait_state(&after, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for after", "{s}");

    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &before), 1, "{logs}");
    assert_eq!(body_runs(&logs, &after), 1, "{logs}");
    assert!(!logs.contains("signature invalid"), "{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_rotation_verifies_both_keys_and_refuses_a_forgery() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let (old_public, old_private) = ed25519_key("old");
    let (new_public, new_private) = ed25519_key("new");
    let (_, stranger_private) = ed25519_key("new");
    let ed = |private: &str, active: &str| {
        vec![
            ("STEM_SIGNING_ALGORITHM", "ed25519".to_string()),
            ("STEM_SIGNING_PRIVATE_KEYS", private.to_string()),
            ("STEM_SIGNING_ACTIVE_KEY", active.to_string()),
        ]
    };
    // The worker holds both public keys, and no private key at all.
    let worker = start_worker(
        &url,
        &worker_name("ed-rotation"),
        "greetings",
        &[
            ("STEM_SIGNING_ALGORITHM", "ed25519".into()),
            (
                "STEM_SIGNING_PUBLIC_KEYS",
                format!("{old_public},{new_public}"),
            ),
        ],
    )
    .await?;
    let before = start_enqueuer(&url, &ed(&old_private, "old")).await?;
    let after = start_enqueuer(&url, &ed(&new_private, "new")).await?;
    // Someone with a key pair of their own, under a trusted key id.
    let forger = start_enqueuer(&url, &ed(&stranger_private, "new")).await?;
    let a = before
        .api
        .enqueue(json!({"name": "old-key", "delayMs": 1}))
        .await?;
    let b = after
        .api
        .enqueue(json!({"name": "new-key", "delayMs": 1}))
        .await?;
    let f = forger
        .api
        .enqueue(json!({"name": "forged", "delayMs": 1}))
        .await?;
    before.api.wait_state(&a, "succeeded", SETTLE).await?;
    after.api.wait_state(&b, "succeeded", SETTLE).await?;
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(f.as_str())
    })
    .await?;
    assert_eq!(letter.reason, "signature-invalid", "{letter:?}");
    assert_eq!(body_runs(&worker.logs(), &f), 0, "{}", worker.logs());
    Ok(())
}
