//! The broker contract, run against the in-memory and the Redis broker.

mod common;

use std::time::{Duration, Instant};

use common::{poll, Adapters};
use stem::broker::{Fetched, NewDeadLetter, Outgoing};
use stem::envelope::{new_task_id, now_ms, TaskSpec, WireEnvelope};

fn wire(queue: &str, priority: u8) -> WireEnvelope {
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

fn out(queue: &str, priority: u8, w: &WireEnvelope) -> Outgoing {
    Outgoing {
        queue: queue.into(),
        priority,
        not_before_ms: None,
        wire: w.clone(),
    }
}

fn task(f: &Fetched) -> &stem::broker::Delivery {
    match f {
        Fetched::Task(d) => d,
        Fetched::Malformed(m) => panic!("unexpected malformed entry: {}", m.error),
    }
}

fn q(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

const NO_BLOCK: Duration = Duration::from_millis(1);

/// A publish-once marker guards its queue: the first publish sets it and
/// publishes, a second with the same marker publishes nothing and answers
/// the first value; the same marker on another queue is another marker;
/// after its ttl the marker is gone.
async fn publish_once_publishes_once_per_marker(a: Adapters) -> anyhow::Result<()> {
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

async fn publish_fetch_ack_empties_the_queue(a: Adapters) -> anyhow::Result<()> {
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
async fn the_oldest_ready_entry_is_dated(a: Adapters) -> anyhow::Result<()> {
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

async fn fetch_takes_at_most_max(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c2")).await?;
    let batch = (0..5).map(|_| out("c2", 0, &wire("c2", 0))).collect();
    a.broker.publish(batch).await?;
    let got = a.broker.fetch("w1", &q("c2"), 2, NO_BLOCK).await?;
    assert_eq!(got.len(), 2);
    assert_eq!(a.admin.stats("c2").await?.ready, 3);
    Ok(())
}

async fn higher_priority_is_fetched_first(a: Adapters) -> anyhow::Result<()> {
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
async fn due_entries_start_ahead_of_their_bands_backlog(a: Adapters) -> anyhow::Result<()> {
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
async fn a_due_burst_is_promoted_in_one_tick(a: Adapters) -> anyhow::Result<()> {
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

async fn unacked_entry_is_recovered_after_the_lease(a: Adapters) -> anyhow::Result<()> {
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

async fn renewed_lease_is_not_recovered(a: Adapters) -> anyhow::Result<()> {
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

async fn delayed_entry_waits_for_its_time(a: Adapters) -> anyhow::Result<()> {
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

async fn retry_raises_attempt_and_keeps_the_signed_body(a: Adapters) -> anyhow::Result<()> {
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

async fn requeue_makes_the_entry_ready_at_once(a: Adapters) -> anyhow::Result<()> {
    a.broker.register_queues(&q("c8")).await?;
    let w = wire("c8", 0);
    a.broker.publish(vec![out("c8", 0, &w)]).await?;
    let got = a.broker.fetch("w", &q("c8"), 1, NO_BLOCK).await?;
    a.broker.requeue(got[0].receipt(), w.clone(), 0).await?;
    let again = a.broker.fetch("w2", &q("c8"), 1, NO_BLOCK).await?;
    assert_eq!(task(&again[0]).wire, w);
    Ok(())
}

async fn dead_letters_list_show_replay_purge(a: Adapters) -> anyhow::Result<()> {
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

async fn purge_empties_ready_and_delayed(a: Adapters) -> anyhow::Result<()> {
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

/// Waits until `n` fetches are blocked in Redis (`CLIENT LIST` shows
/// `XREADGROUP` with the `b` flag), so a test of what a blocked fetch does
/// cannot pass because the fetch had not started yet. The in-memory broker
/// shows nothing from outside, so on it these tests check the outcome only
/// (its fetch registers for wake-ups before it looks at the queue).
async fn until_blocked(a: &Adapters, n: usize) -> anyhow::Result<()> {
    let Some(redis) = &a.redis else {
        return Ok(());
    };
    poll(
        &format!("{n} blocked fetch(es)"),
        Duration::from_secs(5),
        || async {
            let clients = redis.cli(&["CLIENT", "LIST"])?;
            let blocked = clients
                .lines()
                .filter(|l| l.contains("cmd=xreadgroup") && l.contains(" flags=b "))
                .count();
            Ok((blocked >= n).then_some(()))
        },
    )
    .await
}

async fn blocked_fetch_does_not_delay_other_queues(a: Adapters) -> anyhow::Result<()> {
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

async fn blocking_fetch_wakes_on_publish(a: Adapters) -> anyhow::Result<()> {
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
async fn an_empty_queue_is_forgotten_and_a_busy_one_refused(a: Adapters) -> anyhow::Result<()> {
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

stem_testkit::contract_suite!(
    [
    memory_adapter => crate::common::memory,
    redis_adapter => crate::common::redis,
    redis_colocated => crate::common::redis_colocated,
    redis_cluster => crate::common::cluster,
];
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

/// Redis only: a delayed-set member that does not parse (written by hand
/// or by a foreign producer) does not fail the promoter for its queue: it
/// is moved into band 0's due lane as it is and fetched as a malformed entry with its
/// bytes, beside a valid member promoted as usual.
#[tokio::test]
async fn garbage_delayed_members_are_promoted_as_malformed() -> anyhow::Result<()> {
    let a = common::redis()?;
    let redis = a
        .redis
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no redis"))?;
    a.broker.register_queues(&q("c12")).await?;
    let mut o = out("c12", 2, &wire("c12", 2));
    o.not_before_ms = Some(now_ms() + 50);
    a.broker.publish(vec![o]).await?;
    for member in ["no newline here", "12\nx"] {
        redis.cli(&["ZADD", "stem:{c12}:delayed", "0", member])?;
    }
    poll("promotion", Duration::from_secs(5), || async {
        let moved = a.broker.promote_due(&q("c12"), now_ms()).await?;
        let s = a.admin.stats("c12").await?;
        Ok((moved > 0 && s.delayed == 0).then_some(()))
    })
    .await?;
    let got = a.broker.fetch("w", &q("c12"), 10, NO_BLOCK).await?;
    let mut raw: Vec<String> = got
        .iter()
        .filter_map(|f| match f {
            Fetched::Malformed(m) => Some(m.raw.clone()),
            Fetched::Task(_) => None,
        })
        .collect();
    raw.sort();
    assert_eq!(got.len(), 3, "{raw:?}");
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert!(raw[0].contains("12\\nx"), "{raw:?}");
    assert!(raw[1].contains("no newline here"), "{raw:?}");
    Ok(())
}

/// A queue's recent-task index keeps the newest tasks, newest first,
/// pages by cursor, and drops the oldest past its cap (exactly on the
/// memory broker; on Redis in whole entries of up to 100 tasks, keeping
/// at least the cap). A published then retried task keeps one entry.
#[tokio::test]
async fn the_recent_task_index_is_capped_and_paged() -> anyhow::Result<()> {
    use stem::broker::{memory::MemoryBroker, redis::RedisBroker, Broker, QueueAdmin};
    let server = stem_testkit::RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &Default::default())?;
    let redis = std::sync::Arc::new(RedisBroker::new(client, 1000)?.with_recent_tasks(100));
    let memory = std::sync::Arc::new(MemoryBroker::new().with_recent_tasks(100));
    type Pair = (std::sync::Arc<dyn Broker>, std::sync::Arc<dyn QueueAdmin>);
    let brokers: [(&str, Pair); 2] = [
        ("redis", (redis.clone(), redis)),
        ("memory", (memory.clone(), memory)),
    ];
    for (name, (broker, admin)) in brokers {
        let wires: Vec<WireEnvelope> = (0..350).map(|_| wire("c30", 0)).collect();
        for chunk in wires.chunks(50) {
            broker
                .publish(chunk.iter().map(|w| out("c30", 0, w)).collect())
                .await?;
        }
        let ids: Vec<String> = wires.iter().map(|w| w.spec().expect("spec").id).collect();
        // A busy producer's index writes land together within 100 ms.
        let kept = poll("the index", Duration::from_secs(5), || async {
            let kept = admin.recent_tasks("c30", None, 1000).await?;
            Ok((kept.first().map(|r| r.id.as_str()) == Some(ids[349].as_str())).then_some(kept))
        })
        .await?;
        let kept_ids: Vec<&str> = kept.iter().map(|r| r.id.as_str()).collect();
        assert!(
            (100..=250).contains(&kept.len()),
            "{name}: {} kept",
            kept.len()
        );
        if name == "memory" {
            assert_eq!(kept.len(), 100);
        }
        let newest: Vec<&str> = ids
            .iter()
            .rev()
            .take(kept.len())
            .map(String::as_str)
            .collect();
        assert_eq!(kept_ids, newest, "{name}: the newest, newest first");
        // Entry by entry (one task on the memory broker, one write's
        // tasks on Redis), each read from the cursor of the one before.
        let mut paged: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let entry = admin.recent_tasks("c30", cursor.as_deref(), 1).await?;
            let Some(last) = entry.last() else { break };
            cursor = Some(last.cursor.clone());
            paged.extend(entry.iter().map(|r| r.id.clone()));
        }
        assert_eq!(paged, kept_ids, "{name}: paged by cursor");
        assert!(admin
            .recent_tasks("c30", Some("1-0; DEL x"), 5)
            .await
            .is_err());
        // The query reads the index in growing chunks: page 3 and a text
        // that only the oldest kept entry holds both need several.
        let backend = stem::backend::memory::MemoryBackend::new(Duration::from_secs(60));
        let page3 = stem::recent::find_tasks(
            admin.as_ref(),
            &backend,
            &stem::recent::TaskQuery {
                page: 3,
                page_size: 25,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(
            page3
                .rows
                .iter()
                .map(|r| r.spec.id.as_str())
                .collect::<Vec<_>>(),
            &newest[50..75],
            "{name}: page 3"
        );
        let oldest = kept.last().expect("kept");
        let by_id = stem::recent::find_tasks(
            admin.as_ref(),
            &backend,
            &stem::recent::TaskQuery {
                text: Some(oldest.id.to_uppercase()),
                page: 1,
                page_size: 25,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(by_id.rows.len(), 1, "{name}");
        assert_eq!(by_id.rows[0].spec.id, oldest.id);
        assert!(
            by_id.complete && by_id.scanned == kept.len(),
            "{name}: {by_id:?}"
        );
        assert!(admin.find_recent("c30", &ids[0], now_ms()).await?.is_none());
        let last = admin
            .find_recent("c30", &ids[349], wires[349].spec()?.enqueued_at)
            .await?
            .expect("the newest is found");
        assert_eq!(last.id, ids[349]);
        // A retry is the same task: no new entry.
        broker.register_queues(&q("c30")).await?;
        let got = broker.fetch("w", &q("c30"), 1, NO_BLOCK).await?;
        let d = task(&got[0]);
        broker
            .retry(&d.receipt, d.wire.clone(), 0, now_ms())
            .await?;
        assert_eq!(
            admin.recent_tasks("c30", None, 1).await?[0].id,
            ids[349],
            "{name}"
        );
    }
    Ok(())
}

/// The recent-task index is bounded in bytes (issue 24, W4): a 1 MiB task
/// is indexed as a preview (args cut to their first
/// `stem::recent::ARGS_PREVIEW` bytes, kept as a JSON string, with the
/// whole body's size), through a plain publish and a publish-once alike,
/// while a small task is indexed whole; the task itself is delivered
/// whole. The index expires `ttl` after its last write and goes with
/// its queue's purge. On Redis, twenty 1 MiB tasks leave an index of a
/// few tens of KB with a TTL.
#[tokio::test]
async fn the_recent_task_index_is_bounded_in_bytes_expires_and_is_purged() -> anyhow::Result<()> {
    use stem::broker::{memory::MemoryBroker, redis::RedisBroker, Broker, QueueAdmin, SubmitOnce};
    use stem::recent::{ARGS_PREVIEW, INDEX_BODY_MAX};
    let server = stem_testkit::RedisServer::start()?;
    let client = stem::redis_conn::client(&server.url(), &Default::default())?;
    let ttl = Duration::from_secs(60);
    let redis = std::sync::Arc::new(RedisBroker::new(client.clone(), 1000)?.with_recent_ttl(ttl));
    let memory = std::sync::Arc::new(MemoryBroker::new().with_recent_ttl(ttl));
    type Pair = (std::sync::Arc<dyn Broker>, std::sync::Arc<dyn QueueAdmin>);
    let brokers: [(&str, Pair); 2] = [
        ("redis", (redis.clone(), redis)),
        ("memory", (memory.clone(), memory)),
    ];
    let big = |queue: &str| -> anyhow::Result<WireEnvelope> {
        let mut spec = wire(queue, 0).spec()?;
        spec.args = serde_json::json!({"name": "A".repeat(1 << 20)});
        Ok(WireEnvelope {
            body: spec.to_body()?,
            key_id: None,
            signature: None,
            attempt: 0,
        })
    };
    for (name, (broker, admin)) in brokers {
        let bigs = (0..20)
            .map(|_| big("c31"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for w in &bigs {
            broker.publish(vec![out("c31", 0, w)]).await?;
        }
        let small = wire("c31", 0);
        broker.publish(vec![out("c31", 0, &small)]).await?;
        let once = big("c31")?;
        let marker = SubmitOnce {
            marker: "idem:big",
            value: "v",
            ttl: Duration::from_secs(60),
            status: None,
        };
        assert_eq!(
            broker.publish_once(&marker, out("c31", 0, &once)).await?,
            None
        );
        let want = 22;
        let kept = poll("the index", Duration::from_secs(5), || async {
            let kept = admin.recent_tasks("c31", None, 1000).await?;
            Ok((kept.len() == want).then_some(kept))
        })
        .await?;
        for r in &kept {
            if r.id == small.spec()?.id {
                assert_eq!(r.truncated, None, "{name}: a small task is indexed whole");
                assert_eq!(r.args_json(), r#"{"n":1}"#);
                continue;
            }
            assert_eq!(
                r.truncated,
                Some(bigs[0].body.len() as u64),
                "{name}: a 1 MiB task is indexed as a preview"
            );
            let preview: String = serde_json::from_str(r.args_json())?;
            assert!(
                preview.starts_with(r#"{"name":"AAAA"#) && preview.ends_with('…'),
                "{name}: {}",
                &preview[..40]
            );
            assert!(preview.len() <= ARGS_PREVIEW + '…'.len_utf8(), "{name}");
            let spec = r.spec()?;
            assert_eq!(spec.name, "contract.task", "{name}: the preview is a spec");
            assert!(spec.to_body()?.len() <= INDEX_BODY_MAX, "{name}");
        }
        // The task itself is whole.
        broker.register_queues(&q("c31")).await?;
        let got = broker.fetch("w", &q("c31"), 1, NO_BLOCK).await?;
        assert_eq!(task(&got[0]).wire.body, bigs[0].body, "{name}");
        if name == "redis" {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let bytes: i64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg("stem:{c31}:recent")
                .query_async(&mut conn)
                .await?;
            let pttl: i64 = redis::cmd("PTTL")
                .arg("stem:{c31}:recent")
                .query_async(&mut conn)
                .await?;
            eprintln!("redis: index of 22 tasks (21 of 1 MiB): {bytes} bytes, PTTL {pttl} ms");
            assert!(bytes < 100_000, "{bytes} bytes for 22 index entries");
            assert!(pttl > 0 && pttl <= 60_000, "the index expires: PTTL {pttl}");
        }
        admin.purge("c31").await?;
        assert!(
            admin.recent_tasks("c31", None, 1000).await?.is_empty(),
            "{name}: a purge drops the index"
        );
    }
    // Expiry: an index not written for `ttl` is gone.
    let short = Duration::from_millis(300);
    let redis = std::sync::Arc::new(RedisBroker::new(client, 1000)?.with_recent_ttl(short));
    let memory = std::sync::Arc::new(MemoryBroker::new().with_recent_ttl(short));
    let brokers: [(&str, Pair); 2] = [
        ("redis", (redis.clone(), redis)),
        ("memory", (memory.clone(), memory)),
    ];
    for (name, (broker, admin)) in brokers {
        broker.publish(vec![out("c32", 0, &wire("c32", 0))]).await?;
        assert_eq!(
            admin.recent_tasks("c32", None, 10).await?.len(),
            1,
            "{name}"
        );
        poll("the index to expire", Duration::from_secs(5), || async {
            Ok(admin
                .recent_tasks("c32", None, 10)
                .await?
                .is_empty()
                .then_some(()))
        })
        .await
        .map_err(|e| e.context(name))?;
    }
    Ok(())
}
