//! The completer's unit tests: how `plan` sorts each outcome.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::*;
use crate::canvas::GROUP_HEADER;
use crate::envelope::{TaskSpec, TaskState};
use crate::task::TaskFailure;

fn spec(group: bool) -> Arc<TaskSpec> {
    let mut headers = BTreeMap::new();
    if group {
        headers.insert(GROUP_HEADER.to_string(), "grp-1".to_string());
    }
    Arc::new(TaskSpec {
        id: crate::envelope::new_task_id(),
        name: "t".into(),
        queue: "q".into(),
        args: json!({}),
        headers,
        meta: Default::default(),
        enqueued_at: 0,
        max_retries: 2,
        priority: 3,
    })
}

fn finished(
    spec: &Arc<TaskSpec>,
    attempt: u32,
    result: std::result::Result<Value, TaskFailure>,
) -> Outcome {
    Outcome::Finished {
        receipt: Receipt {
            queue: "q".into(),
            lane: 3,
            entry_id: format!("{attempt}-0"),
        },
        spec: spec.clone(),
        wire: WireEnvelope {
            body: spec.to_body().expect("body"),
            key_id: None,
            signature: None,
            attempt,
        },
        result,
        budget: 2,
    }
}

/// (outcome, expected status, where it goes)
#[test]
fn every_outcome_is_planned_as_documented() {
    let (plain, grouped) = (spec(false), spec(true));
    let cases: Vec<(Outcome, Option<TaskState>, &str)> = vec![
        (
            finished(&plain, 0, Ok(json!(1))),
            Some(TaskState::Succeeded),
            "plain ack",
        ),
        (
            finished(&grouped, 0, Ok(json!(1))),
            Some(TaskState::Succeeded),
            "follow-up, then ack",
        ),
        (
            finished(&plain, 1, Err(TaskFailure::new("boom"))),
            Some(TaskState::Retried),
            "retry",
        ),
        (
            finished(&plain, 2, Err(TaskFailure::new("boom"))),
            Some(TaskState::Failed),
            "max-retries-exhausted",
        ),
        (
            finished(&plain, 0, Err(TaskFailure::fatal("no"))),
            Some(TaskState::Failed),
            "non-retryable",
        ),
        (
            Outcome::Requeue {
                receipt: Receipt {
                    queue: "q".into(),
                    lane: 3,
                    entry_id: "9-0".into(),
                },
                wire: WireEnvelope {
                    body: plain.to_body().expect("body"),
                    key_id: None,
                    signature: None,
                    attempt: 0,
                },
                priority: 3,
            },
            None,
            "requeue",
        ),
    ];
    for (outcome, state, route) in cases {
        let metrics = super::super::WorkerMetrics::default();
        let p = plan(&metrics, vec![outcome]);
        assert_eq!(p.statuses.first().map(|s| s.state), state, "{route}");
        let got = match (
            &p.plain_acks[..],
            &p.finishing[..],
            &p.retries[..],
            &p.requeues[..],
        ) {
            ([_], [], [], []) => "plain ack".to_string(),
            ([], [f], [], []) => match &f.fin {
                Final::Ack => "follow-up, then ack".into(),
                Final::Dead(l) => l.reason.as_str().into(),
            },
            ([], [], [r], []) => {
                assert_eq!(r.wire.attempt, 2, "a retry raises the attempt");
                assert_eq!(r.priority, 3, "and keeps the priority");
                "retry".into()
            }
            ([], [], [], [_]) => "requeue".into(),
            _ => "several".into(),
        };
        assert_eq!(got, route);
        let counted = [
            metrics.succeeded.load(Ordering::Relaxed),
            metrics.retried.load(Ordering::Relaxed),
            metrics.failed.load(Ordering::Relaxed),
            metrics.dead_lettered.load(Ordering::Relaxed),
        ];
        let want = match route {
            "plain ack" | "follow-up, then ack" => [1, 0, 0, 0],
            "retry" => [0, 1, 0, 0],
            "requeue" => [0, 0, 0, 0],
            _ => [0, 0, 1, 1],
        };
        assert_eq!(counted, want, "{route}");
    }
}
