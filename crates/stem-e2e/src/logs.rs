//! What the services' logs say: waiting for a line, and counting and
//! ordering the demo body's runs by task id. The logs are the black-box
//! tests' only view of a task body running (how often, in which order),
//! which the API's final state does not show.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stem_testkit::ServiceProcess;

use crate::wait::{poll_until, POLL_INTERVAL};

/// What the demo task body logs at the start of every execution.
pub const BODY_RUNNING: &str = "demo task body running";

/// Polls `process`'s log until it contains `needle`; fails early if the
/// process exits without having logged it.
pub async fn wait_log(
    process: &ServiceProcess,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = process.logs();
        if logs.contains(needle) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for `{}` (pid {}) to log {needle:?}; log:\n{logs}",
                process.name(),
                process.pid()
            );
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// Lines of `logs` that announce the demo body running for `task_id`.
pub fn body_run_lines<'a>(logs: &'a str, task_id: &str) -> Vec<&'a str> {
    let field = format!("task_id={task_id}");
    logs.lines()
        .filter(|l| l.contains(BODY_RUNNING) && l.contains(&field))
        .collect()
}

/// How many times the demo body started for `task_id` according to `logs`.
pub fn body_runs(logs: &str, task_id: &str) -> usize {
    body_run_lines(logs, task_id).len()
}

/// The tasks of `ids` in the order their demo bodies started, by `logs`.
pub fn start_order<'a>(logs: &str, ids: &[&'a String]) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains(BODY_RUNNING))
        .filter_map(|l| {
            ids.iter()
                .find(|id| l.contains(&format!("task_id={id}")))
                .map(|id| id.as_str())
        })
        .collect()
}

/// Polls until `process` logs the demo body starting for `task_id`.
pub async fn wait_body_running(
    process: &ServiceProcess,
    task_id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    poll_until(
        &format!("`{}` to log {BODY_RUNNING:?} for {task_id}", process.name()),
        timeout,
        || async { Ok((body_runs(&process.logs(), task_id) > 0).then_some(())) },
    )
    .await
    .with_context(|| format!("log of `{}`:\n{}", process.name(), process.logs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lines_are_matched_by_task_id() {
        let logs = "2024 INFO demo task body running task=\"greeting.send\" task_id=abc attempt=0 name=Ada\n\
                    2024 INFO demo task body running task=\"greeting.send\" task_id=abd attempt=0 name=Bo\n\
                    2024 INFO Processed greeting.send for Ada (attempt 0) task_id=abc\n";
        assert_eq!(body_runs(logs, "abc"), 1);
        assert_eq!(body_runs(logs, "abd"), 1);
        assert_eq!(body_runs(logs, "zzz"), 0);
    }
}
