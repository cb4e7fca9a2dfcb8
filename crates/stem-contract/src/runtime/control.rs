//! The control plane on a real worker: revocation, commands and replies,
//! throughput counts, worker records, the `running` marker.

use super::*;

pub async fn revoked_tasks_do_not_run_and_running_ones_stop(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let later = r
        .stem
        .enqueue_with::<Flaky>(
            0,
            EnqueueOptions {
                countdown: Some(Duration::from_millis(600)),
                ..Default::default()
            },
        )
        .await?;
    let before = r
        .stem
        .revoke(&later, "operator said no")
        .await?
        .expect("known task");
    assert_eq!(before.state, TaskState::Queued);
    let running = r.stem.enqueue::<Sleepy>(1450).await?;
    poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&running)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let started = std::time::Instant::now();
    r.stem.revoke(&running, "stop it").await?;
    let s = r.wait(&running).await?;
    assert_eq!(s.state, TaskState::Cancelled);
    assert_eq!(s.error.and_then(|e| e.reason), Some("revoked".to_string()));
    // The body stops within about a second (before its 1.45 s run or hard limit).
    let settled = poll("revoked task settled", Duration::from_secs(5), || async {
        Ok((r.stem.admin().stats(QUEUE).await?.inflight == 0).then_some(()))
    })
    .await;
    settled?;
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "took {:?}",
        started.elapsed()
    );
    // The delayed one comes due, is seen as revoked and never runs.
    poll(
        "delayed revoked entry consumed",
        Duration::from_secs(5),
        || async {
            let s = r.stem.admin().stats(QUEUE).await?;
            Ok((s.delayed == 0 && s.ready == 0 && s.inflight == 0).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        r.counter.load(Ordering::SeqCst),
        0,
        "the revoked task never ran"
    );
    assert_eq!(
        r.stem.status(&later).await?.map(|s| s.state),
        Some(TaskState::Cancelled)
    );
    r.finish().await
}

pub async fn control_plane_reaches_the_worker(a: Adapters) -> anyhow::Result<()> {
    use stem::control::{Command, ControlCommand};
    // A long fetch block: a pause answered while a read still blocks on
    // the queue would let that read take the task enqueued next.
    let r = rig_with(a, None, None, |o| {
        o.heartbeat_interval = Duration::from_millis(200);
        o.fetch_block = Duration::from_secs(2);
    });
    let control = r.stem.control();
    let workers = poll("heartbeat", Duration::from_secs(5), || async {
        let w = control.workers().await?;
        Ok((!w.is_empty()).then_some(w))
    })
    .await?;
    assert_eq!(
        (workers[0].name.as_str(), workers[0].queues.clone()),
        ("rt-worker", vec![QUEUE.to_string()])
    );
    // The subscription may start just after the heartbeat: retry the ping.
    let pong = poll("ping reply", Duration::from_secs(5), || async {
        let cmd = ControlCommand::of(&Command::Ping, vec![]);
        control.send(&cmd).await?;
        let replies = control
            .replies(&cmd.id, 1, Duration::from_millis(300))
            .await?;
        Ok(replies.into_iter().next())
    })
    .await?;
    assert!(pong.ok && pong.worker == "rt-worker");
    let running = r.stem.enqueue::<Sleepy>(1000).await?;
    poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&running)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let cmd = ControlCommand::of(&Command::Inspect, vec!["rt-worker".into()]);
    control.send(&cmd).await?;
    let inspect = control.replies(&cmd.id, 1, Duration::from_secs(3)).await?;
    assert_eq!(inspect[0].payload["active"][0]["id"], json!(running));
    let nobody = ControlCommand::of(&Command::Ping, vec!["no-such-worker".into()]);
    control.send(&nobody).await?;
    assert!(control
        .replies(&nobody.id, 1, Duration::from_millis(300))
        .await?
        .is_empty());
    // Pause: persisted, and the worker stops fetching from the queue.
    control.set_paused(&[QUEUE.to_string()], true).await?;
    let cmd = ControlCommand::of(
        &Command::Pause {
            queues: vec![QUEUE.into()],
        },
        vec![],
    );
    control.send(&cmd).await?;
    assert_eq!(
        control.replies(&cmd.id, 1, Duration::from_secs(5)).await?[0].payload["paused"],
        json!([QUEUE])
    );
    r.wait(&running).await?;
    // The reply came after any read already blocking on the queue ended,
    // so nothing enqueued from now on is fetched. A fetching worker would
    // take it within milliseconds (a blocking read wakes on the publish);
    // a second of it staying queued shows the pause.
    let held_back = r.stem.enqueue::<Add>((1, 1)).await?;
    stem_testkit::holds(
        "paused queue not fetched",
        Duration::from_secs(1),
        || async {
            Ok(r.stem.status(&held_back).await?.map(|s| s.state) == Some(TaskState::Queued))
        },
    )
    .await?;
    control.set_paused(&[QUEUE.to_string()], false).await?;
    let cmd = ControlCommand::of(
        &Command::Resume {
            queues: vec![QUEUE.into()],
        },
        vec![],
    );
    control.send(&cmd).await?;
    control.replies(&cmd.id, 1, Duration::from_secs(3)).await?;
    assert_eq!(r.wait(&held_back).await?.state, TaskState::Succeeded);
    // Shutdown over the control plane stops the worker; its record goes.
    let cmd = ControlCommand::of(&Command::Shutdown, vec![]);
    control.send(&cmd).await?;
    assert_eq!(
        control.replies(&cmd.id, 1, Duration::from_secs(3)).await?[0].payload["status"],
        json!("stopping")
    );
    tokio::time::timeout(Duration::from_secs(10), r.worker).await???;
    assert!(
        control.workers().await?.is_empty(),
        "a stopped worker is forgotten"
    );
    Ok(())
}

/// Workers add what finished to the per-minute throughput history with
/// their heartbeats, and the history reads it back by minute.
pub async fn finished_tasks_are_counted_per_minute(a: Adapters) -> anyhow::Result<()> {
    let r = rig_with(a, None, None, |o| {
        o.heartbeat_interval = Duration::from_millis(200);
    });
    let began = stem::envelope::now_ms();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(r.stem.enqueue::<Add>((n, 1)).await?);
    }
    ids.push(r.stem.enqueue::<Fatal>(()).await?);
    for id in &ids {
        r.wait(id).await?;
    }
    let control = r.stem.control();
    let total = poll(
        "the history to count them",
        Duration::from_secs(5),
        || async {
            let minutes = control
                .throughput(began - 60_000, stem::envelope::now_ms())
                .await?;
            let mut sum = stem::control::Throughput::default();
            for (minute, t) in &minutes {
                assert_eq!(minute % 60_000, 0, "whole minutes");
                sum.succeeded += t.succeeded;
                sum.failed += t.failed;
                sum.retried += t.retried;
            }
            Ok((sum.succeeded == 3 && sum.failed == 1).then_some(sum))
        },
    )
    .await?;
    assert_eq!(total.retried, 0);
    r.finish().await
}

/// A worker that stops forgets its own record only: another process
/// started under the same name meanwhile stays listed.
pub async fn a_stopping_worker_forgets_only_its_own_record(a: Adapters) -> anyhow::Result<()> {
    let control = a.stores.control.clone();
    let info = |started_at: i64| stem::control::WorkerInfo {
        name: "same-name".into(),
        namespace: "stem".into(),
        queues: vec![QUEUE.to_string()],
        paused: Vec::new(),
        host: "h".into(),
        pid: 1,
        concurrency: 1,
        prefetch: 1,
        inflight: 0,
        started_at,
        heartbeat_at: stem::envelope::now_ms(),
        started: 0,
        succeeded: 0,
        failed: 0,
        retried: 0,
    };
    let ttl = Duration::from_secs(30);
    control.heartbeat(&info(1_000), ttl).await?;
    // The successor's first heartbeat lands before the old one's goodbye.
    control.heartbeat(&info(2_000), ttl).await?;
    control.forget("same-name", 1_000).await?;
    let live = control.workers().await?;
    assert_eq!(
        live.iter().map(|w| w.started_at).collect::<Vec<_>>(),
        [2_000],
        "the successor stays"
    );
    control.forget("same-name", 2_000).await?;
    assert!(control.workers().await?.is_empty());
    Ok(())
}

/// A body that runs longer than RUNNING_AFTER shows `running` without
/// reporting progress; a quick one goes straight to its result.
pub async fn long_bodies_are_marked_running(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let long = r.stem.enqueue::<Quiet>(600).await?;
    let s = poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&long)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    assert_eq!(s.attempt, 0);
    assert_eq!(r.wait(&long).await?.result, json!(600));
    let quick = r.stem.enqueue::<Quiet>(0).await?;
    assert_eq!(r.wait(&quick).await?.state, TaskState::Succeeded);
    r.finish().await
}
