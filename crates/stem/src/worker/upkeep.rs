//! The periodic loops that keep a running worker's work safe, each on its
//! own task so a busy executor or a slow store delays one of them, not the
//! others: lease renewal (before other workers may take the held entries),
//! promotion of due delayed entries, recovery of entries whose worker died,
//! and the check that cancels running tasks an operator revoked.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{admit, Shared};

/// Waits `period`; false once `stop` is cancelled (the loop ends).
async fn ticked(stop: &CancellationToken, period: Duration) -> bool {
    stop.run_until_cancelled(tokio::time::sleep(period))
        .await
        .is_some()
}

/// Renews the lease of every held entry three times per visibility
/// timeout, so one late renewal does not let another worker take it.
pub(super) async fn renew_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = (shared.opts.visibility_timeout / 3).max(Duration::from_millis(50));
    while ticked(&stop, period).await {
        let receipts = shared.inflight.receipts();
        if receipts.is_empty() {
            continue;
        }
        if let Err(e) = shared.broker.renew(&shared.opts.name, &receipts).await {
            tracing::warn!(error = %e, held = receipts.len(), "lease renewal failed");
        }
    }
}

/// Moves this worker's queues' due delayed entries to their due lanes.
/// Every worker does it; the script is atomic, so they never move one twice.
pub(super) async fn promote_loop(shared: Arc<Shared>, stop: CancellationToken) {
    while ticked(&stop, shared.opts.promote_interval).await {
        match shared
            .broker
            .promote_due(&shared.opts.queues, crate::envelope::now_ms())
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(promoted = n, "delayed tasks promoted"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "promotion failed"),
        }
    }
}

/// Every half visibility timeout, while the worker has room, takes over
/// entries whose holder stopped renewing (see `Broker::recover`).
pub(super) async fn recover_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let vt = shared.opts.visibility_timeout;
    let period = (vt / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    while ticked(&stop, period).await {
        if shared.stopping.is_cancelled() {
            continue;
        }
        let free = shared.inflight.room_to_fetch();
        if free == 0 {
            continue;
        }
        match shared
            .broker
            .recover(&shared.opts.name, &shared.opts.queues, vt, free)
            .await
        {
            Ok(batch) if !batch.is_empty() => {
                tracing::info!(worker = %shared.opts.name, recovered = batch.len(), "recovered tasks whose worker stopped renewing its lease");
                admit::admit(&shared, batch).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "recovery failed"),
        }
    }
}

/// Every second, looks up the statuses of running tasks and cancels those
/// that were revoked (status `cancelled`).
pub(super) async fn revocation_loop(shared: Arc<Shared>, stop: CancellationToken) {
    while ticked(&stop, Duration::from_secs(1)).await {
        let running = shared.inflight.running();
        if running.is_empty() {
            continue;
        }
        let ids: Vec<String> = running.iter().map(|r| r.spec.id.clone()).collect();
        let Ok(statuses) = shared.backend.get_statuses(&ids).await else {
            continue;
        };
        for (r, status) in running.iter().zip(statuses) {
            if status.is_some_and(|s| s.state == crate::envelope::TaskState::Cancelled)
                && !r.cancel.is_cancelled()
            {
                tracing::info!(task_id = %r.spec.id, "task revoked while running: cancelling");
                r.cancel.cancel();
            }
        }
    }
}
