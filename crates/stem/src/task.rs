//! Defining tasks: the typed [`Task`] trait, the name-keyed [`TaskRegistry`]
//! the worker dispatches through, and the [`TaskContext`] a running task
//! gets (progress, cancellation, soft time limit, canvas inputs).

use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::backend::ResultBackend;
use crate::envelope::{Progress, TaskSpec, TaskState, TaskStatus};

/// Why a task body failed.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskFailure {
    /// What went wrong; recorded in the task's status.
    pub message: String,
    /// `false` skips the remaining retry budget (dead-letter at once).
    pub retryable: bool,
}

impl TaskFailure {
    /// A failure that may be retried.
    pub fn new(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: true,
        }
    }
    /// A failure that is not retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for TaskFailure {
    fn from(s: String) -> Self {
        TaskFailure::new(s)
    }
}
impl From<&str> for TaskFailure {
    fn from(s: &str) -> Self {
        TaskFailure::new(s)
    }
}
impl From<crate::error::StemError> for TaskFailure {
    fn from(e: crate::error::StemError) -> Self {
        TaskFailure::new(e.to_string())
    }
}
impl From<serde_json::Error> for TaskFailure {
    fn from(e: serde_json::Error) -> Self {
        TaskFailure::fatal(format!("invalid arguments: {e}"))
    }
}

/// What a task body returns.
pub type TaskResult<T> = std::result::Result<T, TaskFailure>;

/// Runs blocking or CPU-bound work of a task body on tokio's blocking
/// pool instead of the async executor, and awaits it.
///
/// A body that blocks its thread (image resizing, a synchronous client,
/// `std::thread::sleep`) holds one of the runtime's few worker threads; a
/// few such bodies at once stall everything else the worker runs there:
/// lease renewal (so other workers recover and run the tasks again),
/// heartbeats, the completer and the hard time limit. Wrap the blocking
/// part in this instead:
///
/// ```
/// use stem::task::{run_blocking, TaskResult};
///
/// async fn body(width: u32) -> TaskResult<u32> {
///     run_blocking(move || Ok(width * 2 /* resize here */)).await
/// }
/// ```
///
/// The hard time limit still ends the attempt, but the closure cannot be
/// interrupted: it runs to its end on the blocking pool, its result
/// discarded. A panic in the closure fails the attempt like a panic in the
/// body.
pub async fn run_blocking<T, F>(f: F) -> TaskResult<T>
where
    F: FnOnce() -> TaskResult<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        // Raised again in the body, where the worker catches and reports
        // it as it does any panic of a task.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(TaskFailure::new(format!(
            "blocking work did not finish: {e}"
        ))),
    }
}

/// Per-task settings, shared by producers (queue, retry budget, priority)
/// and workers (time limits).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOptions {
    /// Queue enqueues go to when they name none (default `default`).
    pub queue: String,
    /// Retries after the first attempt. Applies to every envelope of the
    /// task, whichever producer sent it.
    pub max_retries: u32,
    /// Priority of enqueues that give none, 0 (default) to 9.
    pub priority: u8,
    /// Soft limit: the context's [`TaskContext::soft_limit_reached`] fires.
    pub soft_time_limit: Option<Duration>,
    /// Hard limit: the body is stopped and the attempt fails.
    pub time_limit: Option<Duration>,
    /// Meta added to every envelope of the task.
    pub meta: Map<String, Value>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            queue: "default".into(),
            max_retries: 3,
            priority: 0,
            soft_time_limit: None,
            time_limit: None,
            meta: Map::new(),
        }
    }
}

/// A typed task.
#[async_trait]
pub trait Task: Send + Sync + 'static {
    /// Registered name, e.g. `images.resize`.
    const NAME: &'static str;
    /// Arguments, carried as JSON.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// Result, stored as JSON.
    type Output: Serialize + Send + 'static;

    /// Queue, retry budget, limits.
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
    }

    /// The body.
    async fn run(&self, ctx: TaskContext, args: Self::Args) -> TaskResult<Self::Output>;
}

/// A task behind a name, with JSON in and out. [`Task`]s are adapted to
/// this; dynamic catalogues implement it directly.
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    /// The name the task is registered and enqueued under.
    fn name(&self) -> &str;
    /// The task's settings (queue, retry budget, limits).
    fn options(&self) -> TaskOptions;
    /// Runs the body on JSON `args` and returns its result as JSON.
    async fn call(&self, ctx: TaskContext, args: Value) -> TaskResult<Value>;
}

struct Typed<T: Task>(T);

#[async_trait]
impl<T: Task> TaskHandler for Typed<T> {
    fn name(&self) -> &str {
        T::NAME
    }
    fn options(&self) -> TaskOptions {
        self.0.options()
    }
    async fn call(&self, ctx: TaskContext, args: Value) -> TaskResult<Value> {
        let args: T::Args = serde_json::from_value(args)?;
        let out = self.0.run(ctx, args).await?;
        serde_json::to_value(out)
            .map_err(|e| TaskFailure::fatal(format!("unserialisable result: {e}")))
    }
}

/// A task from a function ([`TaskRegistry::register_fn`]).
struct FnTask<A, O, F> {
    name: String,
    options: TaskOptions,
    body: F,
    _types: std::marker::PhantomData<fn(A) -> O>,
}

#[async_trait]
impl<A, O, F, Fut> TaskHandler for FnTask<A, O, F>
where
    A: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult<O>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn options(&self) -> TaskOptions {
        self.options.clone()
    }
    async fn call(&self, ctx: TaskContext, args: Value) -> TaskResult<Value> {
        let args: A = serde_json::from_value(args)?;
        let out = (self.body)(ctx, args).await?;
        serde_json::to_value(out)
            .map_err(|e| TaskFailure::fatal(format!("unserialisable result: {e}")))
    }
}

/// Tasks by name. Cheap to clone; clones share entries.
#[derive(Clone, Default)]
pub struct TaskRegistry {
    inner: Arc<RwLock<HashMap<String, Arc<dyn TaskHandler>>>>,
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed task.
    pub fn register<T: Task>(&self, task: T) -> &Self {
        self.register_handler(Arc::new(Typed(task)))
    }

    /// Registers an async function as task `name`: JSON arguments in,
    /// a JSON-serialisable result out, with `options` (queue, retries,
    /// limits). For tasks that need no type of their own:
    ///
    /// ```
    /// use stem::{TaskOptions, TaskRegistry};
    ///
    /// let registry = TaskRegistry::new();
    /// registry.register_fn("math.add", TaskOptions::default(), |_ctx, args: (i64, i64)| async move {
    ///     Ok(args.0 + args.1)
    /// });
    /// assert_eq!(registry.names(), ["math.add"]);
    /// ```
    pub fn register_fn<A, O, F, Fut>(&self, name: &str, options: TaskOptions, body: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult<O>> + Send + 'static,
    {
        self.register_handler(Arc::new(FnTask {
            name: name.to_string(),
            options,
            body,
            _types: std::marker::PhantomData,
        }))
    }

    /// Registers a handler under its name (replacing an earlier one).
    pub fn register_handler(&self, handler: Arc<dyn TaskHandler>) -> &Self {
        self.inner
            .write()
            .insert(handler.name().to_string(), handler);
        self
    }

    /// The handler for `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn TaskHandler>> {
        self.inner.read().get(name).cloned()
    }

    /// Options of `name`, when registered.
    pub fn options(&self, name: &str) -> Option<TaskOptions> {
        self.get(name).map(|h| h.options())
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.read().keys().cloned().collect();
        v.sort();
        v
    }
}

/// What a running task can see and do.
#[derive(Clone)]
pub struct TaskContext {
    /// Id of the running task.
    pub task_id: String,
    /// Task name.
    pub name: String,
    /// Queue the task was published to.
    pub queue: String,
    /// 0 on the first execution.
    pub attempt: u32,
    /// Retries allowed after the first attempt (the registered task's budget).
    pub max_retries: u32,
    /// The envelope's headers, the canvas's `stem-*` ones included.
    pub headers: BTreeMap<String, String>,
    /// The envelope's meta.
    pub meta: Map<String, Value>,
    /// Result of the previous step when this task is a chain step.
    pub chain_previous: Option<Value>,
    /// Results of the header tasks when this task is a chord callback.
    pub chord_results: Option<Vec<Value>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) soft: CancellationToken,
    pub(crate) progress: Option<(Arc<dyn ResultBackend>, Arc<TaskSpec>)>,
    /// Set once `running` was recorded, by a progress report or by the
    /// worker's marker loop (shared with the worker's running-task record).
    pub(crate) progressed: Arc<std::sync::atomic::AtomicBool>,
}

impl TaskContext {
    /// A context for calling a task body directly (tests, examples).
    pub fn detached(name: &str, args_meta: Map<String, Value>) -> Self {
        TaskContext {
            task_id: crate::envelope::new_task_id(),
            name: name.to_string(),
            queue: "default".into(),
            attempt: 0,
            max_retries: 0,
            headers: BTreeMap::new(),
            meta: args_meta,
            chain_previous: None,
            chord_results: None,
            cancel: CancellationToken::new(),
            soft: CancellationToken::new(),
            progress: None,
            progressed: Arc::default(),
        }
    }

    /// Records progress (0.0–1.0 plus data) in the task's status, where
    /// `GET /tasks/{id}` and the dashboard show it.
    pub async fn progress(&self, fraction: f64, data: Value) {
        let Some((backend, spec)) = &self.progress else {
            return;
        };
        self.progressed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut status = TaskStatus::for_spec(spec, TaskState::Running, self.attempt);
        status.progress = Some(Progress {
            fraction: fraction.clamp(0.0, 1.0),
            data,
        });
        if let Err(e) = backend.set_statuses(&[status]).await {
            tracing::warn!(task_id = %self.task_id, error = %e, "progress not recorded");
        }
    }

    /// True once the task was revoked, hit its hard limit, or the worker
    /// is stopping without time to finish it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when [`is_cancelled`](Self::is_cancelled) becomes true.
    pub fn cancelled(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.cancel.cancelled())
    }

    /// True once the soft time limit passed.
    pub fn soft_limit_reached(&self) -> bool {
        self.soft.is_cancelled()
    }

    /// Sleeps for `d`, returning `false` early when cancelled.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_function_task_decodes_its_arguments_and_encodes_its_result(
    ) -> crate::error::Result<()> {
        let registry = TaskRegistry::new();
        let options = TaskOptions {
            queue: "math".into(),
            max_retries: 4,
            ..Default::default()
        };
        registry.register_fn("math.add", options, |_ctx, (a, b): (i64, i64)| async move {
            if a < 0 {
                return Err(TaskFailure::fatal("negative"));
            }
            Ok(a + b)
        });
        let handler = registry.get("math.add").expect("registered");
        assert_eq!(handler.name(), "math.add");
        assert_eq!(
            registry
                .options("math.add")
                .map(|o| (o.queue, o.max_retries)),
            Some(("math".to_string(), 4))
        );
        let ctx = || TaskContext::detached("math.add", Map::new());
        assert_eq!(
            handler.call(ctx(), json!([2, 3])).await.ok(),
            Some(json!(5))
        );
        let refused = handler.call(ctx(), json!([-1, 3])).await.err();
        assert_eq!(
            refused.map(|f| (f.message, f.retryable)),
            Some(("negative".into(), false))
        );
        let bad_args = handler.call(ctx(), json!({"a": 1})).await.err();
        assert!(
            bad_args.is_some_and(|f| !f.retryable),
            "undecodable arguments fail for good"
        );
        Ok(())
    }
}
