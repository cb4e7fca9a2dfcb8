//! The compose stack in real containers: `docker-compose` 1.29 runs
//! `docker-compose.yml` unchanged, with the image `deploy/Dockerfile`
//! built (`stem:local`), in a project directory of its own that holds what
//! a user's checkout holds for the stack (the compose file, the gateway's
//! and Prometheus's configurations, a profile copied to `.env`, `./certs`
//! for the TLS profiles). The one addition is
//! `tests/containers/docker-compose.standins.yml`, which gives Grafana,
//! Jaeger and the collector a stand-in image (no registry, no Debian
//! package).
//!
//! The images must exist before a test starts: `scripts/test-containers.sh`
//! makes the bases (`scripts/base-images.sh`) and builds `stem:local`.
//! The stack publishes fixed host ports (127.0.0.1:8080 and :6379), so one
//! stack runs at a time: [`Compose::up`] holds a process-wide lock until the
//! stack is dropped. Dropping a stack runs `down -v`, so a failed test
//! leaves no containers, volumes or networks behind.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::compose::Profile;
use crate::stack::{generate_certs, repo_root};

/// The Stem image docker-compose.yml names.
pub const STEM_IMAGE: &str = "stem:local";
/// The override that adds the stand-ins, relative to the repository.
const STANDINS: &str = "tests/containers/docker-compose.standins.yml";
/// What the stack's project directory holds, copied from the repository.
const STACK_FILES: [&str; 5] = [
    "docker-compose.yml",
    "nginx",
    "deploy/prometheus",
    "deploy/grafana",
    "otel",
];
/// The label compose puts on everything a project owns.
const PROJECT_LABEL: &str = "com.docker.compose.project";

/// One stack at a time (fixed host ports).
static ONE_STACK: Mutex<()> = Mutex::new(());

/// A compose project started from one profile.
pub struct Compose {
    /// Project name (`docker-compose -p`), unique to the profile.
    pub name: String,
    /// The profile as read from the repository.
    pub profile: Profile,
    dir: TempDir,
    down: bool,
    _one: MutexGuard<'static, ()>,
}

impl Compose {
    /// Copies the stack's files and `profile_file` (as `.env`) to a fresh
    /// project directory, makes `./certs` for a TLS profile, and runs
    /// `docker-compose up -d`. Fails, saying what to run, when an image
    /// is missing.
    pub fn up(profile_file: &str) -> anyhow::Result<Compose> {
        let one = ONE_STACK.lock().unwrap_or_else(|p| p.into_inner());
        let repo = repo_root();
        for tool in ["docker", "docker-compose"] {
            stem_testkit::installed(tool, "docker.io docker-compose")?;
        }
        for image in [STEM_IMAGE, "stem-standin:local"] {
            let found = Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .context("running docker image inspect")?;
            if !found.status.success() {
                bail!("no image {image}: scripts/test-containers.sh builds the images these tests run");
            }
        }
        let profile = Profile::load(&repo.join(profile_file))?;
        let dir = tempfile::Builder::new().prefix("stem-compose-").tempdir()?;
        for file in STACK_FILES {
            let to = dir.path().join(file);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            copy(&repo.join(file), &to)?;
        }
        copy(&repo.join(STANDINS), &dir.path().join("standins.yml"))?;
        // `cp .env.<profile> .env`, as the README says.
        std::fs::copy(repo.join(profile_file), dir.path().join(".env"))?;
        if profile.tls() {
            generate_certs(&repo, &dir.path().join("certs"))?;
        } else {
            std::fs::create_dir(dir.path().join("certs"))?;
        }
        let name = format!(
            "stemct{}",
            profile_file.trim_start_matches(".env.").replace('_', "")
        );
        let mut compose = Compose {
            name,
            profile,
            dir,
            down: false,
            _one: one,
        };
        // A stack left by an interrupted run would hold the ports.
        compose.run(&["down", "-v", "--remove-orphans"])?;
        compose.down = false;
        compose.run(&["up", "-d", "--no-build"])?;
        Ok(compose)
    }

    /// The project directory (what a user's checkout would be).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `docker-compose -p NAME -f docker-compose.yml -f standins.yml ARGS`
    /// in the project directory, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(self.dir.path())
            .args(["--ansi", "never", "-p", &self.name])
            .args(["-f", "docker-compose.yml", "-f", "standins.yml"])
            .args(args);
        cmd
    }

    /// Runs `docker-compose ARGS` and returns its output; fails with its
    /// output when it exits non-zero.
    pub fn run(&mut self, args: &[&str]) -> anyhow::Result<Output> {
        if args.first() == Some(&"down") {
            self.down = true;
        }
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running docker-compose {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "docker-compose {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `docker-compose exec -T SERVICE ARGS`, whatever its exit status.
    pub fn exec(&self, service: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["exec", "-T", service];
        full.extend_from_slice(args);
        self.command(&full)
            .output()
            .with_context(|| format!("docker-compose exec {service}"))
    }

    /// Every container of the project's services, as (service, container
    /// id); not those of `docker-compose run`.
    pub fn containers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={PROJECT_LABEL}={}", self.name),
            "--filter",
            "label=com.docker.compose.oneoff=False",
            "--format",
            "{{.Label \"com.docker.compose.service\"}} {{.ID}}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, id)| (s.to_string(), id.to_string()))
            .collect())
    }

    /// The container of `service`, or the container named `service` (one
    /// started by `docker-compose run --name`).
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        if let Some((_, id)) = self.containers()?.into_iter().find(|(s, _)| s == service) {
            return Ok(id);
        }
        docker(&["inspect", "--format", "{{.Id}}", service])
            .map(|id| id.trim().to_string())
            .with_context(|| format!("no container for service {service}"))
    }

    /// `docker inspect --format FORMAT` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> anyhow::Result<String> {
        let id = self.container(service)?;
        Ok(docker(&["inspect", "--format", format, &id])?
            .trim()
            .to_string())
    }

    /// Waits until every container of the project runs and every one with
    /// a healthcheck reports healthy; a container that exited fails at
    /// once, with its logs.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut waiting = Vec::new();
            for (service, id) in self.containers()? {
                let state = docker(&[
                    "inspect",
                    "--format",
                    "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                    &id,
                ])?;
                match state.split_whitespace().collect::<Vec<_>>()[..] {
                    ["running", "healthy" | "none"] => {}
                    ["exited" | "dead", ..] => {
                        bail!("{service} exited ({state}):\n{}", self.logs_of(&service))
                    }
                    _ => waiting.push(format!("{service}: {}", state.trim())),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not healthy within {within:?}: {}\n{}",
                    waiting.join(", "),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last lines of every service's logs (`docker-compose logs`),
    /// for a failure's message.
    pub fn logs(&self) -> String {
        self.logs_of("")
    }

    /// The last lines of one service's logs, or every service's for "".
    pub fn logs_of(&self, service: &str) -> String {
        let mut args = vec!["logs", "--no-color", "--tail", "40"];
        if !service.is_empty() {
            args.push(service);
        }
        match self.command(&args).output() {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(docker-compose logs failed: {e})"),
        }
    }

    /// Every line `service`'s container logged (for counting).
    pub fn full_logs(&self, service: &str) -> String {
        self.logs_since(service, "0")
    }

    /// What `service`'s container logged since `since` (a Unix time in
    /// seconds, as `docker logs --since` takes it).
    pub fn logs_since(&self, service: &str, since: &str) -> String {
        let Ok(id) = self.container(service) else {
            return String::new();
        };
        match Command::new("docker")
            .args(["logs", "--since", since, &id])
            .output()
        {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => String::new(),
        }
    }

    /// What the project left on the engine: containers, volumes and
    /// networks carrying its label.
    pub fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        let filter = format!("label={PROJECT_LABEL}={}", self.name);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &filter]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &filter]),
            ("network", vec!["network", "ls", "-q", "--filter", &filter]),
        ] {
            for id in docker(&args)?.lines().filter(|l| !l.trim().is_empty()) {
                left.push(format!("{kind} {id}"));
            }
        }
        Ok(left)
    }
}

/// A network partition between two containers, made with the host's
/// `iptables` inside one container's network namespace (`nsenter`):
/// packets to and from the other container's address are dropped, so
/// open connections stall and new ones time out, as across a failed link.
/// Healed when dropped.
pub struct Cut {
    pid: String,
    peer: String,
    healed: bool,
}

impl Cut {
    /// Drops every packet between `service`'s container and `peer`'s.
    pub fn new(stack: &Compose, service: &str, peer: &str) -> anyhow::Result<Cut> {
        for tool in ["nsenter", "iptables"] {
            stem_testkit::installed(tool, "util-linux iptables")?;
        }
        let pid = stack.inspect(service, "{{.State.Pid}}")?;
        let peer = stack.inspect(
            peer,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )?;
        // Healed on drop even if inserting the second rule fails.
        let cut = Cut {
            pid,
            peer,
            healed: false,
        };
        cut.rules("-I")?;
        Ok(cut)
    }

    /// Lets packets through again.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.healed = true;
        self.rules("-D")
    }

    fn rules(&self, op: &str) -> anyhow::Result<()> {
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let out = Command::new("nsenter")
                .args([
                    "-t", &self.pid, "-n", "iptables", op, chain, dir, &self.peer,
                ])
                .args(["-j", "DROP"])
                .output()
                .context("running nsenter iptables")?;
            if !out.status.success() {
                bail!(
                    "iptables {op} {chain} in pid {}'s network namespace failed \
                     (root is needed): {}",
                    self.pid,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if !self.healed {
            let _ = self.rules("-D");
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.command(&["down", "-v", "--remove-orphans"]).output();
        }
        // What `down` does not remove (a `run` container still running).
        let filter = format!("label={PROJECT_LABEL}={}", self.name);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in ids.lines().filter(|l| !l.is_empty()) {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
    }
}

/// `docker ARGS`, its standard output; fails with its output on a non-zero
/// exit.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies a file or a directory tree.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}
