//! Surviving outages and stops (README "Behaviour an operator can rely on"): a Redis restart with
//! persistence loses nothing and needs no operator, and SIGTERM on a worker
//! finishes or hands back its work and exits 0.

use std::time::{Duration, Instant};

use serde_json::json;
use stem_e2e::{
    body_runs, env, poll_until, start_enqueuer, start_worker, state_of, wait_body_running,
    worker_name, RedisOptions, RedisServer, SETTLE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_persistence_loses_nothing() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions {
        persistence: true,
        ..Default::default()
    })?;
    let url = redis.url();
    let mut enq = start_enqueuer(&url, &[]).await?;
    let mut worker = start_worker(
        &url,
        &worker_name("outage"),
        "greetings,billing",
        &env(&[("STEM_WORKER_CONCURRENCY", "2")]),
    )
    .await?;

    // Five tasks, two of them long enough to be running during the outage.
    let mut ids = Vec::new();
    for (task, name, delay) in [
        ("greeting.send", "long-1", 2000),
        ("billing.charge", "long-2", 2000),
        ("greeting.send", "short-1", 200),
        ("customer.followup", "short-2", 200),
        ("billing.settlement", "short-3", 200),
    ] {
        let id = enq
            .api
            .enqueue(json!({"task": task, "name": name, "delayMs": delay}))
            .await?;
        ids.push((id, format!("Processed {task} for {name}")));
    }
    wait_body_running(&worker, &ids[0].0, Duration::from_secs(20)).await?;

    // Outage: 5 s with Redis stopped.
    redis.stop()?;
    let stopped = Instant::now();
    let api = &enq.api;
    let r = poll_until(
        "GET /readyz to answer 503",
        Duration::from_secs(4),
        || async {
            let r = api.get("/readyz").await?;
            Ok((r.status == 503).then_some(r))
        },
    )
    .await?;
    r.error_message()?;
    let r = api
        .post_json("/enqueue", &json!({"name": "during-outage"}))
        .await?;
    assert_eq!(r.status, 503, "enqueue during the outage: {}", r.text);
    r.error_message()?;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the outage checks took {:?}, longer than the outage",
        stopped.elapsed()
    );
    // The scenario itself: Redis stays down for 5 s.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    assert!(
        enq.process.is_running(),
        "enqueuer exited during the outage"
    );
    assert!(worker.is_running(), "worker exited during the outage");
    redis.restart()?;

    poll_until("GET /readyz to answer 200 again", SETTLE, || async {
        Ok((api.get("/readyz").await?.status == 200).then_some(()))
    })
    .await?;
    for (id, result) in &ids {
        let s = api.wait_state(id, "succeeded", SETTLE).await?;
        assert_eq!(&s["result"], result.as_str(), "{s}");
    }
    let id = api
        .enqueue(json!({"name": "after-outage", "delayMs": 1}))
        .await?;
    let s = api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(
        s["result"], "Processed greeting.send for after-outage",
        "{s}"
    );

    assert!(enq.process.is_running(), "enqueuer exited");
    assert!(worker.is_running(), "worker exited:\n{}", worker.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_task_finish() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let mut worker = start_worker(&url, &worker_name("drain"), "greetings", &[]).await?;

    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 1500}))
        .await?;
    wait_body_running(&worker, &id, Duration::from_secs(20)).await?;
    worker.sigterm()?;
    let code = worker.wait_exit(Duration::from_secs(20))?;
    assert_eq!(code, Some(0), "worker exit code:\n{}", worker.logs());

    // The result was written before the worker left.
    let s = enq.api.task(&id).await?;
    let s = s.unwrap_or_else(|| panic!("no status for {id}"));
    assert_eq!(state_of(&s), "succeeded", "{s}\n{}", worker.logs());
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    assert_eq!(body_runs(&worker.logs(), &id), 1, "{}", worker.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_what_outlives_the_grace() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let mut a = start_worker(
        &url,
        &worker_name("impatient"),
        "greetings",
        &env(&[("STEM_SHUTDOWN_GRACE", "1s")]),
    )
    .await?;

    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 6000}))
        .await?;
    wait_body_running(&a, &id, Duration::from_secs(20)).await?;
    let term = Instant::now();
    a.sigterm()?;
    let code = a.wait_exit(Duration::from_secs(10))?;
    let took = term.elapsed();
    assert_eq!(code, Some(0), "worker A exit code:\n{}", a.logs());
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?} with a 1 s grace:\n{}",
        a.logs()
    );
    let s = enq.api.task(&id).await?;
    assert_ne!(
        s.as_ref().map(state_of),
        Some("succeeded"),
        "a 6 s task cannot have finished: {s:?}"
    );

    // Handed back for immediate redelivery: B picks it up at once, well
    // before any visibility timeout (30 s by default) could expire.
    let b = start_worker(&url, &worker_name("successor"), "greetings", &[]).await?;
    wait_body_running(&b, &id, Duration::from_secs(5)).await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    assert_eq!(body_runs(&b.logs(), &id), 1, "{}", b.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_running_and_prefetched_tasks_loses_and_repeats_none() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    // Two run at once, two more wait fetched in the worker.
    let mut a = start_worker(
        &url,
        &worker_name("busy"),
        "greetings",
        &env(&[
            ("STEM_WORKER_CONCURRENCY", "2"),
            ("STEM_PREFETCH_MULTIPLIER", "1"),
            ("STEM_SHUTDOWN_GRACE", "10s"),
        ]),
    )
    .await?;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            enq.api
                .enqueue(json!({"name": format!("t{n}"), "delayMs": 1200}))
                .await?,
        );
    }
    wait_body_running(&a, &ids[0], Duration::from_secs(20)).await?;
    wait_body_running(&a, &ids[1], Duration::from_secs(20)).await?;
    a.sigterm()?;
    assert_eq!(a.wait_exit(SETTLE)?, Some(0), "{}", a.logs());
    // The two that ran finished within the grace; the others went back.
    for id in &ids[..2] {
        let s = enq.api.task(id).await?.expect("status");
        assert_eq!(state_of(&s), "succeeded", "{s}\n{}", a.logs());
    }
    let b = start_worker(&url, &worker_name("after"), "greetings", &[]).await?;
    for id in &ids {
        enq.api.wait_state(id, "succeeded", SETTLE).await?;
        let runs = body_runs(&a.logs(), id) + body_runs(&b.logs(), id);
        assert_eq!(
            runs,
            1,
            "task {id} ran {runs} times:\n{}\n{}",
            a.logs(),
            b.logs()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_written_before_acks_while_the_backend_is_down() -> anyhow::Result<()> {
    let broker = RedisServer::start()?;
    let mut backend = RedisServer::start_with(RedisOptions {
        persistence: true,
        ..Default::default()
    })?;
    let separate = env(&[("STEM_RESULT_BACKEND_URL", &backend.url())]);
    let enq = start_enqueuer(&broker.url(), &separate).await?;
    let worker = start_worker(&broker.url(), &worker_name("split"), "greetings", &separate).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "held", "delayMs": 800}))
        .await?;
    wait_body_running(&worker, &id, Duration::from_secs(20)).await?;
    // Only the result backend goes away while the body runs.
    backend.stop()?;
    stem_e2e::wait_log(&worker, "result backend unavailable", SETTLE).await?;
    // The body finished, its result cannot be written: nothing is acked.
    let pending = broker.cli(&["XPENDING", "stem:{greetings}:p0", "stem"])?;
    assert!(
        pending.starts_with('1'),
        "the entry stays pending: {pending}"
    );
    backend.restart()?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for held", "{s}");
    poll_until("the ack after the result", SETTLE, || async {
        Ok(broker
            .cli(&["XPENDING", "stem:{greetings}:p0", "stem"])?
            .starts_with('0')
            .then_some(()))
    })
    .await?;
    assert_eq!(body_runs(&worker.logs(), &id), 1, "{}", worker.logs());
    Ok(())
}

/// A worker's lease declaration (`stem:leases`, one field per worker
/// lifetime) does not outlive it (issue 24, W16): a worker stopped with
/// SIGTERM withdraws it on the way out; one killed with SIGKILL loses it
/// once its record expired, pruned by a worker still running — which
/// keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_declarations_go_with_their_workers() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let quick = env(&[
        ("STEM_VISIBILITY_TIMEOUT", "1s"),
        ("STEM_HEARTBEAT_INTERVAL", "500ms"),
    ]);
    let (a, b, c) = (
        worker_name("lease-a"),
        worker_name("lease-b"),
        worker_name("lease-c"),
    );
    let mut wa = start_worker(&url, &a, "greetings", &quick).await?;
    let mut wb = start_worker(&url, &b, "greetings", &quick).await?;
    let leases = || -> anyhow::Result<String> { redis.cli(&["HKEYS", "stem:leases"]) };
    let held = leases()?;
    assert!(held.contains(&a) && held.contains(&b), "{held}");

    wa.sigterm()?;
    assert_eq!(wa.wait_exit(Duration::from_secs(15))?, Some(0));
    let held = leases()?;
    assert!(!held.contains(&a), "withdrawn at a graceful stop: {held}");
    assert!(held.contains(&b), "{held}");

    wb.kill9()?;
    let wc = start_worker(&url, &c, "greetings", &quick).await?;
    // b's record expires 1.5 s after its last heartbeat; c prunes at
    // most every 5 s.
    let started = Instant::now();
    poll_until(
        "b's lease to be pruned",
        Duration::from_secs(40),
        || async { Ok((!leases()?.contains(&b)).then_some(())) },
    )
    .await
    .map_err(|e| e.context(wc.logs()))?;
    let held = leases()?;
    assert!(held.contains(&c), "a live worker keeps its lease: {held}");
    eprintln!(
        "a killed worker's lease pruned {:?} after c started",
        started.elapsed()
    );
    Ok(())
}
