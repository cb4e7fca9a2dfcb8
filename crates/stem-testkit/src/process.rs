//! Running the workspace's real binaries (`enqueuer`, `worker`, `stem`) as
//! child processes: locating them in `target/<profile>/`, capturing their
//! output to a log file, signalling them and waiting for them to exit.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::tail_lines;
use crate::wait::POLL_INTERVAL;

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// the port the kernel picked, release it).
///
/// Another process may take it before the caller binds it; callers that
/// start servers should retry with a new port when binding fails.
///
/// # Panics
/// If no socket can be bound on 127.0.0.1 at all (the machine has no usable
/// loopback), which no test could survive anyway.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Fallible form of [`free_port`].
pub fn try_free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to pick a free port")?;
    let port = listener
        .local_addr()
        .context("reading the address of a freshly bound socket")?
        .port();
    Ok(port)
}

/// Path of the installed command `name` (searched on `$PATH`); the error
/// names the Debian `package` to install (`scripts/test.sh` installs every
/// one the tests use), so a missing tool fails loudly, never silently.
pub fn installed(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    });
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "{name} not found on PATH: install it with `apt-get install {package}` (scripts/test.sh does this)"
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of the workspace binary `name` (e.g. `"enqueuer"`, `"worker"`,
/// `"stem"`).
///
/// Looks in `$STEM_BIN_DIR` when that is set, then in the directories above
/// the running test executable (`target/<profile>/deps/<test>-<hash>` →
/// `target/<profile>/`).
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let file_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut searched: Vec<PathBuf> = Vec::new();

    if let Some(dir) = std::env::var_os("STEM_BIN_DIR").filter(|d| !d.is_empty()) {
        let candidate = PathBuf::from(dir).join(&file_name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }

    let exe = std::env::current_exe().context("locating the running test executable")?;
    // exe's dir is target/<profile>/deps (integration tests, unit tests) or
    // target/<profile> (examples, binaries); check both levels and one more.
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(&file_name);
        if candidate.is_file() {
            ensure_fresh(name, &candidate)?;
            return Ok(candidate);
        }
        searched.push(candidate);
    }

    let searched: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    anyhow::bail!(
        "binary `{name}` not built: run `cargo build --workspace --bins` (scripts/test.sh does); looked at: {}",
        searched.join(", ")
    )
}

/// The source directories binary `name` is built from (the library and
/// its own crate; `stem` also embeds the enqueuer for `stem dev`).
fn binary_sources(name: &str) -> &'static [&'static str] {
    const SHARED: [&str; 3] = [
        "crates/stem/src",
        "crates/stem-service/src",
        "crates/stem-demo/src",
    ];
    match name {
        "enqueuer" => &[SHARED[0], SHARED[1], SHARED[2], "services/enqueuer/src"],
        "worker" => &[SHARED[0], SHARED[1], SHARED[2], "services/worker/src"],
        "beat" => &[SHARED[0], SHARED[1], SHARED[2], "services/beat/src"],
        "dashboard" => &[
            SHARED[0],
            SHARED[1],
            SHARED[2],
            "services/dashboard/src",
            "services/dashboard/templates",
            "services/dashboard/assets",
        ],
        "stem" => &[
            SHARED[0],
            SHARED[1],
            SHARED[2],
            "crates/stem-cli/src",
            "services/enqueuer/src",
            "services/dashboard/src",
            "services/dashboard/templates",
            "services/dashboard/assets",
            "services/worker/src",
            "services/beat/src",
        ],
        _ => &["crates/stem/src"],
    }
}

/// Fails when a source file `binary` is built from is newer than it:
/// `cargo test` does not rebuild the workspace's binaries for
/// another package's tests, so without this check a black-box test could
/// silently run a binary that predates the change under test. Binaries
/// given through `$STEM_BIN_DIR` are taken as they are (a deliberate
/// choice, e.g. an older build to show a test failing on it).
fn ensure_fresh(name: &str, binary: &Path) -> anyhow::Result<()> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", binary.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut stack: Vec<PathBuf> = binary_sources(name).iter().map(|d| root.join(d)).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
            continue;
        }
        if meta.modified().is_ok_and(|m| m > built) {
            anyhow::bail!(
                "binary `{name}` ({}) is older than {}: run `cargo build --workspace --bins` \
                 (scripts/test.sh does) before the black-box tests",
                binary.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// A workspace binary running as a child process, with stdout and stderr
/// appended to a log file in a temporary directory it owns.
///
/// Dropping it kills the process (SIGKILL); when dropped during a panic it
/// also prints the last 60 lines of the log to stderr.
pub struct ServiceProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<std::process::ExitStatus>,
    _dir: TempDir,
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl ServiceProcess {
    /// Spawns [`binary_path`]`(name)` with `args` and the extra environment
    /// `envs`. `RUST_LOG=info` is set unless `envs` gives it, and
    /// `STEM_LOG_FORMAT=text` unless `envs` gives it. Stdin is null.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = binary_path(name)?;
        Self::spawn_path(name, &path, args, envs)
    }

    /// Like [`ServiceProcess::spawn`] but for an explicit executable path;
    /// `name` is only used for messages and the log file name.
    pub fn spawn_path(
        name: &str,
        path: &Path,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::launch(name, path, args, envs, false)
    }

    /// Like [`ServiceProcess::spawn_path`], but the process sees only
    /// `envs` (plus `PATH` and `HOME` from this process), as in a
    /// container: nothing of the test's own environment leaks in, and no
    /// `RUST_LOG` or `STEM_LOG_FORMAT` is added.
    pub fn spawn_isolated(
        name: &str,
        path: &Path,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::launch(name, path, args, envs, true)
    }

    fn launch(
        name: &str,
        path: &Path,
        args: &[&str],
        envs: &[(&str, String)],
        isolated: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stem-{name}-"))
            .tempdir()
            .context("creating a temporary directory for the process log")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let stdout = append_file(&log_path)?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("duplicating log file handle {}", log_path.display()))?;

        let mut cmd = Command::new(path);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        if isolated {
            cmd.env_clear();
            for key in ["PATH", "HOME"] {
                if let Some(v) = std::env::var_os(key) {
                    cmd.env(key, v);
                }
            }
        } else {
            if !envs.iter().any(|(k, _)| *k == "RUST_LOG") {
                cmd.env("RUST_LOG", "info");
            }
            if !envs.iter().any(|(k, _)| *k == "STEM_LOG_FORMAT") {
                cmd.env("STEM_LOG_FORMAT", "text");
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{name}` ({}) {args:?}", path.display()))?;

        Ok(ServiceProcess {
            name: name.to_string(),
            child,
            log_path,
            exited: None,
            _dir: dir,
        })
    }

    /// The binary's name as given to [`ServiceProcess::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file receiving stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far (lossily
    /// decoded as UTF-8; empty if the file cannot be read).
    pub fn logs(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Polls [`ServiceProcess::logs`] until it contains `needle`. Fails on
    /// timeout, or early if the process exits without having logged it; the
    /// error shows the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for `{}` (pid {}) to log {needle:?}; log so far:\n{}",
                    self.name,
                    self.pid(),
                    tail_lines(&logs, 200)
                );
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        // `kill` fails only if the process was already reaped, which
        // exit_status() rules out; an exited-but-unreaped child is fine.
        self.child
            .kill()
            .with_context(|| format!("killing `{}` (pid {})", self.name, self.pid()))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for `{}` (pid {})", self.name, self.pid()))?;
        self.exited = Some(status);
        Ok(())
    }

    /// Sends SIGTERM (through `kill -TERM <pid>`), without waiting; use
    /// [`ServiceProcess::wait_exit`] to observe the graceful shutdown.
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends SIGINT (through `kill -INT <pid>`), without waiting.
    pub fn sigint(&mut self) -> anyhow::Result<()> {
        self.signal("INT")
    }

    fn signal(&mut self, sig: &str) -> anyhow::Result<()> {
        if self.exit_status().is_some() {
            anyhow::bail!(
                "cannot send SIG{sig} to `{}` (pid {}): it already exited ({:?})",
                self.name,
                self.pid(),
                self.exited
            );
        }
        let out = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `kill -{sig} {}`", self.pid()))?;
        if !out.status.success() {
            anyhow::bail!(
                "`kill -{sig} {}` failed ({}): {}",
                self.pid(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Polls until the process exits and returns its exit code (`None` if it
    /// was ended by a signal). Fails if it is still running after `timeout`;
    /// the error shows the end of the log.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status.code());
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "`{}` (pid {}) still running after {timeout:?}; log tail:\n{}",
                    self.name,
                    self.pid(),
                    tail_lines(&self.logs(), 60)
                );
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status if the process has exited, reaping it; `None` while it
    /// runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            // try_wait errors only if the child cannot be waited on at all;
            // that is reported as "still running" (no status known).
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let tail = tail_lines(&logs, 60);
            let mut out = format!(
                "----- last 60 log lines of `{}` (pid {}) -----\n",
                self.name,
                self.child.id()
            );
            for line in tail.lines() {
                out.push_str(&format!("[{}] {line}\n", self.name));
            }
            out.push_str(&format!("----- end of `{}` log -----\n", self.name));
            eprint!("{out}");
        }
    }
}

/// Opens `path` for appending, creating it (used for child output files).
pub(crate) fn append_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))
}
