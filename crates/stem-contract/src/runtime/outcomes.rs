//! What becomes of one task: success, retries with backoff, dead letters
//! (retries exhausted, fatal, unregistered), panics, time limits and
//! progress.

use super::*;

pub async fn typed_task_succeeds(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Add>((2, 3)).await?;
    let s = r.wait(&id).await?;
    assert_eq!(
        (s.state, s.result.clone()),
        (TaskState::Succeeded, json!(5))
    );
    assert_eq!(
        (s.task.as_str(), s.queue.as_str(), s.attempt),
        ("math.add", QUEUE, 0)
    );
    r.finish().await
}

pub async fn failed_attempt_is_retried_with_backoff(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Flaky>(1).await?;
    let retried = poll("retried status", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&id)
            .await?
            .filter(|s| s.state == TaskState::Retried))
    })
    .await?;
    assert_eq!(
        retried.error.map(|e| e.message),
        Some("attempt 0 fails".to_string())
    );
    let started = std::time::Instant::now();
    let s = r.wait(&id).await?;
    assert_eq!(
        (s.state, s.attempt, s.result),
        (TaskState::Succeeded, 1, json!("ok at 1"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "backoff of ~1.5-2 s was skipped"
    );
    assert_eq!(r.counter.load(Ordering::SeqCst), 2);
    r.finish().await
}

pub async fn exhausted_retries_dead_letter(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Flaky>(9).await?;
    let s = r.wait(&id).await?;
    assert_eq!((s.state, s.attempt), (TaskState::Failed, 1));
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("max-retries-exhausted".to_string())
    );
    let dead = poll("a dead letter", Duration::from_secs(5), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((!d.is_empty()).then_some(d))
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].task_id()),
        ("max-retries-exhausted", Some(id))
    );
    assert_eq!(r.counter.load(Ordering::SeqCst), 2, "1 run + 1 retry");
    r.finish().await
}

pub async fn fatal_failure_is_not_retried(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Fatal>(()).await?;
    let s = r.wait(&id).await?;
    assert_eq!((s.state, s.attempt), (TaskState::Failed, 0));
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("non-retryable".to_string())
    );
    r.finish().await
}

pub async fn panic_is_a_failure_and_the_worker_survives(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Panics>(()).await?;
    let s = r.wait(&id).await?;
    assert_eq!(s.state, TaskState::Failed);
    assert!(s.error.expect("error").message.contains("kaboom"));
    let id = r.stem.enqueue::<Add>((1, 1)).await?;
    assert_eq!(r.wait(&id).await?.result, json!(2), "worker still serves");
    r.finish().await
}

pub async fn time_limits_and_progress(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let hard = r.stem.enqueue::<Sleepy>(5000).await?;
    let progress = poll("progress", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&hard)
            .await?
            .filter(|s| s.state == TaskState::Running)
            .and_then(|s| s.progress))
    })
    .await?;
    assert!(progress.data.get("step").is_some());
    let s = r.wait(&hard).await?;
    assert_eq!(s.state, TaskState::Failed);
    assert!(
        s.error.expect("error").message.contains("hard time limit"),
        "hard limit stops the body"
    );
    let soft = r.stem.enqueue::<Sleepy>(1000).await?;
    assert_eq!(
        r.wait(&soft).await?.result,
        json!("stopped at the soft limit")
    );
    r.finish().await
}

pub async fn unregistered_task_is_dead_lettered(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let e = r
        .stem
        .enqueue_raw(
            "nobody.knows",
            json!({}),
            EnqueueOptions {
                queue: Some(QUEUE.into()),
                ..Default::default()
            },
        )
        .await?;
    let s = r.wait(&e.task_id).await?;
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("unregistered-task".to_string())
    );
    r.finish().await
}
