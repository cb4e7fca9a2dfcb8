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

pub fn registry() -> TaskRegistry {
    let r = TaskRegistry::new();
    r.register_handler(Arc::new(Noop));
    r
}
