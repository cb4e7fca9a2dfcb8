//! The broker contract (`stem_contract::broker`), run against the
//! in-memory broker, Redis (with and without the atomic store) and a Redis
//! Cluster; then what only Redis shows: garbage in a delayed set, and the
//! recent-task index's caps, pages, bytes and expiry.

mod common;

use std::time::Duration;

use stem::broker::Fetched;
use stem::envelope::{now_ms, WireEnvelope};
use stem_contract::broker::{out, q, task, wire, NO_BLOCK};
use stem_contract::poll;

stem_contract::broker_suite!(
    memory_adapter => crate::common::memory,
    redis_adapter => crate::common::redis,
    redis_colocated => crate::common::redis_colocated,
    redis_cluster => crate::common::cluster,
);

/// Redis only: a delayed-set member that does not parse (written by hand
/// or by a foreign producer) does not fail the promoter for its queue: it
/// is moved into band 0's due lane as it is and fetched as a malformed entry with its
/// bytes, beside a valid member promoted as usual.
#[tokio::test]
async fn garbage_delayed_members_are_promoted_as_malformed() -> anyhow::Result<()> {
    let (a, redis) = common::redis_and_server(false)?;
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
