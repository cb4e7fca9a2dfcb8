//! The `stem` operator CLI, black box (README "CLI"): the real `stem`,
//! `worker` and `beat` binaries against private Redis servers. Every test
//! has its own server, so they run in parallel; every wait polls with a
//! deadline. The schedule, worker control, task, dead-letter and purge
//! scenarios run on a Redis Cluster too (`…_on_a_cluster`): the same body
//! with a `redis+cluster://` URL.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use stem_e2e::{
    body_runs, hmac_key, poll_until, signed, start_worker, wait_body_running, wait_log,
    worker_name, RedisCluster, RedisServer, ServiceProcess, Stem, SETTLE,
};

/// The seed file at the workspace root.
fn example_schedule_file() -> String {
    format!(
        "{}/../../schedules.example.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The six ids of `schedules.example.yaml`.
const EXAMPLE_IDS: [&str; 6] = [
    "greetings-reminder",
    "greetings-followup",
    "billing-charge",
    "billing-settlement",
    "reports-aggregate",
    "reports-publish-flaky",
];

/// stdout lines of a dry run as epoch ms; checks format, count and order.
fn slots(out: &str, count: usize) -> anyhow::Result<Vec<i64>> {
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == count,
        "expected {count} lines, got {}: {out:?}",
        lines.len()
    );
    let ms = lines
        .iter()
        .map(|l| stem_e2e::rfc3339_utc_ms(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        ms.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {out}"
    );
    Ok(ms)
}

fn ids_of(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// schedule
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_apply_list_dry_run_and_round_trip() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    schedule_apply_list_dry_run_and_round_trip_on(&redis.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_apply_list_dry_run_and_round_trip_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    schedule_apply_list_dry_run_and_round_trip_on(&cluster.url()).await
}

/// The scenario, on the Redis at `url`.
async fn schedule_apply_list_dry_run_and_round_trip_on(url: &str) -> anyhow::Result<()> {
    let stem = Stem::new(url);
    let file = example_schedule_file();

    let empty = stem.ok(&["schedule", "list"])?;
    assert_eq!(empty.stdout.trim(), "No schedules found.");
    let applied = stem.ok(&["schedule", "apply", "-f", &file])?;
    assert!(
        applied.stdout.contains("6 created"),
        "{}",
        applied.describe()
    );

    // Table: every id, the documented header, aligned columns.
    let table = stem.ok(&["schedule", "list"])?.stdout;
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    let header: Vec<&str> = header.iter().map(|c| c.trim()).collect();
    assert_eq!(
        header,
        ["ID", "Task", "Queue", "Spec", "Next Run", "Last Run", "Jitter", "Enabled"],
        "{table}"
    );
    assert_eq!(lines.len(), 2 + 6, "{table}");
    for id in EXAMPLE_IDS {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{id} "))),
            "{id} missing or truncated:\n{table}"
        );
    }
    let task_col = lines[0].find("Task").context("Task column")?;
    for l in &lines[2..] {
        assert_eq!(
            &l[task_col - 2..task_col],
            "  ",
            "columns aligned:\n{table}"
        );
        assert!(!l.contains("..."), "nothing truncated:\n{table}");
    }

    // JSON: the documented fields.
    let list = stem.json(&["schedule", "list"])?;
    assert_eq!(ids_of(&list), {
        let mut v: Vec<String> = EXAMPLE_IDS.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });
    let reminder = list
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == "greetings-reminder"))
        .context("greetings-reminder in --json")?;
    for field in [
        "id",
        "task",
        "queue",
        "spec",
        "nextRunAt",
        "lastRunAt",
        "jitterMs",
        "enabled",
        "totalRunCount",
        "lastError",
    ] {
        assert!(reminder.get(field).is_some(), "{field} in {reminder}");
    }
    assert_eq!(reminder["task"], "greeting.send");
    assert_eq!(reminder["spec"], "every:30s");
    assert_eq!(reminder["jitterMs"], 5000);
    assert_eq!(reminder["enabled"], true);
    stem_e2e::rfc3339_utc_ms(reminder["nextRunAt"].as_str().context("nextRunAt")?)?;

    // Dry runs: exactly `count` planned slots, jitter only on stderr.
    let dry = stem.ok(&[
        "schedule",
        "dry-run",
        "--id",
        "greetings-reminder",
        "--count",
        "3",
    ])?;
    let ms = slots(&dry.stdout, 3)?;
    assert!(
        ms.windows(2).all(|w| w[1] - w[0] == 30_000),
        "30 s apart: {}",
        dry.stdout
    );
    assert!(dry.stderr.contains("jitter"), "{}", dry.describe());
    let cron = stem.ok(&[
        "schedule",
        "dry-run",
        "--spec",
        "*/5 * * * *",
        "--count",
        "4",
    ])?;
    let ms = slots(&cron.stdout, 4)?;
    assert!(
        ms.iter().all(|t| t % 300_000 == 0),
        "on 5-minute boundaries: {}",
        cron.stdout
    );
    assert!(ms.windows(2).all(|w| w[1] - w[0] == 300_000));
    let from = stem.ok(&[
        "schedule",
        "dry-run",
        "--spec",
        "0 9 * * *",
        "--timezone",
        "Europe/Berlin",
        "--from",
        "2025-07-01T00:00:00Z",
        "--count",
        "2",
    ])?;
    assert_eq!(
        from.stdout,
        "2025-07-01T07:00:00.000Z\n2025-07-02T07:00:00.000Z\n"
    );
    stem.run(&["schedule", "dry-run", "--spec", "every:soon"])?
        .expect(65)?;
    stem.run(&["schedule", "dry-run", "--id", "nope"])?
        .expect(65)?;
    stem.run(&["schedule", "dry-run"])?.expect(64)?;

    // An invalid file changes nothing.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "entries:\n  - id: greetings-reminder\n    task: greeting.send\n    spec: every:1s\n  - id: broken\n    task: x\n    spec: \"every:soon\"\n",
    )?;
    let refused = stem.run(&[
        "schedule",
        "apply",
        "-f",
        bad.to_str().context("utf-8 path")?,
    ])?;
    let refused = refused.expect(65)?;
    assert!(refused.stderr.contains("broken"), "{}", refused.describe());
    let after = stem.json(&["schedule", "list"])?;
    assert_eq!(after, list, "an invalid file must change nothing");
    std::fs::write(&bad, "entries: [unclosed\n")?;
    stem.run(&[
        "schedule",
        "apply",
        "-f",
        bad.to_str().context("utf-8 path")?,
    ])?
    .expect(65)?;

    // show, disable, enable, delete.
    let shown = stem.ok(&["schedule", "show", "billing-charge"])?.json()?;
    assert_eq!(shown["task"], "billing.charge");
    assert_eq!(shown["timezone"], "UTC");
    let disabled = stem.json(&["schedule", "disable", "billing-charge"])?;
    assert_eq!(disabled["enabled"], false, "{disabled}");
    let off = stem.ok(&["schedule", "show", "billing-charge"])?.json()?;
    assert_eq!(off["enabled"], false);
    assert!(off["nextRunAt"].is_null(), "{off}");
    stem.ok(&["schedule", "enable", "billing-charge"])?;
    let on = stem.ok(&["schedule", "show", "billing-charge"])?.json()?;
    assert_eq!(on["enabled"], true);
    assert!(on["nextRunAt"].is_string(), "{on}");
    let refused = stem
        .run(&["schedule", "delete", "billing-charge"])?
        .expect(64)?;
    assert!(refused.stderr.contains("--yes"), "{}", refused.describe());
    stem.ok(&["schedule", "show", "billing-charge"])?;
    stem.ok(&["schedule", "delete", "billing-charge", "--yes"])?;
    stem.run(&["schedule", "show", "billing-charge"])?
        .expect(65)?;
    stem.run(&["schedule", "enable", "billing-charge"])?
        .expect(65)?;
    assert_eq!(ids_of(&stem.json(&["schedule", "list"])?).len(), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_works_after_beat_seeded_the_store() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let beat = ServiceProcess::spawn(
        "beat",
        &["--instance-id", "cli-e2e-beat"],
        &[
            ("STEM_BROKER_URL", url.clone()),
            ("STEM_SCHEDULE_FILE", example_schedule_file()),
        ],
    )?;
    wait_log(&beat, "beat started", Duration::from_secs(20)).await?;
    let stem = Stem::new(&url).with("STEM_SCHEDULE_STORE_URL", &url);
    poll_until("beat to seed six schedules", SETTLE, || async {
        let list = stem.json(&["schedule", "list"])?;
        Ok((ids_of(&list).len() == 6).then_some(()))
    })
    .await?;
    let dry = stem.ok(&[
        "schedule",
        "dry-run",
        "--id",
        "greetings-reminder",
        "--count",
        "3",
    ])?;
    let ms = slots(&dry.stdout, 3)?;
    assert!(
        ms.windows(2).all(|w| w[1] - w[0] == 30_000),
        "{}",
        dry.stdout
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// worker
// ---------------------------------------------------------------------------

/// Polls `worker ping --json` until exactly `names` answer ok.
async fn wait_pinged(stem: &Stem, names: &[&String]) -> anyhow::Result<Value> {
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    poll_until(&format!("{want:?} to answer ping"), SETTLE, || async {
        let run = stem.run(&["worker", "ping", "--json", "--timeout", "1s"])?;
        if run.code != Some(0) {
            return Ok(None);
        }
        let v = run.json()?;
        let ok: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["status"] == "ok")
                    .filter_map(|r| r["worker"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((ok == want).then_some(v))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ping_pause_and_shutdown_reach_every_namespace() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    worker_ping_pause_and_shutdown_reach_every_namespace_on(&redis.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ping_pause_and_shutdown_reach_every_namespace_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    worker_ping_pause_and_shutdown_reach_every_namespace_on(&cluster.url()).await
}

/// The scenario, on the Redis at `url`.
async fn worker_ping_pause_and_shutdown_reach_every_namespace_on(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    let stem = Stem::new(&url);
    // Nobody alive: ping exits 75 at once.
    let none = stem.run(&["worker", "ping"])?.expect(75)?;
    assert!(
        none.stderr.contains("no live workers"),
        "{}",
        none.describe()
    );

    let mut workers = Vec::new();
    for (ns, queue) in [
        ("customer-experience", "greetings"),
        ("revenue", "billing"),
        ("analytics", "reporting"),
    ] {
        let name = worker_name(ns);
        let p = start_worker(
            &url,
            &name,
            queue,
            &[
                ("STEM_WORKER_NAMESPACE", ns.into()),
                ("STEM_WORKER_CONCURRENCY", "1".into()),
                ("STEM_SHUTDOWN_GRACE", "2s".into()),
            ],
        )
        .await?;
        workers.push((name, p));
    }
    let names: Vec<&String> = workers.iter().map(|(n, _)| n).collect();
    let pinged = wait_pinged(&stem, &names).await?;
    assert_eq!(pinged.as_array().map(Vec::len), Some(3), "{pinged}");
    let table = stem.ok(&["worker", "ping"])?.stdout;
    for n in &names {
        assert!(table.contains(n.as_str()), "{n} in\n{table}");
    }
    let listed = stem.json(&["worker", "list"])?;
    let namespaces: Vec<&str> = listed
        .as_array()
        .context("worker list array")?
        .iter()
        .filter_map(|w| w["namespace"].as_str())
        .collect();
    assert_eq!(namespaces.len(), 3, "{listed}");
    let stats = stem.json(&["worker", "stats"])?;
    assert!(
        stats
            .as_array()
            .is_some_and(|a| a.iter().all(|r| r["reply"]["concurrency"] == 1)),
        "{stats}"
    );
    // A named worker that does not exist does not answer: 75.
    stem.run(&["worker", "ping", "-w", "ghost", "--timeout", "300ms"])?
        .expect(75)?;

    // Pause is persisted and acknowledged; resume undoes it.
    let paused = stem.json(&["worker", "pause", "-q", "billing"])?;
    assert_eq!(paused["paused"], serde_json::json!(["billing"]), "{paused}");
    let queues = stem.json(&["queue", "list"])?;
    let billing = queues
        .as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "billing"))
        .context("billing queue")?;
    assert_eq!(billing["paused"], true, "{queues}");
    let resumed = stem.json(&["worker", "resume", "-q", "billing"])?;
    assert_eq!(resumed["paused"], serde_json::json!([]), "{resumed}");

    // Shutdown needs --yes, then stops exactly that worker gracefully.
    let (victim, mut process) = workers.remove(0);
    stem.run(&["worker", "shutdown", "-w", &victim])?
        .expect(64)?;
    assert!(process.is_running(), "refused shutdown must not stop it");
    let answer = stem.json(&["worker", "shutdown", "-w", &victim, "--yes"])?;
    assert_eq!(answer[0]["worker"], victim.as_str(), "{answer}");
    assert_eq!(answer[0]["status"], "ok", "{answer}");
    let code = process.wait_exit(Duration::from_secs(15))?;
    assert_eq!(code, Some(0), "graceful exit; log:\n{}", process.logs());
    let rest: Vec<&String> = workers.iter().map(|(n, _)| n).collect();
    wait_pinged(&stem, &rest).await?;

    // With every worker gone, ping exits 75 again.
    for (_, p) in &mut workers {
        p.sigterm()?;
    }
    for (_, p) in &mut workers {
        assert_eq!(p.wait_exit(Duration::from_secs(15))?, Some(0));
    }
    stem.run(&["worker", "ping"])?.expect(75)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// task
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_revoke_cancels_queued_and_running_tasks() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    task_revoke_cancels_queued_and_running_tasks_on(&redis.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_revoke_cancels_queued_and_running_tasks_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    task_revoke_cancels_queued_and_running_tasks_on(&cluster.url()).await
}

/// The scenario, on the Redis at `url`.
async fn task_revoke_cancels_queued_and_running_tasks_on(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    let key = hmac_key("k1");
    let stem = Stem::new(&url)
        .with("STEM_SIGNING_KEYS", &key)
        .with("STEM_SIGNING_ACTIVE_KEY", "k1");
    let mut env = signed(&key);
    env.push(("STEM_WORKER_CONCURRENCY", "2".into()));
    let worker = start_worker(&url, &worker_name("revoke"), "greetings", &env).await?;

    // Queued (countdown): revoked before it is due, never runs.
    let queued = stem
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name":"Later"}"#,
            "--countdown",
            "2s",
        ])?
        .stdout
        .trim()
        .to_string();
    assert_eq!(stem.state(&queued)?, "queued");
    stem.ok(&["task", "revoke", &queued])?;
    assert_eq!(stem.state(&queued)?, "cancelled");

    // Running (5 s body): cancelled well before it would finish.
    let running = stem
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name":"Slow","delayMs":5000}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    wait_body_running(&worker, &running, SETTLE).await?;
    let started = Instant::now();
    let revoked = stem.json(&["task", "revoke", &running])?;
    assert_eq!(revoked["tasks"][0]["previous"], "running", "{revoked}");
    assert_eq!(revoked["tasks"][0]["state"], "cancelled", "{revoked}");
    assert_eq!(
        revoked["workers"][0]["reply"]["cancelled"],
        serde_json::json!([running]),
        "the worker cancels the running body at once: {revoked}"
    );
    assert_eq!(stem.state(&running)?, "cancelled");
    // The body stops well before its 5 s.
    poll_until("the worker to stop running the body", SETTLE, || async {
        let v = stem.json(&["worker", "inspect"])?;
        Ok((v[0]["reply"]["active"] == serde_json::json!([])).then_some(()))
    })
    .await?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "body still running {took:?} after the revoke"
    );
    // `task wait` on a cancelled task exits 1.
    let waited = stem.run(&["task", "wait", &running, "--json"])?.expect(1)?;
    assert_eq!(waited.json()?["state"], "cancelled");

    // The queued one comes due and is dropped without running; the
    // running one's worker lets it go.
    poll_until("the queue to drain", SETTLE, || async {
        let q = stem.json(&["queue", "inspect", "-q", "greetings"])?;
        let idle = q["ready"] == 0 && q["delayed"] == 0 && q["inflight"] == 0;
        Ok(idle.then_some(()))
    })
    .await?;
    let logs = worker.logs();
    assert_eq!(body_runs(&logs, &queued), 0, "revoked task ran:\n{logs}");
    assert!(!logs.contains("Processed greeting.send for Slow"), "{logs}");
    assert_eq!(stem.state(&queued)?, "cancelled");
    assert_eq!(stem.state(&running)?, "cancelled");

    // Unknown ids: exit 65.
    stem.run(&["task", "status", "no-such-task"])?.expect(65)?;
    stem.run(&["task", "wait", "no-such-task"])?.expect(65)?;
    stem.run(&["task", "revoke", "no-such-task"])?.expect(65)?;
    // A task outside the catalogue needs its queue; with it, it is
    // enqueued with the retry budget given.
    stem.run(&["task", "enqueue", "no.such.task"])?.expect(65)?;
    let other = stem
        .ok(&[
            "task",
            "enqueue",
            "images.resize",
            "-q",
            "images",
            "--max-retries",
            "3",
        ])?
        .stdout
        .trim()
        .to_string();
    let status = stem.json(&["task", "status", &other])?;
    assert_eq!(
        (&status["queue"], &status["maxRetries"], &status["state"]),
        (
            &serde_json::json!("images"),
            &serde_json::json!(3),
            &serde_json::json!("queued")
        ),
        "{status}"
    );
    stem.run(&["task", "enqueue", "greeting.send", "--args", "{nope"])?
        .expect(65)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// dlq
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_runs_the_task_again_with_its_signature() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    dlq_replay_runs_the_task_again_with_its_signature_on(&redis.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_runs_the_task_again_with_its_signature_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    dlq_replay_runs_the_task_again_with_its_signature_on(&cluster.url()).await
}

/// The scenario, on the Redis at `url`.
async fn dlq_replay_runs_the_task_again_with_its_signature_on(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    let key = hmac_key("k1");
    let stem = Stem::new(&url)
        .with("STEM_SIGNING_KEYS", &key)
        .with("STEM_SIGNING_ACTIVE_KEY", "k1");

    // A worker holding another secret under the same id rejects the task.
    let mut wrong = start_worker(
        &url,
        &worker_name("wrong-key"),
        "greetings",
        &signed(&hmac_key("k1")),
    )
    .await?;
    let id = stem
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name":"Replay"}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    poll_until("the task to be dead-lettered", SETTLE, || async {
        let list = stem.json(&["dlq", "list", "-q", "greetings"])?;
        Ok(list
            .as_array()
            .and_then(|a| a.iter().find(|l| l["taskId"] == id.as_str()).cloned()))
    })
    .await
    .map(|letter| assert_eq!(letter["reason"], "signature-invalid", "{letter}"))?;
    // The producer's own envelope, rejected: its task fails (README "Security"),
    // and the replay below reopens it, the envelope's fingerprint matching.
    assert_eq!(stem.state(&id)?, "failed");
    let shown = stem.ok(&["dlq", "show", "-q", "greetings", &id])?.json()?;
    assert_eq!(shown["keyId"], "k1", "{shown}");
    assert_eq!(shown["signed"], true, "{shown}");
    assert_eq!(body_runs(&wrong.logs(), &id), 0);
    wrong.sigterm()?;
    assert_eq!(wrong.wait_exit(Duration::from_secs(15))?, Some(0));

    // Replaying many needs --yes; one entry does not.
    stem.run(&["dlq", "replay", "-q", "greetings", "--all"])?
        .expect(64)?;
    let right = start_worker(&url, &worker_name("right-key"), "greetings", &signed(&key)).await?;
    let replayed = stem.json(&["dlq", "replay", "-q", "greetings", &id])?;
    assert_eq!(replayed["replayed"][0]["taskId"], id.as_str(), "{replayed}");
    assert_eq!(replayed["replayed"][0]["attempt"], 1, "{replayed}");
    let done = stem
        .ok(&["task", "wait", &id, "--timeout", "20s", "--json"])?
        .json()?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["id"], id.as_str());
    assert_eq!(body_runs(&right.logs(), &id), 1, "{}", right.logs());
    assert_eq!(
        stem.json(&["dlq", "list", "-q", "greetings"])?,
        serde_json::json!([])
    );

    // Purge needs --yes.
    stem.run(&["dlq", "purge", "-q", "greetings"])?.expect(64)?;
    let purged = stem.json(&["dlq", "purge", "-q", "greetings", "--yes"])?;
    assert_eq!(purged["purged"], 0);
    stem.run(&["dlq", "show", "-q", "greetings", "1-0"])?
        .expect(65)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// queue, health
// ---------------------------------------------------------------------------

fn ready_of(list: &Value, queue: &str) -> Option<u64> {
    list.as_array()?.iter().find(|q| q["queue"] == queue)?["ready"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_purge_needs_yes_and_empties_the_queue() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    queue_purge_needs_yes_and_empties_the_queue_on(&redis.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_purge_needs_yes_and_empties_the_queue_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    queue_purge_needs_yes_and_empties_the_queue_on(&cluster.url()).await
}

/// The scenario, on the Redis at `url`.
async fn queue_purge_needs_yes_and_empties_the_queue_on(url: &str) -> anyhow::Result<()> {
    let stem = Stem::new(url);
    // Unsigned (no key configured): warned about, but published.
    let first = stem.ok(&["task", "enqueue", "billing.charge"])?;
    assert!(first.stderr.contains("unsigned"), "{}", first.describe());
    for _ in 0..2 {
        stem.ok(&["task", "enqueue", "billing.charge", "--priority", "5"])?;
    }
    stem.ok(&["task", "enqueue", "billing.charge", "--countdown", "1h"])?;
    let before = stem.json(&["queue", "list"])?;
    assert_eq!(ready_of(&before, "billing"), Some(3), "{before}");
    let table = stem.ok(&["queue", "list"])?.stdout;
    assert!(table.lines().any(|l| l.starts_with("billing ")), "{table}");

    // A queue holding tasks is not forgotten (issue 24, W16).
    let kept = stem
        .run(&["queue", "forget", "-q", "billing"])?
        .expect(65)?;
    assert!(
        kept.stderr.contains("3 ready") && kept.stderr.contains("1 delayed"),
        "{}",
        kept.describe()
    );

    let refused = stem.run(&["queue", "purge", "-q", "billing"])?.expect(64)?;
    assert!(refused.stderr.contains("--yes"), "{}", refused.describe());
    assert_eq!(
        stem.json(&["queue", "list"])?,
        before,
        "refused purge changed nothing"
    );

    let purged = stem.json(&["queue", "purge", "-q", "billing", "--yes"])?;
    assert_eq!(purged["purged"], 4, "{purged}");
    let after = stem.json(&["queue", "inspect", "-q", "billing"])?;
    assert_eq!(after["ready"], 0, "{after}");
    assert_eq!(after["delayed"], 0, "{after}");
    assert_eq!(
        ready_of(&stem.json(&["queue", "list"])?, "billing"),
        Some(0)
    );
    stem.run(&["queue", "inspect", "-q", "nope"])?.expect(65)?;
    stem.run(&["queue", "purge", "-q", "nope", "--yes"])?
        .expect(65)?;

    // Empty now: forgotten, no longer listed; a second forget is a typo.
    let forgot = stem.json(&["queue", "forget", "-q", "billing"])?;
    assert_eq!(forgot["forgotten"], true, "{forgot}");
    assert_eq!(ready_of(&stem.json(&["queue", "list"])?, "billing"), None);
    stem.run(&["queue", "forget", "-q", "billing"])?
        .expect(65)?;
    // A queue a live worker consumes is not forgotten: it would come back.
    let worker = start_worker(url, &worker_name("forget"), "greetings", &[]).await?;
    let busy = stem
        .run(&["queue", "forget", "-q", "greetings"])?
        .expect(65)?;
    assert!(
        busy.stderr.contains("consumed by live workers"),
        "{}",
        busy.describe()
    );
    drop(worker);
    Ok(())
}

/// `stem probe URL` (container healthchecks): 0 on a 2xx answer, 69 on
/// another status or no answer, 64 for what is not an http(s) URL; it
/// needs no STEM_* configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_0_only_for_a_2xx_answer() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = stem_e2e::start_enqueuer(&redis.url(), &[]).await?;
    let stem = Stem::new("bogus://not-read");
    stem.ok(&["probe", &format!("{}/healthz", enq.api.base())])?;
    let missing = stem
        .run(&["probe", &format!("{}/no-such-route", enq.api.base())])?
        .expect(69)?;
    assert!(missing.stderr.contains("404"), "{}", missing.describe());
    let closed = format!("http://127.0.0.1:{}/healthz", stem_testkit::free_port());
    stem.run(&["probe", &closed, "--timeout", "1s"])?
        .expect(69)?;
    stem.run(&["probe", "redis://127.0.0.1:6379"])?.expect(64)?;
    Ok(())
}

/// The proxy variables a container engine injects from the client's
/// settings: the probe asks the URL itself, so a proxy where nothing
/// listens changes nothing.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_ignores_the_proxy_variables() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = stem_e2e::start_enqueuer(&redis.url(), &[]).await?;
    let healthz = format!("{}/healthz", enq.api.base());
    let dead_proxy = format!("http://127.0.0.1:{}", stem_testkit::free_port());
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
        let mut stem = Stem::new("bogus://not-read");
        for v in PROXY_VARIABLES.iter().chain(&["NO_PROXY", "no_proxy"]) {
            stem = stem.without(v);
        }
        let run = stem
            .with(var, &dead_proxy)
            .run(&["probe", &healthz, "--timeout", "2s"])?;
        assert_eq!(
            run.code,
            Some(0),
            "{var}={dead_proxy} is not used: {}",
            run.describe()
        );
    }
    Ok(())
}

/// Only the named URL's own status counts: a redirect to a healthy URL is
/// not followed, and the 3xx exits 69.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_follows_no_redirect() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = stem_e2e::start_enqueuer(&redis.url(), &[]).await?;
    let healthz = format!("{}/healthz", enq.api.base());
    let stem = Stem::new("bogus://not-read");
    for status in ["302 Found", "303 See Other"] {
        let redirect = redirect_server(status, &healthz).await?;
        let run = stem.run(&["probe", &format!("{redirect}/healthz")])?;
        assert_eq!(
            run.code,
            Some(69),
            "{status} to {healthz}: {}",
            run.describe()
        );
        assert!(
            run.stderr.contains(&status[..3]),
            "the status is named: {}",
            run.describe()
        );
    }
    Ok(())
}

/// An HTTP server on loopback answering every request with `status` and
/// `Location: target`; returns its base URL.
async fn redirect_server(status: &'static str, target: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let answer = format!(
        "HTTP/1.1 {status}\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_redis_and_exits_69_without_it() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let stem = Stem::new(&redis.url());
    let up = stem.json(&["health"])?;
    let components: Vec<&str> = up
        .as_array()
        .context("health array")?
        .iter()
        .filter_map(|c| c["component"].as_str())
        .collect();
    assert_eq!(components, ["broker", "backend", "schedule-store"], "{up}");
    assert!(
        up.as_array()
            .is_some_and(|a| a.iter().all(|c| c["status"] == "ok")),
        "{up}"
    );
    stem.ok(&["health"])?;
    stem.run(&["task", "status", "no-such-task"])?.expect(65)?;
    // Configuration errors: 78.
    Stem::new("bogus://x").run(&["health"])?.expect(78)?;

    redis.stop()?;
    let down = stem.run(&["health", "--json"])?.expect(69)?;
    let v = down.json()?;
    assert!(
        v.as_array()
            .is_some_and(|a| a.iter().all(|c| c["status"] == "error")),
        "{v}"
    );
    for args in [
        &["queue", "list"][..],
        &["schedule", "list"][..],
        &["worker", "ping"][..],
        &["task", "status", "x"][..],
    ] {
        let r = stem.run(args)?.expect(69)?;
        let lines: Vec<&str> = r.stderr.lines().collect();
        if lines.len() != 1 || !lines[0].starts_with("error: Redis unavailable") {
            bail!("{args:?}: expected one clear line, got {}", r.describe());
        }
    }
    Ok(())
}

/// `stem keys hmac | head -1`: a reader that closes the pipe early ends
/// the command quietly with 0, not with a panic on the broken pipe.
#[test]
fn keys_survive_a_closed_pipe() -> anyhow::Result<()> {
    for kind in ["hmac", "ed25519"] {
        let mut child = std::process::Command::new(stem_testkit::binary_path("stem")?)
            .args(["keys", kind])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // Close the reading end before the command writes (it is still
        // starting up).
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "stem keys {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
