//! Demo traffic generator (`ENQUEUER_AUTOFILL_*`, README "Configuration"): every interval, enqueue
//! `batch_size` catalogue tasks (some asked to fail), and on even ticks a
//! three-step synthetic workflow. Off unless `ENQUEUER_AUTOFILL_ENABLED`.

use serde_json::{json, Map, Value};
use stem::client::{EnqueueOptions, Stem};
use stem_demo::CATALOGUE;
use tokio_util::sync::CancellationToken;

use crate::settings::AutofillConfig;

const TEMPLATES: [(&str, [(&str, &str); 3]); 3] = [
    (
        "onboarding.v1",
        [
            ("greeting.send", "prepare-message"),
            ("billing.charge", "charge-account"),
            ("reports.publish", "publish-summary"),
        ],
    ),
    (
        "billing.closeout",
        [
            ("billing.charge", "capture"),
            ("billing.settlement", "settle"),
            ("reports.aggregate", "rollup"),
        ],
    ),
    (
        "customer.reengagement",
        [
            ("customer.followup", "hydrate-profile"),
            ("greeting.send", "send-message"),
            ("reports.publish", "write-audit"),
        ],
    ),
];

async fn send(stem: &Stem, task: &str, args: Value, meta: Map<String, Value>) {
    let opts = EnqueueOptions {
        meta,
        ..Default::default()
    };
    match stem.enqueue_raw(task, args, opts).await {
        Ok(e) => tracing::info!(task, task_id = %e.task_id, "autofill enqueued"),
        Err(e) => tracing::warn!(task, error = %e, "autofill enqueue failed"),
    }
}

/// Runs until `stop` fires.
pub async fn run(stem: Stem, s: AutofillConfig, stop: CancellationToken) {
    tracing::info!(
        interval_ms = s.interval_ms,
        batch = s.batch_size,
        "autofill enabled"
    );
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(s.interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        tick += 1;
        let failing_tick = tick % s.failure_every == 0;
        for index in 0..s.batch_size {
            let spec = &CATALOGUE[((tick + index) % CATALOGUE.len() as u64) as usize];
            let fail = failing_tick && index == 0 && matches!(spec.queue, "greetings" | "billing");
            let mut args = json!({
                "name": format!("demo-{tick:04}-{index}"),
                "delayMs": 220 + ((tick + index) % 8) * 160,
            });
            if fail {
                args["fail"] = json!(true);
            }
            let mut meta = Map::new();
            meta.insert("demo.kind".into(), json!("standalone"));
            send(&stem, spec.name, args, meta).await;
        }
        if tick % 2 == 0 {
            let (workflow, steps) = TEMPLATES[(tick % 3) as usize];
            let run_id = format!("wf-{tick:06}");
            for (i, (task, step)) in steps.iter().enumerate() {
                let mut args = json!({
                    "name": format!("{run_id}-{step}"),
                    "delayMs": 280 + ((tick + i as u64) % 6) * 140,
                });
                if failing_tick && i == steps.len() - 1 {
                    args["fail"] = json!(true);
                }
                let mut meta = Map::new();
                meta.insert("demo.kind".into(), json!("workflow-step"));
                meta.insert("demo.workflow".into(), json!(workflow));
                meta.insert("stem.workflow.runId".into(), json!(run_id));
                meta.insert("stem.workflow.step".into(), json!(step));
                meta.insert("stem.workflow.stepIndex".into(), json!(i));
                send(&stem, task, args, meta).await;
            }
        }
    }
}
