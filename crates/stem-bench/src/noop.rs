//! The benchmark's task: `bench.noop` on queue `bench`, no retries, returns
//! its argument. A stand-in for "the cheapest real task", so the numbers
//! measure Stem, not task bodies.

use std::sync::Arc;

use serde_json::Value;
use stem::task::{TaskContext, TaskHandler, TaskOptions, TaskRegistry, TaskResult};

pub const TASK: &str = "bench.noop";
pub const QUEUE: &str = "bench";

struct Noop;

#[stem::async_trait]
impl TaskHandler for Noop {
    fn name(&self) -> &str {
        TASK
    }
    fn options(&self) -> TaskOptions {
        TaskOptions {
            queue: QUEUE.into(),
            max_retries: 0,
            ..Default::default()
        }
    }
    async fn call(&self, _ctx: TaskContext, args: Value) -> TaskResult<Value> {
        Ok(args)
    }
}

/// The queues of a run over `n` queues: `bench` alone, or `bench0`,
/// `bench1`, … (the first three hash to the three slot ranges
/// `redis-cli --cluster create` gives three masters, so on a cluster each
/// lands on a master of its own). Tasks go round-robin.
pub fn queues(n: usize) -> Vec<String> {
    match n {
        0 | 1 => vec![QUEUE.to_string()],
        n => (0..n).map(|i| format!("{QUEUE}{i}")).collect(),
    }
}

pub fn registry() -> TaskRegistry {
    let r = TaskRegistry::new();
    r.register_handler(Arc::new(Noop));
    r
}
