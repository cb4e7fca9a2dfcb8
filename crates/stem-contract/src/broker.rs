//! The broker contract: publish, fetch, priorities, due lanes, leases and
//! their recovery, delays, retries, hand-backs, dead letters, purges and
//! blocking fetches, on any [`stem::broker::Broker`] + `QueueAdmin`.
//! [`wire`], [`out`], [`task`] and [`q`] are public so that a store's own
//! tests (what only that store can show) build entries the same way.

use std::time::{Duration, Instant};

use crate::{poll, Adapters};
use stem::broker::{Fetched, NewDeadLetter, Outgoing};
use stem::envelope::{new_task_id, now_ms, TaskSpec, WireEnvelope};

/// A signed-looking envelope of a no-op task for `queue` at `priority`.
pub fn wire(queue: &str, priority: u8) -> WireEnvelope {
    let spec = TaskSpec {
        id: new_task_id(),
        name: "contract.task".into(),
        queue: queue.into(),
        args: serde_json::json!({"n": 1}),
        headers: Default::default(),
        meta: Default::default(),
        enqueued_at: now_ms(),
        max_retries: 1,
        priority,
    };
    WireEnvelope {
        body: spec.to_body().expect("body"),
        key_id: Some("k".into()),
        signature: Some("c2ln".into()),
        attempt: 0,
    }
}

/// `w` as published to `queue` at `priority`, ready at once.
pub fn out(queue: &str, priority: u8, w: &WireEnvelope) -> Outgoing {
    Outgoing {
        queue: queue.into(),
        priority,
        not_before_ms: None,
        wire: w.clone(),
    }
}

/// The delivery of a fetched entry (panics on a malformed one).
pub fn task(f: &Fetched) -> &stem::broker::Delivery {
    match f {
        Fetched::Task(d) => d,
        Fetched::Malformed(m) => panic!("unexpected malformed entry: {}", m.error),
    }
}

/// One queue name as the list the broker calls take.
pub fn q(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

/// A fetch that does not wait.
pub const NO_BLOCK: Duration = Duration::from_millis(1);

/// A publish-once marker guards its queue: the first publish sets it and
/// publishes, a second with the same marker publishes nothing and answers
/// the first value; the same marker on another queue is another marker;
/// after its ttl the marker is gone.
pub async fn publish_once_publishes_once_per_marker(a: Adapters) -> anyhow::Result<()> {
    use stem::broker::SubmitOnce;
    a.broker
        .register_queues(&["o1".into(), "o2".into()])
        .await?;
    let once = |value: &'static str, ttl_ms: u64| SubmitOnce {
        marker: "idem:k",
        value,
        ttl: Duration::from_millis(ttl_ms),
        status: None,
    };
    let first = wire("o1", 0);
    let got = a
        .broker
        .publish_once(&once("first", 60_000), out("o1", 0, &first))
        .await?;
    assert_eq!(got, None, "the first publish goes out");
    let again = a
        .broker
        .publish_once(&once("second", 60_000), out("o1", 0, &wire("o1", 0)))
        .await?;
    assert_eq!(again.as_deref(), Some("first"), "the marker answers");
    assert_eq!(a.admin.stats("o1").await?.ready, 1, "published once");
    let other = a
        .broker
        .publish_once(&once("other", 60_000), out("o2", 0, &wire("o2", 0)))
        .await?;
    assert_eq!(other, None, "a marker belongs to its queue");

    let brief = a
        .broker
        .publish_once(
            &SubmitOnce {
                marker: "idem:brief",
                ..once("brief", 200)
            },
            out("o1", 0, &wire("o1", 0)),
        )
        .await?;
    assert_eq!(brief, None);
    poll(
        "the brief marker to expire",
        Duration::from_secs(5),
        || async {
            let r = a
                .broker
                .publish_once(
                    &SubmitOnce {
                        marker: "idem:brief",
                        ..once("later", 200)
                    },
                    out("o1", 0, &wire("o1", 0)),
                )
                .await?;
            Ok(r.is_none().then_some(()))
        },
    )
    .await?;
    assert_eq!(a.admin.stats("o1").await?.ready, 3);
    Ok(())
}

pub async fn publish_fetch_ack_empties_the_queue(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c1")).await?;
    let w = wire("c1", 0);
    a.broker.publish(vec![out("c1", 0, &w)]).await?;
    assert_eq!(a.admin.stats("c1").await?.ready, 1);
    let got = a
        .broker
        .fetch("w1", &q("c1"), 10, Duration::from_secs(1))
        .await?;
    assert_eq!(got.len(), 1);
    let d = task(&got[0]);
    assert_eq!(
        d.wire, w,
        "body, key id, signature and attempt survive the trip"
    );
    let s = a.admin.stats("c1").await?;
    assert_eq!((s.ready, s.inflight), (0, 1));
    a.broker.ack(std::slice::from_ref(&d.receipt)).await?;
    let s = a.admin.stats("c1").await?;
    assert_eq!((s.ready, s.inflight), (0, 0));
    assert!(a
        .broker
        .fetch("w1", &q("c1"), 10, NO_BLOCK)
        .await?
        .is_empty());
    assert!(a.admin.known_queues().await?.contains(&"c1".to_string()));
    Ok(())
}

/// Stats date the oldest ready entry and move on once it is delivered.
pub async fn the_oldest_ready_entry_is_dated(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c20")).await?;
    assert_eq!(a.admin.stats("c20").await?.oldest_ready_ms, None);
    let before = stem::envelope::now_ms();
    a.broker
        .publish(vec![out("c20", 0, &wire("c20", 0))])
        .await?;
    let between = stem::envelope::now_ms();
    a.broker
        .publish(vec![out("c20", 0, &wire("c20", 0))])
        .await?;
    let after = stem::envelope::now_ms();
    let within = |t: Option<i64>, from: i64, to: i64| t.is_some_and(|t| (from..=to).contains(&t));
    let oldest = a.admin.stats("c20").await?.oldest_ready_ms;
    assert!(
        within(oldest, before, between),
        "{oldest:?} not in {before}..={between}"
    );
    // The first is delivered: the second is now the oldest ready.
    a.broker.fetch("w1", &q("c20"), 1, NO_BLOCK).await?;
    let next = a.admin.stats("c20").await?.oldest_ready_ms;
    assert!(
        within(next, between, after),
        "{next:?} not in {between}..={after}"
    );
    a.broker.fetch("w1", &q("c20"), 1, NO_BLOCK).await?;
    assert_eq!(a.admin.stats("c20").await?.oldest_ready_ms, None);
    Ok(())
}

pub async fn fetch_takes_at_most_max(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c2")).await?;
    let batch = (0..5).map(|_| out("c2", 0, &wire("c2", 0))).collect();
    a.broker.publish(batch).await?;
    let got = a.broker.fetch("w1", &q("c2"), 2, NO_BLOCK).await?;
    assert_eq!(got.len(), 2);
    assert_eq!(a.admin.stats("c2").await?.ready, 3);
    Ok(())
}

pub async fn higher_priority_is_fetched_first(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c3")).await?;
    for p in [0u8, 0, 9, 5] {
        a.broker.publish(vec![out("c3", p, &wire("c3", p))]).await?;
    }
    let got = a.broker.fetch("w1", &q("c3"), 10, NO_BLOCK).await?;
    let bands: Vec<u8> = got
        .iter()
        .map(|f| stem::broker::lane_band(f.receipt().lane))
        .collect();
    assert_eq!(bands, vec![9, 5, 0, 0]);
    let first = a.broker.fetch("w1", &q("c3"), 1, NO_BLOCK).await?;
    assert!(first.is_empty());
    Ok(())
}

/// A delayed or retried entry that falls due starts before the backlog of
/// its own band (`docs/architecture.md`, "Due lanes"), and still after
/// ready work of higher bands.
pub async fn due_entries_start_ahead_of_their_bands_backlog(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c13")).await?;
    let backlog: Vec<WireEnvelope> = (0..3).map(|_| wire("c13", 0)).collect();
    a.broker
        .publish(backlog.iter().map(|w| out("c13", 0, w)).collect())
        .await?;
    let higher = wire("c13", 5);
    a.broker.publish(vec![out("c13", 5, &higher)]).await?;
    let (due_low, due_high) = (wire("c13", 0), wire("c13", 9));
    for (p, w) in [(0u8, &due_low), (9, &due_high)] {
        let mut o = out("c13", p, w);
        o.not_before_ms = Some(now_ms() + 60_000);
        a.broker.publish(vec![o]).await?;
    }
    // Promotion as it runs a minute later.
    assert_eq!(a.broker.promote_due(&q("c13"), now_ms() + 61_000).await?, 2);
    let got = a.broker.fetch("w1", &q("c13"), 10, NO_BLOCK).await?;
    let id = |w: &WireEnvelope| w.spec().map(|s| s.id).unwrap_or_default();
    let order: Vec<String> = got.iter().map(|f| id(&task(f).wire)).collect();
    let mut want = vec![id(&due_high), id(&higher), id(&due_low)];
    want.extend(backlog.iter().map(id));
    assert_eq!(order, want);
    Ok(())
}

/// A burst of delayed entries falling due together is promoted by one
/// promoter tick, not a fixed batch per tick behind which the rest waits.
pub async fn a_due_burst_is_promoted_in_one_tick(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c14")).await?;
    let due = now_ms() + 60_000;
    let batch = (0..2000)
        .map(|_| {
            let mut o = out("c14", 3, &wire("c14", 3));
            o.not_before_ms = Some(due);
            o
        })
        .collect();
    a.broker.publish(batch).await?;
    assert_eq!(a.broker.promote_due(&q("c14"), due + 1).await?, 2000);
    let s = a.admin.stats("c14").await?;
    assert_eq!((s.ready, s.delayed), (2000, 0));
    Ok(())
}

pub async fn unacked_entry_is_recovered_after_the_lease(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c4")).await?;
    let w = wire("c4", 0);
    a.broker.publish(vec![out("c4", 0, &w)]).await?;
    // Taken before the read: Redis counts idle time from the delivery,
    // which happens between the call and its reply.
    let fetched_at = Instant::now();
    let got = a.broker.fetch("dead-worker", &q("c4"), 1, NO_BLOCK).await?;
    assert_eq!(got.len(), 1);
    let lease = Duration::from_millis(300);
    let recovered = poll("recovery", Duration::from_secs(5), || async {
        let r = a.broker.recover("rescuer", &q("c4"), lease, 10).await?;
        Ok((!r.is_empty()).then_some(r))
    })
    .await?;
    assert!(
        fetched_at.elapsed() >= lease,
        "recovered before the lease expired"
    );
    assert_eq!(recovered.len(), 1);
    assert_eq!(task(&recovered[0]).wire, w);
    Ok(())
}

pub async fn renewed_lease_is_not_recovered(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c5")).await?;
    a.broker.publish(vec![out("c5", 0, &wire("c5", 0))]).await?;
    let got = a.broker.fetch("owner", &q("c5"), 1, NO_BLOCK).await?;
    let receipt = got[0].receipt().clone();
    let lease = Duration::from_millis(300);
    let until = Instant::now() + lease * 4;
    while Instant::now() < until {
        a.broker
            .renew("owner", std::slice::from_ref(&receipt))
            .await?;
        let stolen = a.broker.recover("thief", &q("c5"), lease, 10).await?;
        assert!(stolen.is_empty(), "a renewed lease was recovered");
        tokio::time::sleep(lease / 4).await;
    }
    let recovered = poll(
        "recovery after renewals stop",
        Duration::from_secs(5),
        || async {
            let r = a.broker.recover("thief", &q("c5"), lease, 10).await?;
            Ok((!r.is_empty()).then_some(r))
        },
    )
    .await?;
    assert_eq!(recovered.len(), 1);
    Ok(())
}

pub async fn delayed_entry_waits_for_its_time(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c6")).await?;
    let due = now_ms() + 400;
    let mut o = out("c6", 0, &wire("c6", 0));
    o.not_before_ms = Some(due);
    a.broker.publish(vec![o]).await?;
    let s = a.admin.stats("c6").await?;
    assert_eq!((s.ready, s.delayed), (0, 1), "a delayed entry is not ready");
    assert!(a.broker.fetch("w", &q("c6"), 1, NO_BLOCK).await?.is_empty());
    poll("promotion", Duration::from_secs(5), || async {
        let n = a.broker.promote_due(&q("c6"), now_ms()).await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    assert!(now_ms() >= due, "promoted before its time");
    assert_eq!(a.broker.fetch("w", &q("c6"), 1, NO_BLOCK).await?.len(), 1);
    Ok(())
}

pub async fn retry_raises_attempt_and_keeps_the_signed_body(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c7")).await?;
    let w = wire("c7", 0);
    a.broker.publish(vec![out("c7", 0, &w)]).await?;
    let got = a.broker.fetch("w", &q("c7"), 1, NO_BLOCK).await?;
    let mut next = task(&got[0]).wire.clone();
    next.attempt += 1;
    a.broker
        .retry(got[0].receipt(), next, 0, now_ms() + 200)
        .await?;
    let s = a.admin.stats("c7").await?;
    assert_eq!((s.inflight, s.delayed), (0, 1));
    poll("retry promotion", Duration::from_secs(5), || async {
        Ok((a.broker.promote_due(&q("c7"), now_ms()).await? == 1).then_some(()))
    })
    .await?;
    let again = a.broker.fetch("w", &q("c7"), 1, NO_BLOCK).await?;
    let d = task(&again[0]);
    assert_eq!(d.wire.attempt, 1);
    assert_eq!(
        (d.wire.body.clone(), d.wire.signature.clone()),
        (w.body, w.signature)
    );
    Ok(())
}

pub async fn requeue_makes_the_entry_ready_at_once(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c8")).await?;
    let w = wire("c8", 0);
    a.broker.publish(vec![out("c8", 0, &w)]).await?;
    let got = a.broker.fetch("w", &q("c8"), 1, NO_BLOCK).await?;
    a.broker.requeue(got[0].receipt(), w.clone(), 0).await?;
    let again = a.broker.fetch("w2", &q("c8"), 1, NO_BLOCK).await?;
    assert_eq!(task(&again[0]).wire, w);
    Ok(())
}

pub async fn dead_letters_list_show_replay_purge(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c9")).await?;
    let w = wire("c9", 0);
    a.broker
        .publish(vec![out("c9", 0, &w), out("c9", 0, &wire("c9", 0))])
        .await?;
    let got = a.broker.fetch("w", &q("c9"), 2, NO_BLOCK).await?;
    for f in &got {
        a.broker
            .dead_letter(
                f.receipt(),
                NewDeadLetter {
                    reason: stem::broker::DeadLetterReason::MaxRetriesExhausted,
                    error: Some("boom".into()),
                    wire: Some(task(f).wire.clone()),
                    raw: None,
                },
            )
            .await?;
    }
    let s = a.admin.stats("c9").await?;
    assert_eq!((s.inflight, s.dead), (0, 2));
    let list = a.admin.list_dead_letters("c9", 10).await?;
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .all(|d| d.reason == "max-retries-exhausted" && d.error.as_deref() == Some("boom")));
    let mine = list
        .iter()
        .find(|d| d.wire.as_ref() == Some(&w))
        .expect("dead letter of w");
    let shown = a
        .admin
        .get_dead_letter("c9", &mine.id)
        .await?
        .expect("shown by id");
    assert_eq!(shown.task_id(), w.spec().ok().map(|s| s.id));
    let replayed = a
        .admin
        .replay_dead_letter("c9", &mine.id)
        .await?
        .expect("replayed");
    assert_eq!(replayed.attempt, 1);
    assert!(
        a.admin.replay_dead_letter("c9", &mine.id).await?.is_none(),
        "replayed only once"
    );
    let again = a.broker.fetch("w", &q("c9"), 1, NO_BLOCK).await?;
    let d = task(&again[0]);
    assert_eq!(
        (
            d.wire.body.clone(),
            d.wire.signature.clone(),
            d.wire.attempt
        ),
        (w.body, w.signature, 1)
    );
    assert_eq!(a.admin.purge_dead_letters("c9").await?, 1);
    assert!(a.admin.list_dead_letters("c9", 10).await?.is_empty());
    Ok(())
}

pub async fn purge_empties_ready_and_delayed(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c10")).await?;
    let mut delayed = out("c10", 0, &wire("c10", 0));
    delayed.not_before_ms = Some(now_ms() + 60_000);
    a.broker
        .publish(vec![
            out("c10", 0, &wire("c10", 0)),
            out("c10", 3, &wire("c10", 3)),
            delayed,
        ])
        .await?;
    assert_eq!(a.admin.purge("c10").await?, 3);
    let s = a.admin.stats("c10").await?;
    assert_eq!((s.ready, s.delayed), (0, 0));
    a.broker
        .publish(vec![out("c10", 0, &wire("c10", 0))])
        .await?;
    assert_eq!(
        a.broker.fetch("w", &q("c10"), 5, NO_BLOCK).await?.len(),
        1,
        "usable after purge"
    );
    Ok(())
}

/// Waits until `n` fetches are blocked in the store (on Redis `CLIENT
/// LIST` shows `XREADGROUP` with the `b` flag: [`crate::Harness::blocked_fetches`]),
/// so a test of what a blocked fetch does cannot pass because the fetch
/// had not started yet. A store that shows nothing from outside (the
/// in-memory broker) has these tests check the outcome only (its fetch
/// registers for wake-ups before it looks at the queue).
async fn until_blocked(a: &Adapters, n: usize) -> anyhow::Result<()> {
    if a.blocked_fetches().is_none() {
        return Ok(());
    }
    poll(
        &format!("{n} blocked fetch(es)"),
        Duration::from_secs(5),
        || async {
            let blocked = a.blocked_fetches().transpose()?.unwrap_or(0);
            Ok((blocked >= n).then_some(()))
        },
    )
    .await
}

pub async fn blocked_fetch_does_not_delay_other_queues(a: Adapters) -> anyhow::Result<()> {
    a.broker
        .register_queues(&["ca".to_string(), "cb".to_string()])
        .await?;
    let broker = a.broker.clone();
    let blocked = tokio::spawn(async move {
        broker
            .fetch("wa", &q("ca"), 1, Duration::from_secs(2))
            .await
    });
    until_blocked(&a, 1).await?;
    let start = Instant::now();
    a.broker.publish(vec![out("cb", 0, &wire("cb", 0))]).await?;
    let got = a
        .broker
        .fetch("wb", &q("cb"), 1, Duration::from_secs(1))
        .await?;
    assert_eq!(got.len(), 1);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    assert!(blocked.await??.is_empty());
    Ok(())
}

pub async fn blocking_fetch_wakes_on_publish(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c11")).await?;
    let broker = a.broker.clone();
    let waiting = tokio::spawn(async move {
        let start = Instant::now();
        let got = broker
            .fetch("w", &q("c11"), 1, Duration::from_secs(5))
            .await?;
        anyhow::Ok((got.len(), start.elapsed()))
    });
    until_blocked(&a, 1).await?;
    a.broker
        .publish(vec![out("c11", 0, &wire("c11", 0))])
        .await?;
    let (n, waited) = waiting.await??;
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
    Ok(())
}

/// An empty queue can be forgotten (issue 24, W16): it leaves the known
/// queues, with its recent-task index; a queue holding a task is refused,
/// naming what it holds; an unknown one answers false; a publish makes it
/// known again.
pub async fn an_empty_queue_is_forgotten_and_a_busy_one_refused(a: Adapters) -> anyhow::Result<()> {
    assert!(!a.admin.forget_queue("c33").await?, "unknown queue");
    a.broker.register_queues(&q("c33")).await?;
    a.broker
        .publish(vec![out("c33", 0, &wire("c33", 0))])
        .await?;
    let refused = a.admin.forget_queue("c33").await.expect_err("holds a task");
    assert!(
        matches!(&refused, stem::StemError::InvalidArgument(m) if m.contains("1 ready")),
        "{refused}"
    );
    let got = a.broker.fetch("w", &q("c33"), 1, NO_BLOCK).await?;
    let refused = a
        .admin
        .forget_queue("c33")
        .await
        .expect_err("one in flight");
    assert!(refused.to_string().contains("1 in flight"), "{refused}");
    a.broker
        .ack(std::slice::from_ref(&task(&got[0]).receipt))
        .await?;
    assert!(a.admin.known_queues().await?.contains(&"c33".to_string()));
    assert!(a.admin.forget_queue("c33").await?, "empty: forgotten");
    assert!(!a.admin.known_queues().await?.contains(&"c33".to_string()));
    assert!(a.admin.recent_tasks("c33", None, 10).await?.is_empty());
    assert!(!a.admin.forget_queue("c33").await?, "gone already");
    a.broker
        .publish(vec![out("c33", 0, &wire("c33", 0))])
        .await?;
    assert!(
        a.admin.known_queues().await?.contains(&"c33".to_string()),
        "a publish names it again"
    );
    Ok(())
}

/// Runs the broker contract against each adapter listed as
/// `module => factory` (a `fn() -> anyhow::Result<…>`): one
/// `#[tokio::test]` per (adapter, test), in a module named after the
/// adapter.
#[macro_export]
macro_rules! broker_suite {
    ($($module:ident => $factory:path),* $(,)?) => {
        $crate::__suite!(
            broker;
            [$($module => $factory),*];
            publish_once_publishes_once_per_marker,
            publish_fetch_ack_empties_the_queue,
            the_oldest_ready_entry_is_dated,
            fetch_takes_at_most_max,
            higher_priority_is_fetched_first,
            due_entries_start_ahead_of_their_bands_backlog,
            a_due_burst_is_promoted_in_one_tick,
            unacked_entry_is_recovered_after_the_lease,
            renewed_lease_is_not_recovered,
            delayed_entry_waits_for_its_time,
            retry_raises_attempt_and_keeps_the_signed_body,
            requeue_makes_the_entry_ready_at_once,
            dead_letters_list_show_replay_purge,
            purge_empties_ready_and_delayed,
            blocked_fetch_does_not_delay_other_queues,
            blocking_fetch_wakes_on_publish,
            an_empty_queue_is_forgotten_and_a_busy_one_refused,
        );
    };
}
