//! Delivery guarantees (CONTRACT §5) observed from outside: retries and
//! dead letters, redelivery after a worker crash, lease keeping for long
//! tasks, garbage in a stream, countdowns and priorities.

use std::time::{Duration, Instant};

use serde_json::json;
use stem_e2e::{
    body_run_lines, body_runs, env, poll_until, start_enqueuer, start_worker, state_of,
    wait_body_running, wait_dead_letter, worker_name, RedisServer, BODY_RUNNING, POLL_INTERVAL,
    SETTLE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_and_dead_letter() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let worker = start_worker(&url, &worker_name("retry"), "reporting", &[]).await?;

    let id = enq
        .api
        .enqueue(json!({"task": "reports.publish", "name": "q3", "delayMs": 1, "fail": true}))
        .await?;
    // Two retries: ~1.5–2 s and ~3–4 s of backoff.
    let s = enq.api.wait_state(&id, "failed", SETTLE).await?;
    assert_eq!(s["attempt"], 2, "{s}");
    assert_eq!(s["maxRetries"], 2, "{s}");
    assert_eq!(s["error"]["reason"], "max-retries-exhausted", "{s}");
    assert_eq!(
        s["error"]["message"], "Synthetic failure requested for task=reports.publish label=q3",
        "{s}"
    );

    let letter = wait_dead_letter(&url, "reporting", Duration::from_secs(10), |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    assert_eq!(letter.reason, "max-retries-exhausted", "{letter:?}");
    assert_eq!(
        letter.error.as_deref(),
        Some("Synthetic failure requested for task=reports.publish label=q3")
    );
    // The same in raw form, as an operator would look at it.
    let raw = redis.cli(&["XRANGE", "stem:{reporting}:dead", "-", "+"])?;
    assert!(raw.contains("max-retries-exhausted"), "{raw}");
    assert!(raw.contains(&id), "{raw}");

    let logs = worker.logs();
    let runs = body_run_lines(&logs, &id);
    assert_eq!(runs.len(), 3, "body should run exactly 3 times:\n{logs}");
    for (attempt, line) in runs.iter().enumerate() {
        assert!(
            line.contains(&format!("attempt={attempt}")),
            "run {attempt}: {line}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_of_a_killed_worker_is_redelivered() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let vt = env(&[("STEM_VISIBILITY_TIMEOUT", "2s")]);
    let enq = start_enqueuer(&url, &[]).await?;
    let mut a = start_worker(&url, &worker_name("doomed"), "greetings", &vt).await?;

    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 1500}))
        .await?;
    wait_body_running(&a, &id, Duration::from_secs(20)).await?;
    a.kill9()?;
    let killed_at = Instant::now();

    let b = start_worker(&url, &worker_name("rescuer"), "greetings", &vt).await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    assert_eq!(
        body_runs(&b.logs(), &id),
        1,
        "worker B should have run the body:\n{}",
        b.logs()
    );
    // Redelivered after the 2 s visibility timeout, not much later.
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed_at.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_task_keeps_its_lease_and_runs_once() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let vt = env(&[("STEM_VISIBILITY_TIMEOUT", "1s")]);
    let enq = start_enqueuer(&url, &[]).await?;
    let a = start_worker(&url, &worker_name("long-a"), "greetings", &vt).await?;
    let b = start_worker(&url, &worker_name("long-b"), "greetings", &vt).await?;

    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 3200}))
        .await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    assert_eq!(s["attempt"], 0, "{s}");
    let (la, lb) = (a.logs(), b.logs());
    let total = body_runs(&la, &id) + body_runs(&lb, &id);
    assert_eq!(
        total, 1,
        "body must run exactly once across both workers\n--- A ---\n{la}\n--- B ---\n{lb}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_entry_is_dead_lettered_and_worker_keeps_serving() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let mut worker = start_worker(&url, &worker_name("garbage"), "greetings", &[]).await?;

    let entry_id = redis.cli(&["XADD", "stem:{greetings}:p0", "*", "foo", "bar"])?;
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.reason == "malformed-envelope"
    })
    .await?;
    let raw = letter.raw.clone().unwrap_or_default();
    assert!(
        raw.contains("foo") && raw.contains("bar"),
        "raw should hold the entry: {letter:?}"
    );
    assert!(letter.wire.is_none(), "{letter:?}");
    // The garbage is gone from the ready stream.
    let left = redis.cli(&["XRANGE", "stem:{greetings}:p0", &entry_id, &entry_id])?;
    assert!(
        left.is_empty(),
        "entry {entry_id} still in the stream: {left}"
    );

    assert!(worker.is_running(), "worker exited:\n{}", worker.logs());
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
async fn countdown_delays_the_start() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let _worker = start_worker(&url, &worker_name("countdown"), "greetings", &[]).await?;

    let enqueued = Instant::now();
    let id = enq
        .api
        .enqueue(json!({"name": "Ada", "delayMs": 200, "countdownMs": 1500}))
        .await?;
    // Not started before its due time (checked until 1.2 s after enqueue).
    while enqueued.elapsed() < Duration::from_millis(1200) {
        let s = enq.api.task(&id).await?;
        let state = s.as_ref().map(state_of).unwrap_or("");
        assert_eq!(
            state,
            "queued",
            "started early, {:?} after enqueue: {s:?}",
            enqueued.elapsed()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Due at 1.5 s, starts within 1 s of that, runs 0.2 s (+0.8 s slack).
    let s = enq
        .api
        .wait_state(
            &id,
            "succeeded",
            Duration::from_millis(3500).saturating_sub(enqueued.elapsed()),
        )
        .await?;
    assert_eq!(s["result"], "Processed greeting.send for Ada", "{s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_starts_first() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;

    // Backlog first, worker afterwards.
    let mut low = Vec::new();
    for i in 0..3 {
        low.push(
            enq.api
                .enqueue(json!({"task": "billing.charge", "name": format!("low-{i}"), "delayMs": 200, "priority": 0}))
                .await?,
        );
    }
    let high = enq
        .api
        .enqueue(json!({"task": "billing.charge", "name": "high", "delayMs": 200, "priority": 9}))
        .await?;

    let worker = start_worker(
        &url,
        &worker_name("prio"),
        "billing",
        &env(&[("STEM_WORKER_CONCURRENCY", "1")]),
    )
    .await?;
    let api = &enq.api;
    let all: Vec<&String> = low.iter().chain([&high]).collect();
    poll_until("all four tasks to succeed", SETTLE, || async {
        for id in &all {
            if api.task(id).await?.as_ref().map(state_of) != Some("succeeded") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    // Order in which bodies started, from the worker's log.
    let logs = worker.logs();
    let order: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(BODY_RUNNING))
        .filter_map(|l| {
            all.iter()
                .find(|id| l.contains(&format!("task_id={id}")))
                .map(|id| id.as_str())
        })
        .collect();
    assert_eq!(order.len(), 4, "{logs}");
    assert_eq!(
        order[0], high,
        "the priority-9 task must start first:\n{logs}"
    );
    assert_eq!(
        &order[1..],
        low.iter().map(String::as_str).collect::<Vec<_>>(),
        "low ones in FIFO order:\n{logs}"
    );
    Ok(())
}
