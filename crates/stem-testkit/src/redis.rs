//! A private `redis-server` per test: started as a child process on a free
//! port of 127.0.0.1 inside its own temporary directory (data, logs and TLS
//! certificates), optionally with AOF persistence (`appendfsync always`) and
//! TLS or mutual TLS. It can be killed, stopped gracefully and restarted on
//! the same port with the same data, and is killed when dropped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::process::{append_file, installed, try_free_port};
use crate::tail_lines;
use crate::tls::TlsAssets;
use crate::wait::POLL_INTERVAL;

/// How long a start or restart may take before it is reported as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful `SHUTDOWN` may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts (each with a fresh port) made by [`RedisServer::start_with`].
const START_ATTEMPTS: usize = 3;

/// TLS flavour of a [`RedisServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS only on the server side (`--tls-auth-clients no`): clients verify
    /// the server against the test CA and present no certificate.
    ServerOnly,
    /// Mutual TLS (`--tls-auth-clients yes`): clients must also present a
    /// certificate signed by the test CA.
    MutualTls,
}

/// Options of [`RedisServer::start_with`]; the default is a plain server
/// without persistence.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// AOF persistence with `appendfsync always`, so acknowledged writes
    /// survive [`RedisServer::kill`] and [`RedisServer::restart`].
    pub persistence: bool,
    /// Serve TLS (only TLS: the plain port is disabled).
    pub tls: Option<TlsMode>,
    /// Run as a Redis Cluster node (`--cluster-enabled yes`, its bus on a
    /// free port of its own, this node timeout); [`crate::RedisCluster`]
    /// joins such nodes into a cluster.
    pub cluster_node_timeout: Option<Duration>,
    /// With `tls`: serve these certificates instead of generating a fresh
    /// CA for this server (the nodes of a TLS cluster share one CA).
    pub tls_assets: Option<TlsAssets>,
}

/// A `redis-server` child process owned by a test.
///
/// It listens on 127.0.0.1 only. Its temporary directory holds `data/` (the
/// `--dir`, where the AOF lives), `redis.log`, `redis.stdout.log` and, with
/// TLS, `tls/` with the certificates. Dropping it kills the server and
/// removes the directory.
pub struct RedisServer {
    opts: RedisOptions,
    port: u16,
    /// The cluster bus port of a cluster node (0 otherwise).
    bus_port: u16,
    tls: Option<TlsAssets>,
    child: Option<Child>,
    redis_server: PathBuf,
    redis_cli: PathBuf,
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("opts", &self.opts)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Why an attempt to bring the server up failed.
enum StartFailure {
    /// The process exited (typically: the port was taken) or the port was
    /// answered by another server: worth retrying.
    Retryable(anyhow::Error),
    /// Anything else (timeout, spawn failure): reported as is.
    Fatal(anyhow::Error),
}

impl StartFailure {
    fn into_error(self) -> anyhow::Error {
        match self {
            StartFailure::Retryable(e) | StartFailure::Fatal(e) => e,
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl RedisServer {
    /// Starts a plain server without persistence.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `opts`, on a free port (retrying with a new port
    /// up to 3 times if the server cannot bind), and waits (at most 10 s)
    /// until it answers `PING`.
    pub fn start_with(opts: RedisOptions) -> anyhow::Result<Self> {
        let redis_server = installed("redis-server", "redis-server")?;
        let redis_cli = installed("redis-cli", "redis-tools")?;
        let dir = tempfile::Builder::new()
            .prefix("stem-redis-")
            .tempdir()
            .context("creating a temporary directory for redis-server")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let tls = match (opts.tls, &opts.tls_assets) {
            (Some(_), Some(shared)) => Some(shared.clone()),
            (Some(_), None) => Some(TlsAssets::generate(&dir.path().join("tls"))?),
            (None, _) => None,
        };

        let mut server = RedisServer {
            opts,
            port: 0,
            bus_port: 0,
            tls,
            child: None,
            redis_server,
            redis_cli,
            dir,
        };

        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            server.port = try_free_port()?;
            if server.opts.cluster_node_timeout.is_some() {
                server.bus_port = try_free_port()?;
            }
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(StartFailure::Retryable(e)) => {
                    server.kill_child();
                    last_error = Some(e.context(format!(
                        "redis-server attempt {attempt}/{START_ATTEMPTS} on port {} failed",
                        server.port
                    )));
                }
                Err(StartFailure::Fatal(e)) => {
                    server.kill_child();
                    return Err(e);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("redis-server could not be started"))
            .context(format!(
                "redis-server failed to start {START_ATTEMPTS} times"
            )))
    }

    /// The port it listens on (the TLS port when TLS is on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`, or with TLS `rediss://localhost:PORT/0`
    /// (the server certificate names `localhost` and `127.0.0.1`).
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// Like [`RedisServer::url`] for database `db`.
    pub fn url_db(&self, db: u8) -> String {
        match self.opts.tls {
            Some(_) => format!("rediss://localhost:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// The certificates, when TLS is on.
    pub fn tls(&self) -> Option<&TlsAssets> {
        self.tls.as_ref()
    }

    /// The TLS mode, if any.
    pub fn tls_mode(&self) -> Option<TlsMode> {
        self.opts.tls
    }

    /// Whether AOF persistence is on.
    pub fn persistence(&self) -> bool {
        self.opts.persistence
    }

    /// The temporary directory owned by this server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's data directory (`--dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of the server's log file (`--logfile`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far (empty if it cannot be read).
    pub fn logs(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The process id, while a process is attached.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `redis-cli` command aimed at this server (`-h 127.0.0.1 -p PORT`,
    /// plus `--tls --cacert --cert --key` with TLS), ready for more args.
    pub fn cli_command(&self) -> Command {
        let mut cmd = self.cli_command_without_client_cert();
        if let Some(tls) = &self.tls {
            cmd.arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        cmd
    }

    /// Like [`RedisServer::cli_command`] but presenting no client
    /// certificate (`--tls --cacert` only): refused by a mutual-TLS server.
    pub fn cli_command_without_client_cert(&self) -> Command {
        let mut cmd = Command::new(&self.redis_cli);
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null());
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca_cert);
        }
        cmd
    }

    /// Runs `redis-cli ARGS...` against this server and returns its trimmed
    /// stdout. Fails (with stderr and stdout in the message) when redis-cli
    /// exits non-zero, e.g. when it cannot connect. Note that redis-cli
    /// prints Redis error replies (`ERR ...`) on stdout and exits 0: they
    /// are returned as output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .cli_command()
            .args(args)
            .output()
            .with_context(|| format!("running redis-cli {args:?} on port {}", self.port))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            anyhow::bail!(
                "redis-cli {args:?} on port {} failed ({}): stderr: {} stdout: {}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout
            );
        }
        Ok(stdout)
    }

    /// Kills the server with SIGKILL and waits for it to exit. Data not yet
    /// in the AOF is lost, as in a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().context("polling redis-server")?.is_none() {
                child
                    .kill()
                    .with_context(|| format!("killing redis-server pid {}", child.id()))?;
            }
            child
                .wait()
                .with_context(|| format!("waiting for redis-server pid {}", child.id()))?;
        }
        Ok(())
    }

    /// Stops the server gracefully with `SHUTDOWN` (`SHUTDOWN NOSAVE`
    /// without persistence) and waits up to 10 s for it to exit; if it does
    /// not, kills it and fails.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            self.child = None;
            return Ok(());
        }
        let shutdown: &[&str] = if self.opts.persistence {
            &["SHUTDOWN"]
        } else {
            &["SHUTDOWN", "NOSAVE"]
        };
        // redis-cli's own result is irrelevant (the connection drops as the
        // server goes away); whether the process exits is what counts.
        let cli_result = self.cli(shutdown);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.is_running() {
            if Instant::now() >= deadline {
                let pid = self.pid();
                self.kill()?;
                anyhow::bail!(
                    "redis-server (pid {pid:?}, port {}) did not exit within {STOP_TIMEOUT:?} of SHUTDOWN \
                     (redis-cli: {cli_result:?}); killed it. redis.log tail:\n{}",
                    self.port,
                    tail_lines(&self.logs(), 40)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.child = None;
        Ok(())
    }

    /// Starts the server again on the same port with the same directory (so
    /// the AOF is reloaded when persistence is on) and waits until it answers
    /// `PING`. A server still running is first stopped gracefully.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop()
                .context("stopping redis-server before restart")?;
        }
        self.child = None;
        // The port is fixed now, so on failure to bind (another process took
        // it meanwhile) keep trying until the deadline.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(StartFailure::Retryable(_)) if Instant::now() < deadline => {
                    self.kill_child();
                    std::thread::sleep(POLL_INTERVAL * 4);
                }
                Err(failure) => {
                    self.kill_child();
                    return Err(failure
                        .into_error()
                        .context(format!("restarting redis-server on port {}", self.port)));
                }
            }
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.data_dir().display().to_string(),
            "--save".into(),
            String::new(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "yes".into(),
            "--enable-debug-command".into(),
            "local".into(),
        ];
        if let Some(timeout) = self.opts.cluster_node_timeout {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                self.bus_port.to_string(),
                "--cluster-config-file".into(),
                self.data_dir().join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".into(),
                timeout.as_millis().to_string(),
            ]);
        }
        if self.opts.persistence {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        match (&self.tls, self.opts.tls) {
            (Some(tls), Some(mode)) => {
                args.extend([
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    self.port.to_string(),
                    "--tls-cert-file".into(),
                    tls.server_cert.display().to_string(),
                    "--tls-key-file".into(),
                    tls.server_key.display().to_string(),
                    "--tls-ca-cert-file".into(),
                    tls.ca_cert.display().to_string(),
                    "--tls-auth-clients".into(),
                    match mode {
                        TlsMode::MutualTls => "yes".into(),
                        TlsMode::ServerOnly => "no".into(),
                    },
                ]);
                if self.opts.cluster_node_timeout.is_some() {
                    // The cluster bus and replication speak TLS too; a node
                    // dialling another presents the client certificate (the
                    // server one is for serverAuth only).
                    args.extend([
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                        "--tls-client-cert-file".into(),
                        tls.client_cert.display().to_string(),
                        "--tls-client-key-file".into(),
                        tls.client_key.display().to_string(),
                    ]);
                }
            }
            _ => args.extend(["--port".into(), self.port.to_string()]),
        }
        args
    }

    /// Spawns the process on `self.port` and waits until it is ready.
    fn launch(&mut self) -> Result<(), StartFailure> {
        let stdout_path = self.dir.path().join("redis.stdout.log");
        let stdout = append_file(&stdout_path).map_err(StartFailure::Fatal)?;
        let stderr = stdout
            .try_clone()
            .context("duplicating redis-server output handle")
            .map_err(StartFailure::Fatal)?;
        let child = Command::new(&self.redis_server)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {}", self.redis_server.display()))
            .map_err(StartFailure::Fatal)?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn diagnostics(&self) -> String {
        format!(
            "redis.log tail:\n{}\nredis-server stdout/stderr tail:\n{}",
            tail_lines(&self.logs(), 40),
            tail_lines(&read_lossy(&self.dir.path().join("redis.stdout.log")), 20)
        )
    }

    /// Polls `PING` until PONG, then checks through `INFO server` that the
    /// answering server is our process (not another one on a reused port).
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid = self.pid().unwrap_or(0);
        let mut last_answer: String;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(StartFailure::Retryable(anyhow::anyhow!(
                        "redis-server (port {}) exited during startup with {status}; {}",
                        self.port,
                        self.diagnostics()
                    )));
                }
            }
            match self.cli_command().arg("PING").output() {
                Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "PONG" => {
                    let info = self.cli(&["INFO", "server"]).unwrap_or_default();
                    if info
                        .lines()
                        .any(|l| l.trim() == format!("process_id:{pid}"))
                    {
                        return Ok(());
                    }
                    if info.contains("process_id:") {
                        return Err(StartFailure::Retryable(anyhow::anyhow!(
                            "port {} is answered by another redis-server, not pid {pid}",
                            self.port
                        )));
                    }
                    last_answer = format!("PONG, but INFO server gave: {info}");
                }
                Ok(out) => {
                    last_answer = format!(
                        "{} {}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Err(e) => {
                    return Err(StartFailure::Fatal(
                        anyhow::Error::new(e).context("running redis-cli PING"),
                    ))
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StartFailure::Fatal(anyhow::anyhow!(
                    "redis-server (pid {pid}, port {}) did not answer PING within {READY_TIMEOUT:?} \
                     (last answer: {}); {}",
                    self.port,
                    last_answer.trim(),
                    self.diagnostics()
                )));
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_child();
    }
}
