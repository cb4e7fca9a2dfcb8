//! Enqueueing: the options of one enqueue, preparing and signing an
//! envelope, and publishing one task, many, or one per idempotency key
//! (the submit-once path canvas and beat share).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::atomic::AtomicStore;
use crate::backend::ResultBackend;
use crate::broker::{Broker, Outgoing, SubmitOnce};
use crate::config::validate_queue_name;
use crate::envelope::{
    new_task_id, now_ms, TaskSpec, TaskState, TaskStatus, WireEnvelope, MAX_PRIORITY,
};
use crate::error::{Result, StemError};
use crate::task::Task;

use super::{Stem, IDEMPOTENCY_WINDOW, MAX_COUNTDOWN};

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

impl Stem {
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
}

async fn join(handle: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    handle
        .await
        .map_err(|e| StemError::Internal(format!("enqueue task failed: {e}")))?
}
