//! The compose stack in real containers, once per shipped profile: what a
//! user does after `cp .env.<profile> .env && docker-compose up -d`
//! (`tests/src/containers.rs` says how the project is laid out and what
//! stands in for the images no registry can give us here).
//!
//! - every container runs and every healthcheck passes;
//! - through 127.0.0.1:8080: a task on each queue via `/api/` and one via
//!   `Host: api.localhost` succeed; the dashboard lists the queues and its
//!   `/events` stream delivers an update; Prometheus (`/prometheus/`)
//!   scrapes every Stem service, all up;
//! - `docker-compose exec beat stem schedule list` lists the seeded
//!   schedules;
//! - Redis and every Stem service run as their own non-root users; with a
//!   TLS profile Redis answers no plain-text client on its published port;
//! - `docker-compose restart redis` with tasks queued and their worker
//!   stopped: every task still runs once the worker is back (the AOF on
//!   the volume), and results written before the restart are still there;
//! - `docker-compose stop`: every Stem container exits 0 (SIGTERM, within
//!   its `stop_grace_period`); no log holds the Redis password;
//! - `docker-compose down -v` leaves no container, volume or network.
//!
//! Beside the journeys: partitions between the stack's containers (a
//! worker cut off mid-task, the enqueuer cut from Redis), and a Redis
//! Cluster of containers whose greetings master is cut off its network.
//!
//! These need images that take minutes to build, so `cargo test` lists
//! them as ignored and `scripts/test-containers.sh` (run by
//! `scripts/test.sh`) builds the images and runs them with `--ignored`.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use stem_e2e::{poll_until, Api, BODY_RUNNING, SETTLE};
use stem_stack_tests::containers::{Compose, ContainerCluster, Cut};
use stem_stack_tests::journey;
use stem_stack_tests::Profile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway docker-compose.yml publishes.
const GATEWAY: &str = "http://127.0.0.1:8080";
/// First start: Redis, then the services, then nginx after the services it
/// fronts report healthy (10 s healthcheck intervals).
const UP_WITHIN: Duration = Duration::from_secs(240);
/// The Stem services, as docker-compose.yml names them.
const STEM_SERVICES: [&str; 6] = [
    "enqueuer",
    "worker-greetings",
    "worker-billing",
    "worker-reporting",
    "beat",
    "dashboard",
];
/// Tasks queued across the Redis restart.
const QUEUED: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images scripts/test-containers.sh builds; it runs this"]
async fn the_hmac_profile_runs_in_containers() -> anyhow::Result<()> {
    journey(".env.hmac").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images scripts/test-containers.sh builds; it runs this"]
async fn the_hmac_tls_profile_runs_in_containers() -> anyhow::Result<()> {
    journey(".env.hmac_tls").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images scripts/test-containers.sh builds; it runs this"]
async fn the_ed25519_tls_profile_runs_in_containers() -> anyhow::Result<()> {
    journey(".env.ed25519_tls").await
}

/// Partitions between containers (the hmac profile's stack with a second
/// greetings worker): a worker cut from Redis in the middle of a task for
/// longer than its visibility timeout, and the enqueuer cut from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images scripts/test-containers.sh builds; it runs this"]
async fn partitions_between_containers_lose_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stack = Compose::up(".env.hmac")?;
    stack.wait_healthy(UP_WITHIN).await?;
    // A second worker on the greetings queue, under its own name (the
    // compose service names its one worker).
    let second = format!("{}_worker-greetings-2", stack.name);
    stack.run(&[
        "run",
        "-d",
        "--name",
        &second,
        "-e",
        "STEM_WORKER_NAME=worker-greetings-2",
        "worker-greetings",
    ])?;
    let api = Api::new(format!("{GATEWAY}/api"))?;
    worker_cut_mid_task(&stack, &api, &second).await?;
    enqueuer_cut_from_redis(&stack, &api).await?;
    stack.run(&["down", "-v"])?;
    let left = stack.leftovers()?;
    assert!(left.is_empty(), "down -v left {left:?}");
    println!("partitions passed in {:?}", started.elapsed());
    Ok(())
}

/// The greetings worker running a 10 s task is cut from Redis for longer
/// than its lease (30 s, `STEM_VISIBILITY_TIMEOUT`): the other worker
/// takes the task over and completes it; when the link heals, the cut
/// worker's late outcome does not overwrite the result, and the body ran
/// exactly twice (once per worker), never more.
async fn worker_cut_mid_task(stack: &Compose, api: &Api, second: &str) -> anyhow::Result<()> {
    let id = api
        .enqueue(json!({"name": "Partitioned", "delayMs": 10_000}))
        .await?;
    let running = |worker: &str| runs_of(&stack.full_logs(worker), &id);
    let workers = ["worker-greetings", second];
    let holder = poll_until("a greetings worker to start the task", SETTLE, || async {
        Ok(workers.iter().find(|w| running(w) > 0).copied())
    })
    .await?;
    let other = workers
        .iter()
        .find(|w| **w != holder)
        .copied()
        .context("other")?;
    let cut = Cut::new(stack, holder, "redis")?;
    let cut_at = Instant::now();
    let done = api
        .wait_state(&id, "succeeded", Duration::from_secs(120))
        .await
        .with_context(|| stack.logs())?;
    println!(
        "{holder} cut mid-task; {other} completed it {:?} after the cut",
        cut_at.elapsed()
    );
    assert_eq!(running(other), 1, "{other} ran the task it took over");
    let held = stack.full_logs(holder);
    assert!(
        held.contains("result backend unavailable; holding results until it answers"),
        "{holder} held its outcome while cut off"
    );
    let healed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .to_string();
    cut.heal()?;
    // The cut worker's completer settles batch after batch: once a task it
    // started after the link healed has its result stored, the held
    // outcome of the cut task has been written (or, here, dropped).
    poll_until(
        "the cut worker to settle a task started after the link healed",
        Duration::from_secs(90),
        || async {
            let logs = stack.logs_since(holder, &healed_at);
            for later in logs
                .lines()
                .filter(|l| l.contains(BODY_RUNNING))
                .filter_map(|l| l.split("\"task_id\":\"").nth(1))
                .filter_map(|rest| rest.split('"').next())
                .filter(|t| *t != id)
            {
                let state = api.task(later).await?.map(|s| s["state"].clone());
                if state == Some(json!("succeeded")) {
                    return Ok(Some(()));
                }
            }
            Ok(None)
        },
    )
    .await?;
    let after = api.task(&id).await?.context("status")?;
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(
        after["updatedAt"], done["updatedAt"],
        "the cut worker's late outcome overwrote the result: {after}"
    );
    assert_eq!(running(holder), 1, "{holder} ran it once");
    assert_eq!(running(other), 1, "{other} ran it once");
    println!("the task ran twice (once per worker), the result written once");
    Ok(())
}

/// The enqueuer cut from Redis answers 503 at its Redis command timeout
/// (5 s, well within its 30 s request timeout), and serves again by itself
/// once the link heals.
async fn enqueuer_cut_from_redis(stack: &Compose, api: &Api) -> anyhow::Result<()> {
    let cut = Cut::new(stack, "enqueuer", "redis")?;
    let asked = Instant::now();
    let reply = api
        .post_json("/enqueue", &json!({"name": "Cut", "delayMs": 1}))
        .await?;
    let took = asked.elapsed();
    println!("enqueuer cut from Redis: {} after {took:?}", reply.status);
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert!(
        took < Duration::from_secs(10),
        "answered after {took:?}, not at the 5 s command timeout"
    );
    cut.heal()?;
    let healed = Instant::now();
    let id = poll_until(
        "the enqueuer to accept tasks again",
        Duration::from_secs(60),
        || async {
            let reply = api
                .post_json("/enqueue", &json!({"name": "Healed", "delayMs": 1}))
                .await?;
            Ok((reply.status == 200)
                .then(|| reply.json["taskId"].as_str().map(str::to_string))
                .flatten())
        },
    )
    .await?;
    println!(
        "enqueuer serving again {:?} after the link healed",
        healed.elapsed()
    );
    api.wait_state(&id, "succeeded", SETTLE).await?;
    Ok(())
}

async fn journey(profile: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stack = Compose::up(profile)?;
    stack.wait_healthy(UP_WITHIN).await?;
    println!(
        "{profile}: every container healthy after {:?}",
        started.elapsed()
    );
    let redis_password = stack.profile.required("REDIS_PASSWORD")?;

    let http = stem_e2e::http_client();
    let r = http.get(format!("{GATEWAY}/healthz")).send().await?;
    assert_eq!(r.status(), 200, "the gateway's own health");

    // A task on every queue through /api/, the API on api.localhost, the
    // dashboard and its live stream, Prometheus scraping every Stem
    // service by its name on the compose network.
    let api = Api::new(format!("{GATEWAY}/api"))?;
    let done = journey::a_task_on_every_queue(&api, profile)
        .await
        .with_context(|| stack.logs())?;
    journey::the_api_on_its_own_host(8080).await?;
    journey::the_dashboard_lists_and_streams(GATEWAY, &api).await?;
    // Every Stem service but the dashboard exports metrics.
    let expected = STEM_SERVICES
        .iter()
        .filter(|s| **s != "dashboard")
        .map(|s| format!("{s}:9464"))
        .collect();
    journey::prometheus_scrapes(GATEWAY, expected)
        .await
        .with_context(|| stack.logs())?;

    // `docker-compose exec beat stem schedule list`.
    journey::the_schedules_are_listed(&stack.exec("beat", &["stem", "schedule", "list"])?);

    // Nothing runs as root: Redis as its own user, the Stem image as 10001.
    let redis_uid = uid_of_pid_1(&stack, "redis")?;
    assert_ne!(redis_uid, 0, "redis-server runs as root");
    for service in STEM_SERVICES {
        assert_eq!(uid_of_pid_1(&stack, service)?, 10001, "{service}'s user");
    }
    if stack.profile.tls() {
        plain_text_is_refused().await?;
    }

    redis_restart_keeps_queued_tasks(&mut stack, &api, &done).await?;

    // `docker-compose stop`: SIGTERM, every Stem service exits 0 (a
    // container still running at its stop_grace_period would be killed,
    // 137).
    let stopping = Instant::now();
    stack.run(&["stop"])?;
    println!(
        "{profile}: docker-compose stop took {:?}",
        stopping.elapsed()
    );
    for service in STEM_SERVICES {
        let state = stack.inspect(service, "{{.State.ExitCode}} {{.State.OOMKilled}}")?;
        assert_eq!(
            state,
            "0 false",
            "{service} exits 0 on SIGTERM:\n{}",
            stack.logs_of(service)
        );
    }
    let logs = stack.command(&["logs", "--no-color"]).output()?;
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("***@redis:6379"),
        "services log their broker URL, redacted"
    );
    assert!(
        !logs.contains(&redis_password),
        "a log holds the Redis password"
    );

    stack.run(&["down", "-v"])?;
    let left = stack.leftovers()?;
    assert!(left.is_empty(), "down -v left {left:?}");
    println!("{profile}: journey passed in {:?}", started.elapsed());
    Ok(())
}

/// How many times `logs` (a worker's) show the body of task `id` starting.
fn runs_of(logs: &str, id: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains(id) && l.contains(BODY_RUNNING))
        .count()
}

/// The user id of `service`'s main process, from inside its container.
fn uid_of_pid_1(stack: &Compose, service: &str) -> anyhow::Result<u32> {
    let out = stack.exec(service, &["cat", "/proc/1/status"])?;
    let status = String::from_utf8_lossy(&out.stdout);
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .with_context(|| format!("{service}: no Uid in /proc/1/status: {out:?}"))?;
    line.split_whitespace()
        .nth(2)
        .context("effective uid")?
        .parse()
        .context("uid")
}

/// A TLS profile's Redis, on its published port, answers no plain-text
/// command (it waits for a TLS handshake and drops what is not one).
async fn plain_text_is_refused() -> anyhow::Result<()> {
    let mut conn = tokio::net::TcpStream::connect("127.0.0.1:6379").await?;
    conn.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    if let Ok(Ok(n)) = read {
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            !answer.starts_with('+') && !answer.starts_with('-'),
            "Redis answered a plain-text client: {answer:?}"
        );
    }
    Ok(())
}

/// With the greetings worker stopped, tasks queued, then Redis restarted
/// (`docker-compose restart redis`): once the worker is back every queued
/// task runs, and results written before the restart are still there.
async fn redis_restart_keeps_queued_tasks(
    stack: &mut Compose,
    api: &Api,
    done: &[String],
) -> anyhow::Result<()> {
    stack.run(&["stop", "worker-greetings"])?;
    let mut queued = Vec::new();
    for n in 0..QUEUED {
        queued.push(
            api.enqueue(json!({"name": format!("Q{n}"), "delayMs": 1}))
                .await?,
        );
    }
    for id in &queued {
        let state = api.task(id).await?.map(|s| s["state"].clone());
        assert_eq!(state, Some(json!("queued")), "{id} waits for its worker");
    }
    stack.run(&["restart", "redis"])?;
    // The worker starts while Redis loads its append-only file: it waits
    // for Redis as it would after any outage.
    stack.run(&["start", "worker-greetings"])?;
    stack.wait_healthy(UP_WITHIN).await?;
    for id in &queued {
        api.wait_state(id, "succeeded", SETTLE)
            .await
            .with_context(|| stack.logs())?;
    }
    for id in done {
        let state = api.task(id).await?.map(|s| s["state"].clone());
        assert_eq!(state, Some(json!("succeeded")), "{id}'s result survived");
    }
    println!(
        "{}: {QUEUED} tasks queued across `restart redis`, all succeeded",
        stack.profile.name
    );
    Ok(())
}

/// Tasks acknowledged per batch in the cluster test.
const BATCH: usize = 30;

/// A Redis Cluster of containers (3 masters, 3 replicas), the greetings
/// queue's master cut off its network (still running, not killed): its
/// replica takes over; every task acknowledged and replicated before the
/// cut, and every task acknowledged after it, runs exactly once; the old
/// master, reconnected, rejoins as a replica and resurrects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images scripts/test-containers.sh builds; it runs this"]
async fn a_partitioned_cluster_master_loses_and_resurrects_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let profile = Profile::load(&stem_stack_tests::stack::repo_root().join(".env.hmac"))?;
    let mut cluster = ContainerCluster::start("stemct-cluster", 3, 1).await?;
    let mut env: Vec<(&str, String)> = vec![("STEM_BROKER_URL", cluster.url())];
    for var in [
        "STEM_SIGNING_ALGORITHM",
        "STEM_SIGNING_KEYS",
        "STEM_SIGNING_ACTIVE_KEY",
        "STEM_ALLOW_DEMO_KEYS",
    ] {
        env.push((var, profile.required(var)?));
    }
    let mut enqueuer_env = env.clone();
    enqueuer_env.push(("PORT", "8081".into()));
    let enqueuer = cluster.run_stem("enqueuer", "enqueuer", &enqueuer_env, Some(8081))?;
    let port = cluster.published(&enqueuer, 8081)?;
    let api = Api::new(format!("http://127.0.0.1:{port}"))?;
    api.wait_healthy(Duration::from_secs(60)).await?;

    // Batch A, with no worker yet: queued on the greetings master, then
    // replicated (the replica's offset reaches the master's).
    let master = cluster.master_of("greetings")?;
    let replica = *cluster.replicas_of(master)?.first().context("a replica")?;
    let mut acknowledged = Vec::new();
    for n in 0..BATCH {
        acknowledged.push(
            api.enqueue(json!({"name": format!("A{n}"), "delayMs": 1}))
                .await?,
        );
    }
    let target = cluster.repl_offset(master)?;
    poll_until("the replica to catch up", SETTLE, || async {
        Ok((cluster.repl_offset(replica)? >= target).then_some(()))
    })
    .await?;

    // The master cut off, still running; its replica takes over.
    let cut = Cut::isolate(&cluster.nodes[master])?;
    let cut_at = Instant::now();
    poll_until(
        "the replica to be promoted",
        Duration::from_secs(60),
        || async { Ok((cluster.role(replica)? == "master").then_some(())) },
    )
    .await?;
    println!(
        "greetings master cut off; its replica promoted after {:?}",
        cut_at.elapsed()
    );

    // A worker, and batch B: each task enqueued until acknowledged (a 503
    // while the cluster settles is an answer, not an acknowledgement).
    let mut worker_env = env.clone();
    worker_env.push(("STEM_WORKER_QUEUES", "greetings".into()));
    worker_env.push(("STEM_WORKER_NAME", "cluster-worker".into()));
    let worker = cluster.run_stem("worker", "worker", &worker_env, None)?;
    let refused = std::sync::atomic::AtomicUsize::new(0);
    for n in 0..BATCH {
        let body = json!({"name": format!("B{n}"), "delayMs": 1});
        let id = poll_until("an acknowledged enqueue", SETTLE, || async {
            let reply = api.post_json("/enqueue", &body).await?;
            if reply.status != 200 {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::bail!("POST /enqueue answered {}: {}", reply.status, reply.text);
            }
            Ok(reply.json["taskId"].as_str().map(str::to_string))
        })
        .await
        .with_context(|| cluster.logs(&enqueuer))?;
        acknowledged.push(id);
    }
    println!(
        "batch B acknowledged; {} enqueues answered otherwise while the cluster settled",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    for id in &acknowledged {
        api.wait_state(id, "succeeded", Duration::from_secs(60))
            .await
            .with_context(|| cluster.logs(&worker))?;
    }
    println!(
        "{} acknowledged tasks succeeded with the master cut off",
        acknowledged.len()
    );

    // Reconnected, the old master rejoins as a replica of its successor
    // and takes its data; a task enqueued after that runs, and nothing
    // before it runs again.
    cut.heal()?;
    poll_until(
        "the old master to rejoin as a replica",
        Duration::from_secs(60),
        || async { Ok((cluster.role(master)? == "slave").then_some(())) },
    )
    .await?;
    let target = cluster.repl_offset(replica)?;
    poll_until("the old master to catch up", SETTLE, || async {
        Ok((cluster.repl_offset(master)? >= target).then_some(()))
    })
    .await?;
    let sentinel = api.enqueue(json!({"name": "After", "delayMs": 1})).await?;
    api.wait_state(&sentinel, "succeeded", SETTLE).await?;
    let logs = cluster.logs(&worker);
    for id in &acknowledged {
        let runs = runs_of(&logs, id);
        assert_eq!(runs, 1, "task {id} ran {runs} times");
    }
    println!(
        "old master rejoined as a replica; {} tasks each ran once; passed in {:?}",
        acknowledged.len(),
        started.elapsed()
    );
    Ok(())
}
