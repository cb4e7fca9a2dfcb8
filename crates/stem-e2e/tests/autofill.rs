//! The enqueuer's demo traffic generator (`ENQUEUER_AUTOFILL_*`, on in the
//! compose stack), run by the real binary against a real Redis: a batch
//! of `BATCH_SIZE` catalogue tasks every interval, the first of every
//! `FAILURE_EVERY`-th batch asked to fail (when its task's queue is
//! greetings or billing), a three-step workflow every second tick, and it
//! stops with the process.

use std::collections::BTreeMap;
use std::time::Duration;

use stem::recent::TaskQuery;
use stem_e2e::{poll_until, start_enqueuer, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autofill_sends_batches_at_its_interval_with_every_nth_failing() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let mut enq = start_enqueuer(
        &url,
        &[
            ("ENQUEUER_AUTOFILL_ENABLED", "true".into()),
            ("ENQUEUER_AUTOFILL_INTERVAL_MS", "100".into()),
            ("ENQUEUER_AUTOFILL_BATCH_SIZE", "3".into()),
            ("ENQUEUER_AUTOFILL_FAILURE_EVERY", "2".into()),
        ],
    )
    .await?;
    let config =
        stem::StemConfig::from_lookup(&|k: &str| (k == "STEM_BROKER_URL").then(|| url.clone()))?;
    let stem = stem::Stem::connect(&config)?;
    // Standalone tasks are named demo-<tick>-<index>; wait for six ticks.
    let standalone = poll_until(
        "six ticks of demo traffic",
        Duration::from_secs(20),
        || async {
            let page = stem
                .find_tasks(&TaskQuery {
                    text: Some("demo-".into()),
                    page: 1,
                    page_size: 200,
                    ..Default::default()
                })
                .await?;
            let mut by_tick: BTreeMap<u64, Vec<(u64, serde_json::Value)>> = BTreeMap::new();
            for row in page.rows {
                let name = row.spec.args["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut parts = name.trim_start_matches("demo-").split('-');
                let (Some(tick), Some(index)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (Ok(tick), Ok(index)) = (tick.parse::<u64>(), index.parse::<u64>()) else {
                    continue;
                };
                by_tick.entry(tick).or_default().push((
                    index,
                    serde_json::json!({"queue": row.spec.queue, "args": row.spec.args}),
                ));
            }
            // Ticks 1..=6 all complete.
            Ok(((1..=6).all(|t| by_tick.get(&t).is_some_and(|v| v.len() == 3))).then_some(by_tick))
        },
    )
    .await?;
    for (tick, tasks) in standalone.range(1..=6) {
        assert_eq!(tasks.len(), 3, "tick {tick}: a batch of BATCH_SIZE");
        for (index, task) in tasks {
            let fails = task["args"]["fail"] == true;
            let failing_queue = matches!(task["queue"].as_str(), Some("greetings" | "billing"));
            assert_eq!(
                fails,
                tick % 2 == 0 && *index == 0 && failing_queue,
                "tick {tick} index {index}: {task}"
            );
        }
    }
    // Workflow steps every second tick.
    let workflows = stem
        .find_tasks(&TaskQuery {
            text: Some("wf-000002-".into()),
            page: 1,
            page_size: 25,
            ..Default::default()
        })
        .await?;
    assert_eq!(workflows.rows.len(), 3, "tick 2 sent a three-step workflow");
    // It stops with the process.
    enq.process.sigterm()?;
    assert_eq!(enq.process.wait_exit(Duration::from_secs(10))?, Some(0));
    Ok(())
}
