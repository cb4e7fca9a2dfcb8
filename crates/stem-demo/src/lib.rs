//! The demo task catalogue, shared by the enqueuer, the worker, beat, the
//! CLI and `stem dev`: names, queues, namespaces, retry budgets, time
//! limits, and the one body all six tasks run (sleep in 200 ms steps with
//! persisted progress, optional synthetic failure).
//!
//! It is an application of the library, not part of it: a deployment with
//! its own tasks builds its own registry and leaves this crate out.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use stem::task::{TaskContext, TaskFailure, TaskHandler, TaskOptions, TaskRegistry, TaskResult};

/// One catalogue entry.
#[derive(Clone, Copy, Debug)]
pub struct DemoSpec {
    pub name: &'static str,
    pub queue: &'static str,
    pub namespace: &'static str,
    pub max_retries: u32,
    pub soft_limit_secs: u64,
    pub hard_limit_secs: u64,
}

/// The catalogue, in reference order.
pub const CATALOGUE: [DemoSpec; 6] = [
    DemoSpec {
        name: "greeting.send",
        queue: "greetings",
        namespace: "customer-experience",
        max_retries: 5,
        soft_limit_secs: 10,
        hard_limit_secs: 20,
    },
    DemoSpec {
        name: "customer.followup",
        queue: "greetings",
        namespace: "customer-experience",
        max_retries: 4,
        soft_limit_secs: 12,
        hard_limit_secs: 22,
    },
    DemoSpec {
        name: "billing.charge",
        queue: "billing",
        namespace: "revenue",
        max_retries: 5,
        soft_limit_secs: 12,
        hard_limit_secs: 24,
    },
    DemoSpec {
        name: "billing.settlement",
        queue: "billing",
        namespace: "revenue",
        max_retries: 3,
        soft_limit_secs: 10,
        hard_limit_secs: 18,
    },
    DemoSpec {
        name: "reports.aggregate",
        queue: "reporting",
        namespace: "analytics",
        max_retries: 2,
        soft_limit_secs: 12,
        hard_limit_secs: 24,
    },
    DemoSpec {
        name: "reports.publish",
        queue: "reporting",
        namespace: "analytics",
        max_retries: 2,
        soft_limit_secs: 10,
        hard_limit_secs: 18,
    },
];

/// Default task of `POST /enqueue`.
pub const DEFAULT_TASK: &str = "greeting.send";

/// The demo queues, in order.
pub const QUEUES: [&str; 3] = ["greetings", "billing", "reporting"];

/// Catalogue entry by name.
pub fn spec(name: &str) -> Option<&'static DemoSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}

/// Catalogue names in order.
pub fn names() -> Vec<String> {
    CATALOGUE.iter().map(|s| s.name.to_string()).collect()
}

struct DemoTask(&'static DemoSpec);

/// Parses `delayMs`: integer, float, or numeric string; missing or ≤ 0 → 500.
fn delay_ms(args: &Value) -> u64 {
    let v = match args.get("delayMs") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse::<f64>().unwrap_or(0.0),
        _ => 0.0,
    };
    if v >= 1.0 {
        v as u64
    } else {
        500
    }
}

#[stem::async_trait]
impl TaskHandler for DemoTask {
    fn name(&self) -> &str {
        self.0.name
    }

    fn options(&self) -> TaskOptions {
        let mut meta = Map::new();
        meta.insert("namespace".into(), json!(self.0.namespace));
        meta.insert("stem.namespace".into(), json!(self.0.namespace));
        TaskOptions {
            queue: self.0.queue.to_string(),
            max_retries: self.0.max_retries,
            priority: 0,
            soft_time_limit: Some(Duration::from_secs(self.0.soft_limit_secs)),
            time_limit: Some(Duration::from_secs(self.0.hard_limit_secs)),
            meta,
        }
    }

    async fn call(&self, ctx: TaskContext, args: Value) -> TaskResult<Value> {
        let name = match args.get("name") {
            None | Some(Value::Null) => "friend".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(TaskFailure::fatal(format!(
                    "name must be a string, got {other}"
                )))
            }
        };
        let fail = args.get("fail") == Some(&Value::Bool(true));
        let total_steps = delay_ms(&args).div_ceil(200).clamp(1, 60);
        tracing::info!(
            task = self.0.name, task_id = %ctx.task_id, attempt = ctx.attempt, name = %name,
            "demo task body running"
        );
        for step in 1..=total_steps {
            ctx.progress(
                step as f64 / total_steps as f64,
                json!({"step": step, "totalSteps": total_steps, "name": name}),
            )
            .await;
            if !ctx.sleep(Duration::from_millis(200)).await {
                return Err(TaskFailure::new("cancelled"));
            }
        }
        if fail {
            return Err(TaskFailure::new(format!(
                "Synthetic failure requested for task={} label={name}",
                self.0.name
            )));
        }
        let message = format!("Processed {} for {name}", self.0.name);
        tracing::info!(task_id = %ctx.task_id, "{message} (attempt {})", ctx.attempt);
        ctx.progress(1.0, json!({"message": message})).await;
        Ok(Value::String(message))
    }
}

/// Registers the six demo tasks in `registry`.
pub fn register(registry: &TaskRegistry) {
    for spec in CATALOGUE.iter() {
        registry.register_handler(Arc::new(DemoTask(spec)));
    }
}

/// A registry holding the catalogue.
pub fn registry() -> TaskRegistry {
    let r = TaskRegistry::new();
    register(&r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_parsing_matches_the_reference() {
        assert_eq!(delay_ms(&json!({})), 500);
        assert_eq!(delay_ms(&json!({"delayMs": 0})), 500);
        assert_eq!(delay_ms(&json!({"delayMs": 1200.7})), 1200);
        assert_eq!(delay_ms(&json!({"delayMs": "300"})), 300);
    }

    #[tokio::test]
    async fn body_returns_the_reference_string() {
        let r = registry();
        let h = r.get("billing.charge").expect("registered");
        let out = h
            .call(
                TaskContext::detached("billing.charge", Map::new()),
                json!({"name": "Ada", "delayMs": 1}),
            )
            .await;
        assert_eq!(out, Ok(json!("Processed billing.charge for Ada")));
        let err = h
            .call(
                TaskContext::detached("billing.charge", Map::new()),
                json!({"name": "Ada", "delayMs": 1, "fail": true}),
            )
            .await
            .expect_err("fails");
        assert_eq!(
            err.message,
            "Synthetic failure requested for task=billing.charge label=Ada"
        );
    }
}
