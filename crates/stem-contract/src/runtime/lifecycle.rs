//! A worker's life: the prefetch bound, graceful shutdown, blocking bodies
//! that keep their leases, and finding recent tasks.

use super::*;

pub async fn prefetch_bound_and_graceful_shutdown(a: Adapters) -> anyhow::Result<()> {
    let r = rig_with(a, None, None, |o| {
        o.concurrency = 2;
        o.prefetch_multiplier = 1;
        o.shutdown_grace = Duration::from_millis(300);
    });
    // No body can finish before 400 ms have passed since this instant.
    let began = std::time::Instant::now();
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(r.stem.enqueue::<Sleepy>(400).await?);
        }
        v
    };
    let admin = r.stem.admin();
    let mut most = 0;
    for _ in 0..20 {
        let s = admin.stats(QUEUE).await?;
        // Running (≤ concurrency) plus fetched-but-not-started
        // (≤ concurrency × prefetch); once bodies finish, also the finished
        // ones awaiting their batched settle (they no longer count against
        // the bound; here at most one per slot, as a settle takes
        // milliseconds and a body 400).
        let bound = if began.elapsed() < Duration::from_millis(400) {
            4
        } else {
            6
        };
        assert!(
            s.inflight <= bound,
            "held {} > {bound}: concurrency + concurrency × prefetch (+ settling)",
            s.inflight
        );
        most = most.max(s.inflight);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The bound was tested against a worker that was holding work.
    assert!(
        most >= 2,
        "the worker never held its two running tasks ({most})"
    );
    let long = r.stem.enqueue::<Sleepy>(1400).await?;
    poll("long task running", Duration::from_secs(10), || async {
        Ok(r.stem
            .status(&long)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let stem = r.stem.clone();
    let adapters = r.shutdown().await?;
    let s = stem.status(&long).await?.expect("status");
    assert_ne!(
        s.state,
        TaskState::Succeeded,
        "grace was shorter than the task"
    );
    let stats = stem.admin().stats(QUEUE).await?;
    assert_eq!(stats.inflight, 0, "nothing left leased after shutdown");
    assert!(stats.ready >= 1, "the long task was handed back");

    // A new worker finishes everything: nothing was lost at the stop, and
    // the long task was handed back at the same attempt, not failed.
    let next = rig_with(adapters, None, None, |o| o.concurrency = 4);
    for id in ids.iter().chain([&long]) {
        let s = next.wait(id).await?;
        assert_eq!(s.state, TaskState::Succeeded, "{s:?}");
        assert_eq!(s.attempt, 0, "handed back, not retried: {s:?}");
    }
    assert_eq!(next.wait(&long).await?.result, json!("slept 1400"));
    next.finish().await
}

/// Bodies that block their thread, on the blocking pool: the worker's two
/// executor threads stay free, so its leases are renewed, and a second
/// worker that recovers everything idle for a second finds nothing to take
/// while the bodies run for 2.5 s (S1 of issue 9: blocking bodies polled on
/// the executor starved renewal, and other workers ran them again).
pub async fn blocking_bodies_off_the_executor_keep_their_leases(a: Adapters) -> anyhow::Result<()> {
    let vt = Duration::from_secs(1);
    // The other worker runs on a runtime of its own, with stores of its own
    // on the same Redis (or the same in-memory stores).
    let thief_stores = a.second_process()?;
    let r = rig_with(a, None, None, |o| {
        o.concurrency = 2;
        o.visibility_timeout = vt;
    });
    let thief_stem = Stem::new(thief_stores, None, registry(r.counter.clone()));
    let stop = CancellationToken::new();
    let thief = std::thread::spawn({
        let stop = stop.clone();
        move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut o = WorkerConfig::new("rt-thief", &[QUEUE]);
            o.visibility_timeout = vt;
            o.fetch_block = Duration::from_millis(200);
            rt.block_on(Worker::new(o, &thief_stem, None).run(stop))?;
            Ok(())
        }
    });
    let ids = [
        r.stem.enqueue::<Offloaded>(2500).await?,
        r.stem.enqueue::<Offloaded>(2500).await?,
    ];
    for id in &ids {
        let s = r.wait(id).await?;
        assert_eq!(s.state, TaskState::Succeeded, "{s:?}");
        assert_eq!(s.result, json!(2500));
    }
    stop.cancel();
    thief
        .join()
        .map_err(|_| anyhow::anyhow!("the second worker's thread panicked"))??;
    assert_eq!(
        r.counter.load(Ordering::SeqCst),
        2,
        "each body ran once: no lease was lost while they blocked"
    );
    r.finish().await
}

/// The recent-task index finds every published task (plain, with an
/// idempotency key, a chain's later step) newest first, by state, task,
/// text in args or error, page by page, and holds each one's args.
pub async fn recent_tasks_are_found_by_state_task_and_text(a: Adapters) -> anyhow::Result<()> {
    use stem::recent::TaskQuery;
    let r = rig(a);
    let plain = r.stem.enqueue::<Add>((4242, 1)).await?;
    let keyed = r
        .stem
        .enqueue_with::<Add>(
            (7, 7),
            EnqueueOptions {
                idempotency_key: Some("recent-once".into()),
                ..Default::default()
            },
        )
        .await?;
    let fatal = r.stem.enqueue::<Fatal>(()).await?;
    let step = |a: i64, b: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, b]),
        options: EnqueueOptions::default(),
    };
    let chain = r.stem.chain(vec![step(1, 1), step(0, 31337)]).await?;
    for id in [&plain, &keyed, &fatal, &chain.task_ids[1]] {
        r.wait(id).await?;
    }
    let find = |q: TaskQuery| {
        let stem = r.stem.clone();
        async move {
            let page = stem.find_tasks(&q).await?;
            anyhow::Ok(page)
        }
    };
    // A busy producer's index writes land together within 100 ms.
    let all = poll("five indexed tasks", Duration::from_secs(5), || async {
        let all = find(TaskQuery {
            page: 1,
            page_size: 25,
            ..Default::default()
        })
        .await?;
        Ok((all.rows.len() == 5).then_some(all))
    })
    .await?;
    let ids: Vec<&str> = all.rows.iter().map(|r| r.spec.id.as_str()).collect();
    // The chain's first step is published with the chain; its second when
    // the first finished, after the other three.
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], chain.task_ids[1], "newest first: {ids:?}");
    assert_eq!(&ids[2..], [&fatal, &keyed, &plain], "{ids:?}");
    assert!(all.complete && !all.has_more);
    assert!(
        all.rows.iter().all(|r| r.status.is_some()),
        "rows carry statuses"
    );
    let failed = find(TaskQuery {
        state: Some(TaskState::Failed),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        failed
            .rows
            .iter()
            .map(|r| r.spec.id.as_str())
            .collect::<Vec<_>>(),
        [&fatal]
    );
    let by_args = find(TaskQuery {
        text: Some("4242".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(by_args.rows.len(), 1);
    assert_eq!(by_args.rows[0].spec.args, json!([4242, 1]));
    let by_error = find(TaskQuery {
        text: Some("BAD INPUT".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(by_error.rows.len(), 1, "text matches the error, any case");
    assert_eq!(by_error.rows[0].spec.id, fatal);
    let adds = find(TaskQuery {
        task: Some("math.add".into()),
        queue: Some(QUEUE.into()),
        page: 2,
        page_size: 2,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        adds.rows
            .iter()
            .map(|r| r.spec.id.as_str())
            .collect::<Vec<_>>(),
        [&keyed, &plain],
        "page 2 of math.add, two a page"
    );
    assert!(!adds.has_more);
    let first = find(TaskQuery {
        task: Some("math.add".into()),
        page: 1,
        page_size: 2,
        ..Default::default()
    })
    .await?;
    assert!(first.has_more, "page 1 of 2 says more follow");
    let none = find(TaskQuery {
        queue: Some("no-such-queue".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert!(none.rows.is_empty() && none.complete);
    let spec = r.stem.status(&keyed).await?.expect("status");
    let entry = r
        .stem
        .admin()
        .find_recent(
            QUEUE,
            &keyed,
            stem::envelope::parse_ms(&spec.created_at).unwrap_or(0),
        )
        .await?
        .expect("the index holds the keyed task");
    assert_eq!(entry.spec()?.args, json!([7, 7]));
    r.finish().await
}
