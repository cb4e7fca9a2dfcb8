//! Redis Cluster, black box (README "Configuration", `redis+cluster://`):
//! the real binaries on a private three-master cluster.
//!
//! - a task of every demo queue enqueued over HTTP succeeds, run by one
//!   worker of all three queues (which reads them one by one: one read
//!   cannot span a cluster's slots);
//! - the three queues live on three different masters (their hash tags'
//!   slots fall in the three ranges `redis-cli --cluster create` assigns),
//!   each of which holds keys;
//! - a failing task retries and is dead-lettered; a group completes;
//! - `stem health`, `stem queue list` and `stem dlq list` answer on the
//!   cluster URL.
//!
//! The scenarios run as parallel tests, each with its own cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use stem_e2e::{start_enqueuer, start_worker, ServiceProcess, SETTLE};
use stem_testkit::RedisCluster;

const QUEUES: [(&str, &str); 3] = [
    ("greeting.send", "greetings"),
    ("billing.charge", "billing"),
    ("reports.aggregate", "reporting"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_flow_through_a_cluster_whose_masters_share_the_queues() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    let url = cluster.url();
    let _worker = start_worker(&url, "cluster-worker", "greetings,billing,reporting", &[]).await?;
    let enq = start_enqueuer(&url, &[]).await?;

    for (task, queue) in QUEUES {
        let reply = enq
            .api
            .post_json(
                "/enqueue",
                &json!({"task": task, "name": "Ada", "delayMs": 1}),
            )
            .await?;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let id = reply.json["taskId"].as_str().context("taskId")?;
        let status = enq.api.wait_state(id, "succeeded", SETTLE).await?;
        assert_eq!(status["queue"], queue, "{status}");
    }

    let masters: BTreeSet<usize> = QUEUES
        .iter()
        .map(|(_, q)| cluster.master_of(&stem::keys::lane(q, 0)))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(masters.len(), 3, "one queue per master: {masters:?}");
    for m in &masters {
        assert!(cluster.dbsize(*m)? > 0, "master {m} holds its queue's keys");
    }

    let env = [("STEM_BROKER_URL", url.clone())];
    let mut health = ServiceProcess::spawn("stem", &["health"], &env)?;
    let code = health.wait_exit(Duration::from_secs(20))?;
    assert_eq!(
        code,
        Some(0),
        "stem health on the cluster: {}",
        health.logs()
    );
    let mut list = ServiceProcess::spawn("stem", &["queue", "list"], &env)?;
    assert_eq!(
        list.wait_exit(Duration::from_secs(20))?,
        Some(0),
        "{}",
        list.logs()
    );
    for (_, q) in QUEUES {
        assert!(
            list.logs().contains(q),
            "stem queue list names {q}: {}",
            list.logs()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_groups_work_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    let url = cluster.url();
    let _worker = start_worker(&url, "cluster-retries", "greetings,reporting", &[]).await?;
    let enq = start_enqueuer(&url, &[]).await?;

    // Retries, then the dead-letter stream; a group of three completes.
    let id = enq
        .api
        .enqueue(json!({"task": "reports.publish", "name": "doomed", "fail": true, "delayMs": 1}))
        .await?;
    // Two retries: ~1.5–2 s and ~3–4 s of backoff.
    let status = enq.api.wait_state(&id, "failed", SETTLE).await?;
    assert_eq!(status["attempt"], 2, "{status}");
    assert_eq!(
        status["error"]["reason"], "max-retries-exhausted",
        "{status}"
    );
    let group = enq
        .api
        .post_json("/group", &json!({"names": ["Ada", "Grace", "Edsger"]}))
        .await?;
    assert_eq!(group.status, 200, "{}", group.text);
    let gid = group.json["groupId"]
        .as_str()
        .context("groupId")?
        .to_string();
    stem_e2e::poll_until("the group to complete", SETTLE, || async {
        let g = enq.api.get(&format!("/group/{gid}")).await?;
        Ok((g.json["completed"] == 3).then_some(()))
    })
    .await?;

    let env = [("STEM_BROKER_URL", url.clone())];
    let mut dlq = ServiceProcess::spawn("stem", &["dlq", "list", "-q", "reporting"], &env)?;
    assert_eq!(
        dlq.wait_exit(Duration::from_secs(20))?,
        Some(0),
        "{}",
        dlq.logs()
    );
    assert!(
        dlq.logs().contains(&id),
        "the failed task is dead-lettered: {}",
        dlq.logs()
    );
    Ok(())
}
