//! The in-memory adapters measure leases and TTLs on tokio's clock, so
//! their expiry is tested on paused time: each test jumps past a deadline
//! instead of sleeping through it, and checks the moment just before it
//! too. (The contract suites check the same behaviours on Redis in real
//! time, with short TTLs.)

use std::time::Duration;

use stem::backend::memory::MemoryBackend;
use stem::backend::ResultBackend;
use stem::broker::memory::MemoryBroker;
use stem::broker::{Broker, Outgoing};
use stem::control::memory::MemoryControl;
use stem::control::{WorkerInfo, WorkerRegistry};
use stem::envelope::{new_task_id, now_ms, TaskSpec, TaskState, TaskStatus, WireEnvelope};
use stem::schedule::memory::MemoryLockStore;
use stem::schedule::LockStore;
use tokio::time::advance;

fn spec(queue: &str) -> TaskSpec {
    TaskSpec {
        id: new_task_id(),
        name: "clock.task".into(),
        queue: queue.into(),
        args: serde_json::json!({}),
        headers: Default::default(),
        meta: Default::default(),
        enqueued_at: now_ms(),
        max_retries: 0,
        priority: 0,
    }
}

async fn publish_one(broker: &MemoryBroker, queue: &str) -> anyhow::Result<()> {
    let wire = WireEnvelope {
        body: spec(queue).to_body()?,
        key_id: None,
        signature: None,
        attempt: 0,
    };
    broker
        .publish(vec![Outgoing {
            queue: queue.into(),
            priority: 0,
            not_before_ms: None,
            wire,
        }])
        .await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_result_expires_at_its_ttl() -> anyhow::Result<()> {
    let backend = MemoryBackend::new(Duration::from_secs(3600));
    let status = TaskStatus::for_spec(&spec("q"), TaskState::Succeeded, 0);
    backend.set_statuses(std::slice::from_ref(&status)).await?;
    let ids = [status.id.clone()];

    advance(Duration::from_secs(3599)).await;
    assert!(
        backend.get_statuses(&ids).await?[0].is_some(),
        "kept until its TTL"
    );
    advance(Duration::from_secs(2)).await;
    assert!(
        backend.get_statuses(&ids).await?[0].is_none(),
        "gone after it"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_dead_workers_lease_is_recovered_after_the_idle_time() -> anyhow::Result<()> {
    let broker = MemoryBroker::new();
    let queues = vec!["q".to_string()];
    broker.register_queues(&queues).await?;
    publish_one(&broker, "q").await?;
    let held = broker.fetch("dead", &queues, 1, Duration::ZERO).await?;
    assert_eq!(held.len(), 1);

    let idle = Duration::from_secs(60);
    advance(Duration::from_secs(59)).await;
    let early = broker.recover("alive", &queues, idle, 10).await?;
    assert!(
        early.is_empty(),
        "a lease idle for less than min_idle stays"
    );
    advance(Duration::from_secs(2)).await;
    let taken = broker.recover("alive", &queues, idle, 10).await?;
    assert_eq!(taken.len(), 1, "a lease idle past min_idle is taken over");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_renewed_lease_is_not_recovered() -> anyhow::Result<()> {
    let broker = MemoryBroker::new();
    let queues = vec!["q".to_string()];
    broker.register_queues(&queues).await?;
    publish_one(&broker, "q").await?;
    let held = broker.fetch("busy", &queues, 1, Duration::ZERO).await?;
    let receipts: Vec<_> = held.iter().map(|f| f.receipt().clone()).collect();
    let idle = Duration::from_secs(60);
    for _ in 0..5 {
        advance(Duration::from_secs(30)).await;
        broker.renew("busy", &receipts).await?;
        let taken = broker.recover("other", &queues, idle, 10).await?;
        assert!(taken.is_empty(), "renewed every 30 s, never idle for 60 s");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_worker_disappears_three_heartbeats_after_its_last() -> anyhow::Result<()> {
    let control = MemoryControl::new();
    let info = WorkerInfo {
        name: "w1".into(),
        namespace: "stem".into(),
        queues: vec!["q".into()],
        paused: vec![],
        host: "h".into(),
        pid: 1,
        concurrency: 1,
        prefetch: 1,
        inflight: 0,
        started_at: now_ms(),
        heartbeat_at: now_ms(),
        started: 0,
        succeeded: 0,
        failed: 0,
        retried: 0,
    };
    control.heartbeat(&info, Duration::from_secs(30)).await?;
    advance(Duration::from_secs(29)).await;
    assert_eq!(control.workers().await?.len(), 1, "alive within its TTL");
    advance(Duration::from_secs(2)).await;
    assert!(control.workers().await?.is_empty(), "gone after it");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_leader_lease_passes_on_only_after_it_expires() -> anyhow::Result<()> {
    let locks = MemoryLockStore::new();
    let ttl = Duration::from_secs(15);
    assert!(locks.acquire("leader", "a", ttl).await?);
    advance(Duration::from_secs(14)).await;
    assert!(
        !locks.acquire("leader", "b", ttl).await?,
        "held within its TTL"
    );
    assert!(locks.renew("leader", "a", ttl).await?, "the owner renews");
    advance(Duration::from_secs(14)).await;
    assert!(
        !locks.acquire("leader", "b", ttl).await?,
        "renewal extended it"
    );
    advance(Duration::from_secs(2)).await;
    assert!(locks.acquire("leader", "b", ttl).await?, "expired: b leads");
    assert_eq!(locks.owner_of("leader").await?.as_deref(), Some("b"));
    assert!(!locks.renew("leader", "a", ttl).await?, "a lost it");
    Ok(())
}
