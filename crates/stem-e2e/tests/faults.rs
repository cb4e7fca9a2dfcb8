//! Forgery and crash-window findings of the fault review (ids C1–C17 in
//! `docs/architecture.md`, "Crash windows" and "Threat model"), each
//! reproduced from outside: entries injected into the streams the way any
//! client of Redis could, the worker killed exactly before one command by
//! the fault proxy of `stem-testkit`, Redis restarted under a running
//! service. Every test names the finding it covers.

use std::time::Duration;

use serde_json::{json, Value};
use stem::client::EnqueueRequest;
use stem_e2e::{
    body_runs, dead_letters, env, hmac_key, inject, library_producer, pack, packed_entries,
    poll_until, request, start_enqueuer, start_worker, unpack, wait_dead_letter, wait_log,
    worker_name, Fault, FaultProxy, Pattern, RedisServer, Stem as Cli, Victim, SETTLE,
};

/// Environment of a producer and a worker sharing HMAC key `k`.
fn signed(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STEM_SIGNING_KEYS", key.to_string()),
        ("STEM_SIGNING_ACTIVE_KEY", "k".into()),
    ]
}

/// A private Redis and an enqueuer signing with HMAC key `k`.
struct Signed {
    redis: RedisServer,
    url: String,
    key: String,
    enq: stem_e2e::Enqueuer,
}

impl Signed {
    async fn start() -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let url = redis.url();
        let key = hmac_key("k");
        let enq = start_enqueuer(&url, &signed(&key)).await?;
        Ok(Signed {
            redis,
            url,
            key,
            enq,
        })
    }
}

/// The one packed entry of `key` whose body names task `id`.
async fn entry_of(url: &str, key: &str, id: &str) -> anyhow::Result<Vec<u8>> {
    let entries = packed_entries(url, key).await?;
    entries
        .into_iter()
        .find(|e| String::from_utf8_lossy(e).contains(id))
        .ok_or_else(|| anyhow::anyhow!("no entry for task {id} in {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_forged_entry_cannot_kill_a_queued_task() -> anyhow::Result<()> {
    let Signed {
        redis: _redis,
        url,
        key,
        enq,
    } = Signed::start().await?;
    let id = enq
        .api
        .enqueue(json!({"name": "victim", "delayMs": 1}))
        .await?;
    // The same id, a wrong signature and the highest attempt, in the
    // highest band so the worker reads it first.
    let real = entry_of(&url, "stem:{greetings}:p0", &id).await?;
    let (_, kid, _, body) = unpack(&real)?;
    inject(
        &url,
        "stem:{greetings}:p9",
        &pack("4294967295", &kid, "AAAA", &body),
    )
    .await?;

    let worker = start_worker(&url, &worker_name("c1a"), "greetings", &signed(&key)).await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["attempt"], 0, "{s}");
    assert_eq!(s["result"], "Processed greeting.send for victim", "{s}");
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.reason == "signature-invalid"
    })
    .await?;
    assert_eq!(letter.task_id().as_deref(), Some(id.as_str()), "{letter:?}");
    assert_eq!(body_runs(&worker.logs(), &id), 1, "{}", worker.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_unsigned_entry_cannot_rewrite_a_finished_task() -> anyhow::Result<()> {
    let Signed {
        redis: _redis,
        url,
        key,
        enq,
    } = Signed::start().await?;
    let _worker = start_worker(&url, &worker_name("c1b"), "greetings", &signed(&key)).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "done", "delayMs": 1}))
        .await?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;

    // The body of the finished task, unsigned, at the highest attempt.
    let before = enq.api.task(&id).await?.expect("status");
    let body = json!({
        "id": id, "name": "greeting.send", "queue": "greetings",
        "args": {"name": "forged"}, "enqueuedAt": 1, "maxRetries": 5
    });
    inject(
        &url,
        "stem:{greetings}:p0",
        &pack("4294967295", "", "", body.to_string().as_bytes()),
    )
    .await?;
    wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.reason == "signature-invalid"
    })
    .await?;
    let after = enq.api.task(&id).await?.expect("status");
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(after["result"], before["result"], "{after}");
    assert_eq!(after["attempt"], 0, "{after}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_forged_members_do_not_join_a_group() -> anyhow::Result<()> {
    let Signed {
        redis: _redis,
        url,
        key,
        enq,
    } = Signed::start().await?;
    let r = enq
        .api
        .post_json("/group", &json!({"names": ["a", "b"]}))
        .await?;
    assert_eq!(r.status, 200, "{}", r.text);
    let gid = r.json["groupId"].as_str().expect("groupId").to_string();
    for n in 0..2 {
        let body = json!({
            "id": format!("forged-{n}"), "name": "greeting.send", "queue": "greetings",
            "headers": {"stem-group-id": gid}, "enqueuedAt": 1
        });
        inject(
            &url,
            "stem:{greetings}:p9",
            &pack("0", "", "", body.to_string().as_bytes()),
        )
        .await?;
    }
    let _worker = start_worker(&url, &worker_name("c1c"), "greetings", &signed(&key)).await?;
    let api = &enq.api;
    let group = poll_until("the group to complete", SETTLE, || async {
        let g = api.get(&format!("/group/{gid}")).await?.json;
        Ok((g["completed"] == 2).then_some(g))
    })
    .await?;
    poll_until("two dead letters", SETTLE, || async {
        Ok((dead_letters(&url, "greetings").await?.len() == 2).then_some(()))
    })
    .await?;
    let group = {
        // Settled: the forged members were rejected; read once more.
        let g = api.get(&format!("/group/{gid}")).await?.json;
        assert_eq!(g, group, "the group changed after the rejects");
        g
    };
    assert_eq!(group["expected"], 2, "{group}");
    assert_eq!(group["completed"], 2, "{group}");
    let results = group["results"].as_object().expect("results");
    assert!(
        results.values().all(|r| r["state"] == "succeeded"),
        "{group}"
    );
    assert!(!results.contains_key("forged-0"), "{group}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_signed_copy_with_an_out_of_range_attempt_is_refused() -> anyhow::Result<()> {
    let Signed {
        redis: _redis,
        url,
        key,
        enq,
    } = Signed::start().await?;
    let id = enq
        .api
        .enqueue(json!({"name": "copy", "delayMs": 1}))
        .await?;
    let real = entry_of(&url, "stem:{greetings}:p0", &id).await?;
    let (_, kid, sig, body) = unpack(&real)?;
    inject(
        &url,
        "stem:{greetings}:p9",
        &pack("4294967295", &kid, &sig, &body),
    )
    .await?;
    let _worker = start_worker(&url, &worker_name("c1d"), "greetings", &signed(&key)).await?;
    let s = enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(s["attempt"], 0, "{s}");
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.reason == "attempt-out-of-range"
    })
    .await?;
    assert_eq!(letter.task_id().as_deref(), Some(id.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_envelope_copied_into_another_queue_is_refused() -> anyhow::Result<()> {
    let Signed {
        redis: _redis,
        url,
        key,
        enq,
    } = Signed::start().await?;
    let id = enq
        .api
        .enqueue(json!({"task": "billing.charge", "name": "moved", "delayMs": 1}))
        .await?;
    let real = entry_of(&url, "stem:{billing}:p0", &id).await?;
    for _ in 0..3 {
        inject(&url, "stem:{greetings}:p0", &real).await?;
    }
    let greetings = start_worker(&url, &worker_name("c6g"), "greetings", &signed(&key)).await?;
    poll_until("three wrong-queue dead letters", SETTLE, || async {
        let letters = dead_letters(&url, "greetings").await?;
        Ok((letters.iter().filter(|l| l.reason == "wrong-queue").count() == 3).then_some(()))
    })
    .await?;
    assert_eq!(body_runs(&greetings.logs(), &id), 0, "{}", greetings.logs());
    let s = enq.api.task(&id).await?.expect("status");
    assert_eq!(s["state"], "queued", "{s}");

    let billing = start_worker(&url, &worker_name("c6b"), "billing", &signed(&key)).await?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(body_runs(&billing.logs(), &id), 1, "{}", billing.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_idempotency_key_never_answers_with_a_task_that_does_not_exist() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    // The enqueuer's connection is cut as it sends the publish of the
    // task (the XADD to the queue's stream): the request fails.
    let proxy = FaultProxy::start(redis.port())?;
    proxy.once(Pattern::contains("stem:{greetings}:p0"), Fault::Cut);
    let enq = start_enqueuer(&proxy.url(), &[]).await?;
    let body = json!({"name": "charge-card", "delayMs": 1, "idempotencyKey": "order-777"});
    let mut answers = Vec::new();
    let first_ok = loop {
        let r = enq.api.post_json("/enqueue", &body).await?;
        answers.push(format!("{} {}", r.status, r.text));
        if r.status == 200 {
            break r.json;
        }
        assert_eq!(r.status, 503, "{answers:?}");
        assert!(answers.len() < 5, "no 200 after the cut: {answers:?}");
    };
    assert_eq!(proxy.fired(), 1, "the cut happened: {answers:?}");
    let id = first_ok["taskId"].as_str().expect("taskId").to_string();
    assert!(
        enq.api.task(&id).await?.is_some(),
        "the answered task {id} does not exist: {answers:?}"
    );
    // A retry answers the same task; and it runs, once.
    let again = enq.api.post_json("/enqueue", &body).await?;
    assert_eq!(again.json["taskId"], id.as_str(), "{}", again.text);
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    let worker = start_worker(&url, &worker_name("c2"), "greetings", &[]).await?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    assert_eq!(packed_entries(&url, "stem:{greetings}:p0").await?.len(), 0);
    assert_eq!(body_runs(&worker.logs(), &id), 1);
    Ok(())
}

/// A worker on `queues` behind a fault proxy, with a 2 s visibility
/// timeout, that the proxy kills when it sends `kill_on`. The rule is in
/// place before the worker starts, so it cannot send the command first.
async fn worker_behind(
    proxy: &FaultProxy,
    label: &str,
    queues: &str,
    kill_on: Pattern,
) -> anyhow::Result<stem_e2e::ServiceProcess> {
    let victim = Victim::new();
    proxy.once(kill_on, Fault::Kill(victim.clone()));
    let worker = stem_e2e::spawn_worker(
        &proxy.url(),
        &worker_name(label),
        queues,
        &env(&[
            ("STEM_VISIBILITY_TIMEOUT", "2s"),
            ("STEM_WORKER_CONCURRENCY", "1"),
        ]),
    )?;
    victim.is(worker.pid());
    Ok(worker)
}

/// Waits until the proxy fired and `victim` died of it.
async fn wait_killed(
    proxy: &FaultProxy,
    victim: &mut stem_e2e::ServiceProcess,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SETTLE;
    while proxy.fired() != 1 || victim.is_running() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the proxy did not kill the worker (fired {}); worker log:\n{}",
            proxy.fired(),
            victim.logs()
        );
        tokio::time::sleep(stem_e2e::POLL_INTERVAL).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_group_result_lands_after_a_crash_before_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let r = enq
        .api
        .post_json("/group", &json!({"names": ["a", "b"], "delayMs": 1}))
        .await?;
    let gid = r.json["groupId"].as_str().expect("groupId").to_string();
    let proxy = FaultProxy::start(redis.port())?;
    let mut victim = worker_behind(
        &proxy,
        "c3g",
        "greetings",
        Pattern::all(&["HSET", &stem::keys::group_results(&gid)]),
    )
    .await?;
    wait_killed(&proxy, &mut victim).await?;

    let _rescuer = start_worker(
        &url,
        &worker_name("c3g-rescue"),
        "greetings",
        &env(&[("STEM_VISIBILITY_TIMEOUT", "2s")]),
    )
    .await?;
    let api = &enq.api;
    let g = poll_until("the group to complete", SETTLE, || async {
        let g = api.get(&format!("/group/{gid}")).await?.json;
        Ok((g["completed"] == 2).then_some(g))
    })
    .await?;
    assert_eq!(g["expected"], 2, "{g}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_dead_letter_lands_after_a_crash_before_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    // A non-retryable failure: the demo body refuses a name that is not text.
    let id = Cli::new(&url)
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name": 7}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    let proxy = FaultProxy::start(redis.port())?;
    let mut victim = worker_behind(
        &proxy,
        "c3d",
        "greetings",
        Pattern::all(&["XADD", "stem:{greetings}:dead"]),
    )
    .await?;
    wait_killed(&proxy, &mut victim).await?;
    assert_eq!(Cli::new(&url).state(&id)?, "failed");
    assert!(dead_letters(&url, "greetings").await?.is_empty());

    let _rescuer = start_worker(
        &url,
        &worker_name("c3d-rescue"),
        "greetings",
        &env(&[("STEM_VISIBILITY_TIMEOUT", "2s")]),
    )
    .await?;
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    assert_eq!(letter.reason, "non-retryable", "{letter:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_next_chain_step_lands_after_a_crash_before_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let stem = library_producer(&url)?;
    let chain = stem
        .chain(vec![
            request("greeting.send", json!({"name": "one", "delayMs": 1})),
            request("greeting.send", json!({"name": "two", "delayMs": 1})),
        ])
        .await?;
    let proxy = FaultProxy::start(redis.port())?;
    let mut victim = worker_behind(
        &proxy,
        "c3c",
        "greetings",
        Pattern::contains(format!("stem:kv:chain:{}:1", chain.chain_id)),
    )
    .await?;
    wait_killed(&proxy, &mut victim).await?;

    let rescuer = start_worker(
        &url,
        &worker_name("c3c-rescue"),
        "greetings",
        &env(&[("STEM_VISIBILITY_TIMEOUT", "2s")]),
    )
    .await?;
    let last = stem.wait(&chain.task_ids[1], SETTLE).await?;
    assert_eq!(last.result, json!("Processed greeting.send for two"));
    assert_eq!(body_runs(&rescuer.logs(), &chain.task_ids[1]), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c13_unregistered_member_fails_the_chord_naming_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let stem = library_producer(&url)?;
    let chord = stem
        .chord(
            vec![
                request("greeting.send", json!({"name": "ok", "delayMs": 1})),
                EnqueueRequest {
                    name: "no.such.task".into(),
                    args: json!({}),
                    options: stem::client::EnqueueOptions {
                        queue: Some("greetings".into()),
                        ..Default::default()
                    },
                },
            ],
            request("greeting.send", json!({"name": "callback", "delayMs": 1})),
        )
        .await?;
    let worker = start_worker(&url, &worker_name("c13"), "greetings", &[]).await?;
    let cb = stem.wait(&chord.callback_id, SETTLE).await?;
    assert_eq!(cb.state, stem::envelope::TaskState::Failed, "{cb:?}");
    let error = cb.error.expect("error");
    assert_eq!(error.kind.as_str(), "chord-failed");
    assert!(error.message.contains(&chord.header_ids[1]), "{error:?}");
    assert!(error.message.contains("unregistered-task"), "{error:?}");
    assert_eq!(body_runs(&worker.logs(), &chord.callback_id), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_revoke_racing_a_finishing_task_keeps_its_result() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let worker = start_worker(&url, &worker_name("c11"), "greetings", &[]).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "race", "delayMs": 600}))
        .await?;
    stem_e2e::wait_body_running(&worker, &id, SETTLE).await?;
    // The CLI's write of the revocation is held until the task finished.
    let proxy = FaultProxy::start(redis.port())?;
    // (The write is `SET stem:done:<id> <status> NX PX <ttl>`; the read
    // before it names the key too, without NX.)
    proxy.once(
        Pattern::all(&[&stem::keys::done(&id), "NX", "PX"]),
        Fault::Hold(Duration::from_secs(3)),
    );
    let revoke = Cli::new(&proxy.url()).spawn(&["task", "revoke", &id])?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    let run = Cli::finish(revoke).await?;
    assert_eq!(proxy.fired(), 1, "the revoke's write was not held");
    // The CLI reports what the task ended as.
    assert!(run.stdout.contains("succeeded"), "{}", run.describe());
    let s = enq.api.task(&id).await?.expect("status");
    assert_eq!(s["state"], "succeeded", "{s}\n{}", run.describe());
    assert_eq!(s["result"], "Processed greeting.send for race", "{s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_concurrent_replays_publish_once() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let cli = Cli::new(&url);
    let id = cli
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name": 7}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    let mut worker = start_worker(&url, &worker_name("c12"), "greetings", &[]).await?;
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    worker.sigterm()?;
    worker.wait_exit(SETTLE)?;

    // Replay 1 is held at its write while replay 2 runs.
    let proxy = FaultProxy::start(redis.port())?;
    proxy.once(
        Pattern::all(&["stem:{greetings}:dead", "stem:{greetings}:p0"]),
        Fault::Hold(Duration::from_secs(2)),
    );
    let held = Cli::new(&proxy.url()).spawn(&["dlq", "replay", "-q", "greetings", &letter.id])?;
    poll_until("replay 1 to reach its write", SETTLE, || async {
        Ok((proxy.fired() == 1).then_some(()))
    })
    .await?;
    let second = cli.run(&["dlq", "replay", "-q", "greetings", &letter.id])?;
    let first = Cli::finish(held).await?;
    let codes = [first.code, second.code];
    assert!(
        codes.contains(&Some(0)),
        "one replay succeeds:\n{}\n{}",
        first.describe(),
        second.describe()
    );
    let entries = packed_entries(&url, "stem:{greetings}:p0").await?;
    assert_eq!(
        entries.len(),
        1,
        "published once:\n{}\n{}",
        first.describe(),
        second.describe()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_revoked_delayed_task_never_runs_after_the_result_ttl() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let ttl = env(&[("STEM_RESULT_TTL", "2s")]);
    let cli = Cli::new(&url).with("STEM_RESULT_TTL", "2s");
    let id = cli
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"name": "late", "delayMs": 1}"#,
            "--countdown",
            "4s",
        ])?
        .stdout
        .trim()
        .to_string();
    cli.ok(&["task", "revoke", &id])?;
    let worker = start_worker(&url, &worker_name("c7"), "greetings", &ttl).await?;
    // Past the countdown (and the 2 s TTL): the entry is promoted, fetched
    // and dropped as revoked.
    wait_log(&worker, &format!("task_id={id}"), SETTLE).await?;
    assert_eq!(body_runs(&worker.logs(), &id), 0, "{}", worker.logs());
    assert_eq!(cli.state(&id)?, "cancelled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c16_ids_outside_the_generated_forms_are_404() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &[]).await?;
    let r = enq
        .api
        .post_json("/group", &json!({"names": ["a"]}))
        .await?;
    let gid = r.json["groupId"].as_str().expect("groupId").to_string();
    // Once a member finished, `stem:group:<gid>:results` is a hash.
    let _worker = start_worker(&redis.url(), &worker_name("c16"), "greetings", &[]).await?;
    let api = &enq.api;
    poll_until("the group to complete", SETTLE, || async {
        let g = api.get(&format!("/group/{gid}")).await?.json;
        Ok((g["completed"] == 1).then_some(()))
    })
    .await?;
    for path in [
        format!("/group/{gid}:results"),
        "/group/x:results".to_string(),
        "/tasks/x:y".to_string(),
    ] {
        let r = enq.api.get(&path).await?;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text);
        r.error_message()?;
    }
    assert_eq!(enq.api.get(&format!("/group/{gid}")).await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_visibility_timeout_below_one_second_is_refused() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    for vt in ["0", "500ms"] {
        let mut w = stem_e2e::spawn_worker(
            &redis.url(),
            &worker_name("c10"),
            "greetings",
            &env(&[("STEM_VISIBILITY_TIMEOUT", vt)]),
        )?;
        let code = w.wait_exit(SETTLE)?;
        assert_eq!(code, Some(78), "vt {vt}: {}", w.logs());
        assert!(w.logs().contains("STEM_VISIBILITY_TIMEOUT"), "{}", w.logs());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c14_c15_urls_warn_on_insecure_and_never_print_passwords() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    // C15: a malformed URL and a password with a raw '@'.
    for url in [
        "redis//admin:S3cr3tPassw0rd@127.0.0.1:1/0".to_string(),
        format!(
            "redis://user:p@ss@S3cr3tPassw0rd@127.0.0.1:{}/x",
            redis.port()
        ),
    ] {
        let run = Cli::new(&url).run(&["health"])?;
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains("S3cr3tPassw0rd"), "{}", run.describe());
        assert!(!all.contains("ss@"), "{}", run.describe());
    }
    // C14: `#insecure` in the URL is refused like any unverifiable TLS
    // setting would be silently accepted otherwise.
    let run =
        Cli::new(&format!("rediss://127.0.0.1:{}/0#insecure", redis.port())).run(&["health"])?;
    assert_eq!(run.code, Some(78), "{}", run.describe());
    assert!(
        run.stderr.contains("STEM_TLS_ALLOW_INSECURE"),
        "{}",
        run.describe()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_first_requests_after_a_redis_restart_succeed() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    // Warm every connection the enqueuer holds, then restart Redis.
    let warm = enq
        .api
        .enqueue(json!({"name": "warm", "delayMs": 1}))
        .await?;
    assert!(enq.api.task(&warm).await?.is_some());
    redis.restart()?;

    let r = enq
        .api
        .post_json("/enqueue", &json!({"name": "after", "delayMs": 1}))
        .await?;
    assert_eq!(r.status, 200, "first enqueue after the restart: {}", r.text);
    let id = r.json["taskId"].as_str().expect("taskId").to_string();
    let g = enq
        .api
        .post_json("/group", &json!({"names": ["x", "y"]}))
        .await?;
    assert_eq!(g.status, 200, "first group after the restart: {}", g.text);
    let gid = g.json["groupId"].as_str().expect("groupId").to_string();
    let _worker = start_worker(&url, &worker_name("c17"), "greetings", &[]).await?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;
    let api = &enq.api;
    poll_until("the group to complete", SETTLE, || async {
        let g = api.get(&format!("/group/{gid}")).await?.json;
        Ok((g["completed"] == 2).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_orphans_behind_live_leases_are_recovered_within_two_timeouts() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    // A busy worker holds 32 long tasks at the head of the pending list
    // (2 running, 30 waiting: its prefetch bound, so it fetches no more)
    // and keeps renewing them.
    for n in 0..32 {
        enq.api
            .enqueue(json!({"name": format!("long-{n}"), "delayMs": 20000}))
            .await?;
    }
    let busy = start_worker(
        &url,
        &worker_name("c5-busy"),
        "greetings",
        &env(&[
            ("STEM_VISIBILITY_TIMEOUT", "2s"),
            ("STEM_WORKER_CONCURRENCY", "2"),
            ("STEM_PREFETCH_MULTIPLIER", "15"),
        ]),
    )
    .await?;
    poll_until(
        "the busy worker to hold every long task",
        SETTLE,
        || async {
            Ok(
                (packed_entries(&url, "stem:{greetings}:p0").await?.len() == 32
                    && redis
                        .cli(&["XPENDING", "stem:{greetings}:p0", "stem"])?
                        .starts_with("32"))
                .then_some(()),
            )
        },
    )
    .await?;
    // A consumer takes five short tasks behind them and dies.
    let mut orphans = Vec::new();
    for n in 0..5 {
        orphans.push(
            enq.api
                .enqueue(json!({"name": format!("orphan-{n}"), "delayMs": 1}))
                .await?,
        );
    }
    let read = redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "stem",
        "ghost",
        "COUNT",
        "5",
        "STREAMS",
        "stem:{greetings}:p0",
        ">",
    ])?;
    for id in &orphans {
        assert!(read.contains(id.as_str()), "the ghost read {id}: {read}");
    }
    let orphaned = std::time::Instant::now();
    // An idle worker with room for one task at a time.
    let _idle = start_worker(
        &url,
        &worker_name("c5-idle"),
        "greetings",
        &env(&[
            ("STEM_VISIBILITY_TIMEOUT", "2s"),
            ("STEM_WORKER_CONCURRENCY", "1"),
        ]),
    )
    .await?;
    for id in &orphans {
        enq.api.wait_state(id, "succeeded", SETTLE).await?;
    }
    let took = orphaned.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "five orphans took {took:?} (visibility timeout 2 s); busy worker:\n{}",
        busy.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_a_shorter_timeout_does_not_steal_live_leases() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let long = start_worker(
        &url,
        &worker_name("c10-long"),
        "greetings",
        &env(&[
            ("STEM_VISIBILITY_TIMEOUT", "30s"),
            ("STEM_WORKER_CONCURRENCY", "2"),
        ]),
    )
    .await?;
    let ids = [
        enq.api
            .enqueue(json!({"name": "a", "delayMs": 5000}))
            .await?,
        enq.api
            .enqueue(json!({"name": "b", "delayMs": 5000}))
            .await?,
    ];
    for id in &ids {
        stem_e2e::wait_body_running(&long, id, SETTLE).await?;
    }
    // A rolling deploy lowers the timeout: the new worker recovers every
    // second, but the running tasks' holder renews within 30 s.
    let short = start_worker(
        &url,
        &worker_name("c10-short"),
        "greetings",
        &env(&[("STEM_VISIBILITY_TIMEOUT", "1s")]),
    )
    .await?;
    for id in &ids {
        enq.api.wait_state(id, "succeeded", SETTLE).await?;
        assert_eq!(body_runs(&short.logs(), id), 0, "{}", short.logs());
        assert_eq!(body_runs(&long.logs(), id), 1, "{}", long.logs());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_task_that_keeps_killing_its_worker_stops_at_the_delivery_limit() -> anyhow::Result<()>
{
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "poison", "delayMs": 1}))
        .await?;
    // Every worker dies as it is about to store the task's result.
    let proxy = FaultProxy::start(redis.port())?;
    let limit = env(&[
        ("STEM_VISIBILITY_TIMEOUT", "1s"),
        ("STEM_MAX_DELIVERIES", "2"),
    ]);
    let mut logs = String::new();
    for round in 0..2 {
        let victim = Victim::new();
        proxy.once(
            Pattern::all(&[&stem::keys::done(&id), "NX"]),
            Fault::Kill(victim.clone()),
        );
        let mut w = stem_e2e::spawn_worker(&proxy.url(), &worker_name("s2"), "greetings", &limit)?;
        victim.is(w.pid());
        let deadline = std::time::Instant::now() + SETTLE;
        while w.is_running() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "round {round}: worker not killed:\n{}",
                w.logs()
            );
            tokio::time::sleep(stem_e2e::POLL_INTERVAL).await;
        }
        logs.push_str(&w.logs());
    }
    assert_eq!(body_runs(&logs, &id), 2, "{logs}");
    // The third delivery is refused.
    let last = start_worker(&url, &worker_name("s2-last"), "greetings", &limit).await?;
    let s = enq.api.wait_state(&id, "failed", SETTLE).await?;
    assert_eq!(s["error"]["reason"], "delivery-limit", "{s}");
    let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
        l.task_id().as_deref() == Some(id.as_str())
    })
    .await?;
    assert_eq!(letter.reason, "delivery-limit", "{letter:?}");
    assert_eq!(body_runs(&last.logs(), &id), 0, "{}", last.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c8_a_result_redis_refuses_does_not_wedge_the_worker() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let enq = start_enqueuer(&url, &[]).await?;
    // Two tasks whose status key someone replaced with a hash: every write
    // of their results fails with WRONGTYPE.
    let mut poisoned = Vec::new();
    for n in 0..2 {
        let id = enq
            .api
            .enqueue(json!({"name": format!("poisoned-{n}"), "delayMs": 1}))
            .await?;
        let key = stem::keys::status(&id);
        redis.cli(&["DEL", &key])?;
        redis.cli(&["HSET", &key, "not", "a status"])?;
        poisoned.push(id);
    }
    let mut normal = Vec::new();
    for n in 0..5 {
        normal.push(
            enq.api
                .enqueue(json!({"name": format!("normal-{n}"), "delayMs": 1}))
                .await?,
        );
    }
    let worker = start_worker(&url, &worker_name("c8"), "greetings", &[]).await?;
    for id in &normal {
        enq.api.wait_state(id, "succeeded", SETTLE).await?;
    }
    for id in &poisoned {
        let letter = wait_dead_letter(&url, "greetings", SETTLE, |l| {
            l.task_id().as_deref() == Some(id.as_str())
        })
        .await?;
        assert_eq!(letter.reason, "result-unwritable", "{letter:?}");
        assert!(
            letter.error.as_deref().unwrap_or("").contains("WRONGTYPE"),
            "{letter:?}"
        );
    }
    poll_until("nothing left pending", SETTLE, || async {
        Ok(redis
            .cli(&["XPENDING", "stem:{greetings}:p0", "stem"])?
            .starts_with('0')
            .then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", worker.logs()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_one_broken_queue_does_not_stop_the_others() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let port = stem_e2e::free_port();
    let worker = start_worker(
        &url,
        &worker_name("c9"),
        "greetings,billing",
        &[("STEM_METRIC_EXPORTERS", format!("prometheus:{port}"))],
    )
    .await?;
    // A band key of `billing` replaced by a string under the running worker.
    redis.cli(&["DEL", "stem:{billing}:p3"])?;
    redis.cli(&["SET", "stem:{billing}:p3", "oops"])?;
    let enq = start_enqueuer(&url, &[]).await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            enq.api
                .enqueue(json!({"name": format!("fine-{n}"), "delayMs": 1}))
                .await?,
        );
    }
    for id in &ids {
        enq.api.wait_state(id, "succeeded", SETTLE).await?;
    }
    wait_log(&worker, "queue quarantined", SETTLE).await?;
    let logs = worker.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("queue quarantined"))
        .unwrap_or_default();
    assert!(
        line.contains("billing") && line.contains("stem:{billing}:p3"),
        "{line}"
    );
    let page = poll_until("the quarantine gauge", SETTLE, || async {
        let page = stem_e2e::scrape(port).await.unwrap_or_default();
        Ok(
            (stem_e2e::series(&page, "stem_worker_queues_quarantined") == Some(1.0))
                .then_some(page),
        )
    })
    .await?;
    assert!(page.contains("stem_worker_queues_quarantined"), "{page}");
    Ok(())
}

/// Runs one beat behind a fault proxy that holds, once, the first command
/// matching `held` for 7 s (longer than the 5 s command timeout), with an
/// entry firing every 8 s into `queue` (longer than the timeout, so a
/// retried pass meets the same slot), until 18 s after the stall began.
/// Returns the slots (epoch ms) of the published tasks and of the firing
/// records.
async fn beat_through_a_stall(label: &str, held: Pattern) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let redis = RedisServer::start()?;
    let queue = format!("beat-{label}");
    let file =
        std::env::temp_dir().join(format!("stem-faults-{label}-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!("entries:\n  - id: {label}\n    task: greeting.send\n    queue: {queue}\n    spec: every:8s\n"),
    )?;
    let proxy = FaultProxy::start(redis.port())?;
    proxy.once(held, Fault::Hold(Duration::from_secs(7)));
    let mut beat = stem_e2e::ServiceProcess::spawn(
        "beat",
        &["--instance-id", label],
        &env(&[
            ("STEM_BROKER_URL", &proxy.url()),
            ("STEM_SCHEDULE_FILE", &file.display().to_string()),
        ]),
    )?;
    wait_log(&beat, "beat started", SETTLE).await?;
    poll_until("the stall to happen", SETTLE, || async {
        Ok((proxy.fired() == 1).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(18)).await;
    beat.sigterm()?;
    beat.wait_exit(SETTLE)?;
    let _ = std::fs::remove_file(&file);

    let mut published = Vec::new();
    for e in packed_entries(&redis.url(), &format!("stem:{{{queue}}}:p0")).await? {
        let (_, _, _, body) = unpack(&e)?;
        let spec: Value = serde_json::from_slice(&body)?;
        let slot = spec["meta"]["schedule-slot"].as_str().unwrap_or_default();
        published.push(stem_e2e::rfc3339_utc_ms(slot)?);
    }
    let records = redis.cli(&["KEYS", &format!("stem:{{schedule}}:fired:{label}:*")])?;
    let recorded = records
        .lines()
        .filter_map(|k| k.rsplit(':').next()?.parse().ok())
        .collect();
    Ok((published, recorded))
}

/// Every slot at most once, and every slot a beat recorded is published.
fn assert_exactly_once(published: &[i64], recorded: &[i64]) {
    let mut seen = std::collections::BTreeSet::new();
    for s in published {
        assert!(seen.insert(*s), "slot {s} published twice: {published:?}");
    }
    for r in recorded {
        assert!(
            seen.contains(r),
            "slot {r} was recorded as fired but never published: {published:?}"
        );
    }
    assert!(published.len() >= 2, "too few firings: {published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_publish_that_times_out_but_ran_is_not_fired_twice() -> anyhow::Result<()> {
    let (published, recorded) =
        beat_through_a_stall("c4a", Pattern::contains("stem:{beat-c4a}:p0")).await?;
    assert_exactly_once(&published, &recorded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_firing_record_that_times_out_but_was_stored_is_not_lost() -> anyhow::Result<()> {
    let (published, recorded) =
        beat_through_a_stall("c4b", Pattern::contains("stem:{schedule}:fired:c4b:")).await?;
    assert_exactly_once(&published, &recorded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_a_client_that_stalls_mid_request_gets_408() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start()?;
    let enq = start_enqueuer(&redis.url(), &env(&[("ENQUEUER_REQUEST_TIMEOUT", "1s")])).await?;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", enq.port)).await?;
    conn.write_all(
        b"POST /enqueue HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na",
    )
    .await?;
    // ... and nothing more. The server answers and closes.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s to a stalled request"))??;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(text.contains("ENQUEUER_REQUEST_TIMEOUT"), "{text}");
    // The service goes on.
    assert_eq!(enq.api.get("/healthz").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_consumers_of_dead_workers_are_removed() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    // A worker that ran once and is gone: its consumer holds nothing.
    let consumers = || redis.cli(&["XINFO", "CONSUMERS", "stem:{greetings}:p0", "stem"]);
    // (Redis 7.0 creates a consumer when it is first handed an entry.)
    let cli = Cli::new(&url);
    let id = cli
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"delayMs": 1}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    let mut gone = start_worker(&url, &worker_name("s5-gone"), "greetings", &[]).await?;
    poll_until("the first task to finish", SETTLE, || async {
        Ok((cli.state(&id)? == "succeeded").then_some(()))
    })
    .await?;
    poll_until("the first worker's consumer", SETTLE, || async {
        Ok(consumers()?.contains("s5-gone").then_some(()))
    })
    .await?;
    gone.sigterm()?;
    gone.wait_exit(SETTLE)?;
    // A live worker with a 1 s visibility timeout prunes consumers idle
    // for 10 s that hold nothing.
    let live = start_worker(
        &url,
        &worker_name("s5-live"),
        "greetings",
        &env(&[("STEM_VISIBILITY_TIMEOUT", "1s")]),
    )
    .await?;
    poll_until(
        "the dead worker's consumer to be removed",
        SETTLE,
        || async { Ok((!consumers()?.contains("s5-gone")).then_some(())) },
    )
    .await?;
    // The live worker is untouched and keeps serving.
    let next = cli
        .ok(&[
            "task",
            "enqueue",
            "greeting.send",
            "--args",
            r#"{"delayMs": 1}"#,
        ])?
        .stdout
        .trim()
        .to_string();
    poll_until("a task after the pruning", SETTLE, || async {
        Ok((cli.state(&next)? == "succeeded").then_some(()))
    })
    .await?;
    assert_eq!(body_runs(&live.logs(), &next), 1, "{}", live.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_purge_never_deletes_entries_in_flight() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let cli = Cli::new(&url);
    let mut ids = Vec::new();
    for n in 0..3 {
        let args = format!(r#"{{"name": "inflight-{n}", "delayMs": 8000}}"#);
        ids.push(
            cli.ok(&["task", "enqueue", "greeting.send", "--args", &args])?
                .stdout
                .trim()
                .to_string(),
        );
    }
    // The purge is held as it reads the stream; a worker takes the three
    // tasks meanwhile.
    let proxy = FaultProxy::start(redis.port())?;
    // (A purge that reads, then deletes, is held at its XRANGE; one that
    // runs as a script, at the script.)
    for step in ["XRANGE", "EVALSHA"] {
        proxy.once(
            Pattern::all(&[step, "stem:{greetings}:p0"]),
            Fault::Hold(Duration::from_secs(3)),
        );
    }
    let purge = Cli::new(&proxy.url()).spawn(&["queue", "purge", "-q", "greetings", "--yes"])?;
    poll_until("the purge to be held", SETTLE, || async {
        Ok((proxy.fired() == 1).then_some(()))
    })
    .await?;
    let vt = env(&[
        ("STEM_VISIBILITY_TIMEOUT", "2s"),
        ("STEM_WORKER_CONCURRENCY", "3"),
    ]);
    let mut first = start_worker(&url, &worker_name("s6"), "greetings", &vt).await?;
    for id in &ids {
        stem_e2e::wait_body_running(&first, id, SETTLE).await?;
    }
    let run = Cli::finish(purge).await?;
    assert_eq!(run.code, Some(0), "{}", run.describe());
    for id in &ids {
        assert_eq!(cli.state(id)?, "running", "the tasks outlast the purge");
    }
    // The worker dies; its entries must still be there to recover.
    first.kill9()?;
    let _rescuer = start_worker(&url, &worker_name("s6-rescue"), "greetings", &vt).await?;
    for id in &ids {
        poll_until(&format!("task {id} to succeed"), SETTLE, || async {
            Ok((cli.state(id)? == "succeeded").then_some(()))
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_unsigned_control_commands_do_not_steer_a_worker_with_keys() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let key = hmac_key("k");
    let mut worker = start_worker(&url, &worker_name("s8"), "greetings", &signed(&key)).await?;
    // Anyone who can publish on Redis sends shutdown and pause.
    for command in ["shutdown", "pause"] {
        let forged = json!({
            "id": format!("forged-{command}"), "command": command, "targets": [],
            "payload": {"queues": ["greetings"]}
        });
        redis.cli(&["PUBLISH", "stem:control", &forged.to_string()])?;
    }
    // A signed exchange after them: by its answer the forged ones were read.
    let cli = Cli::new(&url)
        .with("STEM_SIGNING_KEYS", &key)
        .with("STEM_SIGNING_ACTIVE_KEY", "k");
    cli.ok(&["worker", "ping"])?;
    wait_log(&worker, "control command ignored", SETTLE).await?;
    assert!(worker.is_running(), "{}", worker.logs());
    let enq = start_enqueuer(&url, &signed(&key)).await?;
    let id = enq
        .api
        .enqueue(json!({"name": "still", "delayMs": 1}))
        .await?;
    enq.api.wait_state(&id, "succeeded", SETTLE).await?;

    // The signed shutdown is obeyed.
    cli.ok(&["worker", "shutdown", "--yes"])?;
    assert_eq!(worker.wait_exit(SETTLE)?, Some(0), "{}", worker.logs());
    Ok(())
}
