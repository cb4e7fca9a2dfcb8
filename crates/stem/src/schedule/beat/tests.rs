//! The beat's unit tests: catch-up planning, firing records and leases
//! on the memory stores.

use super::fire::record_ttl;
use super::*;
use crate::envelope::format_ms;
use crate::schedule::entry::{Misfire, ScheduleEntry};
use crate::schedule::memory::{MemoryLockStore, MemoryScheduleStore};
use crate::schedule::store::FiringReport;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid time in test")
        .with_timezone(&Utc)
}

/// A catalogue of one task, `greeting.send` on `greetings` with five
/// retries, as the demo catalogue has it.
struct Greeting;

#[async_trait::async_trait]
impl crate::task::Task for Greeting {
    const NAME: &'static str = "greeting.send";
    type Args = serde_json::Value;
    type Output = ();
    fn options(&self) -> crate::task::TaskOptions {
        crate::task::TaskOptions {
            queue: "greetings".into(),
            max_retries: 5,
            ..Default::default()
        }
    }
    async fn run(
        &self,
        _ctx: crate::task::TaskContext,
        _args: serde_json::Value,
    ) -> crate::task::TaskResult<()> {
        Ok(())
    }
}

fn beat(store: &MemoryScheduleStore, id: &str) -> Beat {
    let registry = crate::task::TaskRegistry::new();
    registry.register(Greeting);
    let stem = Stem::memory().with_registry(registry);
    Beat::new(
        stem,
        Arc::new(store.clone()),
        Arc::new(MemoryLockStore::new()),
        BeatConfig {
            instance_id: id.into(),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn fires_on_the_grid_and_advances_from_the_slot() -> Result<()> {
    let store = MemoryScheduleStore::new();
    let t0 = at("2025-01-01T00:00:00Z");
    let mut e = ScheduleEntry::new("tick", "greeting.send", "every:10s")?;
    e.queue = "greetings".into();
    store.upsert(&e, t0).await?;
    let b = beat(&store, "b1");
    assert!(b
        .fire_due(at("2025-01-01T00:00:09.999Z"))
        .await?
        .fired
        .is_empty());
    // Dispatched 3.7 s late: the next slot is still :20.
    let r = b.fire_due(at("2025-01-01T00:00:13.700Z")).await?;
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, at("2025-01-01T00:00:10Z"));
    let got = store.get("tick").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:20Z")));
    assert_eq!(got.history.total_run_count, 1);
    assert_eq!(got.history.last_slot_at, Some(at("2025-01-01T00:00:10Z")));
    assert_eq!(
        got.history.last_task_id.as_deref(),
        Some(r.fired[0].task_id.as_str())
    );
    // The task carries the schedule meta and the catalogue's retry budget.
    let status = b
        .stem
        .status(&r.fired[0].task_id)
        .await?
        .expect("queued status");
    assert_eq!(status.queue, "greetings");
    assert_eq!(status.max_retries, 5);
    assert_eq!(status.meta[META_ID], "tick");
    assert_eq!(status.meta[META_SLOT], "2025-01-01T00:00:10.000Z");
    assert_eq!(status.meta[META_FROM], "beat");
    Ok(())
}

/// An `every:10s` entry created at :00, with misfire policy `misfire`.
async fn ten_seconds(store: &MemoryScheduleStore, misfire: Misfire) -> Result<()> {
    let mut e = ScheduleEntry::new("m", "greeting.send", "every:10s")?;
    e.misfire = misfire;
    store.upsert(&e, at("2025-01-01T00:00:00Z")).await?;
    Ok(())
}

fn slots(r: &PassReport) -> Vec<DateTime<Utc>> {
    r.fired.iter().map(|f| f.slot).collect()
}

#[tokio::test]
async fn downtime_fires_every_missed_slot_once_oldest_first() -> Result<()> {
    let store = MemoryScheduleStore::new();
    ten_seconds(&store, Misfire::All).await?;
    let b = beat(&store, "b1");
    // Down from :05 to :47: :10 :20 :30 :40 fire late, each once, in
    // order, each task carrying its own slot.
    let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
    assert_eq!(
        slots(&r),
        ["10", "20", "30", "40"].map(|s| at(&format!("2025-01-01T00:00:{s}Z")))
    );
    assert_eq!(r.missed, 0);
    for f in &r.fired {
        let status = b.stem.status(&f.task_id).await?.expect("queued status");
        assert_eq!(status.meta[META_SLOT], format_ms(f.slot.timestamp_millis()));
    }
    let got = store.get("m").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:50Z")));
    assert_eq!(got.history.total_run_count, 4);
    assert_eq!(got.history.missed_slots, 0);
    assert!(b
        .fire_due(at("2025-01-01T00:00:49Z"))
        .await?
        .fired
        .is_empty());
    Ok(())
}

/// A store that disables its entries right after booking their first
/// firing: an operator's `stem schedule disable` during a catch-up.
struct DisabledDuringCatchUp(MemoryScheduleStore);

#[async_trait::async_trait]
impl ScheduleStore for DisabledDuringCatchUp {
    async fn upsert(
        &self,
        entry: &ScheduleEntry,
        now: DateTime<Utc>,
    ) -> Result<crate::schedule::UpsertOutcome> {
        self.0.upsert(entry, now).await
    }
    async fn get(&self, id: &str) -> Result<Option<ScheduleEntry>> {
        self.0.get(id).await
    }
    async fn list(&self) -> Result<Vec<ScheduleEntry>> {
        self.0.list().await
    }
    async fn delete(&self, id: &str) -> Result<bool> {
        self.0.delete(id).await
    }
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ScheduleEntry>> {
        self.0.due(now, limit).await
    }
    async fn next_run_at(&self) -> Result<Option<DateTime<Utc>>> {
        self.0.next_run_at().await
    }
    async fn record_firing(
        &self,
        id: &str,
        slot: DateTime<Utc>,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.0.record_firing(id, slot, owner, ttl).await
    }
    async fn firing_owner(&self, id: &str, slot: DateTime<Utc>) -> Result<Option<String>> {
        self.0.firing_owner(id, slot).await
    }
    async fn complete_firing(&self, report: &FiringReport) -> Result<()> {
        self.0.complete_firing(report).await?;
        self.0.set_enabled(&report.id, false, report.slot).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_catch_up_stops_when_its_entry_is_disabled() -> Result<()> {
    let inner = MemoryScheduleStore::new();
    ten_seconds(&inner, Misfire::All).await?;
    let mut b = beat(&inner, "b1");
    b.store = Arc::new(DisabledDuringCatchUp(inner.clone()));
    // :10 … :40 are due; the entry is disabled once :10 is booked.
    let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
    assert_eq!(slots(&r), [at("2025-01-01T00:00:10Z")]);
    Ok(())
}

#[tokio::test]
async fn a_long_downtime_fires_the_most_recent_hundred_slots() -> Result<()> {
    let store = MemoryScheduleStore::new();
    ten_seconds(&store, Misfire::All).await?;
    let b = beat(&store, "b1");
    // 150 slots (:10 … 25:00) fell due: the last 100 fire, 50 missed.
    let r = b.fire_due(at("2025-01-01T00:25:05Z")).await?;
    assert_eq!(r.fired.len(), Misfire::MAX_CATCH_UP);
    assert_eq!(r.fired[0].slot, at("2025-01-01T00:08:30Z"));
    assert_eq!(r.fired[99].slot, at("2025-01-01T00:25:00Z"));
    assert_eq!(r.missed, 50);
    let got = store.get("m").await?.expect("stored");
    assert_eq!(got.history.missed_slots, 50);
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:25:10Z")));
    Ok(())
}

#[tokio::test]
async fn latest_fires_the_most_recent_missed_slot_once() -> Result<()> {
    let store = MemoryScheduleStore::new();
    ten_seconds(&store, Misfire::Latest).await?;
    let b = beat(&store, "b1");
    // Down from :05 to :47: slots :10 :20 :30 missed, :40 fires.
    let r = b.fire_due(at("2025-01-01T00:00:47Z")).await?;
    assert_eq!(slots(&r), [at("2025-01-01T00:00:40Z")]);
    assert_eq!(r.missed, 3);
    let got = store.get("m").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:50Z")));
    assert_eq!(got.history.missed_slots, 3);
    assert!(b
        .fire_due(at("2025-01-01T00:00:49Z"))
        .await?
        .fired
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn skip_fires_nothing_late_beyond_its_grace() -> Result<()> {
    let store = MemoryScheduleStore::new();
    ten_seconds(&store, Misfire::Skip).await?;
    let b = beat(&store, "b1");
    // Half a second late (a beat handing over): the slot fires.
    let r = b.fire_due(at("2025-01-01T00:00:10.500Z")).await?;
    assert_eq!(slots(&r), [at("2025-01-01T00:00:10Z")]);
    assert_eq!(r.missed, 0);
    // Down until 10:45: :20 … 10:40 fell due, the latest 5 s ago.
    // Nothing fires, all 63 count as missed, the grid goes on at 10:50.
    let r = b.fire_due(at("2025-01-01T00:10:45Z")).await?;
    assert!(r.fired.is_empty(), "{r:?}");
    assert_eq!(r.missed, 63);
    let got = store.get("m").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:10:50Z")));
    assert_eq!(got.history.missed_slots, 63);
    assert_eq!(got.history.total_run_count, 1);
    // Back on time: 10:50 fires.
    let r = b.fire_due(at("2025-01-01T00:10:50.200Z")).await?;
    assert_eq!(slots(&r), [at("2025-01-01T00:10:50Z")]);
    Ok(())
}

#[tokio::test]
async fn a_slot_recorded_by_a_beat_that_died_is_still_published_once() -> Result<()> {
    let store = MemoryScheduleStore::new();
    let t0 = at("2025-01-01T00:00:00Z");
    store
        .upsert(&ScheduleEntry::new("d", "greeting.send", "every:10s")?, t0)
        .await?;
    // Another beat recorded :10 and died before publishing it (C4):
    // the slot is published, keyed by (entry, slot), so a beat that
    // did publish it would be answered with its task instead.
    assert!(
        store
            .record_firing(
                "d",
                at("2025-01-01T00:00:10Z"),
                "dead-beat",
                Duration::from_secs(60)
            )
            .await?
    );
    let b = beat(&store, "b2");
    let r = b.fire_due(at("2025-01-01T00:00:11Z")).await?;
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.duplicates, 0);
    let got = store.get("d").await?.expect("stored");
    assert_eq!(got.history.next_run_at, Some(at("2025-01-01T00:00:20Z")));
    assert_eq!(got.history.total_run_count, 1);
    assert_eq!(b.metrics().snapshot().dispatch_duplicate, 0);
    Ok(())
}

#[tokio::test]
async fn jitter_delays_one_firing_and_never_the_grid() -> Result<()> {
    let store = MemoryScheduleStore::new();
    let t0 = at("2025-01-01T00:00:00Z");
    let mut e = ScheduleEntry::new("j", "greeting.send", "every:10s")?;
    e.jitter = Duration::from_secs(5);
    store.upsert(&e, t0).await?;
    let b = beat(&store, "b1");
    let mut now = t0;
    let mut jitters = std::collections::BTreeSet::new();
    for k in 1..=20 {
        now += chrono::Duration::seconds(10);
        let r = b.fire_due(now).await?;
        assert_eq!(r.fired.len(), 1);
        let got = store.get("j").await?.expect("stored");
        let jitter = got.history.last_jitter_ms.expect("jitter recorded");
        assert!(jitter <= 5000, "{jitter}");
        jitters.insert(jitter);
        assert_eq!(
            got.history.next_run_at,
            Some(t0 + chrono::Duration::seconds(10 * (k + 1)))
        );
    }
    // Jitter is drawn per firing from [0, 5000] ms: twenty draws are
    // not all equal (chance 20 × (1/5001)^19), and some are non-zero.
    assert!(jitters.len() > 1, "jitter never varies: {jitters:?}");
    assert!(jitters.iter().any(|j| *j > 0), "{jitters:?}");
    Ok(())
}

#[tokio::test]
async fn record_ttls_outlive_the_catch_up_window() {
    let s = at("2025-01-01T00:00:00Z");
    let secs = |n: i64| chrono::Duration::seconds(n);
    // every:1s: 101 slots from the slot; a firing 30 s late keeps
    // the rest of that window, never less than a minute.
    assert_eq!(
        record_ttl(s, Some(s + secs(1)), s),
        Duration::from_secs(101)
    );
    assert_eq!(
        record_ttl(s, Some(s + secs(1)), s + secs(30)),
        Duration::from_secs(71)
    );
    assert_eq!(
        record_ttl(s, Some(s + secs(1)), s + secs(100)),
        Duration::from_secs(60)
    );
    assert_eq!(
        record_ttl(s, Some(s + chrono::Duration::hours(1)), s),
        Duration::from_secs(101 * 3600)
    );
    assert_eq!(record_ttl(s, None, s), Duration::from_secs(101 * 3600));
}
