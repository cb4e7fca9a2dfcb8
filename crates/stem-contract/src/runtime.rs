//! The worker runtime and canvas, in process, over both adapters: typed
//! tasks, retries, dead letters, limits, panics, signatures, chains,
//! chords, groups, progress, the prefetch bound and graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{poll, Adapters};
use serde_json::{json, Value};
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::envelope::{TaskState, TaskStatus};
use stem::signing::{generate_hmac_secret, KeyRing, Signer, Verifier};
use stem::task::{Task, TaskContext, TaskFailure, TaskOptions, TaskRegistry, TaskResult};
use stem::worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "rt";

fn opts(max_retries: u32) -> TaskOptions {
    TaskOptions {
        queue: QUEUE.into(),
        max_retries,
        ..Default::default()
    }
}

struct Add;
#[stem::async_trait]
impl Task for Add {
    const NAME: &'static str = "math.add";
    type Args = (i64, i64);
    type Output = i64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, (a, b): (i64, i64)) -> TaskResult<i64> {
        let prev = ctx.chain_previous.and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(a + b + prev)
    }
}

struct Sum;
#[stem::async_trait]
impl Task for Sum {
    const NAME: &'static str = "math.sum";
    type Args = ();
    type Output = i64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, _: ()) -> TaskResult<i64> {
        let parts = ctx.chord_results.ok_or("not a chord callback")?;
        Ok(parts.iter().filter_map(Value::as_i64).sum())
    }
}

/// Fails until attempt `ok_at`, counting executions.
struct Flaky(Arc<AtomicU32>);
#[stem::async_trait]
impl Task for Flaky {
    const NAME: &'static str = "flaky";
    type Args = u32;
    type Output = String;
    fn options(&self) -> TaskOptions {
        opts(1)
    }
    async fn run(&self, ctx: TaskContext, ok_at: u32) -> TaskResult<String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if ctx.attempt < ok_at {
            return Err(TaskFailure::new(format!("attempt {} fails", ctx.attempt)));
        }
        Ok(format!("ok at {}", ctx.attempt))
    }
}

struct Fatal;
#[stem::async_trait]
impl Task for Fatal {
    const NAME: &'static str = "fatal";
    type Args = ();
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(5)
    }
    async fn run(&self, _: TaskContext, _: ()) -> TaskResult<()> {
        Err(TaskFailure::fatal("bad input, do not retry"))
    }
}

struct Panics;
#[stem::async_trait]
impl Task for Panics {
    const NAME: &'static str = "panics";
    type Args = ();
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _: TaskContext, _: ()) -> TaskResult<()> {
        panic!("kaboom")
    }
}

/// Sleeps `ms`, reporting progress; honours soft and hard limits.
struct Sleepy;
#[stem::async_trait]
impl Task for Sleepy {
    const NAME: &'static str = "sleepy";
    type Args = u64;
    type Output = String;
    fn options(&self) -> TaskOptions {
        TaskOptions {
            soft_time_limit: Some(Duration::from_millis(300)),
            time_limit: Some(Duration::from_millis(1500)),
            ..opts(0)
        }
    }
    async fn run(&self, ctx: TaskContext, ms: u64) -> TaskResult<String> {
        let steps = ms / 50;
        for i in 0..steps {
            ctx.progress(i as f64 / steps as f64, json!({"step": i}))
                .await;
            if ctx.soft_limit_reached() && ms == 1000 {
                return Ok("stopped at the soft limit".into());
            }
            if !ctx.sleep(Duration::from_millis(50)).await {
                return Err(TaskFailure::new("cancelled"));
            }
        }
        Ok(format!("slept {ms}"))
    }
}

/// Blocks its thread for `ms` (a CPU-bound or synchronous body), on the
/// blocking pool through `run_blocking`; counts its runs.
struct Offloaded(Arc<AtomicU32>);
#[stem::async_trait]
impl Task for Offloaded {
    const NAME: &'static str = "offloaded";
    type Args = u64;
    type Output = u64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _ctx: TaskContext, ms: u64) -> TaskResult<u64> {
        self.0.fetch_add(1, Ordering::SeqCst);
        stem::task::run_blocking(move || {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .await
    }
}

/// Sleeps `ms` without reporting progress.
struct Quiet;
#[stem::async_trait]
impl Task for Quiet {
    const NAME: &'static str = "quiet";
    type Args = u64;
    type Output = u64;
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, ctx: TaskContext, ms: u64) -> TaskResult<u64> {
        ctx.sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

/// Makes the Redis on port `args` hold every write for 300 ms, then
/// returns at once: its settle waits behind the pause.
pub struct PausesWrites;
#[stem::async_trait]
impl Task for PausesWrites {
    const NAME: &'static str = "pauses.writes";
    type Args = u16;
    type Output = ();
    fn options(&self) -> TaskOptions {
        opts(0)
    }
    async fn run(&self, _: TaskContext, port: u16) -> TaskResult<()> {
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLIENT", "PAUSE", "300", "WRITE"])
            .output()
            .await
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !String::from_utf8_lossy(&out.stdout).contains("OK") {
            return Err(format!("CLIENT PAUSE: {out:?}").into());
        }
        Ok(())
    }
}

fn registry(counter: Arc<AtomicU32>) -> TaskRegistry {
    let r = TaskRegistry::new();
    r.register(Add)
        .register(Sum)
        .register(Flaky(counter.clone()))
        .register(Offloaded(counter))
        .register(Fatal)
        .register(Panics)
        .register(Sleepy)
        .register(Quiet)
        .register(PausesWrites);
    r
}

fn keys(active: &str, secrets: &[(&str, &str)]) -> KeyRing {
    let list = secrets
        .iter()
        .map(|(k, s)| format!("{k}:{s}"))
        .collect::<Vec<_>>()
        .join(",");
    let env: HashMap<String, String> = [
        ("STEM_SIGNING_KEYS".to_string(), list),
        ("STEM_SIGNING_ACTIVE_KEY".to_string(), active.to_string()),
    ]
    .into();
    KeyRing::from_lookup(&move |k: &str| env.get(k).cloned()).expect("valid keys")
}

/// A running worker and its producer on one set of stores.
pub struct Rig {
    /// The producer (and reader of statuses).
    pub stem: Stem,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<stem::Result<()>>,
    counter: Arc<AtomicU32>,
    _adapters: Adapters,
}

fn rig_with(
    a: Adapters,
    signer: Option<Signer>,
    verifier: Option<Verifier>,
    tune: impl FnOnce(&mut WorkerConfig),
) -> Rig {
    let counter = Arc::new(AtomicU32::new(0));
    let stem = Stem::new(a.stores(), signer, registry(counter.clone()));
    let mut o = WorkerConfig::new("rt-worker", &[QUEUE]);
    o.fetch_block = Duration::from_millis(200);
    o.promote_interval = Duration::from_millis(50);
    tune(&mut o);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(o, &stem, verifier).run(stop.clone()));
    Rig {
        stem,
        stop,
        worker,
        counter,
        _adapters: a,
    }
}

/// A worker on `a` with HMAC signing, running the suite's catalogue
/// (`QUEUE`); [`Rig::finish`] stops it.
pub fn rig(a: Adapters) -> Rig {
    let secret = generate_hmac_secret();
    let ring = keys("k1", &[("k1", &secret)]);
    rig_with(a, ring.signer().expect("signer"), ring.verifier(), |_| {})
}

impl Rig {
    /// Stops the worker.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.shutdown().await.map(drop)
    }
    /// Stops the worker and returns the stores (still running).
    async fn shutdown(self) -> anyhow::Result<Adapters> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.worker).await???;
        Ok(self._adapters)
    }
    /// Waits up to 15 s for task `id` to finish.
    pub async fn wait(&self, id: &str) -> anyhow::Result<TaskStatus> {
        Ok(self.stem.wait(id, Duration::from_secs(15)).await?)
    }
}

pub async fn typed_task_succeeds(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Add>((2, 3)).await?;
    let s = r.wait(&id).await?;
    assert_eq!(
        (s.state, s.result.clone()),
        (TaskState::Succeeded, json!(5))
    );
    assert_eq!(
        (s.task.as_str(), s.queue.as_str(), s.attempt),
        ("math.add", QUEUE, 0)
    );
    r.finish().await
}

pub async fn failed_attempt_is_retried_with_backoff(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Flaky>(1).await?;
    let retried = poll("retried status", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&id)
            .await?
            .filter(|s| s.state == TaskState::Retried))
    })
    .await?;
    assert_eq!(
        retried.error.map(|e| e.message),
        Some("attempt 0 fails".to_string())
    );
    let started = std::time::Instant::now();
    let s = r.wait(&id).await?;
    assert_eq!(
        (s.state, s.attempt, s.result),
        (TaskState::Succeeded, 1, json!("ok at 1"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "backoff of ~1.5-2 s was skipped"
    );
    assert_eq!(r.counter.load(Ordering::SeqCst), 2);
    r.finish().await
}

pub async fn exhausted_retries_dead_letter(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Flaky>(9).await?;
    let s = r.wait(&id).await?;
    assert_eq!((s.state, s.attempt), (TaskState::Failed, 1));
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("max-retries-exhausted".to_string())
    );
    let dead = poll("a dead letter", Duration::from_secs(5), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((!d.is_empty()).then_some(d))
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].task_id()),
        ("max-retries-exhausted", Some(id))
    );
    assert_eq!(r.counter.load(Ordering::SeqCst), 2, "1 run + 1 retry");
    r.finish().await
}

pub async fn fatal_failure_is_not_retried(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Fatal>(()).await?;
    let s = r.wait(&id).await?;
    assert_eq!((s.state, s.attempt), (TaskState::Failed, 0));
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("non-retryable".to_string())
    );
    r.finish().await
}

pub async fn panic_is_a_failure_and_the_worker_survives(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let id = r.stem.enqueue::<Panics>(()).await?;
    let s = r.wait(&id).await?;
    assert_eq!(s.state, TaskState::Failed);
    assert!(s.error.expect("error").message.contains("kaboom"));
    let id = r.stem.enqueue::<Add>((1, 1)).await?;
    assert_eq!(r.wait(&id).await?.result, json!(2), "worker still serves");
    r.finish().await
}

pub async fn time_limits_and_progress(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let hard = r.stem.enqueue::<Sleepy>(5000).await?;
    let progress = poll("progress", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&hard)
            .await?
            .filter(|s| s.state == TaskState::Running)
            .and_then(|s| s.progress))
    })
    .await?;
    assert!(progress.data.get("step").is_some());
    let s = r.wait(&hard).await?;
    assert_eq!(s.state, TaskState::Failed);
    assert!(
        s.error.expect("error").message.contains("hard time limit"),
        "hard limit stops the body"
    );
    let soft = r.stem.enqueue::<Sleepy>(1000).await?;
    assert_eq!(
        r.wait(&soft).await?.result,
        json!("stopped at the soft limit")
    );
    r.finish().await
}

pub async fn chain_passes_results_and_aborts_on_failure(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let step = |a: i64, b: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, b]),
        options: EnqueueOptions::default(),
    };
    let chain = r
        .stem
        .chain(vec![step(1, 1), step(0, 10), step(0, 100)])
        .await?;
    let last = r.wait(&chain.task_ids[2]).await?;
    assert_eq!(
        last.result,
        json!(112),
        "each step adds the previous result"
    );
    let fatal = EnqueueRequest {
        name: "fatal".into(),
        args: json!(null),
        options: EnqueueOptions::default(),
    };
    let broken = r.stem.chain(vec![step(1, 1), fatal, step(5, 5)]).await?;
    let s = r.wait(&broken.task_ids[2]).await?;
    assert_eq!(
        s.state,
        TaskState::Cancelled,
        "steps after a failed one are cancelled"
    );
    r.finish().await
}

pub async fn chord_runs_callback_with_all_results(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let add = |a: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, 0]),
        options: EnqueueOptions::default(),
    };
    let cb = EnqueueRequest {
        name: "math.sum".into(),
        args: json!(null),
        options: EnqueueOptions::default(),
    };
    let chord = r.stem.chord(vec![add(1), add(2), add(3)], cb).await?;
    let s = r.wait(&chord.callback_id).await?;
    assert_eq!((s.state, s.result), (TaskState::Succeeded, json!(6)));
    let g = r
        .stem
        .backend()
        .get_group(&chord.chord_id)
        .await?
        .expect("chord group");
    assert_eq!(g.results.len(), 3);
    r.finish().await
}

pub async fn group_collects_every_result(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let reqs = (0..5)
        .map(|i| EnqueueRequest {
            name: "math.add".into(),
            args: json!([i, i]),
            options: EnqueueOptions::default(),
        })
        .collect();
    let g = r.stem.group(reqs).await?;
    let view = poll("group completion", Duration::from_secs(10), || async {
        Ok(r.stem
            .backend()
            .get_group(&g.group_id)
            .await?
            .filter(|v| v.results.len() == 5))
    })
    .await?;
    assert!(view
        .results
        .values()
        .all(|s| s.state == TaskState::Succeeded));
    r.finish().await
}

pub async fn forged_and_unsigned_envelopes_never_run(a: Adapters) -> anyhow::Result<()> {
    let good = generate_hmac_secret();
    let other = generate_hmac_secret();
    let worker_ring = keys("k1", &[("k1", &good)]);
    let counter_probe;
    let r = {
        let r = rig_with(
            a,
            keys("k1", &[("k1", &other)]).signer()?,
            worker_ring.verifier(),
            |_| {},
        );
        counter_probe = r.counter.clone();
        r
    };
    // A rejected envelope is dead-lettered and never runs. These two are
    // their producers' own envelopes (the status records their
    // fingerprints), so their tasks fail as `signature-invalid` (README
    // "Security"); forged copies of a real task are
    // `forged_copies_leave_the_real_tasks_status_alone`.
    let forged = r.stem.enqueue::<Flaky>(0).await?;
    let unsigned = r.stem.clone().with_signer(None);
    let id = unsigned.enqueue::<Flaky>(0).await?;
    let dead = poll("two dead letters", Duration::from_secs(10), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((d.len() == 2).then_some(d))
    })
    .await?;
    let mut claimed: Vec<String> = dead.iter().filter_map(|d| d.task_id()).collect();
    claimed.sort();
    let mut expected = vec![forged.clone(), id.clone()];
    expected.sort();
    assert_eq!(claimed, expected, "each dead letter keeps its envelope");
    for task in [&forged, &id] {
        let s = r.stem.status(task).await?.expect("the producer's status");
        assert_eq!(s.state, TaskState::Failed, "{s:?}");
    }
    assert_eq!(counter_probe.load(Ordering::SeqCst), 0, "no body ran");
    assert!(dead.iter().all(|d| d.reason == "signature-invalid"));
    r.finish().await
}

/// A producer whose key the worker does not know (another secret under a
/// known id, an unknown id, no key at all): its tasks end `failed` with
/// reason `signature-invalid`, so a waiter gets an answer, and never run.
pub async fn a_misconfigured_producers_tasks_fail_as_signature_invalid(
    a: Adapters,
) -> anyhow::Result<()> {
    let (good, other) = (generate_hmac_secret(), generate_hmac_secret());
    let r = rig_with(
        a,
        keys("k1", &[("k1", &other)]).signer()?,
        keys("k1", &[("k1", &good)]).verifier(),
        |_| {},
    );
    let wrong_secret = r.stem.enqueue::<Flaky>(0).await?;
    let unknown_id = r
        .stem
        .clone()
        .with_signer(keys("k9", &[("k9", &good)]).signer()?)
        .enqueue::<Flaky>(0)
        .await?;
    let unsigned = r
        .stem
        .clone()
        .with_signer(None)
        .enqueue::<Add>((1, 2))
        .await?;
    // A chain whose first step is refused: the step fails, the rest is
    // cancelled, as after any failure.
    let chain = r
        .stem
        .chain(vec![
            EnqueueRequest::new("math.add", json!([1, 1])),
            EnqueueRequest::new("math.add", json!([2, 2])),
        ])
        .await?;
    for id in [&wrong_secret, &unknown_id, &unsigned, &chain.task_ids[0]] {
        let s = r.wait(id).await?;
        assert_eq!(s.state, TaskState::Failed, "{s:?}");
        let e = s.error.as_ref().expect("an error");
        assert_eq!(e.kind.as_str(), "signature-invalid", "{s:?}");
        assert_eq!(e.reason.as_deref(), Some("signature-invalid"), "{s:?}");
        assert_eq!(s.attempt, 0, "{s:?}");
    }
    let rest = r.wait(&chain.task_ids[1]).await?;
    assert_eq!(rest.state, TaskState::Cancelled, "{rest:?}");
    // The failed status is written before the dead letter (so a genuine
    // envelope's failure lands first): wait for the letters.
    let dead = poll("four dead letters", Duration::from_secs(10), || async {
        let dead = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok((dead.len() >= 4).then_some(dead))
    })
    .await?;
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().all(|d| d.reason == "signature-invalid"));
    assert_eq!(r.counter.load(Ordering::SeqCst), 0, "no body ran");
    r.finish().await
}

/// Forged or altered copies of a real task (its id with a bad signature,
/// another body under its real signature, no signature) are dead-lettered
/// and leave the real task's status exactly as it was, queued or
/// succeeded.
pub async fn forged_copies_leave_the_real_tasks_status_alone(a: Adapters) -> anyhow::Result<()> {
    use stem::broker::Outgoing;
    use stem::envelope::WireEnvelope;
    let secret = generate_hmac_secret();
    let ring = keys("k1", &[("k1", &secret)]);
    let signer = ring.signer()?.expect("a signer");
    let r = rig_with(a, Some(signer.clone()), ring.verifier(), |_| {});
    let copies_of = |spec: &stem::envelope::TaskSpec| -> anyhow::Result<Vec<WireEnvelope>> {
        let body = spec.to_body()?;
        let real = WireEnvelope {
            signature: Some(signer.sign(&body)),
            key_id: Some("k1".into()),
            body: body.clone(),
            attempt: 0,
        };
        let mut altered = spec.clone();
        altered.args = json!([100, 100]);
        Ok(vec![
            WireEnvelope {
                signature: Some("Zm9yZ2Vk".into()),
                ..real.clone()
            },
            WireEnvelope {
                body: altered.to_body()?,
                ..real.clone()
            },
            WireEnvelope {
                key_id: None,
                signature: None,
                ..real.clone()
            },
            real,
        ])
    };
    let spec_of = |id: String| {
        let query = stem::recent::TaskQuery {
            text: Some(id),
            page: 1,
            page_size: 25,
            ..Default::default()
        };
        let stem = r.stem.clone();
        async move {
            poll("the indexed spec", Duration::from_secs(5), || async {
                let page = stem.find_tasks(&query).await?;
                Ok(page.rows.into_iter().next().map(|row| row.spec))
            })
            .await
        }
    };
    let mut letters = 0;
    let mut forge = |copies: Vec<WireEnvelope>| {
        letters += copies.len();
        let (stem, want) = (r.stem.clone(), letters);
        async move {
            stem.broker()
                .publish(
                    copies
                        .into_iter()
                        .map(|wire| Outgoing {
                            queue: QUEUE.into(),
                            priority: 9,
                            not_before_ms: None,
                            wire,
                        })
                        .collect(),
                )
                .await?;
            // The status is settled before the dead letter is written.
            poll("the forged letters", Duration::from_secs(10), || async {
                let d = stem.admin().list_dead_letters(QUEUE, 50).await?;
                Ok((d.len() == want).then_some(()))
            })
            .await
        }
    };

    // Queued: a countdown keeps the real envelope out of the worker's way.
    let waiting = r
        .stem
        .enqueue_with::<Add>(
            (1, 2),
            EnqueueOptions {
                countdown: Some(Duration::from_secs(120)),
                ..Default::default()
            },
        )
        .await?;
    let spec = spec_of(waiting.clone()).await?;
    let mut copies = copies_of(&spec)?;
    let real = copies.pop().expect("the real envelope");
    let before = r.stem.status(&waiting).await?.expect("queued");
    assert_eq!(before.state, TaskState::Queued);
    assert_eq!(
        before.fingerprint.as_deref(),
        Some(real.fingerprint().as_str()),
        "the producer records its envelope's fingerprint"
    );
    forge(copies).await?;
    assert_eq!(
        r.stem.status(&waiting).await?,
        Some(before.clone()),
        "queued stays"
    );
    // The genuine envelope itself, copied into another queue whose worker
    // holds other keys: rejected there, and still nothing changes (its
    // spec names another queue, so it is not the envelope the producer
    // delivered).
    const ELSEWHERE: &str = "rt-elsewhere";
    let stop = CancellationToken::new();
    let mut o = WorkerConfig::new("rt-elsewhere-worker", &[ELSEWHERE]);
    o.fetch_block = Duration::from_millis(200);
    let stranger = keys("k1", &[("k1", &generate_hmac_secret())]).verifier();
    let elsewhere = tokio::spawn(Worker::new(o, &r.stem, stranger).run(stop.clone()));
    r.stem
        .broker()
        .publish(vec![Outgoing {
            queue: ELSEWHERE.into(),
            priority: 0,
            not_before_ms: None,
            wire: real,
        }])
        .await?;
    poll(
        "the moved copy's letter",
        Duration::from_secs(10),
        || async {
            let d = r.stem.admin().list_dead_letters(ELSEWHERE, 10).await?;
            Ok(d.into_iter().find(|d| d.reason == "signature-invalid"))
        },
    )
    .await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), elsewhere).await???;
    assert_eq!(
        r.stem.status(&waiting).await?,
        Some(before),
        "a genuine envelope moved to another queue changes nothing"
    );

    // Succeeded.
    let done = r.stem.enqueue::<Add>((2, 3)).await?;
    assert_eq!(r.wait(&done).await?.state, TaskState::Succeeded);
    let before = r.stem.status(&done).await?.expect("succeeded");
    let mut copies = copies_of(&spec_of(done.clone()).await?)?;
    copies.pop();
    forge(copies).await?;
    assert_eq!(
        r.stem.status(&done).await?,
        Some(before),
        "the result stands"
    );
    let dead = r.stem.admin().list_dead_letters(QUEUE, 50).await?;
    assert!(
        dead.iter().all(|d| d.reason == "signature-invalid"),
        "{dead:?}"
    );
    r.finish().await
}

pub async fn rotated_keys_all_verify(a: Adapters) -> anyhow::Result<()> {
    let (old, new) = (generate_hmac_secret(), generate_hmac_secret());
    let both = [("old", old.as_str()), ("new", new.as_str())];
    let r = rig_with(
        a,
        keys("old", &both).signer()?,
        keys("new", &both).verifier(),
        |_| {},
    );
    let first = r.stem.enqueue::<Add>((1, 2)).await?;
    let rotated = r.stem.clone().with_signer(keys("new", &both).signer()?);
    let second = rotated.enqueue::<Add>((3, 4)).await?;
    assert_eq!(r.wait(&first).await?.state, TaskState::Succeeded);
    assert_eq!(r.wait(&second).await?.state, TaskState::Succeeded);
    r.finish().await
}

pub async fn unregistered_task_is_dead_lettered(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let e = r
        .stem
        .enqueue_raw(
            "nobody.knows",
            json!({}),
            EnqueueOptions {
                queue: Some(QUEUE.into()),
                ..Default::default()
            },
        )
        .await?;
    let s = r.wait(&e.task_id).await?;
    assert_eq!(
        s.error.and_then(|e| e.reason),
        Some("unregistered-task".to_string())
    );
    r.finish().await
}

pub async fn revoked_tasks_do_not_run_and_running_ones_stop(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let later = r
        .stem
        .enqueue_with::<Flaky>(
            0,
            EnqueueOptions {
                countdown: Some(Duration::from_millis(600)),
                ..Default::default()
            },
        )
        .await?;
    let before = r
        .stem
        .revoke(&later, "operator said no")
        .await?
        .expect("known task");
    assert_eq!(before.state, TaskState::Queued);
    let running = r.stem.enqueue::<Sleepy>(1450).await?;
    poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&running)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let started = std::time::Instant::now();
    r.stem.revoke(&running, "stop it").await?;
    let s = r.wait(&running).await?;
    assert_eq!(s.state, TaskState::Cancelled);
    assert_eq!(s.error.and_then(|e| e.reason), Some("revoked".to_string()));
    // The body stops within about a second (before its 1.45 s run or hard limit).
    let settled = poll("revoked task settled", Duration::from_secs(5), || async {
        Ok((r.stem.admin().stats(QUEUE).await?.inflight == 0).then_some(()))
    })
    .await;
    settled?;
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "took {:?}",
        started.elapsed()
    );
    // The delayed one comes due, is seen as revoked and never runs.
    poll(
        "delayed revoked entry consumed",
        Duration::from_secs(5),
        || async {
            let s = r.stem.admin().stats(QUEUE).await?;
            Ok((s.delayed == 0 && s.ready == 0 && s.inflight == 0).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        r.counter.load(Ordering::SeqCst),
        0,
        "the revoked task never ran"
    );
    assert_eq!(
        r.stem.status(&later).await?.map(|s| s.state),
        Some(TaskState::Cancelled)
    );
    r.finish().await
}

/// A worker that stops forgets its own record only: another process
/// started under the same name meanwhile stays listed.
pub async fn a_stopping_worker_forgets_only_its_own_record(a: Adapters) -> anyhow::Result<()> {
    let control = a.stores.control.clone();
    let info = |started_at: i64| stem::control::WorkerInfo {
        name: "same-name".into(),
        namespace: "stem".into(),
        queues: vec![QUEUE.to_string()],
        paused: Vec::new(),
        host: "h".into(),
        pid: 1,
        concurrency: 1,
        prefetch: 1,
        inflight: 0,
        started_at,
        heartbeat_at: stem::envelope::now_ms(),
        started: 0,
        succeeded: 0,
        failed: 0,
        retried: 0,
    };
    let ttl = Duration::from_secs(30);
    control.heartbeat(&info(1_000), ttl).await?;
    // The successor's first heartbeat lands before the old one's goodbye.
    control.heartbeat(&info(2_000), ttl).await?;
    control.forget("same-name", 1_000).await?;
    let live = control.workers().await?;
    assert_eq!(
        live.iter().map(|w| w.started_at).collect::<Vec<_>>(),
        [2_000],
        "the successor stays"
    );
    control.forget("same-name", 2_000).await?;
    assert!(control.workers().await?.is_empty());
    Ok(())
}

/// Workers add what finished to the per-minute throughput history with
/// their heartbeats, and the history reads it back by minute.
pub async fn finished_tasks_are_counted_per_minute(a: Adapters) -> anyhow::Result<()> {
    let r = rig_with(a, None, None, |o| {
        o.heartbeat_interval = Duration::from_millis(200);
    });
    let began = stem::envelope::now_ms();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(r.stem.enqueue::<Add>((n, 1)).await?);
    }
    ids.push(r.stem.enqueue::<Fatal>(()).await?);
    for id in &ids {
        r.wait(id).await?;
    }
    let control = r.stem.control();
    let total = poll(
        "the history to count them",
        Duration::from_secs(5),
        || async {
            let minutes = control
                .throughput(began - 60_000, stem::envelope::now_ms())
                .await?;
            let mut sum = stem::control::Throughput::default();
            for (minute, t) in &minutes {
                assert_eq!(minute % 60_000, 0, "whole minutes");
                sum.succeeded += t.succeeded;
                sum.failed += t.failed;
                sum.retried += t.retried;
            }
            Ok((sum.succeeded == 3 && sum.failed == 1).then_some(sum))
        },
    )
    .await?;
    assert_eq!(total.retried, 0);
    r.finish().await
}

pub async fn control_plane_reaches_the_worker(a: Adapters) -> anyhow::Result<()> {
    use stem::control::{Command, ControlCommand};
    // A long fetch block: a pause answered while a read still blocks on
    // the queue would let that read take the task enqueued next.
    let r = rig_with(a, None, None, |o| {
        o.heartbeat_interval = Duration::from_millis(200);
        o.fetch_block = Duration::from_secs(2);
    });
    let control = r.stem.control();
    let workers = poll("heartbeat", Duration::from_secs(5), || async {
        let w = control.workers().await?;
        Ok((!w.is_empty()).then_some(w))
    })
    .await?;
    assert_eq!(
        (workers[0].name.as_str(), workers[0].queues.clone()),
        ("rt-worker", vec![QUEUE.to_string()])
    );
    // The subscription may start just after the heartbeat: retry the ping.
    let pong = poll("ping reply", Duration::from_secs(5), || async {
        let cmd = ControlCommand::of(&Command::Ping, vec![]);
        control.send(&cmd).await?;
        let replies = control
            .replies(&cmd.id, 1, Duration::from_millis(300))
            .await?;
        Ok(replies.into_iter().next())
    })
    .await?;
    assert!(pong.ok && pong.worker == "rt-worker");
    let running = r.stem.enqueue::<Sleepy>(1000).await?;
    poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&running)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let cmd = ControlCommand::of(&Command::Inspect, vec!["rt-worker".into()]);
    control.send(&cmd).await?;
    let inspect = control.replies(&cmd.id, 1, Duration::from_secs(3)).await?;
    assert_eq!(inspect[0].payload["active"][0]["id"], json!(running));
    let nobody = ControlCommand::of(&Command::Ping, vec!["no-such-worker".into()]);
    control.send(&nobody).await?;
    assert!(control
        .replies(&nobody.id, 1, Duration::from_millis(300))
        .await?
        .is_empty());
    // Pause: persisted, and the worker stops fetching from the queue.
    control.set_paused(&[QUEUE.to_string()], true).await?;
    let cmd = ControlCommand::of(
        &Command::Pause {
            queues: vec![QUEUE.into()],
        },
        vec![],
    );
    control.send(&cmd).await?;
    assert_eq!(
        control.replies(&cmd.id, 1, Duration::from_secs(5)).await?[0].payload["paused"],
        json!([QUEUE])
    );
    r.wait(&running).await?;
    // The reply came after any read already blocking on the queue ended,
    // so nothing enqueued from now on is fetched. A fetching worker would
    // take it within milliseconds (a blocking read wakes on the publish);
    // a second of it staying queued shows the pause.
    let held_back = r.stem.enqueue::<Add>((1, 1)).await?;
    stem_testkit::holds(
        "paused queue not fetched",
        Duration::from_secs(1),
        || async {
            Ok(r.stem.status(&held_back).await?.map(|s| s.state) == Some(TaskState::Queued))
        },
    )
    .await?;
    control.set_paused(&[QUEUE.to_string()], false).await?;
    let cmd = ControlCommand::of(
        &Command::Resume {
            queues: vec![QUEUE.into()],
        },
        vec![],
    );
    control.send(&cmd).await?;
    control.replies(&cmd.id, 1, Duration::from_secs(3)).await?;
    assert_eq!(r.wait(&held_back).await?.state, TaskState::Succeeded);
    // Shutdown over the control plane stops the worker; its record goes.
    let cmd = ControlCommand::of(&Command::Shutdown, vec![]);
    control.send(&cmd).await?;
    assert_eq!(
        control.replies(&cmd.id, 1, Duration::from_secs(3)).await?[0].payload["status"],
        json!("stopping")
    );
    tokio::time::timeout(Duration::from_secs(10), r.worker).await???;
    assert!(
        control.workers().await?.is_empty(),
        "a stopped worker is forgotten"
    );
    Ok(())
}

/// A body that runs longer than RUNNING_AFTER shows `running` without
/// reporting progress; a quick one goes straight to its result.
pub async fn long_bodies_are_marked_running(a: Adapters) -> anyhow::Result<()> {
    let r = rig(a);
    let long = r.stem.enqueue::<Quiet>(600).await?;
    let s = poll("running", Duration::from_secs(5), || async {
        Ok(r.stem
            .status(&long)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    assert_eq!(s.attempt, 0);
    assert_eq!(r.wait(&long).await?.result, json!(600));
    let quick = r.stem.enqueue::<Quiet>(0).await?;
    assert_eq!(r.wait(&quick).await?.state, TaskState::Succeeded);
    r.finish().await
}

pub async fn prefetch_bound_and_graceful_shutdown(a: Adapters) -> anyhow::Result<()> {
    let r = rig_with(a, None, None, |o| {
        o.concurrency = 2;
        o.prefetch_multiplier = 1;
        o.shutdown_grace = Duration::from_millis(300);
    });
    // No body can finish before 400 ms have passed since this instant.
    let began = std::time::Instant::now();
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(r.stem.enqueue::<Sleepy>(400).await?);
        }
        v
    };
    let admin = r.stem.admin();
    let mut most = 0;
    for _ in 0..20 {
        let s = admin.stats(QUEUE).await?;
        // Running (≤ concurrency) plus fetched-but-not-started
        // (≤ concurrency × prefetch); once bodies finish, also the finished
        // ones awaiting their batched settle (they no longer count against
        // the bound; here at most one per slot, as a settle takes
        // milliseconds and a body 400).
        let bound = if began.elapsed() < Duration::from_millis(400) {
            4
        } else {
            6
        };
        assert!(
            s.inflight <= bound,
            "held {} > {bound}: concurrency + concurrency × prefetch (+ settling)",
            s.inflight
        );
        most = most.max(s.inflight);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The bound was tested against a worker that was holding work.
    assert!(
        most >= 2,
        "the worker never held its two running tasks ({most})"
    );
    let long = r.stem.enqueue::<Sleepy>(1400).await?;
    poll("long task running", Duration::from_secs(10), || async {
        Ok(r.stem
            .status(&long)
            .await?
            .filter(|s| s.state == TaskState::Running))
    })
    .await?;
    let stem = r.stem.clone();
    let adapters = r.shutdown().await?;
    let s = stem.status(&long).await?.expect("status");
    assert_ne!(
        s.state,
        TaskState::Succeeded,
        "grace was shorter than the task"
    );
    let stats = stem.admin().stats(QUEUE).await?;
    assert_eq!(stats.inflight, 0, "nothing left leased after shutdown");
    assert!(stats.ready >= 1, "the long task was handed back");

    // A new worker finishes everything: nothing was lost at the stop, and
    // the long task was handed back at the same attempt, not failed.
    let next = rig_with(adapters, None, None, |o| o.concurrency = 4);
    for id in ids.iter().chain([&long]) {
        let s = next.wait(id).await?;
        assert_eq!(s.state, TaskState::Succeeded, "{s:?}");
        assert_eq!(s.attempt, 0, "handed back, not retried: {s:?}");
    }
    assert_eq!(next.wait(&long).await?.result, json!("slept 1400"));
    next.finish().await
}

/// Bodies that block their thread, on the blocking pool: the worker's two
/// executor threads stay free, so its leases are renewed, and a second
/// worker that recovers everything idle for a second finds nothing to take
/// while the bodies run for 2.5 s (S1 of issue 9: blocking bodies polled on
/// the executor starved renewal, and other workers ran them again).
pub async fn blocking_bodies_off_the_executor_keep_their_leases(a: Adapters) -> anyhow::Result<()> {
    let vt = Duration::from_secs(1);
    // The other worker runs on a runtime of its own, with stores of its own
    // on the same Redis (or the same in-memory stores).
    let thief_stores = a.second_process()?;
    let r = rig_with(a, None, None, |o| {
        o.concurrency = 2;
        o.visibility_timeout = vt;
    });
    let thief_stem = Stem::new(thief_stores, None, registry(r.counter.clone()));
    let stop = CancellationToken::new();
    let thief = std::thread::spawn({
        let stop = stop.clone();
        move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut o = WorkerConfig::new("rt-thief", &[QUEUE]);
            o.visibility_timeout = vt;
            o.fetch_block = Duration::from_millis(200);
            rt.block_on(Worker::new(o, &thief_stem, None).run(stop))?;
            Ok(())
        }
    });
    let ids = [
        r.stem.enqueue::<Offloaded>(2500).await?,
        r.stem.enqueue::<Offloaded>(2500).await?,
    ];
    for id in &ids {
        let s = r.wait(id).await?;
        assert_eq!(s.state, TaskState::Succeeded, "{s:?}");
        assert_eq!(s.result, json!(2500));
    }
    stop.cancel();
    thief
        .join()
        .map_err(|_| anyhow::anyhow!("the second worker's thread panicked"))??;
    assert_eq!(
        r.counter.load(Ordering::SeqCst),
        2,
        "each body ran once: no lease was lost while they blocked"
    );
    r.finish().await
}

/// The recent-task index finds every published task (plain, with an
/// idempotency key, a chain's later step) newest first, by state, task,
/// text in args or error, page by page, and holds each one's args.
pub async fn recent_tasks_are_found_by_state_task_and_text(a: Adapters) -> anyhow::Result<()> {
    use stem::recent::TaskQuery;
    let r = rig(a);
    let plain = r.stem.enqueue::<Add>((4242, 1)).await?;
    let keyed = r
        .stem
        .enqueue_with::<Add>(
            (7, 7),
            EnqueueOptions {
                idempotency_key: Some("recent-once".into()),
                ..Default::default()
            },
        )
        .await?;
    let fatal = r.stem.enqueue::<Fatal>(()).await?;
    let step = |a: i64, b: i64| EnqueueRequest {
        name: "math.add".into(),
        args: json!([a, b]),
        options: EnqueueOptions::default(),
    };
    let chain = r.stem.chain(vec![step(1, 1), step(0, 31337)]).await?;
    for id in [&plain, &keyed, &fatal, &chain.task_ids[1]] {
        r.wait(id).await?;
    }
    let find = |q: TaskQuery| {
        let stem = r.stem.clone();
        async move {
            let page = stem.find_tasks(&q).await?;
            anyhow::Ok(page)
        }
    };
    // A busy producer's index writes land together within 100 ms.
    let all = poll("five indexed tasks", Duration::from_secs(5), || async {
        let all = find(TaskQuery {
            page: 1,
            page_size: 25,
            ..Default::default()
        })
        .await?;
        Ok((all.rows.len() == 5).then_some(all))
    })
    .await?;
    let ids: Vec<&str> = all.rows.iter().map(|r| r.spec.id.as_str()).collect();
    // The chain's first step is published with the chain; its second when
    // the first finished, after the other three.
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], chain.task_ids[1], "newest first: {ids:?}");
    assert_eq!(&ids[2..], [&fatal, &keyed, &plain], "{ids:?}");
    assert!(all.complete && !all.has_more);
    assert!(
        all.rows.iter().all(|r| r.status.is_some()),
        "rows carry statuses"
    );
    let failed = find(TaskQuery {
        state: Some(TaskState::Failed),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        failed
            .rows
            .iter()
            .map(|r| r.spec.id.as_str())
            .collect::<Vec<_>>(),
        [&fatal]
    );
    let by_args = find(TaskQuery {
        text: Some("4242".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(by_args.rows.len(), 1);
    assert_eq!(by_args.rows[0].spec.args, json!([4242, 1]));
    let by_error = find(TaskQuery {
        text: Some("BAD INPUT".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert_eq!(by_error.rows.len(), 1, "text matches the error, any case");
    assert_eq!(by_error.rows[0].spec.id, fatal);
    let adds = find(TaskQuery {
        task: Some("math.add".into()),
        queue: Some(QUEUE.into()),
        page: 2,
        page_size: 2,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        adds.rows
            .iter()
            .map(|r| r.spec.id.as_str())
            .collect::<Vec<_>>(),
        [&keyed, &plain],
        "page 2 of math.add, two a page"
    );
    assert!(!adds.has_more);
    let first = find(TaskQuery {
        task: Some("math.add".into()),
        page: 1,
        page_size: 2,
        ..Default::default()
    })
    .await?;
    assert!(first.has_more, "page 1 of 2 says more follow");
    let none = find(TaskQuery {
        queue: Some("no-such-queue".into()),
        page: 1,
        page_size: 25,
        ..Default::default()
    })
    .await?;
    assert!(none.rows.is_empty() && none.complete);
    let spec = r.stem.status(&keyed).await?.expect("status");
    let entry = r
        .stem
        .admin()
        .find_recent(
            QUEUE,
            &keyed,
            stem::envelope::parse_ms(&spec.created_at).unwrap_or(0),
        )
        .await?
        .expect("the index holds the keyed task");
    assert_eq!(entry.spec()?.args, json!([7, 7]));
    r.finish().await
}

/// Replaying a forged dead letter (a copy of a real task's spec with a
/// bad signature) does not reopen the real task: its result stands.
pub async fn replaying_a_forged_letter_leaves_the_real_task_alone(
    a: Adapters,
) -> anyhow::Result<()> {
    use stem::broker::Outgoing;
    let r = rig(a);
    let real = r.stem.enqueue::<Add>((1, 2)).await?;
    assert_eq!(r.wait(&real).await?.state, TaskState::Succeeded);
    let query = stem::recent::TaskQuery {
        text: Some(real.clone()),
        page: 1,
        page_size: 25,
        ..Default::default()
    };
    let spec = poll("the indexed spec", Duration::from_secs(5), || async {
        let page = r.stem.find_tasks(&query).await?;
        Ok(page.rows.into_iter().next().map(|row| row.spec))
    })
    .await?;
    let forged = stem::envelope::WireEnvelope {
        body: spec.to_body()?,
        key_id: Some("k1".into()),
        signature: Some("Zm9yZ2Vk".into()),
        attempt: 0,
    };
    r.stem
        .broker()
        .publish(vec![Outgoing {
            queue: QUEUE.into(),
            priority: 0,
            not_before_ms: None,
            wire: forged,
        }])
        .await?;
    let letter = poll("the forged letter", Duration::from_secs(10), || async {
        let d = r.stem.admin().list_dead_letters(QUEUE, 10).await?;
        Ok(d.into_iter().find(|d| d.reason == "signature-invalid"))
    })
    .await?;
    let replayed = r.stem.replay_dead_letter(QUEUE, &letter).await?;
    assert!(replayed.is_some(), "the letter is replayed");
    let s = r.stem.status(&real).await?.expect("status");
    assert_eq!(
        (s.state, s.attempt),
        (TaskState::Succeeded, 0),
        "the real task's result stands"
    );
    r.finish().await
}

/// Runs the runtime contract against each adapter listed as
/// `module => factory` (a `fn() -> anyhow::Result<…>`): one
/// `#[tokio::test]` per (adapter, test), in a module named after the
/// adapter.
#[macro_export]
macro_rules! runtime_suite {
    ($($module:ident => $factory:path),* $(,)?) => {
        $crate::__suite!(
            runtime;
            [$($module => $factory),*];
            typed_task_succeeds,
            failed_attempt_is_retried_with_backoff,
            exhausted_retries_dead_letter,
            fatal_failure_is_not_retried,
            panic_is_a_failure_and_the_worker_survives,
            time_limits_and_progress,
            chain_passes_results_and_aborts_on_failure,
            chord_runs_callback_with_all_results,
            group_collects_every_result,
            forged_and_unsigned_envelopes_never_run,
            a_misconfigured_producers_tasks_fail_as_signature_invalid,
            forged_copies_leave_the_real_tasks_status_alone,
            rotated_keys_all_verify,
            unregistered_task_is_dead_lettered,
            revoked_tasks_do_not_run_and_running_ones_stop,
            control_plane_reaches_the_worker,
            finished_tasks_are_counted_per_minute,
            a_stopping_worker_forgets_only_its_own_record,
            long_bodies_are_marked_running,
            prefetch_bound_and_graceful_shutdown,
            blocking_bodies_off_the_executor_keep_their_leases,
            recent_tasks_are_found_by_state_task_and_text,
            replaying_a_forged_letter_leaves_the_real_task_alone,
        );
    };
}
