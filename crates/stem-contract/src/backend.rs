//! The result-backend contract, run against the in-memory and the Redis
//! backend.

use std::time::Duration;

use crate::{poll, Adapters};
use stem::envelope::{new_task_id, now_ms, TaskSpec, TaskState, TaskStatus};

fn spec() -> TaskSpec {
    TaskSpec {
        id: new_task_id(),
        name: "contract.task".into(),
        queue: "q".into(),
        args: serde_json::json!({}),
        headers: Default::default(),
        meta: Default::default(),
        enqueued_at: now_ms(),
        max_retries: 2,
        priority: 0,
    }
}

async fn state_of(a: &Adapters, id: &str) -> anyhow::Result<Option<(TaskState, u32)>> {
    Ok(stem::backend::get_status(a.backend.as_ref(), id)
        .await?
        .map(|s| (s.state, s.attempt)))
}

/// The worker's admission read returns the terminal state and attempt of
/// every id, in order: `None` for unknown ids and for tasks that have not
/// finished.
pub async fn final_states_read_finished_tasks(a: Adapters) -> anyhow::Result<()> {
    let (s1, s2, s3) = (spec(), spec(), spec());
    let mut failed = TaskStatus::for_spec(&s2, TaskState::Failed, 2);
    failed.result = serde_json::json!({"big": [1, 2, 3]});
    a.set_statuses(&[
        TaskStatus::for_spec(&s1, TaskState::Succeeded, 0),
        failed,
        TaskStatus::for_spec(&s3, TaskState::Running, 0),
    ])
    .await?;
    let got = a
        .backend
        .final_states(&[
            s1.id.clone(),
            "unknown".into(),
            s2.id.clone(),
            s3.id.clone(),
        ])
        .await?;
    assert_eq!(
        got,
        vec![
            Some((TaskState::Succeeded, 0)),
            None,
            Some((TaskState::Failed, 2)),
            None
        ]
    );
    Ok(())
}

/// Terminal statuses follow the same rank rule as live ones: a later
/// terminal write of higher rank replaces one of lower rank, a replay's
/// newer attempt reopens a failed task, and an older attempt's late result
/// is dropped.
pub async fn terminal_statuses_follow_rank(a: Adapters) -> anyhow::Result<()> {
    // Running and its result in one batch: the result is the status.
    let s = spec();
    let set = |state, attempt| TaskStatus::for_spec(&s, state, attempt);
    a.set_statuses(&[set(TaskState::Running, 0), set(TaskState::Succeeded, 0)])
        .await?;
    assert_eq!(state_of(&a, &s.id).await?, Some((TaskState::Succeeded, 0)));
    // A revoke after the result outranks it (cancelled is the top rank).
    a.set_statuses(&[set(TaskState::Cancelled, 0)]).await?;
    assert_eq!(state_of(&a, &s.id).await?, Some((TaskState::Cancelled, 0)));
    a.set_statuses(&[set(TaskState::Succeeded, 3)]).await?;
    assert_eq!(
        state_of(&a, &s.id).await?,
        Some((TaskState::Cancelled, 0)),
        "nothing outranks cancelled"
    );

    // Failed, then replayed as a newer attempt, then succeeded.
    let r = spec();
    let set = |state, attempt| TaskStatus::for_spec(&r, state, attempt);
    a.set_statuses(&[set(TaskState::Failed, 0)]).await?;
    a.set_statuses(&[set(TaskState::Queued, 1)]).await?;
    assert_eq!(state_of(&a, &r.id).await?, Some((TaskState::Queued, 1)));
    assert_eq!(
        a.backend.final_states(std::slice::from_ref(&r.id)).await?,
        vec![None]
    );
    a.set_statuses(&[set(TaskState::Succeeded, 1)]).await?;
    assert_eq!(state_of(&a, &r.id).await?, Some((TaskState::Succeeded, 1)));

    // A late result of an older attempt is dropped; a newer one replaces.
    a.set_statuses(&[set(TaskState::Failed, 0)]).await?;
    assert_eq!(state_of(&a, &r.id).await?, Some((TaskState::Succeeded, 1)));
    a.set_statuses(&[set(TaskState::Failed, 2)]).await?;
    assert_eq!(state_of(&a, &r.id).await?, Some((TaskState::Failed, 2)));
    assert_eq!(
        a.backend.final_states(std::slice::from_ref(&r.id)).await?,
        vec![Some((TaskState::Failed, 2))]
    );

    // A newer attempt already running is not hidden by an older attempt's
    // late result, whether it arrives later or in the same batch.
    for together in [false, true] {
        let n = spec();
        let set = |state, attempt| TaskStatus::for_spec(&n, state, attempt);
        if together {
            a.set_statuses(&[set(TaskState::Succeeded, 0), set(TaskState::Running, 1)])
                .await?;
        } else {
            a.set_statuses(&[set(TaskState::Running, 1)]).await?;
            a.set_statuses(&[set(TaskState::Succeeded, 0)]).await?;
        }
        assert_eq!(
            state_of(&a, &n.id).await?,
            Some((TaskState::Running, 1)),
            "together: {together}"
        );
        a.set_statuses(&[set(TaskState::Succeeded, 1)]).await?;
        assert_eq!(state_of(&a, &n.id).await?, Some((TaskState::Succeeded, 1)));
    }
    Ok(())
}

pub async fn status_round_trips(a: Adapters) -> anyhow::Result<()> {
    let s = spec();
    let mut st = TaskStatus::for_spec(&s, TaskState::Succeeded, 1);
    st.result = serde_json::json!({"ok": [1, 2]});
    a.set_statuses(&[st.clone()]).await?;
    let got = a
        .backend
        .get_statuses(&[s.id.clone(), "missing".into()])
        .await?;
    assert_eq!(got, vec![Some(st), None]);
    Ok(())
}

pub async fn status_never_moves_backwards(a: Adapters) -> anyhow::Result<()> {
    let s = spec();
    let set = |state, attempt| TaskStatus::for_spec(&s, state, attempt);
    a.set_statuses(&[set(TaskState::Running, 0)]).await?;
    a.set_statuses(&[set(TaskState::Queued, 0)]).await?;
    assert_eq!(
        state_of(&a, &s.id).await?,
        Some((TaskState::Running, 0)),
        "late queued is dropped"
    );
    a.set_statuses(&[set(TaskState::Retried, 0)]).await?;
    a.set_statuses(&[set(TaskState::Running, 1)]).await?;
    assert_eq!(
        state_of(&a, &s.id).await?,
        Some((TaskState::Running, 1)),
        "a retry's run outranks retried"
    );
    a.set_statuses(&[set(TaskState::Succeeded, 1)]).await?;
    a.set_statuses(&[set(TaskState::Running, 1), set(TaskState::Queued, 0)])
        .await?;
    assert_eq!(
        state_of(&a, &s.id).await?,
        Some((TaskState::Succeeded, 1)),
        "final state is kept"
    );
    let mut progress = set(TaskState::Running, 2);
    progress.result = serde_json::json!(1);
    a.set_statuses(&[progress.clone()]).await?;
    progress.result = serde_json::json!(2);
    a.set_statuses(&[progress]).await?;
    let got = stem::backend::get_status(a.backend.as_ref(), &s.id)
        .await?
        .expect("status");
    assert_eq!(
        got.result,
        serde_json::json!(2),
        "equal rank (progress) overwrites"
    );
    Ok(())
}

pub async fn statuses_expire_after_the_ttl(a: Adapters) -> anyhow::Result<()> {
    let a = a.with_ttl(Duration::from_millis(300))?;
    let s = spec();
    let t = spec();
    a.set_statuses(&[
        TaskStatus::for_spec(&s, TaskState::Queued, 0),
        TaskStatus::for_spec(&t, TaskState::Succeeded, 0),
    ])
    .await?;
    assert!(state_of(&a, &s.id).await?.is_some());
    assert!(state_of(&a, &t.id).await?.is_some());
    poll("status expiry", Duration::from_secs(5), || async {
        let gone = state_of(&a, &s.id).await?.is_none() && state_of(&a, &t.id).await?.is_none();
        Ok(gone.then_some(()))
    })
    .await
}

pub async fn groups_aggregate_results(a: Adapters) -> anyhow::Result<()> {
    assert!(a.backend.get_group("grp-unknown").await?.is_none());
    a.backend.init_group("grp-1", 2).await?;
    let (s1, s2) = (spec(), spec());
    let p = a
        .backend
        .add_group_results(&[(
            "grp-1".into(),
            TaskStatus::for_spec(&s1, TaskState::Succeeded, 0),
        )])
        .await?;
    assert_eq!((p[0].completed, p[0].expected), (1, 2));
    let p = a
        .backend
        .add_group_results(&[
            (
                "grp-1".into(),
                TaskStatus::for_spec(&s2, TaskState::Failed, 1),
            ),
            (
                "grp-unknown".into(),
                TaskStatus::for_spec(&s2, TaskState::Failed, 1),
            ),
        ])
        .await?;
    assert_eq!(p.len(), 1, "unknown groups are skipped");
    assert_eq!((p[0].completed, p[0].expected), (2, 2));
    let g = a.backend.get_group("grp-1").await?.expect("group");
    assert_eq!(g.expected, 2);
    assert_eq!(g.results.len(), 2);
    assert_eq!(g.results[&s2.id].state, TaskState::Failed);
    a.backend.init_group("grp-1", 3).await?;
    let g = a.backend.get_group("grp-1").await?.expect("group");
    assert_eq!((g.expected, g.results.len()), (3, 0), "init resets");
    Ok(())
}

/// Blobs (stored chain steps, chord callbacks) keep their bytes.
pub async fn blobs_keep_their_bytes(a: Adapters) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(60);
    a.backend.put_blob("blob:a", b"\x00bytes\xff", ttl).await?;
    assert_eq!(
        a.backend.get_blob("blob:a").await?,
        Some(b"\x00bytes\xff".to_vec())
    );
    assert_eq!(a.backend.get_blob("blob:none").await?, None);
    Ok(())
}

/// `fail_rejected`: a worker that rejects an envelope (`signature-invalid`)
/// fails the task only where its status waits on an envelope of the same
/// fingerprint; a forged copy, a status that moved on, one without a
/// fingerprint or for a later attempt are left exactly as they were.
pub async fn rejected_envelopes_fail_only_the_status_recording_them(
    a: Adapters,
) -> anyhow::Result<()> {
    use stem::broker::DeadLetterReason::SignatureInvalid;
    use stem::envelope::{TaskError, TaskErrorKind, WireEnvelope};
    let wire = |body: &'static str, sig: &str| WireEnvelope {
        body: bytes::Bytes::from_static(body.as_bytes()),
        key_id: Some("k1".into()),
        signature: Some(sig.into()),
        attempt: 0,
    };
    let genuine = wire(r#"{"a":1}"#, "c2ln");
    let copies = [
        wire(r#"{"a":1}"#, "Zm9yZ2Vk"),
        wire(r#"{"a":2}"#, "c2ln"),
        WireEnvelope {
            key_id: None,
            signature: None,
            ..genuine.clone()
        },
    ];
    let failure = |s: &TaskSpec, attempt: u32, w: &WireEnvelope| {
        let mut f = TaskStatus::for_spec(s, TaskState::Failed, attempt).waiting_on(w);
        f.error = Some(
            TaskError::new(
                TaskErrorKind::Rejected(SignatureInvalid),
                "signature mismatch",
            )
            .dead_lettered(SignatureInvalid),
        );
        f
    };
    let (queued, retried, running, done, bare, later, unknown) =
        (spec(), spec(), spec(), spec(), spec(), spec(), spec());
    a.set_statuses(&[
        TaskStatus::for_spec(&queued, TaskState::Queued, 0).waiting_on(&genuine),
        TaskStatus::for_spec(&retried, TaskState::Retried, 1).waiting_on(&genuine),
        // Moved on, whatever fingerprint they carry.
        TaskStatus::for_spec(&running, TaskState::Running, 0).waiting_on(&genuine),
        TaskStatus::for_spec(&done, TaskState::Succeeded, 0).waiting_on(&genuine),
        TaskStatus::for_spec(&bare, TaskState::Queued, 0),
        TaskStatus::for_spec(&later, TaskState::Queued, 3).waiting_on(&genuine),
    ])
    .await?;
    let ids: Vec<String> = [&queued, &retried, &running, &done, &bare, &later]
        .iter()
        .map(|s| s.id.clone())
        .collect();
    let before = a.backend.get_statuses(&ids).await?;
    assert!(before.iter().all(Option::is_some), "{before:?}");

    // Copies that are not the recorded envelope: nothing matches, nothing
    // changes, whatever the state.
    for copy in &copies {
        let claims: Vec<TaskStatus> = [&queued, &retried, &running, &done, &bare, &later]
            .iter()
            .map(|s| failure(s, 2, copy))
            .collect();
        assert_eq!(a.backend.fail_rejected(&claims).await?, vec![false; 6]);
        assert_eq!(
            a.backend.get_statuses(&ids).await?,
            before,
            "a copy changed a status"
        );
    }

    // The recorded envelope itself.
    let mut no_fingerprint = failure(&queued, 0, &genuine);
    no_fingerprint.fingerprint = None;
    let claims = vec![
        failure(&queued, 0, &genuine),
        failure(&retried, 2, &genuine),
        failure(&running, 0, &genuine),
        failure(&done, 0, &genuine),
        failure(&bare, 0, &genuine),
        failure(&later, 2, &genuine),
        failure(&unknown, 0, &genuine),
        no_fingerprint,
    ];
    assert_eq!(
        a.backend.fail_rejected(&claims).await?,
        vec![true, true, false, false, false, false, false, false]
    );
    let after = a.backend.get_statuses(&ids).await?;
    for (i, expected) in [(0, &claims[0]), (1, &claims[1])] {
        let s = after[i].as_ref().expect("status");
        assert_eq!(s, expected, "the failure as written");
        assert_eq!(
            s.error.as_ref().and_then(|e| e.reason.as_deref()),
            Some("signature-invalid")
        );
    }
    assert_eq!(
        after[2..],
        before[2..],
        "moved on, unfingerprinted or later: untouched"
    );
    assert!(stem::backend::get_status(a.backend.as_ref(), &unknown.id)
        .await?
        .is_none());
    let terminal = a.backend.final_states(&ids[..2]).await?;
    assert_eq!(
        terminal,
        vec![Some((TaskState::Failed, 0)), Some((TaskState::Failed, 2))]
    );

    // A redelivery of the rejected entry finds its failure: it matches
    // (its follow-ups are redone) and rewrites nothing.
    let again = vec![
        failure(&queued, 0, &genuine),
        failure(&queued, 0, &copies[0]),
    ];
    assert_eq!(a.backend.fail_rejected(&again).await?, vec![true, false]);
    assert_eq!(a.backend.get_statuses(&ids).await?, after);
    Ok(())
}

/// Runs the backend contract against each adapter listed as
/// `module => factory` (a `fn() -> anyhow::Result<…>`): one
/// `#[tokio::test]` per (adapter, test), in a module named after the
/// adapter.
#[macro_export]
macro_rules! backend_suite {
    ($($module:ident => $factory:path),* $(,)?) => {
        $crate::__suite!(
            backend;
            [$($module => $factory),*];
            status_round_trips,
            status_never_moves_backwards,
            statuses_expire_after_the_ttl,
            groups_aggregate_results,
            blobs_keep_their_bytes,
            final_states_read_finished_tasks,
            terminal_statuses_follow_rank,
            rejected_envelopes_fail_only_the_status_recording_them,
        );
    };
}
