//! The worker-runtime contract (`stem_contract::runtime`), run against the
//! in-memory stores, Redis (with and without the atomic store) and a Redis
//! Cluster; then what only Redis shows: what reaches it while a settle
//! waits.

mod common;

use std::time::Duration;

use stem::envelope::TaskState;
use stem_contract::poll;
use stem_contract::runtime::{rig, PausesWrites};

stem_contract::runtime_suite!(
    memory_adapter => crate::common::memory,
    redis_adapter => crate::common::redis,
    redis_colocated => crate::common::redis_colocated,
    redis_cluster => crate::common::cluster,
);

/// A body that has returned is past `running`: while its settle is held
/// up (Redis pauses writes for 300 ms as the body returns, so the settle
/// waits well past RUNNING_AFTER), the marker does not record `running`
/// for it. Before, it did: one wasted status write per task whenever
/// settling lagged, landing after the result. Redis only (the pause is
/// Redis's); what reaches Redis is read from `MONITOR`.
#[tokio::test]
async fn a_returned_body_awaiting_its_settle_is_not_marked_running() -> anyhow::Result<()> {
    for (a, redis) in [
        common::redis_and_server(false)?,
        common::redis_and_server(true)?,
    ] {
        let (port, log) = (redis.port(), redis.dir().join("monitor.log"));
        let mut monitor = redis
            .cli_command()
            .arg("MONITOR")
            .stdout(std::fs::File::create(&log)?)
            .spawn()?;
        let seen = || std::fs::read_to_string(&log).unwrap_or_default();
        poll("MONITOR listening", Duration::from_secs(5), || async {
            Ok(seen().starts_with("OK").then_some(()))
        })
        .await?;
        let r = rig(a);
        let id = r.stem.enqueue::<PausesWrites>(port).await?;
        assert_eq!(r.wait(&id).await?.state, TaskState::Succeeded);
        let marked = || {
            seen()
                .lines()
                .any(|l| l.contains(&id) && l.contains("running"))
        };
        let held = stem_testkit::holds(
            "no running status for the finished task",
            Duration::from_millis(600),
            || async { Ok(!marked()) },
        )
        .await;
        monitor.kill()?;
        monitor.wait()?;
        held?;
        r.finish().await?;
    }
    Ok(())
}
