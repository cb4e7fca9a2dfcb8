//! Integration tests of the test harness itself: real redis-server
//! processes, plain, persistent and mutual TLS.

use std::time::Duration;

use stem_testkit::{
    binary_path, free_port, wait_until, RedisOptions, RedisServer, ServiceProcess, TlsAssets,
    TlsMode,
};

#[test]
fn plain_server_answers_ping() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    assert_eq!(redis.cli(&["PING"])?, "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    assert_eq!(
        redis.url_db(3),
        format!("redis://127.0.0.1:{}/3", redis.port())
    );
    assert!(redis.tls().is_none());
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "appendonly"])?,
        "appendonly\nno"
    );
    Ok(())
}

#[test]
fn persistent_server_keeps_data_across_restart() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions {
        persistence: true,
        tls: None,
        ..Default::default()
    })?;
    let port = redis.port();
    assert_eq!(redis.cli(&["SET", "stem:key", "kept"])?, "OK");
    redis.stop()?;
    assert!(!redis.is_running());
    redis.restart()?;
    assert!(redis.is_running());
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_eq!(redis.cli(&["GET", "stem:key"])?, "kept");
    Ok(())
}

#[test]
fn persistent_server_keeps_acknowledged_writes_across_kill() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions {
        persistence: true,
        tls: None,
        ..Default::default()
    })?;
    assert_eq!(redis.cli(&["SET", "stem:crash", "survives"])?, "OK");
    redis.kill()?;
    redis.restart()?;
    assert_eq!(redis.cli(&["GET", "stem:crash"])?, "survives");
    Ok(())
}

#[test]
fn non_persistent_server_loses_data_on_restart() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    assert_eq!(redis.cli(&["SET", "stem:gone", "x"])?, "OK");
    redis.stop()?;
    redis.restart()?;
    assert_eq!(redis.cli(&["EXISTS", "stem:gone"])?, "0");
    Ok(())
}

#[test]
fn mutual_tls_requires_client_certificate() -> anyhow::Result<()> {
    let redis = RedisServer::start_with(RedisOptions {
        persistence: false,
        tls: Some(TlsMode::MutualTls),
        ..Default::default()
    })?;
    assert_eq!(
        redis.url(),
        format!("rediss://localhost:{}/0", redis.port())
    );
    assert!(redis.tls().is_some());
    assert_eq!(redis.cli(&["PING"])?, "PONG");

    let out = redis
        .cli_command_without_client_cert()
        .arg("PING")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !(out.status.success() && stdout.trim() == "PONG"),
        "PING without a client certificate must fail, got {:?} / {stdout:?}",
        out.status
    );

    // Plain TCP (no TLS at all) is refused too.
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "PING"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() != "PONG",
        "plain PING must not succeed on a TLS port"
    );
    Ok(())
}

#[test]
fn mutual_tls_refuses_certificate_from_other_ca() -> anyhow::Result<()> {
    let redis = RedisServer::start_with(RedisOptions {
        persistence: false,
        tls: Some(TlsMode::MutualTls),
        ..Default::default()
    })?;
    let tls = redis.tls().expect("TLS server has assets");
    let out = redis
        .cli_command_without_client_cert()
        .arg("--cert")
        .arg(&tls.other_client_cert)
        .arg("--key")
        .arg(&tls.other_client_key)
        .arg("PING")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !(out.status.success() && stdout.trim() == "PONG"),
        "client certificate from another CA must be refused"
    );
    Ok(())
}

#[test]
fn server_only_tls_accepts_clients_without_certificate() -> anyhow::Result<()> {
    let redis = RedisServer::start_with(RedisOptions {
        persistence: false,
        tls: Some(TlsMode::ServerOnly),
        ..Default::default()
    })?;
    assert_eq!(redis.cli(&["PING"])?, "PONG");
    let out = redis
        .cli_command_without_client_cert()
        .arg("PING")
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    Ok(())
}

#[test]
fn wrong_ca_does_not_verify_server() -> anyhow::Result<()> {
    let redis = RedisServer::start_with(RedisOptions {
        persistence: false,
        tls: Some(TlsMode::ServerOnly),
        ..Default::default()
    })?;
    let tls = redis.tls().expect("TLS server has assets");
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "--tls"])
        .arg("--cacert")
        .arg(&tls.other_ca_cert)
        .arg("PING")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !(out.status.success() && stdout.trim() == "PONG"),
        "server must not verify against the unrelated CA"
    );
    Ok(())
}

#[test]
fn tls_assets_are_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let assets = TlsAssets::generate(dir.path())?;
    for path in [
        &assets.ca_cert,
        &assets.server_cert,
        &assets.client_cert,
        &assets.other_ca_cert,
    ] {
        let pem = std::fs::read_to_string(path)?;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{path:?}");
    }
    for path in [&assets.server_key, &assets.client_key] {
        let pem = std::fs::read_to_string(path)?;
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{path:?}");
    }
    Ok(())
}

#[test]
fn kill_stops_the_server() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    assert!(redis.is_running());
    redis.kill()?;
    assert!(!redis.is_running());
    assert!(
        redis.cli(&["PING"]).is_err(),
        "killed server must not answer"
    );
    Ok(())
}

#[test]
fn two_servers_get_distinct_ports() -> anyhow::Result<()> {
    let a = RedisServer::start()?;
    let b = RedisServer::start()?;
    assert_ne!(a.port(), b.port());
    a.cli(&["SET", "only-in-a", "1"])?;
    assert_eq!(b.cli(&["EXISTS", "only-in-a"])?, "0");
    Ok(())
}

#[test]
fn free_port_is_bindable() -> anyhow::Result<()> {
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    drop(listener);
    Ok(())
}

#[test]
fn missing_binary_is_explained() {
    let err = binary_path("definitely-not-a-stem-binary").expect_err("binary does not exist");
    assert!(
        err.to_string().contains("cargo build --workspace"),
        "{err:#}"
    );
}

#[test]
fn service_process_captures_logs_and_signals() -> anyhow::Result<()> {
    // Any executable works for the process plumbing: use `sh` from PATH.
    let sh = std::path::Path::new("/bin/sh");
    let mut proc = ServiceProcess::spawn_path(
        "sh",
        sh,
        &[
            "-c",
            "echo \"ready $GREETING $STEM_LOG_FORMAT\"; echo oops >&2; trap 'echo bye; exit 7' TERM; while true; do sleep 0.05; done",
        ],
        &[("GREETING", "hello".to_string())],
    )?;
    proc.wait_for_log("ready hello text", Duration::from_secs(10))?;
    proc.wait_for_log("oops", Duration::from_secs(10))?;
    assert!(proc.is_running());
    proc.sigterm()?;
    assert_eq!(proc.wait_exit(Duration::from_secs(10))?, Some(7));
    assert!(proc.logs().contains("bye"));
    assert!(!proc.is_running());
    Ok(())
}

#[test]
fn service_process_kill9() -> anyhow::Result<()> {
    let mut proc = ServiceProcess::spawn_path(
        "sleeper",
        std::path::Path::new("/bin/sh"),
        &["-c", "exec sleep 30"],
        &[],
    )?;
    assert!(proc.pid() > 0);
    proc.kill9()?;
    assert!(!proc.is_running());
    assert_eq!(proc.wait_exit(Duration::from_secs(1))?, None);
    let err = proc
        .wait_for_log("never logged", Duration::from_millis(50))
        .expect_err("nothing was logged");
    assert!(err.to_string().contains("timed out"), "{err:#}");
    Ok(())
}

#[test]
fn wait_until_polls() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    wait_until("100 ms to pass", Duration::from_secs(5), || {
        start.elapsed() >= Duration::from_millis(100)
    })?;
    Ok(())
}
