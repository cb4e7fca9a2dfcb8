//! One compose stack, run for real on loopback, the way `docker compose
//! up` would run it, without a container engine:
//!
//! - the Stem services (`image: stem:local`) are the workspace's binaries,
//!   started with the service's `command:` and exactly its environment
//!   (the profile as `.env`, `environment:` over it, nothing of the test's
//!   own environment);
//! - `redis` is Debian's `redis-server` with the service's command (the
//!   profile's `REDIS_ARGS`, so the TLS profiles serve TLS only, with the
//!   certificates `scripts/generate_tls_assets.sh` made);
//! - `prometheus` is Debian's `prometheus` with the service's flags and
//!   the repository's `deploy/prometheus/prometheus.yml`;
//! - `nginx` is Debian's `nginx` with the repository's `nginx/nginx.conf`;
//! - services whose image has no Debian counterpart (the collector,
//!   Grafana, Jaeger) are not run; their addresses lead nowhere, which
//!   the Stem services must (and do) survive.
//!
//! What the harness changes is the addressing only ([`Loopback`]): each
//! (service, container port) becomes a loopback port, `service:port`
//! addresses and listen ports are rewritten to it, container paths
//! (`/certs`, `/etc/stem/schedules.yaml`, a config mounted by a volume)
//! become the host files behind them, and a container's private `/tmp`
//! becomes the stack's directory. Services start in `depends_on` order and
//! every healthcheck of a service that runs must pass before the next
//! service starts (compose waits only where a dependent asks; waiting for
//! all is stricter).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stem_testkit::{binary_path, installed, tail_lines, ServiceProcess};
use tempfile::TempDir;

use crate::compose::{Condition, Healthcheck, Profile, Project, Service};
use crate::loopback::Loopback;

/// How long one service may take to pass its healthcheck.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// Pause between two healthcheck runs.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// How long one healthcheck run may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables naming a port the service itself listens on.
const LISTEN_PORT_VARS: [&str; 4] = [
    "PORT",
    "DASHBOARD_PORT",
    "STEM_WORKER_HEALTH_PORT",
    "STEM_BEAT_HEALTH_PORT",
];

/// What runs a service's image here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    /// The workspace's binaries (`image: stem:local`).
    Stem,
    Redis,
    Prometheus,
    Nginx,
    /// No Debian counterpart: not run.
    Absent,
}

fn runner(image: &str) -> Runner {
    let repo = image.split(':').next().unwrap_or(image);
    match repo {
        "stem" => Runner::Stem,
        "redis" => Runner::Redis,
        "prom/prometheus" => Runner::Prometheus,
        "nginx" => Runner::Nginx,
        _ => Runner::Absent,
    }
}

/// The repository's root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running stack; dropping it stops nginx gracefully (its workers
/// would outlive a killed master) and kills everything else.
pub struct Stack {
    pub profile: Profile,
    pub project: Project,
    pub loopback: Loopback,
    /// Services of the compose file that the harness does not run.
    pub not_run: Vec<String>,
    running: Vec<(String, ServiceProcess)>,
    repo: PathBuf,
    dir: TempDir,
}

impl Stack {
    /// Brings up the stack with `profile_file` (e.g. `.env.hmac_tls`) as
    /// `.env`, after generating `./certs` with [`generate_certs`] as the
    /// README says.
    pub async fn up(profile_file: &str) -> anyhow::Result<Stack> {
        Self::up_with(profile_file, &[]).await
    }

    /// [`Stack::up`] with `extra` variables added to the profile, as a
    /// user adds lines to their `.env`.
    pub async fn up_with(profile_file: &str, extra: &[(&str, &str)]) -> anyhow::Result<Stack> {
        let repo = repo_root();
        let mut profile = Profile::load(&repo.join(profile_file))?;
        for (k, v) in extra {
            profile.vars.insert(k.to_string(), v.to_string());
        }
        let project = Project::load(&repo, &profile)?;
        let dir = tempfile::Builder::new()
            .prefix("stem-stack-")
            .tempdir()
            .context("creating the stack's directory")?;
        generate_certs(&repo, &dir.path().join("certs"))?;
        readable_by_containers(&project, &dir.path().join("certs"))?;
        let loopback = Loopback::new(project.services.keys().cloned());
        let mut stack = Stack {
            profile,
            project,
            loopback,
            not_run: Vec::new(),
            running: Vec::new(),
            repo,
            dir,
        };
        for name in stack.project.start_order()? {
            let service = stack.project.service(&name)?.clone();
            for (dep, condition) in &service.depends_on {
                if *condition == Condition::Healthy && stack.not_run.contains(dep) {
                    bail!("{name} waits for {dep} to be healthy, which the harness does not run");
                }
            }
            let kind = runner(&service.image);
            if kind == Runner::Absent {
                stack.not_run.push(name);
                continue;
            }
            let process = stack
                .start(&service, kind)
                .with_context(|| format!("starting service {name}"))?;
            stack.running.push((name.clone(), process));
            if service.healthcheck.is_some() {
                stack.wait_healthy(&service).await?;
            }
        }
        Ok(stack)
    }

    /// The gateway's base URL: nginx's published port 8080.
    pub fn gateway(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port())
    }

    /// The loopback port standing for nginx's published 8080.
    pub fn gateway_port(&self) -> u16 {
        self.loopback.port("nginx", 8080)
    }

    /// The stack's `./certs` (made by `scripts/generate_tls_assets.sh`).
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The CA's private key, where `scripts/generate_tls_assets.sh` puts
    /// it: beside `./certs`, in `./certs-ca`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.path().join("certs-ca").join("ca.key")
    }

    /// The stack's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every host path a service of the compose file mounts (bind mounts
    /// and named volumes alike), as `(service, host path, container path)`.
    pub fn mounts(&self) -> anyhow::Result<Vec<(String, PathBuf, String)>> {
        let mut out = Vec::new();
        for s in self.project.services.values() {
            for (source, target) in &s.volumes {
                out.push((
                    s.name.clone(),
                    self.volume_source(source, &self.certs())?,
                    target.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// `redis-cli` against the stack's Redis: its mapped port, the
    /// profile's `REDIS_CLI_ARGS` (the TLS profiles' certificates) and
    /// `args`, with `REDISCLI_AUTH` set to `password` or, for `None`,
    /// unset. Returns the exit status and stdout and stderr together.
    pub async fn redis_cli(
        &self,
        password: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let service = self.project.service("redis")?;
        let certs = self.certs();
        let mut words = vec![
            "-p".to_string(),
            self.loopback.port("redis", 6379).to_string(),
        ];
        if let Some(cli_args) = self.profile.vars.get("REDIS_CLI_ARGS") {
            words.extend(
                cli_args
                    .split_whitespace()
                    .map(|w| self.map_word(service, w, &certs)),
            );
        }
        words.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = tokio::process::Command::new(installed("redis-cli", "redis-tools")?);
        cmd.args(&words)
            .env_remove("REDISCLI_AUTH")
            .kill_on_drop(true);
        if let Some(pw) = password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        let out = tokio::time::timeout(CHECK_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("redis-cli {words:?} did not finish"))?
            .context("running redis-cli")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status, text))
    }

    /// The running process of `service`.
    pub fn process(&self, service: &str) -> anyhow::Result<&ServiceProcess> {
        self.running
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, p)| p)
            .with_context(|| format!("service {service} is not running"))
    }

    fn process_mut(&mut self, service: &str) -> anyhow::Result<&mut ServiceProcess> {
        self.running
            .iter_mut()
            .find(|(n, _)| n == service)
            .map(|(_, p)| p)
            .with_context(|| format!("service {service} is not running"))
    }

    /// The names of the running Stem services.
    pub fn stem_services(&self) -> Vec<String> {
        self.running
            .iter()
            .filter(|(n, _)| {
                self.project
                    .services
                    .get(n)
                    .is_some_and(|s| runner(&s.image) == Runner::Stem)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The last lines every running process logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, p) in &self.running {
            for line in tail_lines(&p.logs(), 30).lines() {
                out.push_str(&format!("[{name}] {line}\n"));
            }
        }
        out
    }

    /// `service`'s environment as its container would see it, mapped to
    /// loopback: the listen ports (`PORT`, `DASHBOARD_PORT`, the health ports) and
    /// `STEM_METRIC_EXPORTERS=prometheus:N` to the service's own mapped
    /// ports, `DASHBOARD_HOST=0.0.0.0` to 127.0.0.1, container paths to
    /// the files behind them, `service:port` addresses to loopback.
    pub fn env_of(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let s = self.project.service(service)?;
        let mut env = Vec::new();
        for (key, value) in &s.environment {
            let mapped = if LISTEN_PORT_VARS.contains(&key.as_str()) {
                let port: u16 = value
                    .parse()
                    .with_context(|| format!("{service}: {key}={value:?} is not a port"))?;
                self.loopback.port(service, port).to_string()
            } else if key == "DASHBOARD_HOST" && value == "0.0.0.0" {
                "127.0.0.1".to_string()
            } else if key == "STEM_METRIC_EXPORTERS" {
                value
                    .split(',')
                    .map(|item| {
                        let item = item.trim();
                        match item.strip_prefix("prometheus") {
                            Some(rest) => {
                                let port = match rest.strip_prefix(':') {
                                    Some(p) => p
                                        .parse()
                                        .with_context(|| format!("{service}: exporter {item:?}"))?,
                                    None if rest.is_empty() => 9464,
                                    None => bail!("{service}: exporter {item:?}"),
                                };
                                Ok(format!("prometheus:{}", self.loopback.port(service, port)))
                            }
                            None => Ok(self.loopback.rewrite(item)),
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(",")
            } else {
                self.map_word(s, value, &self.certs())
            };
            env.push((key.clone(), mapped));
        }
        Ok(env)
    }

    /// Runs `program` (a workspace binary, e.g. `stem`) with `args` and
    /// `service`'s environment, as `docker compose exec <service>` would.
    pub async fn exec(
        &self,
        service: &str,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        self.exec_with(self.env_of(service)?, program, args).await
    }

    /// Runs the workspace binary `program` with exactly `env`.
    pub async fn exec_with(
        &self,
        env: Vec<(String, String)>,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let path = binary_path(program)?;
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(args).env_clear().envs(env).kill_on_drop(true);
        if let Some(p) = std::env::var_os("PATH") {
            cmd.env("PATH", p);
        }
        tokio::time::timeout(CHECK_TIMEOUT * 3, cmd.output())
            .await
            .with_context(|| format!("{program} {args:?} did not finish"))?
            .with_context(|| format!("running {}", path.display()))
    }

    /// Starts a second `redis-server` with the `redis` service's command,
    /// but with `certs` behind `/certs` and on a port of its own; returns
    /// the process and its port.
    pub fn start_redis_with_certs(&self, certs: &Path) -> anyhow::Result<(ServiceProcess, u16)> {
        let service = self.project.service("redis")?;
        let port = stem_testkit::free_port();
        let data = self.dir.path().join(format!("redis-{port}"));
        std::fs::create_dir_all(&data)?;
        let args = self.redis_args(service, certs, port, &data)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let binary = installed("redis-server", "redis-server")?;
        let process = ServiceProcess::spawn_isolated("redis-other-ca", &binary, &args, &[])?;
        process.wait_for_log("Ready to accept connections", Duration::from_secs(10))?;
        Ok((process, port))
    }

    /// Sends SIGTERM to `service` and waits for its exit code (compose's
    /// `stop`, within the service's `stop_grace_period`).
    pub fn stop(&mut self, service: &str, within: Duration) -> anyhow::Result<Option<i32>> {
        let p = self.process_mut(service)?;
        p.sigterm()?;
        p.wait_exit(within)
    }

    fn start(&self, service: &Service, kind: Runner) -> anyhow::Result<ServiceProcess> {
        let name = service.name.as_str();
        let certs = self.certs();
        match kind {
            Runner::Stem => {
                let (program, args) = service
                    .command
                    .split_first()
                    .context("a Stem service without a command")?;
                let args: Vec<String> = args
                    .iter()
                    .map(|a| self.map_word(service, a, &certs))
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let env = self.env_of(name)?;
                let env: Vec<(&str, String)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                ServiceProcess::spawn_isolated(name, &binary_path(program)?, &args, &env)
            }
            Runner::Redis => {
                let data = self
                    .volume_target(service, "/data")?
                    .context("the redis service mounts no volume at /data")?;
                let args =
                    self.redis_args(service, &certs, self.loopback.port(name, 6379), &data)?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let binary = installed("redis-server", "redis-server")?;
                ServiceProcess::spawn_isolated(name, &binary, &args, &[])
            }
            Runner::Prometheus => {
                let mut args = Vec::new();
                for arg in &service.command {
                    match arg.split_once('=') {
                        Some(("--config.file", path)) => {
                            let host =
                                self.host_path(service, path, &certs)?.with_context(|| {
                                    format!("{name}: {path} is not mounted from the repository")
                                })?;
                            let copy = self.rewritten_copy(&host, "prometheus.yml", |t| {
                                self.loopback.rewrite(t)
                            })?;
                            args.push(format!("--config.file={}", copy.display()));
                        }
                        _ => args.push(self.map_word(service, arg, &certs)),
                    }
                }
                args.push(format!(
                    "--web.listen-address=127.0.0.1:{}",
                    self.loopback.port(name, 9090)
                ));
                args.push(format!(
                    "--storage.tsdb.path={}",
                    self.dir.path().join("prometheus-data").display()
                ));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let binary = installed("prometheus", "prometheus")?;
                ServiceProcess::spawn_isolated(name, &binary, &args, &[])
            }
            Runner::Nginx => {
                let conf = self
                    .host_path(service, "/etc/nginx/nginx.conf", &certs)?
                    .context("nginx: /etc/nginx/nginx.conf is not mounted from the repository")?;
                let copy = self.rewritten_copy(&conf, "nginx.conf", |t| self.nginx_conf(t))?;
                // The image's command is `nginx -g "daemon off;"`. Debian's
                // nginx, started as root, would run its workers as nobody,
                // who may not write its proxy buffers' temp files.
                let mut global = "daemon off;".to_string();
                if running_as_root() {
                    global.push_str(" user www-data;");
                }
                let copy = copy.display().to_string();
                let args = [
                    "-c",
                    copy.as_str(),
                    "-e",
                    "/dev/stderr",
                    "-g",
                    global.as_str(),
                ];
                let binary = installed("nginx", "nginx")?;
                ServiceProcess::spawn_isolated(name, &binary, &args, &[])
            }
            Runner::Absent => bail!("{name} has no runner"),
        }
    }

    /// The `redis` service's command as arguments for `redis-server`:
    /// `--port`/`--tls-port` mapped to `port` (a `--port` added when the
    /// command names none: the image listens on 6379), container paths
    /// mapped with `certs` behind `/certs`, then `--bind 127.0.0.1` and
    /// `--dir data` (the image's working directory is its `/data` volume).
    fn redis_args(
        &self,
        service: &Service,
        certs: &Path,
        port: u16,
        data: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let (program, words) = service
            .command
            .split_first()
            .context("redis without a command")?;
        if program != "redis-server" {
            bail!("redis runs {program:?}, not redis-server");
        }
        let mut args = Vec::new();
        let mut named_port = false;
        let mut words = words.iter();
        while let Some(w) = words.next() {
            if w == "--port" || w == "--tls-port" {
                let value = words
                    .next()
                    .with_context(|| format!("{w} without a value"))?;
                named_port |= w == "--port";
                let mapped = if value == "0" {
                    "0".to_string()
                } else {
                    port.to_string()
                };
                args.extend([w.clone(), mapped]);
            } else {
                args.push(self.map_word(service, w, certs));
            }
        }
        if !named_port {
            args.extend(["--port".to_string(), port.to_string()]);
        }
        args.extend([
            "--bind".to_string(),
            "127.0.0.1".to_string(),
            "--dir".to_string(),
            data.display().to_string(),
        ]);
        Ok(args)
    }

    /// nginx.conf with its upstreams on loopback, its `listen` ports
    /// mapped and its container-private `/tmp` in the stack's directory.
    fn nginx_conf(&self, text: &str) -> String {
        let text = self.loopback.rewrite(text);
        let tmp = format!("{}/", self.dir.path().display());
        let mut out = String::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let mut words = trimmed.splitn(2, ' ');
            let line = match (words.next(), words.next()) {
                (Some("listen"), Some(rest)) => {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    match rest[..digits].parse::<u16>() {
                        Ok(port) => format!(
                            "{indent}listen 127.0.0.1:{}{}",
                            self.loopback.port("nginx", port),
                            &rest[digits..]
                        ),
                        Err(_) => line.to_string(),
                    }
                }
                _ => line.replace(" /tmp/", &format!(" {tmp}")),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// `word` with a container path replaced by the host file behind it
    /// (with `certs` behind `./certs`), else with its `service:port`
    /// addresses on loopback.
    fn map_word(&self, service: &Service, word: &str, certs: &Path) -> String {
        match self.host_path(service, word, certs) {
            Ok(Some(host)) => host.display().to_string(),
            _ => self.loopback.rewrite(word),
        }
    }

    /// The host path behind container path `path` of `service`: the
    /// longest volume target it lies under, else a file the Dockerfile
    /// copied into the Stem image. `None` when `path` is not absolute or
    /// nothing is mounted there.
    fn host_path(
        &self,
        service: &Service,
        path: &str,
        certs: &Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        if !path.starts_with('/') {
            return Ok(None);
        }
        let mut best: Option<(&str, &str)> = None;
        for (source, target) in &service.volumes {
            let under = path == target
                || path
                    .strip_prefix(target.as_str())
                    .is_some_and(|r| r.starts_with('/'));
            if under && best.is_none_or(|(_, t)| t.len() < target.len()) {
                best = Some((source, target));
            }
        }
        if let Some((source, target)) = best {
            let base = self.volume_source(source, certs)?;
            let rest = path[target.len()..].trim_start_matches('/');
            return Ok(Some(if rest.is_empty() {
                base
            } else {
                base.join(rest)
            }));
        }
        if runner(&service.image) == Runner::Stem {
            return Ok(self.project.image_files.get(path).cloned());
        }
        Ok(None)
    }

    /// The host directory of the volume mounted at `target`.
    fn volume_target(&self, service: &Service, target: &str) -> anyhow::Result<Option<PathBuf>> {
        match service.volumes.iter().find(|(_, t)| t == target) {
            Some((source, _)) => Ok(Some(self.volume_source(source, &self.certs())?)),
            None => Ok(None),
        }
    }

    /// A volume's source on the host: `./certs` is the stack's generated
    /// certificates, another `./path` the repository's file, a named
    /// volume a directory of the stack's.
    fn volume_source(&self, source: &str, certs: &Path) -> anyhow::Result<PathBuf> {
        if source == "./certs" {
            return Ok(certs.to_path_buf());
        }
        if let Some(rel) = source.strip_prefix("./") {
            return Ok(self.repo.join(rel));
        }
        let dir = self.dir.path().join("volumes").join(source);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes `edit(contents of host)` to the stack's directory as `name`.
    fn rewritten_copy(
        &self,
        host: &Path,
        name: &str,
        edit: impl Fn(&str) -> String,
    ) -> anyhow::Result<PathBuf> {
        let text =
            std::fs::read_to_string(host).with_context(|| format!("reading {}", host.display()))?;
        let copy = self.dir.path().join(name);
        std::fs::write(&copy, edit(&text))
            .with_context(|| format!("writing {}", copy.display()))?;
        Ok(copy)
    }

    /// Runs `service`'s healthcheck until it passes (at most
    /// [`HEALTHY_WITHIN`]); fails early if the service exits.
    async fn wait_healthy(&mut self, service: &Service) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let last = match self.check_health(service).await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            let p = self.process_mut(&service.name)?;
            if let Some(status) = p.exit_status() {
                bail!(
                    "{} exited ({status}) before its healthcheck passed; log:\n{}",
                    service.name,
                    p.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not healthy within {HEALTHY_WITHIN:?}: {last}\nlog:\n{}",
                    service.name,
                    p.logs()
                );
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// One run of `service`'s healthcheck, as the container would run it:
    /// `stem probe …` with the service's environment, `wget URL` as an
    /// HTTP GET, a `CMD-SHELL` line by `sh -c` with the service's
    /// environment (with `redis-cli`, which in the container talks to its
    /// own default port, pointed at the mapped one).
    async fn check_health(&self, service: &Service) -> anyhow::Result<()> {
        let name = service.name.as_str();
        let certs = self.certs();
        match &service.healthcheck {
            None => Ok(()),
            Some(Healthcheck::Exec(words)) => {
                let words: Vec<String> = words
                    .iter()
                    .map(|w| {
                        self.loopback
                            .rewrite_local(name, &self.map_word(service, w, &certs))
                    })
                    .collect();
                match words.split_first() {
                    Some((prog, args)) if prog == "wget" => {
                        let url = args.last().context("wget without a URL")?;
                        let resp = stem_e2e::http_client()
                            .get(url)
                            .timeout(CHECK_TIMEOUT)
                            .send()
                            .await?;
                        if resp.status().is_success() {
                            Ok(())
                        } else {
                            bail!("wget {url}: {}", resp.status())
                        }
                    }
                    Some((prog, args)) if runner(&service.image) == Runner::Stem => {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let out = self.exec(name, prog, &args).await?;
                        if out.status.success() {
                            Ok(())
                        } else {
                            bail!(
                                "{prog} {args:?}: {} {}",
                                out.status,
                                String::from_utf8_lossy(&out.stderr).trim()
                            )
                        }
                    }
                    _ => bail!("{name}: healthcheck {words:?} is not one the harness runs"),
                }
            }
            Some(Healthcheck::Shell(line)) => {
                let mut words = Vec::new();
                for w in line.split_whitespace() {
                    words.push(self.map_word(service, w, &certs));
                    if w == "redis-cli" && runner(&service.image) == Runner::Redis {
                        words
                            .extend(["-p".to_string(), self.loopback.port(name, 6379).to_string()]);
                    }
                }
                let script = words.join(" ");
                let out = tokio::time::timeout(
                    CHECK_TIMEOUT,
                    tokio::process::Command::new("sh")
                        .args(["-c", &script])
                        .envs(self.env_of(name)?)
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .with_context(|| format!("{script} did not finish"))??;
                if out.status.success() {
                    Ok(())
                } else {
                    bail!(
                        "sh -c {script:?}: {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A killed nginx master leaves its workers serving; stop it.
        if let Ok(nginx) = self.process_mut("nginx") {
            if nginx.sigterm().is_ok() {
                let _ = nginx.wait_exit(Duration::from_secs(10));
            }
        }
        if std::thread::panicking() {
            eprintln!("----- the stack's logs -----\n{}", self.logs());
        }
    }
}

/// `KEY_MODE=644 scripts/generate_tls_assets.sh <dir> redis
/// "redis,localhost,127.0.0.1"`, the README's command for the stack (the
/// CA's key goes to `<dir>-ca`, beside `dir`).
pub fn generate_certs(repo: &Path, dir: &Path) -> anyhow::Result<()> {
    installed("openssl", "openssl")?;
    let out = std::process::Command::new(repo.join("scripts/generate_tls_assets.sh"))
        .env("KEY_MODE", "644")
        .arg(dir)
        .args(["redis", "redis,localhost,127.0.0.1"])
        .output()
        .context("running scripts/generate_tls_assets.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/generate_tls_assets.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every file a service reads from `./certs` must be readable by the
/// container's user, which is not the host user owning the bind-mounted
/// files (redis runs as 999, the Stem image as 10001): the directory must
/// be open to others and each file others-readable. Running every process
/// as one user here would hide that, so it is checked on the modes.
fn readable_by_containers(project: &Project, certs: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .permissions()
            .mode())
    };
    if mode(certs)? & 0o005 != 0o005 {
        bail!(
            "./certs is not open to the containers' users (mode {:o})",
            mode(certs)?
        );
    }
    for s in project.services.values() {
        let words = s.environment.values().chain(s.command.iter());
        for file in words
            .flat_map(|w| w.split_whitespace())
            .filter_map(|w| w.strip_prefix("/certs/"))
        {
            let path = certs.join(file);
            if mode(&path)? & 0o004 == 0 {
                bail!(
                    "{}: {} is mode {:o}, unreadable by the container's user; \
                     generate the certificates with KEY_MODE=644 (README, Docker Compose)",
                    s.name,
                    path.display(),
                    mode(&path)? & 0o777
                );
            }
        }
    }
    Ok(())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
