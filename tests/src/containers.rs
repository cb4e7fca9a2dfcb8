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

use parking_lot::{Mutex, MutexGuard};
use std::path::Path;
use std::process::{Command, Output};
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

/// `docker inspect` format of a container's address on its network.
const IP_FORMAT: &str = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";

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
        let one = ONE_STACK.lock();
        let repo = repo_root();
        for tool in ["docker", "docker-compose"] {
            stem_testkit::installed(tool, "docker.io docker-compose")?;
        }
        for image in [STEM_IMAGE, "stem-standin:local"] {
            if docker(&["image", "inspect", image]).is_err() {
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
        inspect(&self.container(service)?, format)
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
        text_of(self.command(&args))
    }

    /// Every line `service`'s container logged (for counting).
    pub fn full_logs(&self, service: &str) -> String {
        self.logs_since(service, "0")
    }

    /// What `service`'s container logged since `since` (a Unix time in
    /// seconds, as `docker logs --since` takes it).
    pub fn logs_since(&self, service: &str, since: &str) -> String {
        match self.container(service) {
            Ok(id) => container_logs(&id, since),
            Err(e) => format!("({e})"),
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

/// A network partition made with the host's `iptables` inside one
/// container's network namespace (`nsenter`): the packets it matches are
/// dropped, so open connections stall and new ones time out, as across a
/// failed link. Healed when dropped.
pub struct Cut {
    pid: String,
    /// (chain, match arguments) of each rule.
    rules: Vec<(&'static str, [String; 2])>,
    healed: bool,
}

impl Cut {
    /// Drops every packet between `service`'s container and `peer`'s.
    pub fn new(stack: &Compose, service: &str, peer: &str) -> anyhow::Result<Cut> {
        let pid = stack.inspect(service, "{{.State.Pid}}")?;
        let peer = stack.inspect(peer, IP_FORMAT)?;
        Cut::install(
            pid,
            vec![
                ("INPUT", ["-s".into(), peer.clone()]),
                ("OUTPUT", ["-d".into(), peer]),
            ],
        )
    }

    /// Cuts `container` off its network altogether (every packet on
    /// `eth0`, both ways), while it keeps running.
    pub fn isolate(container: &str) -> anyhow::Result<Cut> {
        let pid = inspect(container, "{{.State.Pid}}")?;
        Cut::install(
            pid,
            vec![
                ("INPUT", ["-i".into(), "eth0".into()]),
                ("OUTPUT", ["-o".into(), "eth0".into()]),
            ],
        )
    }

    fn install(pid: String, rules: Vec<(&'static str, [String; 2])>) -> anyhow::Result<Cut> {
        for tool in ["nsenter", "iptables"] {
            stem_testkit::installed(tool, "util-linux iptables")?;
        }
        // Healed on drop even if inserting a later rule fails.
        let cut = Cut {
            pid,
            rules,
            healed: false,
        };
        cut.apply("-I")?;
        Ok(cut)
    }

    /// Lets packets through again.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.healed = true;
        self.apply("-D")
    }

    fn apply(&self, op: &str) -> anyhow::Result<()> {
        for (chain, matching) in &self.rules {
            let out = Command::new("nsenter")
                .args(["-t", &self.pid, "-n", "iptables", op, chain])
                .args(matching)
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
            let _ = self.apply("-D");
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

/// `docker inspect --format FORMAT CONTAINER`, trimmed.
fn inspect(container: &str, format: &str) -> anyhow::Result<String> {
    Ok(docker(&["inspect", "--format", format, container])?
        .trim()
        .to_string())
}

/// Everything `container` logged since `since` (a Unix time in seconds, as
/// `docker logs --since` takes it; "0" for all).
fn container_logs(container: &str, since: &str) -> String {
    let mut cmd = Command::new("docker");
    cmd.args(["logs", "--since", since, container]);
    text_of(cmd)
}

/// A command's standard output and error as text, for a log or a failure's
/// message (the failure to run it, if it did not run).
fn text_of(mut cmd: Command) -> String {
    match cmd.output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("({cmd:?} failed: {e})"),
    }
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

/// The image the cluster's nodes run (docker-compose.yml's Redis).
const REDIS_IMAGE: &str = "redis:7.2.5-bookworm";

/// A Redis Cluster of containers on a network of its own, with Stem
/// containers beside it: each node is `redis-server` with cluster mode,
/// a 2 s node timeout and the append-only file synced on every write, in
/// its own container with its own address, so one can be cut off (not
/// killed) with [`Cut::isolate`]. Everything is removed when dropped.
pub struct ContainerCluster {
    /// The network's name, also every container's name prefix.
    pub name: String,
    /// The nodes' container names, in creation order (masters first, as
    /// `redis-cli --cluster create` assigns them).
    pub nodes: Vec<String>,
    /// Their addresses, in the same order.
    ips: Vec<String>,
    others: Vec<String>,
}

impl ContainerCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits
    /// until every node reports `cluster_state:ok` and knows every other.
    pub async fn start(name: &str, masters: usize, replicas: usize) -> anyhow::Result<Self> {
        let _ = docker(&["network", "rm", name]);
        docker(&["network", "create", name])?;
        let mut cluster = ContainerCluster {
            name: name.to_string(),
            nodes: Vec::new(),
            ips: Vec::new(),
            others: Vec::new(),
        };
        for n in 0..masters * (1 + replicas) {
            let node = format!("{name}-redis-{n}");
            let _ = docker(&["rm", "-f", "-v", &node]);
            docker(&[
                "run",
                "-d",
                "--name",
                &node,
                "--network",
                name,
                REDIS_IMAGE,
                "redis-server",
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])?;
            cluster.ips.push(inspect(&node, IP_FORMAT)?);
            cluster.nodes.push(node);
        }
        let mut create = vec![
            "exec".to_string(),
            cluster.nodes[0].clone(),
            "redis-cli".into(),
        ];
        create.extend(["--cluster".into(), "create".into()]);
        for ip in &cluster.ips {
            create.push(format!("{ip}:6379"));
        }
        create.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        // The nodes may still be starting: retry until they answer.
        stem_testkit::poll(
            "redis-cli --cluster create",
            Duration::from_secs(30),
            || async { Ok(docker(&create).ok()) },
        )
        .await?;
        let count = cluster.nodes.len();
        stem_testkit::poll("the cluster to form", Duration::from_secs(60), || async {
            for n in 0..count {
                let info = cluster.cli(n, &["CLUSTER", "INFO"])?;
                let known = cluster.cli(n, &["CLUSTER", "NODES"])?.lines().count();
                if !info.contains("cluster_state:ok") || known < count {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        Ok(cluster)
    }

    /// `redis-cli ARGS` inside node `n`.
    pub fn cli(&self, n: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["exec", self.nodes[n].as_str(), "redis-cli"];
        full.extend_from_slice(args);
        Ok(docker(&full)?.trim().to_string())
    }

    /// `redis+cluster://…` naming every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.ips.iter().map(|ip| format!("{ip}:6379")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node serving hash tag `tag`'s slot as master.
    pub fn master_of(&self, tag: &str) -> anyhow::Result<usize> {
        let slot: u16 = self.cli(0, &["CLUSTER", "KEYSLOT", tag])?.parse()?;
        let nodes = self.cli(0, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if let Some(n) = serves.then(|| self.node_at(fields[1])).flatten() {
                return Ok(n);
            }
        }
        bail!("no master serves slot {slot} ({tag}): {nodes}")
    }

    /// The replicas of node `master`, as it lists them.
    pub fn replicas_of(&self, master: usize) -> anyhow::Result<Vec<usize>> {
        let id = self.cli(master, &["CLUSTER", "MYID"])?;
        let nodes = self.cli(master, &["CLUSTER", "NODES"])?;
        let mut replicas = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 3 && fields[3] == id {
                replicas.extend(self.node_at(fields[1]));
            }
        }
        Ok(replicas)
    }

    /// The node a `CLUSTER NODES` address field (`ip:port@cport`) names.
    fn node_at(&self, address: &str) -> Option<usize> {
        let ip = address.split(':').next()?;
        self.ips.iter().position(|i| i == ip)
    }

    /// Field `name` of node `n`'s `INFO replication`.
    fn replication(&self, n: usize, name: &str) -> anyhow::Result<String> {
        let info = self.cli(n, &["INFO", "replication"])?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::to_string)
            .with_context(|| format!("no {name} in INFO replication: {info}"))
    }

    /// `master` or `slave`, as node `n` reports itself.
    pub fn role(&self, n: usize) -> anyhow::Result<String> {
        self.replication(n, "role")
    }

    /// The replication offset node `n` reports (`master_repl_offset`).
    pub fn repl_offset(&self, n: usize) -> anyhow::Result<u64> {
        self.replication(n, "master_repl_offset")?
            .parse()
            .context("master_repl_offset")
    }

    /// Starts a container of the Stem image on the cluster's network running
    /// `command` with `env` (and 127.0.0.1 publishing `publish`, if any);
    /// returns its name.
    pub fn run_stem(
        &mut self,
        role: &str,
        command: &str,
        env: &[(&str, String)],
        publish: Option<u16>,
    ) -> anyhow::Result<String> {
        let name = format!("{}-{role}", self.name);
        let _ = docker(&["rm", "-f", &name]);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.extend(["--network".into(), self.name.clone()]);
        if let Some(port) = publish {
            args.extend(["-p".into(), format!("127.0.0.1::{port}")]);
        }
        for (k, v) in env {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.extend([STEM_IMAGE.into(), command.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)?;
        self.others.push(name.clone());
        Ok(name)
    }

    /// The host port a container publishes for `port`.
    pub fn published(&self, container: &str, port: u16) -> anyhow::Result<u16> {
        let out = docker(&["port", container, &port.to_string()])?;
        out.lines()
            .find_map(|l| l.rsplit(':').next().and_then(|p| p.trim().parse().ok()))
            .with_context(|| format!("{container} publishes no {port}: {out}"))
    }

    /// Every line `container` logged.
    pub fn logs(&self, container: &str) -> String {
        container_logs(container, "0")
    }
}

impl Drop for ContainerCluster {
    fn drop(&mut self) {
        for c in self.others.iter().chain(&self.nodes) {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        let _ = docker(&["network", "rm", &self.name]);
    }
}
