//! Redis over mutual TLS (README "Configuration", TLS): with the right CA and client
//! certificate tasks flow; with a CA that did not sign the server's
//! certificate nothing is accepted and the failure names the certificate.

use std::time::Duration;

use anyhow::Context;

use serde_json::json;
use stem_e2e::{
    body_runs, poll_until, spawn_worker, start_enqueuer, start_worker, tls_env, worker_name,
    RedisOptions, RedisServer, TlsMode, SETTLE,
};

fn mtls_redis() -> anyhow::Result<RedisServer> {
    RedisServer::start_with(RedisOptions {
        tls: Some(TlsMode::MutualTls),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_flows_over_mutual_tls() -> anyhow::Result<()> {
    let redis = mtls_redis()?;
    let url = redis.url();
    assert!(url.starts_with("rediss://localhost:"), "{url}");
    let tls = redis.tls().expect("TLS assets of a TLS server").clone();
    let envs = tls_env(&tls, &tls.ca_cert);

    let enq = start_enqueuer(&url, &envs).await?;
    let worker = start_worker(&url, &worker_name("tls"), "greetings", &envs).await?;
    let r = enq.api.get("/readyz").await?;
    assert_eq!(r.status, 200, "{}", r.text);

    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 1}))
        .await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    assert_eq!(body_runs(&worker.logs(), &id), 1, "{}", worker.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_and_says_why() -> anyhow::Result<()> {
    let redis = mtls_redis()?;
    let url = redis.url();
    let tls = redis.tls().expect("TLS assets of a TLS server").clone();
    let enq = start_enqueuer(&url, &tls_env(&tls, &tls.other_ca_cert)).await?;

    // Not ready, and the reason names the certificate problem.
    let api = &enq.api;
    let r = poll_until("GET /readyz to answer", Duration::from_secs(20), || async {
        Ok(Some(api.get("/readyz").await?))
    })
    .await?;
    assert_eq!(r.status, 503, "{}", r.text);
    r.error_message()?;
    let body = r.text.to_ascii_lowercase();
    assert!(
        body.contains("certificate"),
        "/readyz should say the certificate is the problem: {}",
        r.text
    );

    // Nothing is accepted.
    let r = api.post_json("/enqueue", &json!({"name": "Ada"})).await?;
    assert_eq!(r.status, 503, "{}", r.text);
    let msg = r.error_message()?.to_ascii_lowercase();
    assert!(msg.contains("certificate"), "{}", r.text);

    // A worker with the wrong CA keeps running, says why, and never
    // becomes ready.
    let mut worker = spawn_worker(
        &url,
        &worker_name("wrong-ca"),
        "greetings",
        &tls_env(&tls, &tls.other_ca_cert),
    )?;
    poll_until(
        "the worker to log a certificate error",
        Duration::from_secs(20),
        || async {
            Ok(worker
                .logs()
                .to_ascii_lowercase()
                .contains("certificate")
                .then_some(()))
        },
    )
    .await
    .with_context(|| worker.logs())?;
    assert!(worker.is_running(), "worker exited:\n{}", worker.logs());
    assert!(!worker.logs().contains("worker ready"), "{}", worker.logs());

    // The server's certificate never verified, so nothing reached Redis.
    let keys = redis.cli(&["DBSIZE"])?;
    assert_eq!(keys, "0", "Redis should hold nothing");
    assert!(enq.process.logs().len() < 1_000_000, "log flood");
    Ok(())
}
