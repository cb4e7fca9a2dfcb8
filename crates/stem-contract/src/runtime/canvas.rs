//! Group, chain and chord on a real worker: results passed along, a
//! failed step aborting the rest, a chord's callback with every result.

use super::*;

pub async fn chain_passes_results_and_aborts_on_failure(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let step = |a: i64, b: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, b]),
        options: EnqueueOptions::default(),
    };
    let chain = r
        .stem
        .chain(vec![step(1, 1), step(0, 10), step(0, 100)])
        .await?;
    let last = r.wait(&chain.task_ids[2]).await?;
    assert_eq!(
        last.result,
        json!(112),
        "each step adds the previous result"
    );
    let fatal = EnqueueRequest {
        name: "fatal".into(),
        args: json!(null),
        options: EnqueueOptions::default(),
    };
    let broken = r.stem.chain(vec![step(1, 1), fatal, step(5, 5)]).await?;
    let s = r.wait(&broken.task_ids[2]).await?;
    assert_eq!(
        s.state,
        TaskState::Cancelled,
        "steps after a failed one are cancelled"
    );
    r.finish().await
}

pub async fn chord_runs_callback_with_all_results(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let add = |a: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, 0]),
        options: EnqueueOptions::default(),
    };
    let cb = EnqueueRequest {
        name: "math.sum".into(),
        args: json!(null),
        options: EnqueueOptions::default(),
    };
    let chord = r.stem.chord(vec![add(1), add(2), add(3)], cb).await?;
    let s = r.wait(&chord.callback_id).await?;
    assert_eq!((s.state, s.result), (TaskState::Succeeded, json!(6)));
    let g = r
        .stem
        .backend()
        .get_group(&chord.chord_id)
        .await?
        .expect("chord group");
    assert_eq!(g.results.len(), 3);
    r.finish().await
}

pub async fn group_collects_every_result(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let reqs = (0..5)
        .map(|i| EnqueueRequest {
            name: "math.add".into(),
            args: json!([i, i]),
            options: EnqueueOptions::default(),
        })
        .collect();
    let g = r.stem.group(reqs).await?;
    let view = poll("group completion", Duration::from_secs(10), || async {
        Ok(r.stem
            .backend()
            .get_group(&g.group_id)
            .await?
            .filter(|v| v.results.len() == 5))
    })
    .await?;
    assert!(view
        .results
        .values()
        .all(|s| s.state == TaskState::Succeeded));
    r.finish().await
}
