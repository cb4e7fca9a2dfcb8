//! One trace from the HTTP request to the task, exported over OTLP/HTTP
//! by the real enqueuer and worker to a real receiver: the caller's
//! `traceparent` is continued, `POST /enqueue` → `stem.enqueue` →
//! `stem.consume` → `stem.execute.<task>` are parent and child, the spans
//! carry the task and queue, and a retry is a second execute span of the
//! same trace.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};
use stem_e2e::{hmac_key, signed, start_enqueuer, start_worker, Stem};
use stem_testkit::otlp::attributes;
use stem_testkit::{OtlpReceiver, RedisServer};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_to_every_attempt() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let collector = OtlpReceiver::start().await?;
    let env = [
        ("STEM_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut worker_env = env.to_vec();
    worker_env.push(("STEM_LOG_FORMAT", "json".to_string()));
    let worker = start_worker(&redis.url(), "traced-worker", "greetings", &worker_env).await?;
    let enq = start_enqueuer(&redis.url(), &env).await?;

    // The caller's own trace.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let reply: Value = stem_e2e::http_client()
        .post(format!("{}/enqueue", enq.api.base()))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"name": "Ada", "fail": true}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = reply["taskId"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(!task_id.is_empty(), "enqueued: {reply}");

    // The first attempt fails; the retry (about 2 s later) is a second
    // execute span of the same trace.
    let spans: Vec<(String, Span)> = stem_e2e::poll_until(
        "the spans of two attempts",
        Duration::from_secs(20),
        || async {
            let spans: Vec<(String, Span)> = collector
                .spans()
                .into_iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .collect();
            let executes = spans
                .iter()
                .filter(|(_, s)| s.name == "stem.execute.greeting.send")
                .count();
            Ok((executes >= 2).then_some(spans))
        },
    )
    .await?;
    let named = |name: &str| -> Vec<&(String, Span)> {
        spans.iter().filter(|(_, s)| s.name == name).collect()
    };
    let request = named("POST /enqueue");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let (service, request) = request[0];
    assert_eq!(service, "stem-enqueuer");
    assert_eq!(
        hex(&request.parent_span_id),
        caller_span,
        "the caller's trace continues"
    );

    let enqueue = named("stem.enqueue");
    assert_eq!(enqueue.len(), 1, "{spans:#?}");
    let enqueue = &enqueue[0].1;
    assert_eq!(enqueue.parent_span_id, request.span_id);
    let attrs = attributes(&enqueue.attributes);
    assert_eq!(attrs.get("stem.task.id"), Some(&task_id));

    let consumes = named("stem.consume");
    assert!(
        consumes.len() >= 2,
        "one consume span per attempt: {spans:#?}"
    );
    for (service, consume) in &consumes {
        assert_eq!(service, "stem-worker");
        assert_eq!(
            consume.parent_span_id, enqueue.span_id,
            "consume is a child of the enqueue"
        );
        let attrs = attributes(&consume.attributes);
        assert_eq!(
            attrs.get("stem.task").map(String::as_str),
            Some("greeting.send")
        );
        assert_eq!(
            attrs.get("stem.queue").map(String::as_str),
            Some("greetings")
        );
        assert_eq!(attrs.get("stem.task.id"), Some(&task_id));
    }
    let mut attempts: Vec<String> = named("stem.execute.greeting.send")
        .iter()
        .map(|(_, execute)| {
            assert!(
                consumes
                    .iter()
                    .any(|(_, c)| c.span_id == execute.parent_span_id),
                "execute is a child of a consume span"
            );
            attributes(&execute.attributes)
                .get("stem.task.attempt")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    attempts.sort();
    assert_eq!(&attempts[..2], ["0", "1"], "a span per attempt");

    // The body's log line, in JSON, names the trace and its span.
    let logs = worker.logs();
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "demo task body running")
        .ok_or_else(|| anyhow::anyhow!("no JSON body log line: {logs}"))?;
    assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
    let execute_ids: Vec<String> = named("stem.execute.greeting.send")
        .iter()
        .map(|(_, s)| hex(&s.span_id))
        .collect();
    assert!(
        line["span"]["span_id"]
            .as_str()
            .is_some_and(|id| execute_ids.iter().any(|e| e == id)),
        "the line names its execute span: {line}"
    );
    Ok(())
}

/// The real enqueuer reads a caller's `traceparent` as W3C writes it:
/// flags beyond `sampled` are dropped (the request, the task and the
/// worker's spans carry `01`, not the caller's `ff`), and a value with a
/// sign or uppercase hex is refused whole, so the request starts a trace
/// of its own instead of continuing the id the integer parser would read.
///
/// The endpoint is given as the full traces URL, as the reference and the
/// compose profiles write it (`…/v1/traces`): spans still reach the
/// collector's `/v1/traces` (they went to `/v1/traces/v1/traces`, lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_read_as_w3c_writes_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let collector = OtlpReceiver::start().await?;
    let env = [
        (
            "STEM_OTLP_ENDPOINT",
            format!("{}/v1/traces", collector.endpoint()),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let _worker = start_worker(&redis.url(), "w3c-worker", "greetings", &env).await?;
    let enq = start_enqueuer(&redis.url(), &env).await?;
    let send = |traceparent: &'static str| {
        let url = format!("{}/enqueue", enq.api.base());
        async move {
            let reply: Value = stem_e2e::http_client()
                .post(url)
                .header("traceparent", traceparent)
                .json(&json!({"name": "Ada"}))
                .send()
                .await?
                .json()
                .await?;
            let id = reply["taskId"].as_str().unwrap_or_default().to_string();
            anyhow::ensure!(!id.is_empty(), "enqueued: {reply}");
            anyhow::Ok(id)
        }
    };
    let unknown_flags = send("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff").await?;
    // The ids an integer parser reads from these two.
    let signed = send("00-+bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-+1").await?;
    let upper = send("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01").await?;
    let lax_reads = [
        "0bf92f3577b34da6a3ce929d0e0e4736",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    ];

    let spans = stem_e2e::poll_until(
        "the consume spans of the three tasks",
        Duration::from_secs(20),
        || async {
            let spans = collector.spans();
            let consumed = [&unknown_flags, &signed, &upper].iter().all(|id| {
                spans.iter().any(|(_, s)| {
                    s.name == "stem.consume"
                        && attributes(&s.attributes).get("stem.task.id") == Some(*id)
                })
            });
            Ok(consumed.then_some(spans))
        },
    )
    .await?;
    // The request span of a task: the parent of its `stem.enqueue`.
    let request_of = |id: &str| -> anyhow::Result<&Span> {
        let enqueue = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| {
                s.name == "stem.enqueue"
                    && attributes(&s.attributes)
                        .get("stem.task.id")
                        .map(String::as_str)
                        == Some(id)
            })
            .ok_or_else(|| anyhow::anyhow!("no stem.enqueue span of {id}"))?;
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "POST /enqueue" && s.span_id == enqueue.parent_span_id)
            .ok_or_else(|| anyhow::anyhow!("no request span of {id}"))
    };

    let request = request_of(&unknown_flags)?;
    assert_eq!(hex(&request.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&request.parent_span_id), "b7ad6b7169203331");
    let trace: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == request.trace_id)
        .collect();
    assert!(
        trace.iter().any(|s| s.name == "stem.consume"),
        "the task's trace reaches the worker: {trace:#?}"
    );
    for s in &trace {
        assert_eq!(
            s.flags & 0xff,
            0x01,
            "{}: only the sampled bit of the caller's ff is kept",
            s.name
        );
    }

    for id in [&signed, &upper] {
        let request = request_of(id)?;
        assert!(
            request.parent_span_id.is_empty(),
            "a refused traceparent starts a new trace: {request:#?}"
        );
        let trace_id = hex(&request.trace_id);
        assert!(
            !lax_reads.contains(&trace_id.as_str()),
            "trace {trace_id} was read from a refused traceparent"
        );
    }
    Ok(())
}

/// The sampler (`OTEL_TRACES_SAMPLER`) decides at the root and the worker
/// follows: with `parentbased_always_off` on the enqueuer, a request
/// without a caller's trace leaves no span anywhere (its task still runs),
/// while a caller's sampled trace is still continued into the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producers_sampling_decision_is_followed_by_the_worker() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let collector = OtlpReceiver::start().await?;
    let env = [
        ("STEM_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let _worker = start_worker(&redis.url(), "sampled-worker", "greetings", &env).await?;
    let mut enqueuer_env = env.to_vec();
    enqueuer_env.push(("OTEL_TRACES_SAMPLER", "parentbased_always_off".to_string()));
    let enq = start_enqueuer(&redis.url(), &enqueuer_env).await?;

    let unsampled = enq.api.enqueue_succeeded(json!({"name": "Ada"})).await?;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let reply = stem_e2e::http_client()
        .post(format!("{}/enqueue", enq.api.base()))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"name": "Grace"}))
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "enqueue: {}", reply.status());

    // The worker exports in the order it ran the tasks: once the sampled
    // task's execute span is in, the unsampled one's would be too.
    stem_e2e::poll_until(
        "the sampled task's execute span",
        Duration::from_secs(20),
        || async {
            Ok(collector
                .spans()
                .iter()
                .any(|(_, s)| {
                    hex(&s.trace_id) == trace_id && s.name == "stem.execute.greeting.send"
                })
                .then_some(()))
        },
    )
    .await?;
    let leaked: Vec<String> = collector
        .spans()
        .into_iter()
        .filter(|(_, s)| {
            attributes(&s.attributes).get("stem.task.id") == Some(&unsampled)
                || hex(&s.trace_id) != trace_id
        })
        .map(|(service, s)| format!("{service}: {}", s.name))
        .collect();
    assert!(
        leaked.is_empty(),
        "spans outside the sampled trace: {leaked:?}"
    );
    Ok(())
}

/// A replayed dead letter runs in the trace of its enqueue: the worker
/// that could not verify it leaves no span, and the attempt after
/// `stem dlq replay` is a child of the original `stem.enqueue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_stays_in_its_trace() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let collector = OtlpReceiver::start().await?;
    let key = hmac_key("k1");
    let traced = |key: &str| {
        let mut env = signed(key);
        env.push(("STEM_OTLP_ENDPOINT", collector.endpoint()));
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()));
        env
    };
    // A worker holding another secret under the same id dead-letters it.
    let mut wrong = start_worker(
        &redis.url(),
        "wrong-key",
        "greetings",
        &traced(&hmac_key("k1")),
    )
    .await?;
    let enq = start_enqueuer(&redis.url(), &traced(&key)).await?;
    let task_id = enq.api.enqueue(json!({"name": "Ada"})).await?;
    let stem = Stem::new(&redis.url());
    stem_e2e::poll_until("the dead letter", Duration::from_secs(20), || async {
        let letters = stem.json(&["dlq", "list", "-q", "greetings"])?;
        Ok(letters
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l["taskId"] == task_id.as_str()))
            .then_some(()))
    })
    .await?;
    wrong.sigterm()?;
    wrong.wait_exit(Duration::from_secs(15))?;

    let _right = start_worker(&redis.url(), "right-key", "greetings", &traced(&key)).await?;
    stem.ok(&["dlq", "replay", "-q", "greetings", &task_id])?;
    enq.api
        .wait_state(&task_id, "succeeded", Duration::from_secs(20))
        .await?;
    let spans = stem_e2e::poll_until(
        "the replayed attempt's spans",
        Duration::from_secs(20),
        || async {
            let spans = collector.spans();
            let of_task = |name: &str| {
                spans
                    .iter()
                    .find(|(_, s)| {
                        s.name == name
                            && attributes(&s.attributes).get("stem.task.id") == Some(&task_id)
                    })
                    .map(|(_, s)| s.clone())
            };
            Ok(match (of_task("stem.enqueue"), of_task("stem.consume")) {
                (Some(enqueue), Some(consume)) => Some((enqueue, consume, spans.clone())),
                _ => None,
            })
        },
    )
    .await?;
    let (enqueue, consume, all) = spans;
    assert_eq!(
        consume.trace_id, enqueue.trace_id,
        "the replay stays in the trace"
    );
    assert_eq!(consume.parent_span_id, enqueue.span_id);
    let consumes = all
        .iter()
        .filter(|(_, s)| s.name == "stem.consume" && s.trace_id == enqueue.trace_id)
        .count();
    assert_eq!(consumes, 1, "the rejected delivery opened no span");
    Ok(())
}
