//! The schedule-store and lock-store contract, run against the in-memory
//! stores and the Redis stores on a private `redis-server`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use stem::schedule::spec::parse_timezone;
use stem::schedule::store::{FiringOutcome, FiringReport};
use stem::schedule::{Misfire, ScheduleEntry, ScheduleStores, UpsertOutcome};

/// One pair of schedule stores under test, with whatever serves them
/// kept alive (e.g. a private redis-server). Derefs to its
/// [`ScheduleStores`], so a test reads `s.schedules` and `s.locks`.
pub struct ScheduleAdapters {
    /// The stores the suite exercises.
    pub stores: ScheduleStores,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl ScheduleAdapters {
    /// `stores` under test; `keep` lives as long as they do.
    pub fn new(stores: ScheduleStores, keep: impl std::any::Any + Send + Sync) -> Self {
        ScheduleAdapters {
            stores,
            _keep: Box::new(keep),
        }
    }
}

impl std::ops::Deref for ScheduleAdapters {
    type Target = ScheduleStores;
    fn deref(&self) -> &ScheduleStores {
        &self.stores
    }
}

use crate::poll;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid time in test")
        .with_timezone(&Utc)
}

const T0: &str = "2025-01-01T00:00:00Z";

fn entry(id: &str, spec: &str) -> ScheduleEntry {
    let mut e = ScheduleEntry::new(id, "greeting.send", spec).expect("valid entry in test");
    e.queue = "greetings".into();
    e.args = serde_json::json!({"name": "Ada", "delayMs": 500});
    e.meta
        .insert("seeded".into(), serde_json::Value::Bool(true));
    e
}

fn dispatched(id: &str, revision: u64, slot: &str, next: &str, task: &str) -> FiringReport {
    FiringReport {
        id: id.into(),
        revision,
        slot: at(slot),
        next_run_at: Some(at(next)),
        missed: 0,
        outcome: FiringOutcome::Dispatched {
            task_id: task.into(),
            at: at(slot) + chrono::Duration::milliseconds(7),
            drift_ms: 7,
            jitter_ms: 0,
        },
    }
}

pub async fn upsert_get_list_delete(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    assert!(st.get("nope").await?.is_none());
    assert!(st.list().await?.is_empty());
    let mut cron = entry("b-cron", "0 30 2 * * *");
    cron.timezone = parse_timezone("Europe/Berlin")?;
    cron.jitter = Duration::from_millis(1500);
    cron.misfire = Misfire::Skip;
    assert_eq!(st.upsert(&cron, at(T0)).await?, UpsertOutcome::Created);
    assert_eq!(
        st.upsert(&entry("a-every", "every:10s"), at(T0)).await?,
        UpsertOutcome::Created
    );
    let mut off = entry("c-off", "every:1s");
    off.enabled = false;
    st.upsert(&off, at(T0)).await?;

    let got = st.get("b-cron").await?.expect("stored");
    assert_eq!(got.task, "greeting.send");
    assert_eq!(got.queue, "greetings");
    assert_eq!(got.spec.as_str(), "0 30 2 * * *");
    assert_eq!(got.timezone.name(), "Europe/Berlin");
    assert_eq!(got.jitter, Duration::from_millis(1500));
    assert_eq!(got.misfire, Misfire::Skip);
    assert_eq!(
        st.get("a-every").await?.expect("stored").misfire,
        Misfire::All,
        "the default"
    );
    assert_eq!(got.args, cron.args);
    assert_eq!(got.meta, cron.meta);
    assert!(got.enabled);
    assert_eq!(got.history.created_at, Some(at(T0)));
    assert_eq!(got.history.revision, 1);
    // 02:30 Berlin on 2025-01-01 = 01:30 UTC.
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T01:30:00Z")));
    assert_eq!(got.history.total_run_count, 0);

    let every = st.get("a-every").await?.expect("stored");
    assert_eq!(every.history.next_run_at, Some(at("2025-01-01T00:00:10Z")));
    let off = st.get("c-off").await?.expect("stored");
    assert_eq!(
        off.history.next_run_at, None,
        "disabled entries have no next run"
    );

    let ids: Vec<String> = st.list().await?.into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        ["a-every", "b-cron", "c-off"],
        "soonest first, disabled last"
    );

    assert!(st.delete("a-every").await?);
    assert!(!st.delete("a-every").await?);
    assert!(st.get("a-every").await?.is_none());
    let ids: Vec<String> = st.list().await?.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["b-cron", "c-off"]);

    // Invalid entries are refused.
    let mut bad = entry("bad", "every:1s");
    bad.queue = "no spaces allowed".into();
    assert!(st.upsert(&bad, at(T0)).await.is_err());
    Ok(())
}

pub async fn reseeding_keeps_history(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    let e = entry("r", "every:10s");
    st.upsert(&e, at(T0)).await?;
    st.complete_firing(&dispatched(
        "r",
        1,
        "2025-01-01T00:00:10Z",
        "2025-01-01T00:00:20Z",
        "task-1",
    ))
    .await?;
    st.complete_firing(&dispatched(
        "r",
        1,
        "2025-01-01T00:00:20Z",
        "2025-01-01T00:00:30Z",
        "task-2",
    ))
    .await?;
    let before = st.get("r").await?.expect("stored");
    assert_eq!(before.history.total_run_count, 2);
    assert_eq!(before.history.last_task_id.as_deref(), Some("task-2"));
    assert_eq!(
        before.history.last_run_at,
        Some(at("2025-01-01T00:00:20.007Z"))
    );
    assert_eq!(
        before.history.last_slot_at,
        Some(at("2025-01-01T00:00:20Z"))
    );
    assert_eq!(before.history.last_drift_ms, Some(7));

    // Unchanged: nothing moves.
    assert_eq!(
        st.upsert(&e, at("2025-01-01T00:00:25Z")).await?,
        UpsertOutcome::Unchanged
    );
    assert_eq!(st.get("r").await?.expect("stored").history, before.history);

    // Changed args: history and grid kept, revision bumped.
    let mut changed = e.clone();
    changed.args = serde_json::json!({"name": "Grace"});
    changed.jitter = Duration::from_secs(2);
    assert_eq!(
        st.upsert(&changed, at("2025-01-01T00:00:26Z")).await?,
        UpsertOutcome::Updated
    );
    let after = st.get("r").await?.expect("stored");
    assert_eq!(after.args, changed.args);
    assert_eq!(after.jitter, Duration::from_secs(2));
    assert_eq!(after.history.total_run_count, 2);
    assert_eq!(after.history.last_task_id.as_deref(), Some("task-2"));
    assert_eq!(after.history.next_run_at, Some(at("2025-01-01T00:00:30Z")));
    assert_eq!(after.history.created_at, Some(at(T0)));
    assert_eq!(after.history.updated_at, Some(at("2025-01-01T00:00:26Z")));
    assert_eq!(after.history.revision, 2);

    // Changed spec: history kept, grid restarts from now.
    let mut respec = changed.clone();
    respec.spec = "every:1m".parse()?;
    st.upsert(&respec, at("2025-01-01T00:00:27.500Z")).await?;
    let after = st.get("r").await?.expect("stored");
    assert_eq!(after.history.total_run_count, 2);
    assert_eq!(
        after.history.next_run_at,
        Some(at("2025-01-01T00:01:27.500Z"))
    );
    assert_eq!(
        after.history.anchor_at,
        Some(at("2025-01-01T00:00:27.500Z"))
    );
    assert_eq!(after.history.revision, 3);
    Ok(())
}

pub async fn enable_and_disable(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    st.upsert(&entry("e", "every:10s"), at(T0)).await?;
    assert!(st.set_enabled("missing", false, at(T0)).await?.is_none());
    let off = st
        .set_enabled("e", false, at("2025-01-01T00:00:03Z"))
        .await?
        .expect("known id");
    assert!(!off.enabled);
    assert_eq!(off.history.next_run_at, None);
    assert!(st.due(at("2025-01-02T00:00:00Z"), 10).await?.is_empty());
    assert_eq!(st.next_run_at().await?, None);
    let on = st
        .set_enabled("e", true, at("2025-01-01T00:05:00Z"))
        .await?
        .expect("known id");
    assert!(on.enabled);
    assert_eq!(
        on.history.next_run_at,
        Some(at("2025-01-01T00:05:10Z")),
        "re-enabling plans from now, not from a stale slot"
    );
    // Enabling an enabled entry changes nothing.
    let again = st
        .set_enabled("e", true, at("2025-01-01T00:06:00Z"))
        .await?
        .expect("known id");
    assert_eq!(again.history, on.history);
    Ok(())
}

pub async fn due_entries_and_next_run(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    st.upsert(&entry("ten", "every:10s"), at(T0)).await?;
    st.upsert(&entry("five", "every:5s"), at(T0)).await?;
    st.upsert(&entry("hour", "0 * * * *"), at(T0)).await?;
    assert_eq!(st.next_run_at().await?, Some(at("2025-01-01T00:00:05Z")));
    assert!(st.due(at("2025-01-01T00:00:04.999Z"), 10).await?.is_empty());
    let due: Vec<String> = st
        .due(at("2025-01-01T00:00:10Z"), 10)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(due, ["five", "ten"]);
    let limited = st.due(at("2025-01-01T00:00:10Z"), 1).await?;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].id, "five");
    Ok(())
}

pub async fn bookkeeping_moves_next_run_forward_only(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    st.upsert(&entry("k", "every:10s"), at(T0)).await?;
    st.complete_firing(&dispatched(
        "k",
        1,
        "2025-01-01T00:00:10Z",
        "2025-01-01T00:00:20Z",
        "t1",
    ))
    .await?;
    // A stale beat reporting an older slot cannot move nextRunAt back.
    st.complete_firing(&FiringReport {
        outcome: FiringOutcome::AlreadyFired,
        ..dispatched("k", 1, T0, "2025-01-01T00:00:10Z", "x")
    })
    .await?;
    let got = st.get("k").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:20Z")));
    assert_eq!(got.history.total_run_count, 1);
    assert_eq!(st.next_run_at().await?, Some(at("2025-01-01T00:00:20Z")));

    // A failure records the error; the next success clears it.
    st.complete_firing(&FiringReport {
        id: "k".into(),
        revision: 1,
        slot: at("2025-01-01T00:00:20Z"),
        next_run_at: Some(at("2025-01-01T00:00:30Z")),
        missed: 2,
        outcome: FiringOutcome::Failed {
            error: "unknown queue".into(),
            at: at("2025-01-01T00:00:20.010Z"),
        },
    })
    .await?;
    let got = st.get("k").await?.expect("stored");
    assert_eq!(got.history.last_error.as_deref(), Some("unknown queue"));
    assert_eq!(
        got.history.last_error_at,
        Some(at("2025-01-01T00:00:20.010Z"))
    );
    assert_eq!(got.history.missed_slots, 2);
    assert_eq!(got.history.total_run_count, 1);
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:30Z")));
    assert_eq!(got.summary().last_error.as_deref(), Some("unknown queue"));
    st.complete_firing(&dispatched(
        "k",
        1,
        "2025-01-01T00:00:30Z",
        "2025-01-01T00:00:40Z",
        "t2",
    ))
    .await?;
    let got = st.get("k").await?.expect("stored");
    assert_eq!(got.history.last_error, None);
    assert_eq!(got.history.total_run_count, 2);

    // A report planned with an old revision books the run but leaves the
    // replanned nextRunAt alone.
    let mut respec = entry("k", "every:1h");
    respec.args = got.args.clone();
    st.upsert(&respec, at("2025-01-01T00:00:35Z")).await?;
    st.complete_firing(&dispatched(
        "k",
        1,
        "2025-01-01T00:00:40Z",
        "2025-01-01T00:00:50Z",
        "t3",
    ))
    .await?;
    let got = st.get("k").await?.expect("stored");
    assert_eq!(got.history.total_run_count, 3);
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T01:00:35Z")));

    // Bookkeeping for a deleted entry does not recreate it.
    st.delete("k").await?;
    st.complete_firing(&dispatched(
        "k",
        2,
        "2025-01-01T01:00:35Z",
        "2025-01-01T02:00:35Z",
        "t4",
    ))
    .await?;
    assert!(st.get("k").await?.is_none());
    assert!(st.list().await?.is_empty());
    Ok(())
}

pub async fn firing_record_is_idempotent(s: ScheduleAdapters) -> anyhow::Result<()> {
    let st = &s.schedules;
    let slot = at("2025-01-01T00:00:10Z");
    let ttl = Duration::from_secs(60);
    assert!(st.record_firing("f", slot, "beat-a", ttl).await?);
    assert!(
        !st.record_firing("f", slot, "beat-b", ttl).await?,
        "second record of one slot"
    );
    assert!(
        !st.record_firing("f", slot, "beat-a", ttl).await?,
        "even by the same owner"
    );
    assert_eq!(st.firing_owner("f", slot).await?.as_deref(), Some("beat-a"));
    // Another slot, another entry: independent.
    assert!(
        st.record_firing("f", at("2025-01-01T00:00:20Z"), "beat-b", ttl)
            .await?
    );
    assert!(st.record_firing("g", slot, "beat-b", ttl).await?);
    // Records expire.
    let short = at("2025-01-01T00:00:30Z");
    assert!(
        st.record_firing("f", short, "beat-a", Duration::from_millis(250))
            .await?
    );
    poll(
        "the firing record to expire",
        Duration::from_secs(5),
        || async { Ok(st.firing_owner("f", short).await?.is_none().then_some(())) },
    )
    .await?;
    assert!(st.record_firing("f", short, "beat-b", ttl).await?);
    Ok(())
}

pub async fn lock_ownership(s: ScheduleAdapters) -> anyhow::Result<()> {
    let l = &s.locks;
    let ttl = Duration::from_secs(30);
    assert_eq!(l.owner_of("lead").await?, None);
    assert!(l.acquire("lead", "a", ttl).await?);
    assert!(!l.acquire("lead", "b", ttl).await?, "held by a");
    assert!(
        l.acquire("lead", "a", ttl).await?,
        "re-acquiring your own lock extends it"
    );
    assert_eq!(l.owner_of("lead").await?.as_deref(), Some("a"));
    assert!(l.renew("lead", "a", ttl).await?);
    assert!(!l.renew("lead", "b", ttl).await?, "only the owner renews");
    assert!(!l.release("lead", "b").await?, "only the owner releases");
    assert_eq!(l.owner_of("lead").await?.as_deref(), Some("a"));
    assert!(l.release("lead", "a").await?);
    assert_eq!(l.owner_of("lead").await?, None);
    assert!(
        !l.renew("lead", "a", ttl).await?,
        "renew after release fails"
    );
    assert!(l.acquire("lead", "b", ttl).await?);
    assert!(l.acquire("other", "a", ttl).await?, "locks are independent");
    Ok(())
}

pub async fn lock_expiry_and_renewal(s: ScheduleAdapters) -> anyhow::Result<()> {
    let l = &s.locks;
    let ttl = Duration::from_millis(250);
    assert!(l.acquire("exp", "a", ttl).await?);
    // Renewing keeps it alive past its first TTL.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        assert!(l.renew("exp", "a", ttl).await?, "renewed in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l.owner_of("exp").await?.as_deref(), Some("a"));
    // Without renewal it expires and someone else can take it.
    poll("the lock to expire", Duration::from_secs(5), || async {
        Ok(l.owner_of("exp").await?.is_none().then_some(()))
    })
    .await?;
    assert!(!l.renew("exp", "a", ttl).await?, "renew after expiry fails");
    assert!(l.acquire("exp", "b", Duration::from_secs(30)).await?);
    assert_eq!(l.owner_of("exp").await?.as_deref(), Some("b"));
    Ok(())
}

/// Runs the schedule contract against each adapter listed as
/// `module => factory` (a `fn() -> anyhow::Result<…>`): one
/// `#[tokio::test]` per (adapter, test), in a module named after the
/// adapter.
#[macro_export]
macro_rules! schedule_suite {
    ($($module:ident => $factory:path),* $(,)?) => {
        $crate::__suite!(
            schedule;
            [$($module => $factory),*];
            upsert_get_list_delete,
            reseeding_keeps_history,
            enable_and_disable,
            due_entries_and_next_run,
            bookkeeping_moves_next_run_forward_only,
            firing_record_is_idempotent,
            lock_ownership,
            lock_expiry_and_renewal,
        );
    };
}
