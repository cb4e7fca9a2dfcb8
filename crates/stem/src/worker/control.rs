//! The worker's side of the control plane: heartbeats with live counters,
//! persisted queue pauses, and answers to `ping`, `stats`, `inspect`,
//! `revoke`, `shutdown`, `pause` and `resume`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{backoff, Shared};
use crate::control::{
    minute_of, ActiveTask, Command, ControlCommand, ControlReply, InspectReply, PausedReply,
    PingReply, RevokeReply, ShutdownReply, Throughput, WorkerInfo, COMMAND_WINDOW,
};
use crate::envelope::{format_ms, now_ms};

/// A snapshot of the worker for heartbeats and `stats`.
pub(super) fn info(shared: &Shared) -> WorkerInfo {
    let m = &shared.metrics;
    let paused = shared.selection.paused();
    WorkerInfo {
        name: shared.opts.name.clone(),
        namespace: shared.opts.namespace.clone(),
        queues: shared.opts.queues.clone(),
        paused,
        host: crate::config::hostname(),
        pid: std::process::id(),
        concurrency: shared.opts.concurrency,
        prefetch: shared.inflight.bound(),
        inflight: shared.inflight.count(),
        started_at: shared.started_ms,
        heartbeat_at: now_ms(),
        started: m.started.load(Ordering::Relaxed),
        succeeded: m.succeeded.load(Ordering::Relaxed),
        failed: m.failed.load(Ordering::Relaxed),
        retried: m.retried.load(Ordering::Relaxed),
    }
}

/// Adds what finished since `recorded` to the throughput history, once
/// per heartbeat rather than once per task; what a failed write could not
/// add is added with the next.
async fn record_throughput(shared: &Shared, recorded: &mut Throughput) {
    let m = &shared.metrics;
    let now = Throughput {
        succeeded: m.succeeded.load(Ordering::Relaxed),
        failed: m.failed.load(Ordering::Relaxed),
        retried: m.retried.load(Ordering::Relaxed),
    };
    let delta = now.since(recorded);
    if delta.is_zero() {
        return;
    }
    match shared
        .control
        .add_throughput(minute_of(now_ms()), &delta)
        .await
    {
        Ok(()) => *recorded = now,
        Err(e) => {
            tracing::debug!(error = %e, "throughput history not written; retried next heartbeat")
        }
    }
}

async fn refresh_paused(shared: &Shared) {
    if let Ok(list) = shared.control.paused_queues().await {
        if shared.selection.adopt_paused(list) {
            tracing::info!(paused = ?shared.selection.paused(), "paused queues changed");
        }
    }
}

/// Heartbeats every `heartbeat_interval` (TTL three intervals) and
/// refreshes paused queues; removes the worker's record when stopping.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared
        .opts
        .heartbeat_interval
        .max(Duration::from_millis(100));
    let mut failures = 0u32;
    let mut recorded = Throughput::default();
    loop {
        refresh_paused(&shared).await;
        // The lease declaration is renewed with the record: a prune that
        // found the record missing (this worker cut off for a while) may
        // have removed it.
        if let Err(e) = shared
            .broker
            .declare_lease(&shared.opts.name, shared.opts.visibility_timeout)
            .await
        {
            tracing::debug!(error = %e, "lease declaration not renewed; next heartbeat");
        }
        match shared.control.heartbeat(&info(&shared), period * 3).await {
            Ok(()) => failures = 0,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                failures += 1;
            }
        }
        record_throughput(&shared, &mut recorded).await;
        if stop
            .run_until_cancelled(tokio::time::sleep(period))
            .await
            .is_none()
        {
            break;
        }
    }
    // What finished since the last heartbeat, before the record goes.
    record_throughput(&shared, &mut recorded).await;
    if let Err(e) = shared
        .control
        .forget(&shared.opts.name, shared.started_ms)
        .await
    {
        tracing::debug!(error = %e, "could not remove the worker record");
    }
}

/// A subscription that ended sooner than this after it began counts as a
/// failed one (backoff before the next).
const SHORT_SUBSCRIPTION: Duration = Duration::from_secs(5);

/// Subscribes to commands (resubscribing after connection loss) and
/// answers the ones addressed to this worker.
pub(super) async fn command_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut failures = 0u32;
    // Ids of signed commands already acted on, with their issue time, so a
    // copied command is not replayed within its window.
    let mut seen: std::collections::HashMap<String, i64> = Default::default();
    loop {
        let subscribed = tokio::select! {
            s = shared.control.subscribe() => s,
            _ = stop.cancelled() => return,
        };
        let mut commands = match subscribed {
            Ok(s) => s,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "control channel unavailable; retrying");
                }
                failures += 1;
                if !backoff::back_off(&stop, failures).await {
                    return;
                }
                continue;
            }
        };
        let subscribed_at = std::time::Instant::now();
        loop {
            let next = tokio::select! {
                c = commands.next() => c,
                _ = stop.cancelled() => return,
            };
            let Some(cmd) = next else {
                // A subscription that ends at once (a node that accepts
                // SUBSCRIBE and then drops the client) is a failure too:
                // back off, or the loop would reconnect without pause.
                if subscribed_at.elapsed() < SHORT_SUBSCRIPTION {
                    failures += 1;
                    if !backoff::back_off(&stop, failures).await {
                        return;
                    }
                } else {
                    failures = 0;
                }
                break;
            };
            if !cmd.addresses(&shared.opts.name) {
                continue;
            }
            let reply = match authenticate(&shared, &cmd, &mut seen) {
                Ok(()) => handle(&shared, &cmd).await,
                Err(e) => {
                    tracing::warn!(command = %cmd.command, id = %cmd.id, error = %e, "control command ignored: not authenticated");
                    ControlReply {
                        worker: shared.opts.name.clone(),
                        ok: false,
                        payload: Value::Null,
                        error: Some(format!("ignored: {e}")),
                    }
                }
            };
            if let Err(e) = shared.control.reply(&cmd.id, &reply).await {
                tracing::warn!(error = %e, command = %cmd.command, "could not reply to a control command");
            }
        }
    }
}

/// A worker with verification keys acts on a command that changes what it
/// does (revoke, shutdown, pause, resume) only when the command is signed
/// with a configured key, was issued within [`COMMAND_WINDOW`] and was not
/// seen before: anyone who can publish on Redis could otherwise stop or
/// pause the fleet. Read-only commands are answered without a signature,
/// and a worker without keys accepts everything (it runs unsigned tasks
/// too, and says so at start).
fn authenticate(
    shared: &Shared,
    cmd: &ControlCommand,
    seen: &mut std::collections::HashMap<String, i64>,
) -> crate::error::Result<()> {
    let Some(verifier) = &shared.verifier else {
        return Ok(());
    };
    if !crate::control::is_mutating(&cmd.command) {
        return Ok(());
    }
    let now = now_ms();
    cmd.verify(verifier, now)?;
    let window = 2 * COMMAND_WINDOW.as_millis() as i64;
    seen.retain(|_, issued| now - *issued < window);
    if seen.insert(cmd.id.clone(), cmd.issued_at).is_some() {
        return Err(crate::error::StemError::Signature(format!(
            "command {} was already received (a replay)",
            cmd.id
        )));
    }
    Ok(())
}

async fn handle(shared: &Arc<Shared>, cmd: &ControlCommand) -> ControlReply {
    let worker = shared.opts.name.clone();
    tracing::info!(command = %cmd.command, id = %cmd.id, "control command");
    let command = match cmd.kind() {
        Ok(c) => c,
        Err(e) => {
            return ControlReply {
                worker,
                ok: false,
                payload: Value::Null,
                error: Some(e.to_string()),
            }
        }
    };
    let payload = match command {
        Command::Ping => reply(PingReply {
            timestamp: format_ms(now_ms()),
        }),
        Command::Stats => reply(info(shared)),
        Command::Inspect => {
            let now = now_ms();
            let active = shared
                .inflight
                .running()
                .into_iter()
                .map(|r| ActiveTask {
                    id: r.spec.id.clone(),
                    task: r.spec.name.clone(),
                    queue: r.spec.queue.clone(),
                    attempt: r.attempt,
                    started_at: format_ms(r.started_ms),
                    runtime_ms: now - r.started_ms,
                })
                .collect();
            reply(InspectReply {
                active,
                held: shared.inflight.count(),
            })
        }
        Command::Revoke { task_ids } => {
            let mut cancelled = Vec::new();
            for r in shared.inflight.running() {
                if task_ids.contains(&r.spec.id) {
                    r.cancel.cancel();
                    cancelled.push(r.spec.id.clone());
                }
            }
            reply(RevokeReply { cancelled })
        }
        Command::Shutdown => {
            let active = shared.inflight.count();
            tracing::warn!("shutdown requested over the control plane");
            shared.stopping.cancel();
            reply(ShutdownReply {
                status: "stopping".into(),
                active,
            })
        }
        Command::Pause { queues } => set_paused(shared, &queues, true).await,
        Command::Resume { queues } => set_paused(shared, &queues, false).await,
    };
    ControlReply {
        worker,
        ok: true,
        payload,
        error: None,
    }
}

/// Pauses or resumes those of `queues` this worker consumes; answers the
/// paused set.
async fn set_paused(shared: &Shared, queues: &[String], pause: bool) -> Value {
    let now = shared.selection.set_paused(queues, pause);
    // The reply waits for a read already blocking on the queue to end (the
    // fetch loop holds the gate across a read), so once an operator sees it
    // no later read takes from a paused queue.
    shared.selection.settled().await;
    reply(PausedReply { paused: now })
}

/// A typed reply as the JSON payload on the wire.
fn reply(r: impl serde::Serialize) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}
