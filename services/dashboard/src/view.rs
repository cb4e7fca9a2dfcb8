//! What the pages show, read from the library in one place: the queue
//! and worker tables, the overview's totals and throughput chart, and the
//! small formatting
//! helpers (ages, times) the templates share. The pages and the live
//! poller render from the same [`Snapshot`], so a page and its updates
//! never disagree.

use std::collections::BTreeSet;

use stem::broker::DeadLetter;
use stem::client::Stem;
use stem::control::{Throughput, WorkerInfo};
use stem::envelope::{now_ms, TaskState, TaskStatus};

/// One queue's counts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueueRow {
    pub name: String,
    pub ready: u64,
    pub running: u64,
    pub delayed: u64,
    pub dead: u64,
    pub paused: bool,
    /// How long the oldest ready task has waited (`—` when none is ready).
    pub oldest_ready: String,
}

/// One live worker, from its heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerRow {
    pub name: String,
    pub namespace: String,
    pub host: String,
    pub pid: u32,
    pub queues: String,
    pub paused: String,
    pub concurrency: usize,
    pub inflight: usize,
    pub heartbeat_age: String,
    pub uptime: String,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// The overview's totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Totals {
    pub backlog: u64,
    pub running: u64,
    pub delayed: u64,
    pub dead: u64,
    pub workers: usize,
    /// Summed over live workers since each started.
    pub succeeded: u64,
    pub failed: u64,
}

/// One minute of the throughput chart, laid out in the SVG's units.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bar {
    pub x: u32,
    /// Succeeded: from `ok_y` down to the baseline.
    pub ok_y: u32,
    pub ok_h: u32,
    /// Failed, stacked on top.
    pub failed_y: u32,
    pub failed_h: u32,
    /// The tooltip: minute and counts.
    pub title: String,
}

/// Tasks finished per minute over the last hour, as SVG bars.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Chart {
    pub bars: Vec<Bar>,
    /// The busiest minute's count (the top of the scale).
    pub peak: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// Chart area: width, height of the bars' area.
pub(crate) const CHART_W: u32 = 600;
pub(crate) const CHART_H: u32 = 100;
const MINUTES: i64 = 60;

impl Chart {
    fn of(minutes: &[(i64, Throughput)]) -> Self {
        let peak = minutes
            .iter()
            .map(|(_, t)| t.succeeded + t.failed)
            .max()
            .unwrap_or(0);
        let scale = |n: u64| -> u32 {
            if peak == 0 {
                0
            } else {
                // At least a pixel for any non-zero count.
                ((n * u64::from(CHART_H)).div_ceil(peak)) as u32
            }
        };
        let slot = CHART_W / MINUTES as u32;
        let bars = minutes
            .iter()
            .enumerate()
            .map(|(i, (minute, t))| {
                let (ok_h, failed_h) = (scale(t.succeeded), scale(t.failed));
                let ok_h = ok_h.min(CHART_H);
                let failed_h = failed_h.min(CHART_H - ok_h);
                Bar {
                    x: i as u32 * slot,
                    ok_y: CHART_H - ok_h,
                    ok_h,
                    failed_y: CHART_H - ok_h - failed_h,
                    failed_h,
                    title: format!(
                        "{}: {} succeeded, {} failed, {} retried",
                        stem::envelope::format_ms(*minute).get(11..16).unwrap_or(""),
                        t.succeeded,
                        t.failed,
                        t.retried
                    ),
                }
            })
            .collect();
        Chart {
            bars,
            peak,
            succeeded: minutes.iter().map(|(_, t)| t.succeeded).sum(),
            failed: minutes.iter().map(|(_, t)| t.failed).sum(),
        }
    }
}

/// Queues, workers, totals and the last hour's throughput at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub queues: Vec<QueueRow>,
    pub workers: Vec<WorkerRow>,
    pub totals: Totals,
    pub chart: Chart,
}

/// Reads the queues the broker knows and the workers consume, their
/// counts, pauses, the live workers' heartbeats and the last hour of the
/// throughput history.
pub(crate) async fn snapshot(stem: &Stem) -> stem::Result<Snapshot> {
    let admin = stem.admin();
    let control = stem.control();
    let now = now_ms();
    let (known, infos, paused, minutes) = tokio::try_join!(
        admin.known_queues(),
        control.workers(),
        control.paused_queues(),
        control.throughput(now - (MINUTES - 1) * 60_000, now),
    )?;
    let mut names: BTreeSet<String> = known.into_iter().collect();
    names.extend(infos.iter().flat_map(|w| w.queues.iter().cloned()));
    let stats = futures::future::try_join_all(names.iter().map(|q| admin.stats(q))).await?;
    let queues: Vec<QueueRow> = stats
        .into_iter()
        .map(|s| QueueRow {
            paused: paused.contains(&s.queue),
            oldest_ready: s
                .oldest_ready_ms
                .map(|t| age(now - t))
                .unwrap_or_else(|| "—".into()),
            name: s.queue,
            ready: s.ready,
            running: s.inflight,
            delayed: s.delayed,
            dead: s.dead,
        })
        .collect();
    let mut workers: Vec<WorkerRow> = infos.iter().map(|w| worker_row(w, now)).collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let totals = Totals {
        backlog: queues.iter().map(|q| q.ready).sum(),
        running: queues.iter().map(|q| q.running).sum(),
        delayed: queues.iter().map(|q| q.delayed).sum(),
        dead: queues.iter().map(|q| q.dead).sum(),
        workers: infos.len(),
        succeeded: infos.iter().map(|w| w.succeeded).sum(),
        failed: infos.iter().map(|w| w.failed).sum(),
    };
    Ok(Snapshot {
        queues,
        workers,
        totals,
        chart: Chart::of(&minutes),
    })
}

fn worker_row(w: &WorkerInfo, now: i64) -> WorkerRow {
    WorkerRow {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        host: w.host.clone(),
        pid: w.pid,
        queues: w.queues.join(", "),
        paused: w.paused.join(", "),
        concurrency: w.concurrency,
        inflight: w.inflight,
        heartbeat_age: age(now - w.heartbeat_at),
        uptime: age(now - w.started_at),
        started: w.started,
        succeeded: w.succeeded,
        failed: w.failed,
    }
}

/// One task as its page shows it: the status and what is derived from it.
#[derive(Clone, Debug)]
pub(crate) struct TaskView {
    pub status: TaskStatus,
    pub state: &'static str,
    pub terminal: bool,
    /// The result and the meta, pretty-printed.
    pub result: String,
    pub meta: String,
    /// The state changes the status records, oldest first: (when, what).
    pub timeline: Vec<(String, String)>,
}

impl TaskView {
    pub(crate) fn of(status: TaskStatus) -> Self {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        Self {
            state: status.state.as_str(),
            terminal: status.state.is_terminal(),
            result: pretty(&status.result),
            meta: pretty(&serde_json::Value::Object(status.meta.clone())),
            timeline: timeline(&status),
            status,
        }
    }
}

/// What a status tells of its task's history: when it was enqueued, how
/// many attempts went before, and its state since its last change (a
/// status keeps its first and its latest time, not every step between).
fn timeline(s: &TaskStatus) -> Vec<(String, String)> {
    let mut out = vec![(s.created_at.clone(), "enqueued".to_string())];
    if s.attempt > 0 {
        let n = s.attempt;
        out.push((
            String::new(),
            format!(
                "{n} earlier attempt{} failed and {} retried",
                if n == 1 { "" } else { "s" },
                if n == 1 { "was" } else { "were" }
            ),
        ));
    }
    let what = match s.state {
        TaskState::Queued => return out,
        TaskState::Running => format!("running (attempt {})", s.attempt),
        TaskState::Retried => format!("attempt {} failed; retry scheduled", s.attempt),
        state => format!("{} (attempt {})", state.as_str(), s.attempt),
    };
    out.push((s.updated_at.clone(), what));
    out
}

/// One dead letter as the list shows it.
#[derive(Clone, Debug)]
pub(crate) struct LetterRow {
    pub id: String,
    pub queue: String,
    pub task_id: String,
    pub task: String,
    pub attempt: String,
    pub reason: String,
    pub error: String,
    pub when: String,
}

impl LetterRow {
    pub(crate) fn of(d: &DeadLetter) -> Self {
        let spec = d.wire.as_ref().and_then(|w| w.spec().ok());
        Self {
            id: d.id.clone(),
            queue: d.queue.clone(),
            task_id: spec.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            task: spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            attempt: d
                .wire
                .as_ref()
                .map(|w| w.attempt.to_string())
                .unwrap_or_default(),
            reason: d.reason.clone(),
            error: d.error.clone().unwrap_or_default(),
            when: if d.dead_at_ms > 0 {
                format!("{} ago", age(now_ms() - d.dead_at_ms))
            } else {
                String::new()
            },
        }
    }
}

/// A duration in ms as an operator reads it: `4s`, `3m 20s`, `2h 5m`,
/// `3d 4h`.
pub(crate) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(4_999), "4s");
        assert_eq!(age(200_000), "3m 20s");
        assert_eq!(age(7_500_000), "2h 5m");
        assert_eq!(age(273_600_000), "3d 4h");
    }
}
