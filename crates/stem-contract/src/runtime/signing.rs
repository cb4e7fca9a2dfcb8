//! Signing on a real worker: forged, unsigned and misconfigured envelopes
//! never run, forged copies leave the real task alone (also when replayed),
//! rotated keys all verify.

use super::*;

pub async fn forged_and_unsigned_envelopes_never_run(a: Adapters) -> anyhow::Result<()> {
    let good = generate_hmac_secret();
    let other = generate_hmac_secret();
    let worker_ring = keys("k1", &[("k1", &good)]);
    let counter_probe;
    let r = {
        let r = rig_with(
            a,
            keys("k1", &[("k1", &other)]).signer()?,
            worker_ring.verifier(),
            |_| {},
        );
        counter_probe = r.counter.clone();
        r
    };
    // A rejected envelope is dead-lettered and never runs. These two are
    // their producers' own envelopes (the status records their
    // fingerprints), so their tasks fail as `signature-invalid` (README
    // "Security"); forged copies of a real task are
    // `forged_copies_leave_the_real_tasks_status_alone`.
    let forged = r.stem.enqueue::<Flaky>(0).await?;
    let unsigned = r.stem.clone().with_signer(None);
    let id = unsigned.enqueue::<Flaky>(0).await?;
    let dead = poll("two dead letters", Duration::from_secs(10), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((d.len() == 2).then_some(d))
    })
    .await?;
    let mut claimed: Vec<String> = dead.iter().filter_map(|d| d.task_id()).collect();
    claimed.sort();
    let mut expected = vec![forged.clone(), id.clone()];
    expected.sort();
    assert_eq!(claimed, expected, "each dead letter keeps its envelope");
    for task in [&forged, &id] {
        let s = r.stem.status(task).await?.expect("the producer's status");
        assert_eq!(s.state, TaskState::Failed, "{s:?}");
    }
    assert_eq!(counter_probe.load(Ordering::SeqCst), 0, "no body ran");
    assert!(dead.iter().all(|d| d.reason == "signature-invalid"));
    r.finish().await
}

/// A producer whose key the worker does not know (another secret under a
/// known id, an unknown id, no key at all): its tasks end `failed` with
/// reason `signature-invalid`, so a waiter gets an answer, and never run.
pub async fn a_misconfigured_producers_tasks_fail_as_signature_invalid(
    a: Adapters,
) -> anyhow::Result<()> {
    let (good, other) = (generate_hmac_secret(), generate_hmac_secret());
    let r = rig_with(
        a,
        keys("k1", &[("k1", &other)]).signer()?,
        keys("k1", &[("k1", &good)]).verifier(),
        |_| {},
    );
    let wrong_secret = r.stem.enqueue::<Flaky>(0).await?;
    let unknown_id = r
        .stem
        .clone()
        .with_signer(keys("k9", &[("k9", &good)]).signer()?)
        .enqueue::<Flaky>(0)
        .await?;
    let unsigned = r
        .stem
        .clone()
        .with_signer(None)
        .enqueue::<Add>((1, 2))
        .await?;
    // A chain whose first step is refused: the step fails, the rest is
    // cancelled, as after any failure.
    let chain = r
        .stem
        .chain(vec![
            EnqueueRequest::new("math.add", json!([1, 1])),
            EnqueueRequest::new("math.add", json!([2, 2])),
        ])
        .await?;
    for id in [&wrong_secret, &unknown_id, &unsigned, &chain.task_ids[0]] {
        let s = r.wait(id).await?;
        assert_eq!(s.state, TaskState::Failed, "{s:?}");
        let e = s.error.as_ref().expect("an error");
        assert_eq!(e.kind.as_str(), "signature-invalid", "{s:?}");
        assert_eq!(e.reason.as_deref(), Some("signature-invalid"), "{s:?}");
        assert_eq!(s.attempt, 0, "{s:?}");
    }
    let rest = r.wait(&chain.task_ids[1]).await?;
    assert_eq!(rest.state, TaskState::Cancelled, "{rest:?}");
    // The failed status is written before the dead letter (so a genuine
    // envelope's failure lands first): wait for the letters.
    let dead = poll("four dead letters", Duration::from_secs(10), || async {
        let dead = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((dead.len() >= 4).then_some(dead))
    })
    .await?;
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().all(|d| d.reason == "signature-invalid"));
    assert_eq!(r.counter.load(Ordering::SeqCst), 0, "no body ran");
    r.finish().await
}

/// Forged or altered copies of a real task (its id with a bad signature,
/// another body under its real signature, no signature) are dead-lettered
/// and leave the real task's status exactly as it was, queued or
/// succeeded.
pub async fn forged_copies_leave_the_real_tasks_status_alone(a: Adapters) -> anyhow::Result<()> {
    use stem::broker::Outgoing;
    use stem::envelope::WireEnvelope;
    let secret = generate_hmac_secret();
    let ring = keys("k1", &[("k1", &secret)]);
    let signer = ring.signer()?.expect("a signer");
    let r = rig_with(a, Some(signer.clone()), ring.verifier(), |_| {});
    let copies_of = |spec: &stem::envelope::TaskSpec| -> anyhow::Result<Vec<WireEnvelope>> {
        let body = spec.to_body()?;
        let real = WireEnvelope {
            signature: Some(signer.sign(&body)),
            key_id: Some("k1".into()),
            body: body.clone(),
            attempt: 0,
        };
        let mut altered = spec.clone();
        altered.args = json!([100, 100]);
        Ok(vec![
            WireEnvelope {
                signature: Some("Zm9yZ2Vk".into()),
                ..real.clone()
            },
            WireEnvelope {
                body: altered.to_body()?,
                ..real.clone()
            },
            WireEnvelope {
                key_id: None,
                signature: None,
                ..real.clone()
            },
            real,
        ])
    };
    let spec_of = |id: String| {
        let query = stem::recent::TaskQuery {
            text: Some(id),
            page: 1,
            page_size: 25,
            ..Default::default()
        };
        let stem = r.stem.clone();
        async move {
            poll("the indexed spec", Duration::from_secs(5), || async {
                let page = stem.find_tasks(&query).await?;
                Ok(page.rows.into_iter().next().map(|row| row.spec))
            })
            .await
        }
    };
    let mut letters = 0;
    let mut forge = |copies: Vec<WireEnvelope>| {
        letters += copies.len();
        let (stem, want) = (r.stem.clone(), letters);
        async move {
            stem.broker()
                .publish(
                    copies
                        .into_iter()
                        .map(|wire| Outgoing {
                            queue: QUEUE.into(),
                            priority: 9,
                            not_before_ms: None,
                            wire,
                        })
                        .collect(),
                )
                .await?;
            // The status is settled before the dead letter is written.
            poll("the forged letters", Duration::from_secs(10), || async {
                let d = stem.admin().list_dead_letters(QUEUE, 50).await?;
                Ok((d.len() == want).then_some(()))
            })
            .await
        }
    };

    // Queued: a countdown keeps the real envelope out of the worker's way.
    let waiting = r
        .stem
        .enqueue_with::<Add>(
            (1, 2),
            EnqueueOptions {
                countdown: Some(Duration::from_secs(120)),
                ..Default::default()
            },
        )
        .await?;
    let spec = spec_of(waiting.clone()).await?;
    let mut copies = copies_of(&spec)?;
    let real = copies.pop().expect("the real envelope");
    let before = r.stem.status(&waiting).await?.expect("queued");
    assert_eq!(before.state, TaskState::Queued);
    assert_eq!(
        before.fingerprint.as_deref(),
        Some(real.fingerprint().as_str()),
        "the producer records its envelope's fingerprint"
    );
    forge(copies).await?;
    assert_eq!(
        r.stem.status(&waiting).await?,
        Some(before.clone()),
        "queued stays"
    );
    // The genuine envelope itself, copied into another queue whose worker
    // holds other keys: rejected there, and still nothing changes (its
    // spec names another queue, so it is not the envelope the producer
    // delivered).
    const ELSEWHERE: &str = "rt-elsewhere";
    let stop = CancellationToken::new();
    let mut o = WorkerConfig::new("rt-elsewhere-worker", &[ELSEWHERE]);
    o.fetch_block = Duration::from_millis(200);
    let stranger = keys("k1", &[("k1", &generate_hmac_secret())]).verifier();
    let elsewhere = tokio::spawn(Worker::new(o, &r.stem, stranger).run(stop.clone()));
    r.stem
        .broker()
        .publish(vec![Outgoing {
            queue: ELSEWHERE.into(),
            priority: 0,
            not_before_ms: None,
            wire: real,
        }])
        .await?;
    poll(
        "the moved copy's letter",
        Duration::from_secs(10),
        || async {
            let d = r.stem.admin().list_dead_letters(ELSEWHERE, 10).await?;
            Ok(d.into_iter().find(|d| d.reason == "signature-invalid"))
        },
    )
    .await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), elsewhere).await???;
    assert_eq!(
        r.stem.status(&waiting).await?,
        Some(before),
        "a genuine envelope moved to another queue changes nothing"
    );

    // Succeeded.
    let done = r.stem.enqueue::<Add>((2, 3)).await?;
    assert_eq!(r.wait(&done).await?.state, TaskState::Succeeded);
    let before = r.stem.status(&done).await?.expect("succeeded");
    let mut copies = copies_of(&spec_of(done.clone()).await?)?;
    copies.pop();
    forge(copies).await?;
    assert_eq!(
        r.stem.status(&done).await?,
        Some(before),
        "the result stands"
    );
    let dead = r.stem.admin().list_dead_letters(QUEUE, 50).await?;
    assert!(
        dead.iter().all(|d| d.reason == "signature-invalid"),
        "{dead:?}"
    );
    r.finish().await
}

pub async fn rotated_keys_all_verify(a: Adapters) -> anyhow::Result<()> {
    let (old, new) = (generate_hmac_secret(), generate_hmac_secret());
    let both = [("old", old.as_str()), ("new", new.as_str())];
    let r = rig_with(
        a,
        keys("old", &both).signer()?,
        keys("new", &both).verifier(),
        |_| {},
    );
    let first = r.stem.enqueue::<Add>((1, 2)).await?;
    let rotated = r.stem.clone().with_signer(keys("new", &both).signer()?);
    let second = rotated.enqueue::<Add>((3, 4)).await?;
    assert_eq!(r.wait(&first).await?.state, TaskState::Succeeded);
    assert_eq!(r.wait(&second).await?.state, TaskState::Succeeded);
    r.finish().await
}

/// Replaying a forged dead letter (a copy of a real task's spec with a
/// bad signature) does not reopen the real task: its result stands.
pub async fn replaying_a_forged_letter_leaves_the_real_task_alone(
    a: Adapters,
) -> anyhow::Result<()> {
    use stem::broker::Outgoing;
    let r = rig(a);
    let real = r.stem.enqueue::<Add>((1, 2)).await?;
    assert_eq!(r.wait(&real).await?.state, TaskState::Succeeded);
    let query = stem::recent::TaskQuery {
        text: Some(real.clone()),
        page: 1,
        page_size: 25,
        ..Default::default()
    };
    let spec = poll("the indexed spec", Duration::from_secs(5), || async {
        let page = r.stem.find_tasks(&query).await?;
        Ok(page.rows.into_iter().next().map(|row| row.spec))
    })
    .await?;
    let forged = stem::envelope::WireEnvelope {
        body: spec.to_body()?,
        key_id: Some("k1".into()),
        signature: Some("Zm9yZ2Vk".into()),
        attempt: 0,
    };
    r.stem
        .broker()
        .publish(vec![Outgoing {
            queue: QUEUE.into(),
            priority: 0,
            not_before_ms: None,
            wire: forged,
        }])
        .await?;
    let letter = poll("the forged letter", Duration::from_secs(10), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok(d.into_iter().find(|d| d.reason == "signature-invalid"))
    })
    .await?;
    let replayed = r.stem.replay_dead_letter(QUEUE, &letter).await?;
    assert!(replayed.is_some(), "the letter is replayed");
    let s = r.stem.status(&real).await?.expect("status");
    assert_eq!(
        (s.state, s.attempt),
        (TaskState::Succeeded, 0),
        "the real task's result stands"
    );
    r.finish().await
}
