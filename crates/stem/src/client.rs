//! [`Stem`], the producer API: build envelopes, sign them, record `queued`,
//! publish; read statuses and wait for results. The canvas entry points
//! live in [`crate::canvas`] as further `impl Stem` blocks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::atomic::{AtomicStore, RedisAtomicStore};
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::RedisBackend;
use crate::backend::{get_status, ResultBackend};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, Outgoing, QueueAdmin, SubmitOnce};
use crate::config::{validate_queue_name, StemConfig, StoreUrl};
use crate::control::memory::MemoryControl;
use crate::control::redis::RedisControl;
use crate::control::ControlPlane;
use crate::envelope::{
    new_task_id, now_ms, TaskErrorKind, TaskSpec, TaskState, TaskStatus, WireEnvelope, MAX_PRIORITY,
};
use crate::error::{Result, StemError};
use crate::redis_conn;
use crate::signing::Signer;
use crate::task::{Task, TaskRegistry};

/// How long an idempotency key remembers its task.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Longest countdown an enqueue accepts. A revocation is kept at least this
/// long (see [`REVOCATION_TTL`]), so a revoked delayed task cannot outlive
/// its revocation and run later.
pub const MAX_COUNTDOWN: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a revocation (`cancelled`) is kept: past the latest not-before
/// time any task can have, plus a day for a backlog to drain.
pub const REVOCATION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

/// Publishes `out` at most once per `once.marker` (see
/// [`SubmitOnce`]). With an [`AtomicStore`] (broker and backend on one Redis) the
/// marker, the first status and the publish commit in one atomic step;
/// otherwise (two servers, a Redis Cluster) the first status is written
/// first and the marker and the publish commit together on the queue's
/// slot ([`Broker::publish_once`]): a crash between the two leaves a
/// `queued` status and no marker, so a retry publishes the task. Returns
/// the marker's existing value when the publish had already happened.
pub(crate) async fn submit_once(
    broker: &dyn Broker,
    backend: &dyn ResultBackend,
    atomic: Option<&dyn AtomicStore>,
    once: SubmitOnce<'_>,
    out: Outgoing,
) -> Result<Option<String>> {
    if let Some(atomic) = atomic {
        return atomic.submit_once(&once, &out).await;
    }
    if let Some(s) = once.status {
        backend.set_statuses(std::slice::from_ref(s)).await?;
    }
    broker.publish_once(&once, out).await
}

/// Per-call overrides for an enqueue.
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    /// Queue to publish to; `None` takes the registered task's queue, else
    /// `default`.
    pub queue: Option<String>,
    /// Priority, 0 to 9; `None` takes the registered task's priority, else 0.
    pub priority: Option<u8>,
    /// Delay before the task may start.
    pub countdown: Option<Duration>,
    /// A repeated key within 24 h returns the first task id.
    pub idempotency_key: Option<String>,
    /// Retry budget for tasks this producer does not have in its registry.
    pub max_retries: Option<u32>,
    /// Extra envelope headers (signed with the body).
    pub headers: BTreeMap<String, String>,
    /// Envelope meta, merged over the registered task's meta.
    pub meta: Map<String, Value>,
}

/// The override in `opts`, else the registered `defaults`' queue, else
/// `default` (one rule for [`Stem::queue_for`] and every enqueue).
fn pick_queue(opts: &EnqueueOptions, defaults: Option<&crate::task::TaskOptions>) -> String {
    opts.queue
        .clone()
        .or_else(|| defaults.map(|d| d.queue.clone()))
        .unwrap_or_else(|| "default".into())
}

/// One task to enqueue by name.
#[derive(Clone, Debug)]
pub struct EnqueueRequest {
    /// Name of the task to run.
    pub name: String,
    /// Task arguments, as JSON.
    pub args: Value,
    /// Per-call overrides.
    pub options: EnqueueOptions,
}

impl EnqueueRequest {
    /// `name` with `args` and no overrides (a canvas step, say).
    pub fn new(name: impl Into<String>, args: Value) -> Self {
        EnqueueRequest {
            name: name.into(),
            args,
            options: EnqueueOptions::default(),
        }
    }

    /// The same request with `options`.
    pub fn with_options(mut self, options: EnqueueOptions) -> Self {
        self.options = options;
        self
    }
}

/// What an enqueue returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// Id of the new task, or of the earlier one when `duplicate`.
    pub task_id: String,
    /// True when an idempotency key matched an earlier enqueue.
    pub duplicate: bool,
}

/// A prepared envelope: spec, signed wire form, and when it may start.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub spec: TaskSpec,
    pub wire: WireEnvelope,
    pub not_before_ms: Option<i64>,
}

impl Prepared {
    /// The task's first status, `queued`, recording the fingerprint of
    /// its signed envelope: the one record a worker that rejects this very
    /// envelope may fail ([`ResultBackend::fail_rejected`]).
    pub(crate) fn queued_status(&self) -> TaskStatus {
        TaskStatus::for_spec(&self.spec, TaskState::Queued, 0).waiting_on(&self.wire)
    }

    pub(crate) fn outgoing(&self) -> Outgoing {
        Outgoing {
            queue: self.spec.queue.clone(),
            priority: self.spec.priority,
            not_before_ms: self.not_before_ms,
            wire: self.wire.clone(),
        }
    }
}

/// The stores a client and its workers share: the hot-path broker, the
/// operator's view of the same queues, the result backend, the atomic
/// submit/settle when broker and backend share one Redis, and the control
/// plane. [`Stores::connect`] is the one place that turns `STEM_*` URLs
/// into adapters.
#[derive(Clone)]
pub struct Stores {
    /// Publishes and delivers envelopes (the hot path).
    pub broker: Arc<dyn Broker>,
    /// The operator's view of the same queues: counts, purges, dead letters.
    pub admin: Arc<dyn QueueAdmin>,
    /// The result backend: statuses, groups, claims and blobs.
    pub backend: Arc<dyn ResultBackend>,
    /// Present when the broker and the backend live on the same Redis.
    pub atomic: Option<Arc<dyn AtomicStore>>,
    /// Heartbeats, commands to workers and queue pauses.
    pub control: Arc<dyn ControlPlane>,
}

impl Stores {
    /// Builds every store from `config` (Redis or memory). Connections are
    /// made lazily.
    pub fn connect(config: &StemConfig) -> Result<Self> {
        let backend: Arc<dyn ResultBackend> = match &config.result_backend_url {
            StoreUrl::Memory => Arc::new(MemoryBackend::new(config.result_ttl)),
            StoreUrl::Redis(url) => Arc::new(RedisBackend::new(
                redis_conn::endpoint(url, &config.tls)?,
                config.result_ttl,
            )?),
        };
        Ok(match &config.broker_url {
            StoreUrl::Memory => Stores::memory_with(
                backend,
                MemoryBroker::new()
                    .with_recent_tasks(config.recent_tasks)
                    .with_recent_ttl(config.result_ttl),
            ),
            StoreUrl::Redis(url) => {
                let client = redis_conn::endpoint(url, &config.tls)?;
                let broker = RedisBroker::new(client.clone(), config.dead_letter_maxlen)?
                    .with_recent_tasks(config.recent_tasks)
                    .with_recent_ttl(config.result_ttl);
                // One server holding both stores makes a status and a
                // publish (or a result and an ack) one atomic step. A
                // cluster keeps a task's keys and its queue's on different
                // slots, so there the stores work as on two servers.
                let atomic: Option<Arc<dyn AtomicStore>> = (config.result_backend_url
                    == config.broker_url
                    && !client.is_cluster())
                .then(|| Arc::new(RedisAtomicStore::new(broker.clone(), config.result_ttl)) as _);
                let broker = Arc::new(broker);
                Stores {
                    broker: broker.clone(),
                    admin: broker,
                    backend,
                    atomic,
                    control: Arc::new(RedisControl::new(client)?),
                }
            }
        })
    }

    /// Fresh in-memory stores; statuses kept `result_ttl`.
    pub fn memory(result_ttl: Duration) -> Self {
        Stores::memory_with(
            Arc::new(MemoryBackend::new(result_ttl)),
            MemoryBroker::new(),
        )
    }

    fn memory_with(backend: Arc<dyn ResultBackend>, broker: MemoryBroker) -> Self {
        let broker = Arc::new(broker);
        Stores {
            broker: broker.clone(),
            admin: broker,
            backend,
            atomic: None,
            control: Arc::new(MemoryControl::new()),
        }
    }
}

/// The producer client. Cheap to clone.
#[derive(Clone)]
pub struct Stem {
    stores: Stores,
    signer: Option<Signer>,
    registry: TaskRegistry,
}

impl Stem {
    /// A client on `config`'s stores, signing with the producer's key.
    /// Fails when signing keys are configured without
    /// `STEM_SIGNING_ACTIVE_KEY`.
    pub fn connect(config: &StemConfig) -> Result<Self> {
        Ok(Stem::new(
            Stores::connect(config)?,
            config.keys.signer()?,
            TaskRegistry::new(),
        ))
    }

    /// Like [`connect`](Self::connect) for processes that never sign
    /// (workers: least privilege). Envelopes it would publish go unsigned,
    /// so use it only to consume.
    pub fn connect_consumer(config: &StemConfig) -> Result<Self> {
        Ok(Stem::new(
            Stores::connect(config)?,
            None,
            TaskRegistry::new(),
        ))
    }

    /// A client on fresh in-memory stores, without signing.
    pub fn memory() -> Self {
        Stem::new(
            Stores::memory(Duration::from_secs(86_400)),
            None,
            TaskRegistry::new(),
        )
    }

    /// A client on `stores`.
    pub fn new(stores: Stores, signer: Option<Signer>, registry: TaskRegistry) -> Self {
        Stem {
            stores,
            signer,
            registry,
        }
    }

    /// The same stores with another signer (`None`: publish unsigned).
    pub fn with_signer(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// The same stores with another registry.
    pub fn with_registry(mut self, registry: TaskRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Every store.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }
    /// The control plane (heartbeats, worker commands, pauses).
    pub fn control(&self) -> Arc<dyn ControlPlane> {
        self.stores.control.clone()
    }
    /// The broker (hot path).
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.stores.broker.clone()
    }
    /// The operator's view of the queues.
    pub fn admin(&self) -> Arc<dyn QueueAdmin> {
        self.stores.admin.clone()
    }
    /// The result backend.
    pub fn backend(&self) -> Arc<dyn ResultBackend> {
        self.stores.backend.clone()
    }
    /// The atomic submit/settle, when broker and backend share a Redis.
    pub fn atomic(&self) -> Option<Arc<dyn AtomicStore>> {
        self.stores.atomic.clone()
    }
    /// The registry (task names, queues, retry budgets).
    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }
    /// The signer, when this producer signs.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// A handle for sending control commands to live workers, signed with
    /// this client's key when it has one.
    pub fn workers(&self) -> crate::control::Workers {
        crate::control::Workers::new(self.control(), self.signer.clone())
    }

    /// The queue a task of `name` enqueued with `opts` goes to: the
    /// override, else the registered task's queue, else `default`.
    pub fn queue_for(&self, name: &str, opts: &EnqueueOptions) -> String {
        pick_queue(opts, self.registry.options(name).as_ref())
    }

    /// Builds and signs an envelope for `name`.
    pub(crate) fn prepare(
        &self,
        name: &str,
        args: Value,
        opts: &EnqueueOptions,
    ) -> Result<Prepared> {
        let defaults = self.registry.options(name);
        let queue = pick_queue(opts, defaults.as_ref());
        validate_queue_name("queue", &queue)
            .map_err(|e| StemError::InvalidArgument(e.to_string()))?;
        let priority = opts
            .priority
            .or_else(|| defaults.as_ref().map(|d| d.priority))
            .unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(StemError::InvalidArgument(format!(
                "priority {priority} is above 9"
            )));
        }
        let max_retries = defaults
            .as_ref()
            .map(|d| d.max_retries)
            .or(opts.max_retries)
            .unwrap_or(0);
        if opts.countdown.is_some_and(|c| c > MAX_COUNTDOWN) {
            return Err(StemError::InvalidArgument(format!(
                "countdown is above {} days",
                MAX_COUNTDOWN.as_secs() / 86_400
            )));
        }
        let mut meta = defaults.map(|d| d.meta).unwrap_or_default();
        meta.extend(opts.meta.clone());
        let id = new_task_id();
        let mut headers = opts.headers.clone();
        // The producer span; its context goes into the signed headers.
        if let Some(tp) = crate::trace::enqueue(
            name,
            &id,
            &queue,
            priority,
            opts.headers
                .get(crate::trace::TRACEPARENT_HEADER)
                .map(String::as_str),
        ) {
            headers.insert(crate::trace::TRACEPARENT_HEADER.into(), tp);
        }
        let spec = TaskSpec {
            id,
            name: name.to_string(),
            queue,
            args,
            headers,
            meta,
            enqueued_at: now_ms(),
            max_retries,
            priority,
        };
        let wire = self.seal(&spec)?;
        Ok(Prepared {
            not_before_ms: opts
                .countdown
                .map(|c| spec.enqueued_at + c.as_millis() as i64),
            spec,
            wire,
        })
    }

    /// Serialises and signs `spec`.
    pub(crate) fn seal(&self, spec: &TaskSpec) -> Result<WireEnvelope> {
        let body = spec.to_body()?;
        let (key_id, signature) = match &self.signer {
            Some(s) => (Some(s.key_id().to_string()), Some(s.sign(&body))),
            None => (None, None),
        };
        Ok(WireEnvelope {
            body,
            key_id,
            signature,
            attempt: 0,
        })
    }

    /// Records `queued` for every prepared envelope, then publishes them.
    /// Writing the status first means a late `queued` can never hide a
    /// worker's `running`.
    pub(crate) async fn submit(&self, prepared: &[Prepared]) -> Result<()> {
        let statuses: Vec<TaskStatus> = prepared.iter().map(Prepared::queued_status).collect();
        let batch: Vec<Outgoing> = prepared.iter().map(Prepared::outgoing).collect();
        if let Some(atomic) = &self.stores.atomic {
            return atomic.submit(&statuses, &batch).await;
        }
        self.stores.backend.set_statuses(&statuses).await?;
        self.stores.broker.publish(batch).await
    }

    /// Enqueues a typed task with its registered options.
    pub async fn enqueue<T: Task>(&self, args: T::Args) -> Result<String> {
        self.enqueue_with::<T>(args, EnqueueOptions::default())
            .await
    }

    /// Enqueues a typed task with overrides.
    pub async fn enqueue_with<T: Task>(
        &self,
        args: T::Args,
        opts: EnqueueOptions,
    ) -> Result<String> {
        let args = serde_json::to_value(args)?;
        Ok(self.enqueue_raw(T::NAME, args, opts).await?.task_id)
    }

    /// Enqueues by name with JSON arguments.
    pub async fn enqueue_raw(
        &self,
        name: &str,
        args: Value,
        opts: EnqueueOptions,
    ) -> Result<Enqueued> {
        if let Some(key) = &opts.idempotency_key {
            let marker = format!("idem:{key}");
            return self
                .enqueue_once(&marker, IDEMPOTENCY_WINDOW, name, args, &opts)
                .await;
        }
        let prepared = self.prepare(name, args, &opts)?;
        self.submit(std::slice::from_ref(&prepared)).await?;
        Ok(Enqueued {
            task_id: prepared.spec.id,
            duplicate: false,
        })
    }

    /// Enqueues a task at most once per `marker` (a backend key): the
    /// marker, the queued status and the publish commit together, or the
    /// marker is released, so a retry after a failure or a timeout never
    /// gets the id of a task that was not published, and never publishes a
    /// second one. A marker that exists (it lives `ttl`) answers its task id
    /// with `duplicate: true`. Idempotency keys and beat's slots use it.
    pub(crate) async fn enqueue_once(
        &self,
        marker: &str,
        ttl: Duration,
        name: &str,
        args: Value,
        opts: &EnqueueOptions,
    ) -> Result<Enqueued> {
        let prepared = self.prepare(name, args, opts)?;
        let queued = prepared.queued_status();
        let once = SubmitOnce {
            marker,
            value: &prepared.spec.id,
            ttl,
            status: Some(&queued),
        };
        let existing = submit_once(
            self.stores.broker.as_ref(),
            self.stores.backend.as_ref(),
            self.stores.atomic.as_deref(),
            once,
            prepared.outgoing(),
        )
        .await?;
        Ok(match existing {
            Some(task_id) => Enqueued {
                task_id,
                duplicate: true,
            },
            None => Enqueued {
                task_id: prepared.spec.id,
                duplicate: false,
            },
        })
    }

    /// Enqueues many tasks. They are prepared and signed in chunks of 512;
    /// each chunk goes to Redis in one round trip while the next one is
    /// being prepared, so signing and Redis work overlap. Idempotency keys
    /// are not consulted here. On error, chunks before the failing one are
    /// already enqueued.
    pub async fn enqueue_many(&self, requests: Vec<EnqueueRequest>) -> Result<Vec<String>> {
        const CHUNK: usize = 512;
        let mut ids = Vec::with_capacity(requests.len());
        let mut inflight: Option<tokio::task::JoinHandle<Result<()>>> = None;
        let mut rest = requests.into_iter().peekable();
        while rest.peek().is_some() {
            let prepared = rest
                .by_ref()
                .take(CHUNK)
                .map(|r| self.prepare(&r.name, r.args, &r.options))
                .collect::<Result<Vec<_>>>()?;
            ids.extend(prepared.iter().map(|p| p.spec.id.clone()));
            if let Some(previous) = inflight.take() {
                join(previous).await?;
            }
            let stem = self.clone();
            inflight = Some(tokio::spawn(async move { stem.submit(&prepared).await }));
        }
        if let Some(previous) = inflight {
            join(previous).await?;
        }
        Ok(ids)
    }

    /// The status of task `id`.
    pub async fn status(&self, id: &str) -> Result<Option<TaskStatus>> {
        get_status(self.stores.backend.as_ref(), id).await
    }

    /// Forgets `queue` ([`QueueAdmin::forget_queue`]: it stops being
    /// listed and polled) when it holds no task and no live worker
    /// consumes it — a worker would name it again. `Ok(false)` for a queue
    /// that was not known; [`StemError::InvalidArgument`] saying why not
    /// otherwise. The CLI's `queue forget` and the dashboard's queue page.
    pub async fn forget_queue(&self, queue: &str) -> Result<bool> {
        let serving: Vec<String> = self
            .control()
            .workers()
            .await?
            .into_iter()
            .filter(|w| w.queues.iter().any(|q| q == queue))
            .map(|w| w.name)
            .collect();
        if !serving.is_empty() {
            return Err(StemError::InvalidArgument(format!(
                "queue {queue:?} is consumed by live workers ({}); stop them or give them other queues first",
                serving.join(", ")
            )));
        }
        self.admin().forget_queue(queue).await
    }

    /// Recent tasks matching `query`, newest first, from the recent-task
    /// index (see [`crate::recent`]).
    pub async fn find_tasks(
        &self,
        query: &crate::recent::TaskQuery,
    ) -> Result<crate::recent::TaskListing> {
        crate::recent::find_tasks(
            self.stores.admin.as_ref(),
            self.stores.backend.as_ref(),
            query,
        )
        .await
    }

    /// Revokes task `id`: a queued task will not run, a running task is
    /// cancelled through its context within about a second. Revocation is
    /// final and lasts [`REVOCATION_TTL`], longer than any countdown. A task
    /// that finished first keeps its result: the revocation is only written
    /// while no terminal status exists. Returns the status before
    /// revocation (the terminal one when the task finished first), `None`
    /// for unknown ids.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Option<TaskStatus>> {
        let Some(before) = self.status(id).await? else {
            return Ok(None);
        };
        if before.state.is_terminal() {
            return Ok(Some(before));
        }
        let mut cancelled = before.clone();
        cancelled.state = TaskState::Cancelled;
        // `reason: revoked` is not a dead-letter reason; it tells readers
        // of the error alone why the task stopped.
        let mut error = crate::envelope::TaskError::new(TaskErrorKind::Revoked, reason);
        error.reason = Some("revoked".into());
        cancelled.error = Some(error);
        cancelled.updated_at = crate::envelope::format_ms(now_ms());
        if !self
            .stores
            .backend
            .record_revocation(&cancelled, REVOCATION_TTL)
            .await?
        {
            // The task finished between the read and the write.
            return self.status(id).await;
        }
        Ok(Some(before))
    }

    /// Polls until task `id` reaches a terminal state or `timeout` passes.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(s) = self.status(id).await? {
                if s.state.is_terminal() {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StemError::WaitTimedOut(format!(
                    "task {id} not finished after {timeout:?}"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

async fn join(handle: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    handle
        .await
        .map_err(|e| StemError::Internal(format!("enqueue task failed: {e}")))?
}
