//! The compose stack, run for real once per shipped profile (`.env.hmac`,
//! `.env.hmac_tls`, `.env.ed25519_tls`): the Stem services with
//! docker-compose.yml's commands, environment and healthchecks, Debian's
//! redis-server, Prometheus and nginx with the repository's configs
//! (`tests/src/stack.rs` says what is mapped and why). Then what a user
//! does, through the gateway:
//!
//! - `POST /api/enqueue` for a task of every queue → `GET /api/tasks/{id}`
//!   succeeded, run by that queue's worker;
//! - the same API on `Host: api.localhost`, at its root;
//! - a body over 1 MiB refused by the gateway (413);
//! - the dashboard page, and its event stream delivering an update;
//! - `/prometheus/` scraping every Stem service that exports metrics;
//! - `stem schedule list` in the beat container lists the seeded schedules;
//! - with a TLS profile: Redis speaks TLS only, a client without the
//!   client certificate is refused, and a server certificate from another
//!   CA fails every client with an error naming the certificate;
//! - `docker compose stop`: every Stem service exits 0 on SIGTERM;
//! - safe by default: Redis answers `PING` only with the profile's
//!   password (NOAUTH without), no service mounts the CA's key, and no
//!   process logged the Redis password (the services log URLs redacted).
//!
//! The profiles run as parallel tests, each with its own stack; beside
//! them, every profile's secrets are required and none is a default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use stem_e2e::{stream_until, Api};
use stem_stack_tests::stack::{generate_certs, repo_root};
use stem_stack_tests::{journey, Profile, Project, Stack};

/// The profiles the stack runs with, and the template.
const PROFILES: [&str; 4] = [
    ".env.example",
    ".env.hmac",
    ".env.hmac_tls",
    ".env.ed25519_tls",
];

/// Every profile sets Redis's and Grafana's passwords, compose refuses a
/// profile without either (`${VAR:?…}`), Grafana's admin password is the
/// profile's (not Grafana's default `admin`), Redis requires the
/// password, and every store URL carries it.
#[test]
fn every_profile_sets_its_secrets_and_compose_requires_them() -> anyhow::Result<()> {
    let repo = repo_root();
    for name in PROFILES {
        let profile = Profile::load(&repo.join(name))?;
        let secret = |var: &str| -> anyhow::Result<String> {
            let value = profile.vars.get(var).cloned().unwrap_or_default();
            anyhow::ensure!(!value.is_empty(), "{name} sets no {var}");
            Ok(value)
        };
        let redis_pw = secret("REDIS_PASSWORD")?;
        let grafana_pw = secret("GRAFANA_ADMIN_PASSWORD")?;
        assert_ne!(grafana_pw, "admin", "{name}: Grafana's default password");
        let project = Project::load(&repo, &profile)?;
        let grafana = &project.service("grafana")?.environment;
        assert_eq!(
            grafana.get("GF_SECURITY_ADMIN_PASSWORD"),
            Some(&grafana_pw),
            "{name}: Grafana's admin password comes from the profile"
        );
        let redis = project.service("redis")?;
        let command = redis.command.join(" ");
        assert!(
            command.contains(&format!("--requirepass {redis_pw}")),
            "{name}: redis requires the password: {command}"
        );
        assert_eq!(
            redis.environment.get("REDISCLI_AUTH"),
            Some(&redis_pw),
            "{name}: the healthcheck's redis-cli authenticates"
        );
        for (var, url) in &profile.vars {
            if var.starts_with("STEM_") && var.ends_with("_URL") && url.starts_with("redis") {
                assert!(
                    url.contains(&format!(":{redis_pw}@")),
                    "{name}: {var} carries the password"
                );
            }
        }
        for var in ["REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"] {
            let mut without = profile.clone();
            without.vars.remove(var);
            let refused = Project::load(&repo, &without)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(
                refused.contains(var),
                "{name} without {var}: compose refuses it ({refused:?})"
            );
        }
    }
    Ok(())
}

/// `DASHBOARD_BASE_PATH=/ops` added to a profile: the dashboard's
/// healthcheck follows it (else nginx, which waits for it, never starts:
/// this failed before the compose file's probe took the prefix), its
/// pages answer under `/ops/` through the gateway, and its event stream
/// at `/ops/events` carries a small update within seconds. (nginx's SSE
/// location, unbuffered and without a read timeout, matches under the
/// prefix; with a buffered location, Debian's nginx 1.22 passed such an
/// update on promptly too when tried on 2026-12-07, so this test does not
/// tell the two apart: `scripts/check-stack.sh`'s `nginx -t` and the
/// configuration's comment hold that part.)
/// `docker-compose.yml` is a Compose Specification file, as Compose v2
/// reads it, not only one docker-compose 1.29 accepts: with its anchors
/// merged it deserialises into the specification's types (the
/// `compose_spec` crate: unknown keys and values of the wrong shape are
/// refused) and passes their validation; a misspelt key is refused.
#[test]
fn the_compose_file_follows_the_compose_specification() -> anyhow::Result<()> {
    let path = repo_root().join("docker-compose.yml");
    let raw = std::fs::read_to_string(&path)?;
    let read = |yaml: &str| {
        compose_spec::Compose::options()
            .apply_merge(true)
            .from_yaml_str(yaml)
    };
    let compose = read(&raw).context("docker-compose.yml against the Compose Specification")?;
    compose
        .validate_all()
        .context("docker-compose.yml's references (networks, volumes, depends_on)")?;
    assert!(compose.services.contains_key("enqueuer"));
    let misspelt = raw.replacen("stop_grace_period:", "stop_grace_periode:", 1);
    assert_ne!(misspelt, raw);
    assert!(
        read(&misspelt).is_err(),
        "a key the specification does not define is refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_base_path_serves_and_streams_through_the_gateway() -> anyhow::Result<()> {
    let stack = Stack::up_with(".env.hmac", &[("DASHBOARD_BASE_PATH", "/ops")]).await?;
    let gw = stack.gateway();
    let http = stem_e2e::http_client();
    let page = http.get(format!("{gw}/ops/")).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains(r#"href="/ops/queues""#));
    let mut events = http
        .get(format!("{gw}/ops/events"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    stream_until(&mut events, "<turbo-stream", Duration::from_secs(10))
        .await
        .with_context(|| stack.logs())?;
    // A later update, a kilobyte or two, within the poller's tick.
    let api = Api::new(format!("{gw}/api"))?;
    api.enqueue(json!({"name": "Later", "countdownMs": 600_000}))
        .await?;
    stream_until(
        &mut events,
        r#"<turbo-stream action="replace" target="totals">"#,
        Duration::from_secs(5),
    )
    .await
    .context("a small update through the gateway, under the base path")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hmac_profile_serves_through_the_gateway() -> anyhow::Result<()> {
    journeys(".env.hmac").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hmac_tls_profile_serves_through_the_gateway() -> anyhow::Result<()> {
    journeys(".env.hmac_tls").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ed25519_tls_profile_serves_through_the_gateway() -> anyhow::Result<()> {
    journeys(".env.ed25519_tls").await
}

async fn journeys(profile: &str) -> anyhow::Result<()> {
    let mut stack = Stack::up(profile).await?;
    let mut not_run = stack.not_run.clone();
    not_run.sort();
    assert_eq!(
        not_run,
        ["grafana", "jaeger", "otel-collector"],
        "the services without a Debian counterpart, and only those, are left out"
    );
    let gw = stack.gateway();
    let http = stem_e2e::http_client();
    let redis_password = stack.profile.required("REDIS_PASSWORD")?;
    redis_requires_the_password(&stack, &redis_password).await?;
    no_service_mounts_the_ca_key(&stack)?;

    let r = http.get(format!("{gw}/healthz")).send().await?;
    assert_eq!(r.status(), 200, "the gateway's own health");

    // Every queue's worker, through /api/; the API on api.localhost; the
    // dashboard and its live stream.
    let api = Api::new(format!("{gw}/api"))?;
    journey::a_task_on_every_queue(&api, profile).await?;
    let id = journey::the_api_on_its_own_host(stack.gateway_port()).await?;
    assert_eq!(
        api.task(&id).await?.map(|s| s["state"].clone()),
        Some(json!("succeeded")),
        "one API behind both routes"
    );

    // The gateway refuses what the enqueuer would (over 1 MiB).
    let r = api.post_raw("/enqueue", vec![b' '; 2 << 20]).await?;
    assert_eq!(r.status, 413, "a 2 MiB body: {}", r.text);

    journey::the_dashboard_lists_and_streams(&gw, &api).await?;

    other_sites_are_kept_out(&stack, &gw).await?;

    // Prometheus, under /prometheus/, scrapes every Stem service that
    // exports metrics, all up.
    let mut expected: Vec<String> = Vec::new();
    for service in stack.stem_services() {
        let env = stack.project.service(&service)?.environment.clone();
        if env
            .get("STEM_METRIC_EXPORTERS")
            .is_some_and(|e| e.contains("prometheus"))
        {
            expected.push(format!("127.0.0.1:{}", stack.loopback.port(&service, 9464)));
        }
    }
    assert_eq!(expected.len(), 5, "enqueuer, three workers and beat export");
    journey::prometheus_scrapes(&gw, expected)
        .await
        .with_context(|| stack.logs())?;

    // `docker compose exec beat stem schedule list`: the seeded schedules.
    let out = stack.exec("beat", "stem", &["schedule", "list"]).await?;
    journey::the_schedules_are_listed(&out);

    if stack.profile.tls() {
        tls_is_enforced(&stack).await?;
    }

    // `docker compose stop`: SIGTERM, then exit 0 within the grace period.
    for service in stack.stem_services() {
        let code = stack.stop(&service, Duration::from_secs(40))?;
        assert_eq!(code, Some(0), "{service} exits 0 on SIGTERM");
    }

    // Every service logged its store URL at start, redacted: the password
    // is in no process's log.
    for service in stack.project.services.keys() {
        if let Ok(p) = stack.process(service) {
            assert!(
                !p.logs().contains(&redis_password),
                "{service} logged the Redis password"
            );
        }
    }
    for service in stack.stem_services() {
        let logs = stack.process(&service)?.logs();
        assert!(
            logs.contains("***@"),
            "{service} logs its broker URL, redacted: {logs}"
        );
    }
    Ok(())
}

/// Through the gateway: a web page's cross-site enqueue (`text/plain`) is
/// refused on both API routes, no route answers under a foreign host name
/// (DNS rebinding), the dashboard refuses an action from another origin,
/// and a page's own action returns to that page, though nginx forwards
/// `Host` without its port.
async fn other_sites_are_kept_out(stack: &Stack, gw: &str) -> anyhow::Result<()> {
    let port = stack.gateway_port();
    let http = stem_e2e::http_client();
    let vhost = reqwest::Client::builder()
        .resolve("api.localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .build()?;
    for (client, url) in [
        (&http, format!("{gw}/api/enqueue")),
        (&vhost, format!("http://api.localhost:{port}/enqueue")),
    ] {
        let r = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(r#"{"name": "from-a-web-page"}"#)
            .send()
            .await?;
        assert_eq!(r.status(), 415, "{url} as text/plain");
    }

    // Under a name that rebinds to the gateway, no route answers: nginx
    // closes the connection (444), so no status comes back at all.
    for path in [
        "/",
        "/api/healthz",
        "/api/tasks/x",
        "/prometheus/",
        "/grafana/",
        "/jaeger/",
    ] {
        let r = http
            .get(format!("{gw}{path}"))
            .header("host", format!("attacker.example:{port}"))
            .send()
            .await;
        assert!(
            r.is_err(),
            "{path} under a foreign host name answered {:?}",
            r.map(|r| r.status())
        );
    }
    // A browser session: its cookie, its page's token.
    let cookie = "stem_csrf=c2Vzc2lvbi1jb29raWUtb2YtdGhlLXN0YWNrLXRlc3Q";
    let dashboard = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = dashboard
        .get(format!("{gw}/queues/greetings"))
        .header("cookie", cookie)
        .send()
        .await?
        .text()
        .await?;
    let token = page
        .split(r#"<meta name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the page carries a CSRF token")?
        .to_string();
    let act = |path: &str, origin: String| {
        dashboard
            .post(format!("{gw}{path}"))
            .header("cookie", cookie)
            .header("origin", origin)
            .header("referer", format!("{gw}/queues/greetings"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf_token={token}"))
            .send()
    };
    let r = act("/queues/greetings/pause", "http://attacker.example".into()).await?;
    assert_eq!(r.status(), 403, "an action from another site");
    let r = act("/queues/greetings/pause", gw.to_string()).await?;
    assert_eq!(r.status(), 303, "the page's own action");
    assert_eq!(
        r.headers()["location"].to_str()?,
        "/queues/greetings?notice=Paused+greetings",
        "back to the page it came from, behind nginx"
    );
    let r = act("/queues/greetings/resume", gw.to_string()).await?;
    assert_eq!(r.status(), 303);
    Ok(())
}

/// Redis refuses a client without the password (`NOAUTH`) and answers
/// one with it.
async fn redis_requires_the_password(stack: &Stack, password: &str) -> anyhow::Result<()> {
    let (_, text) = stack.redis_cli(None, &["ping"]).await?;
    assert!(
        text.contains("NOAUTH"),
        "PING without the password is refused: {text}"
    );
    let (status, text) = stack.redis_cli(Some(password), &["ping"]).await?;
    assert!(
        status.success() && text.contains("PONG"),
        "PING with the password: {text}"
    );
    Ok(())
}

/// The CA's key exists (the script made it) but is under no path mounted
/// into a service, and no mounted path holds a file named `ca.key`.
fn no_service_mounts_the_ca_key(stack: &Stack) -> anyhow::Result<()> {
    let ca_key = stack.ca_key();
    for (service, host, target) in stack.mounts()? {
        assert!(
            !ca_key.starts_with(&host),
            "{service} mounts {} (at {target}), which holds the CA's key",
            host.display()
        );
        let found = files_named(&host, "ca.key")?;
        assert!(
            found.is_empty(),
            "{service} mounts {} at {target}, with {found:?}",
            host.display()
        );
    }
    assert!(
        ca_key.is_file(),
        "generate_tls_assets.sh wrote the CA's key at {}",
        ca_key.display()
    );
    Ok(())
}

/// The files called `name` at or under `path`.
fn files_named(path: &Path, name: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).with_context(|| format!("{}", path.display()))? {
            found.extend(files_named(&entry?.path(), name)?);
        }
    } else if path.file_name().is_some_and(|n| n == name) {
        found.push(path.to_path_buf());
    }
    Ok(found)
}

/// Redis speaks TLS only and asks for a client certificate; every client
/// verifies the server's certificate against `certs/ca.crt`.
async fn tls_is_enforced(stack: &Stack) -> anyhow::Result<()> {
    let env = stack.env_of("beat")?;
    let health = |env: Vec<(String, String)>| async move {
        let out = stack.exec_with(env, "stem", &["health"]).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::Ok((out.status.code(), text))
    };
    let (code, text) = health(env.clone()).await?;
    assert_eq!(code, Some(0), "stem health with the profile: {text}");

    let plain: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.clone(), v.replace("rediss://", "redis://")))
        .collect();
    let (code, text) = health(plain).await?;
    assert_eq!(code, Some(69), "plain redis:// is refused: {text}");

    let anonymous: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "STEM_TLS_CLIENT_CERT" && k != "STEM_TLS_CLIENT_KEY")
        .cloned()
        .collect();
    let (code, text) = health(anonymous).await?;
    assert_eq!(code, Some(69), "no client certificate, no Redis: {text}");

    // A Redis whose certificate another CA signed: refused, saying why.
    let other = stack.dir().join("other-certs");
    generate_certs(&repo_root(), &other)?;
    let (_impostor, impostor_port) = stack.start_redis_with_certs(&other)?;
    let ours = format!("127.0.0.1:{}", stack.loopback.port("redis", 6379));
    let redirected: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.replace(&ours, &format!("127.0.0.1:{impostor_port}")),
            )
        })
        .collect();
    let (code, text) = health(redirected).await?;
    assert_eq!(
        code,
        Some(69),
        "a server certificate from another CA: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("certificate"),
        "the error names the certificate: {text}"
    );
    Ok(())
}
