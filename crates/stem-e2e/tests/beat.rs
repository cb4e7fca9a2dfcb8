//! Beat, black box (README "Beat"): real `beat` processes on a private
//! `redis-server`, seeded from a YAML file; no worker runs, so every
//! published task stays in its queue stream, where the tests read the
//! signed envelope bodies (`schedule-slot` meta and `enqueuedAt`).
//!
//! - two beats on `every:1s` for 20 s: every slot fired exactly once;
//! - SIGKILL of the leader: the other takes over within the lease time, no
//!   slot is duplicated, none is lost beyond the documented lease gap (also
//!   on a Redis Cluster);
//! - drift: 30 firings stay on the slot grid (mean |publish − slot| < 50 ms,
//!   no accumulation);
//! - a Redis outage under the leader: the beat keeps running, says so once,
//!   and fires again on the grid when Redis is back, no slot twice; its
//!   health endpoint (`STEM_BEAT_HEALTH_PORT`) answers not ready meanwhile.
//!
//! The scenarios run as parallel tests, each with its own Redis.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use stem_e2e::{
    env, free_port, hmac_key, poll_until, wait_log, RedisCluster, RedisOptions, RedisServer,
    RedisUnderTest, ServiceProcess,
};

/// The beat's default lease and tick (documented takeover bound: lease + tick).
const LEASE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(250);
const QUEUE: &str = "beat-e2e";
const SCHEDULE: &str = "e2e-every-second";

/// A schedule file in the temp directory, removed on drop.
struct ScheduleFile(PathBuf);

impl ScheduleFile {
    fn every_second(label: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("stem-beat-e2e-{label}-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "entries:\n  - id: {SCHEDULE}\n    task: greeting.send\n    queue: {QUEUE}\n    \
                 spec: every:1s\n    args: {{name: e2e, delayMs: 1}}\n    meta: {{seeded: true}}\n  \
                 - id: broken\n    task: greeting.send\n    spec: every:never\n"
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(ScheduleFile(path))
    }
}

impl Drop for ScheduleFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Environment shared by the beats of one scenario (same signing key).
fn beat_env(url: &str, file: &ScheduleFile, key: &str) -> Vec<(&'static str, String)> {
    env(&[
        ("STEM_BROKER_URL", url),
        ("STEM_SCHEDULE_FILE", &file.0.display().to_string()),
        ("STEM_SIGNING_KEYS", key),
        ("STEM_SIGNING_ACTIVE_KEY", "k1"),
    ])
}

async fn start_beat(name: &str, envs: &[(&'static str, String)]) -> anyhow::Result<ServiceProcess> {
    let p = ServiceProcess::spawn("beat", &["--instance-id", name], envs)?;
    wait_log(&p, "beat started", Duration::from_secs(20)).await?;
    Ok(p)
}

/// GET `http://127.0.0.1:{port}{path}`: status and JSON body.
async fn get_json(port: u16, path: &str) -> anyhow::Result<(u16, Value)> {
    let resp = stem_e2e::http_client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .with_context(|| format!("GET {path} on the beat's health port"))?;
    let status = resp.status().as_u16();
    Ok((
        status,
        resp.json().await.with_context(|| format!("{path} body"))?,
    ))
}

/// One published envelope, as read back from the queue stream.
#[derive(Debug, Clone)]
struct Published {
    slot_ms: i64,
    enqueued_ms: i64,
    schedule_id: String,
    from: String,
    kid: Option<String>,
}

/// Epoch ms of `YYYY-MM-DDTHH:MM:SS.mmmZ` (the beat's slot format).
fn slot_ms(s: &str) -> anyhow::Result<i64> {
    if s.len() != 24 || s.as_bytes()[19] != b'.' {
        bail!("slot {s:?} is not RFC 3339 UTC with milliseconds");
    }
    stem_e2e::rfc3339_utc_ms(s)
}

/// Every envelope in band 0 of the test queue, in stream order.
fn published(redis: &impl RedisUnderTest) -> anyhow::Result<Vec<Published>> {
    let out = redis.cli(&["XRANGE", &format!("stem:{{{QUEUE}}}:p0"), "-", "+"])?;
    let mut entries: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut lines = out.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let is_id = line.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if is_id {
            entries.push((None, None));
        } else if line == "e" {
            // The packed entry prints as four lines: attempt, kid, sig, body.
            if let Some(e) = entries.last_mut() {
                let _attempt = lines.next();
                e.1 = lines.next().filter(|k| !k.is_empty()).map(str::to_string);
                let _sig = lines.next();
                e.0 = lines.next().map(str::to_string);
            }
        }
    }
    entries
        .into_iter()
        .map(|(body, kid)| {
            let body = body.context("stream entry without a body")?;
            let v: Value = serde_json::from_str(&body).with_context(|| format!("body {body}"))?;
            let meta = &v["meta"];
            let text = |k: &str| meta[k].as_str().map(str::to_string).unwrap_or_default();
            Ok(Published {
                slot_ms: slot_ms(&text("schedule-slot"))?,
                enqueued_ms: v["enqueuedAt"].as_i64().context("enqueuedAt")?,
                schedule_id: text("schedule-id"),
                from: text("scheduled-from"),
                kid,
            })
        })
        .collect()
}

/// Slots sorted; fails on a duplicate.
fn distinct_slots(p: &[Published]) -> anyhow::Result<Vec<i64>> {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for e in p {
        *count.entry(e.slot_ms).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        bail!("slots fired more than once (slot ms → times): {dups:?}");
    }
    Ok(count.into_keys().collect())
}

fn check_envelopes(p: &[Published]) -> anyhow::Result<()> {
    for e in p {
        if e.schedule_id != SCHEDULE || e.from != "beat" || e.kid.as_deref() != Some("k1") {
            bail!("unexpected envelope {e:?}: want schedule-id {SCHEDULE}, scheduled-from beat, signed by k1");
        }
    }
    Ok(())
}

fn logs_of(ps: &[&ServiceProcess]) -> String {
    ps.iter()
        .map(|p| format!("--- {} (pid {}) ---\n{}", p.name(), p.pid(), p.logs()))
        .collect()
}

#[test]
fn slot_times_parse() -> anyhow::Result<()> {
    assert_eq!(slot_ms("1970-01-01T00:00:01.000Z")?, 1000);
    assert_eq!(slot_ms("2023-11-14T22:13:20.123Z")?, 1_700_000_000_123);
    assert_eq!(slot_ms("2024-02-29T00:00:00.000Z")?, 1_709_164_800_000);
    assert!(slot_ms("2024-02-29T00:00:00Z").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_fire_every_slot_exactly_once() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let file = ScheduleFile::every_second("pair")?;
    let envs = beat_env(&redis.url(), &file, &hmac_key("k1"));
    let mut a = start_beat("beat-a", &envs).await?;
    let mut b = start_beat("beat-b", &envs).await?;
    for p in [&a, &b] {
        // The broken entry is skipped with a warning that names it.
        wait_log(p, "\"broken\"", Duration::from_secs(10)).await?;
    }
    poll_until("one beat to lead", Duration::from_secs(10), || async {
        Ok(
            (a.logs().contains("became leader") || b.logs().contains("became leader"))
                .then_some(()),
        )
    })
    .await?;
    // The scenario itself: both beats run side by side for 20 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for p in [&mut a, &mut b] {
        p.sigterm()?;
        let code = p.wait_exit(Duration::from_secs(10))?;
        assert_eq!(code, Some(0), "beat exits 0 on SIGTERM; log:\n{}", p.logs());
    }
    let logs = logs_of(&[&a, &b]);
    let leaders = [&a, &b]
        .iter()
        .filter(|p| p.logs().contains("became leader"))
        .count();
    assert_eq!(leaders, 1, "exactly one beat led the whole time:\n{logs}");

    let p = published(&redis)?;
    check_envelopes(&p)?;
    let slots = distinct_slots(&p).with_context(|| logs.clone())?;
    assert!(
        (18..=23).contains(&slots.len()),
        "about 20 slots in 20 s, got {}:\n{logs}",
        slots.len()
    );
    for w in slots.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "every slot fired, 1 s apart: {slots:?}\n{logs}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_fails_over_within_the_lease() -> anyhow::Result<()> {
    leader_failover(&RedisServer::start()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_fails_over_within_the_lease_on_a_cluster() -> anyhow::Result<()> {
    leader_failover(&RedisCluster::start()?).await
}

/// The leader is SIGKILLed; the other beat takes over within the lease and
/// the firings resume with one gap at most.
async fn leader_failover(redis: &impl RedisUnderTest) -> anyhow::Result<()> {
    let file = ScheduleFile::every_second("failover")?;
    let envs = beat_env(&redis.url(), &file, &hmac_key("k1"));
    let mut a = start_beat("beat-a", &envs).await?;
    wait_log(&a, "became leader", Duration::from_secs(10)).await?;
    let b = start_beat("beat-b", &envs).await?;
    poll_until(
        "the leader to fire 4 slots",
        Duration::from_secs(15),
        || async { Ok((published(redis)?.len() >= 4).then_some(())) },
    )
    .await?;
    a.kill9()?;
    let killed = Instant::now();
    wait_log(&b, "became leader", LEASE + TICK + Duration::from_secs(3))
        .await
        .with_context(|| logs_of(&[&a, &b]))?;
    let takeover = killed.elapsed();
    let fired_at_takeover = published(redis)?.len();
    poll_until(
        "the new leader to fire 4 more slots",
        Duration::from_secs(15),
        || async { Ok((published(redis)?.len() >= fired_at_takeover + 4).then_some(())) },
    )
    .await?;
    let logs = logs_of(&[&a, &b]);
    // The bound is lease + tick (3.25 s); allow 1 s for log polling and a
    // busy machine.
    assert!(
        takeover <= LEASE + TICK + Duration::from_secs(1),
        "takeover took {takeover:?}:\n{logs}"
    );

    let p = published(redis)?;
    check_envelopes(&p)?;
    let slots = distinct_slots(&p).with_context(|| logs.clone())?;
    let gaps: Vec<i64> = slots.windows(2).map(|w| w[1] - w[0]).collect();
    let late: Vec<i64> = p
        .iter()
        .map(|e| e.enqueued_ms - e.slot_ms)
        .filter(|d| *d >= 1000)
        .collect();
    eprintln!(
        "failover: takeover after {takeover:?}; {} slots, {} fired late (ms after their slot: {late:?})",
        slots.len(),
        late.len()
    );
    // `misfire: all` (the default): the slots that fell due while nobody
    // led fire late, each once, oldest first, each carrying its own slot —
    // so the grid has no hole, and the takeover shows as late firings.
    assert!(
        gaps.iter().all(|g| *g == 1000),
        "every slot fired, none twice: gaps {gaps:?}\n{logs}"
    );
    assert!(
        !late.is_empty(),
        "the slots of the leaderless gap fire late, with their own slot: {takeover:?}\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firings_stay_on_the_slot_grid() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let file = ScheduleFile::every_second("drift")?;
    let envs = beat_env(&redis.url(), &file, &hmac_key("k1"));
    let a = start_beat("beat-a", &envs).await?;
    let _b = start_beat("beat-b", &envs).await?;
    wait_log(&a, "became leader", Duration::from_secs(10)).await?;
    let p = poll_until("31 firings", Duration::from_secs(45), || async {
        let p = published(&redis)?;
        Ok((p.len() >= 31).then_some(p))
    })
    .await?;
    // The first firing may follow start-up; measure the 30 after it.
    let p = &p[1..31];
    check_envelopes(p)?;
    let slots = distinct_slots(p)?;
    for w in slots.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "slots stay on the 1 s grid: {slots:?}");
    }
    let drift: Vec<i64> = p.iter().map(|e| e.enqueued_ms - e.slot_ms).collect();
    let mean_abs = drift.iter().map(|d| d.abs()).sum::<i64>() as f64 / drift.len() as f64;
    assert!(
        drift.iter().all(|d| *d >= 0),
        "never published before its slot: {drift:?}"
    );
    assert!(
        mean_abs < 50.0,
        "mean |drift| {mean_abs:.1} ms ≥ 50 ms: {drift:?}"
    );
    eprintln!("drift over 30 firings: mean |drift| {mean_abs:.1} ms, values {drift:?}");
    let first: f64 = drift[..10].iter().sum::<i64>() as f64 / 10.0;
    let last: f64 = drift[20..].iter().sum::<i64>() as f64 / 10.0;
    assert!(
        (last - first).abs() < 50.0,
        "drift accumulates: first 10 average {first:.1} ms, last 10 {last:.1} ms: {drift:?}"
    );
    Ok(())
}

/// Redis outages (README, "Redis outages": services keep running, log once
/// per outage, retry and resume by themselves), for beat:
/// Redis (with persistence, so the schedule outlives it) stops for 3 s
/// under the leader and comes back; the beat stays up, logs the outage
/// once per operation, and fires again on the same grid. Slots that fell
/// due meanwhile are coalesced into one firing; none is fired twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_rides_out_a_redis_outage() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions {
        persistence: true,
        ..Default::default()
    })?;
    let file = ScheduleFile::every_second("outage")?;
    let health = free_port();
    let mut envs = beat_env(&redis.url(), &file, &hmac_key("k1"));
    envs.push(("STEM_BEAT_HEALTH_PORT", health.to_string()));
    let mut beat = start_beat("beat-outage", &envs).await?;
    // The compose healthcheck's endpoint: alive, and ready while Redis is.
    let healthz = get_json(health, "/healthz").await?;
    assert_eq!(
        healthz,
        (200, json!({"status": "ok", "beat": "beat-outage"}))
    );
    assert_eq!(get_json(health, "/readyz").await?.0, 200);
    poll_until(
        "3 firings before the outage",
        Duration::from_secs(15),
        || async { Ok((published(&redis)?.len() >= 3).then_some(())) },
    )
    .await
    .with_context(|| beat.logs())?;

    redis.stop()?;
    let down_at = Instant::now();
    wait_log(
        &beat,
        "failed; retrying every tick",
        Duration::from_secs(10),
    )
    .await?;
    let (status, body) = get_json(health, "/readyz").await?;
    assert_eq!(status, 503, "not ready while Redis is down: {body}");
    assert_eq!(get_json(health, "/healthz").await?.0, 200, "but alive");
    // The outage itself: three slots fall due while Redis is away.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    assert!(
        beat.is_running(),
        "beat exited during the outage:\n{}",
        beat.logs()
    );
    redis.restart()?;
    let before = published(&redis)?.len();
    poll_until(
        "3 firings after the outage",
        Duration::from_secs(20),
        || async { Ok((published(&redis)?.len() >= before + 3).then_some(())) },
    )
    .await
    .with_context(|| beat.logs())?;
    assert_eq!(get_json(health, "/readyz").await?.0, 200, "ready again");

    beat.sigterm()?;
    let code = beat.wait_exit(Duration::from_secs(10))?;
    let logs = beat.logs();
    assert_eq!(code, Some(0), "beat exits 0 on SIGTERM; log:\n{logs}");
    for what in ["firing due schedules", "leader lease operation"] {
        let failed = logs.matches(&format!("{what} failed")).count();
        assert!(
            failed <= 1,
            "{what}: one warning per outage, got {failed}:\n{logs}"
        );
    }
    assert!(
        logs.contains("works again"),
        "the end of the outage is logged:\n{logs}"
    );
    let p = published(&redis)?;
    check_envelopes(&p)?;
    let slots = distinct_slots(&p).with_context(|| logs.clone())?;
    for w in slots.windows(2) {
        assert_eq!(
            (w[1] - w[0]) % 1000,
            0,
            "slots stay on the 1 s grid: {slots:?}\n{logs}"
        );
    }
    Ok(())
}
