//! `stem_queue_depth{queue}`: how many tasks wait in each queue (ready,
//! not yet delivered), read by one cheap count per queue every
//! [`EVERY`] — never per task — and reported when a reader collects.
//!
//! Workers sample their own queues, the enqueuer every known queue, so
//! several processes may report the same queue: the dashboards take
//! `max by (queue)`, not the sum.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use stem::broker::QueueAdmin;
use tokio_util::sync::CancellationToken;

/// How often the depths are read.
pub const EVERY: Duration = Duration::from_secs(5);

/// Samples `queues` (every known queue when `None`) through `admin` until
/// `stop`, reporting them on `meter`.
pub fn sample(
    meter: &Meter,
    admin: Arc<dyn QueueAdmin>,
    queues: Option<Vec<String>>,
    stop: CancellationToken,
) {
    let depths: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let read = depths.clone();
    let gauge = meter
        .u64_observable_gauge("stem_queue_depth")
        .with_description("Tasks waiting in the queue (ready, not yet delivered).")
        .with_callback(move |o| {
            for (queue, depth) in read.lock().iter() {
                o.observe(*depth, &[KeyValue::new("queue", queue.clone())]);
            }
        })
        .build();
    tokio::spawn(async move {
        let _gauge = gauge;
        let mut failing = false;
        loop {
            let names = match &queues {
                Some(q) => Ok(q.clone()),
                None => admin.known_queues().await,
            };
            let mut now = Vec::new();
            let read = async {
                for q in names? {
                    let stats = admin.stats(&q).await?;
                    now.push((q, stats.ready));
                }
                Ok::<_, stem::StemError>(())
            }
            .await;
            match read {
                Ok(()) => {
                    failing = false;
                    *depths.lock() = now;
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not read queue depths; keeping the last ones");
                }
                Err(_) => {}
            }
            if stop
                .run_until_cancelled(tokio::time::sleep(EVERY))
                .await
                .is_none()
            {
                break;
            }
        }
    });
}
