//! The compose project as compose itself reads it: `docker-compose config`
//! (docker-compose 1.29) resolves `docker-compose.yml` for a profile —
//! merge keys, `${VAR:-default}` and `${VAR:?message}` interpolation,
//! `env_file: .env` read into each service's environment, every field in
//! one form — and this module types what it prints: per service the image,
//! command, environment, healthcheck, volumes, published ports and
//! dependencies; plus the files `deploy/Dockerfile` copies into the Stem
//! image (the schedule file), which compose does not know.
//!
//! Compose does the parsing (until 2026-12-08 the harness interpolated
//! and merged the YAML itself); the typed structs model only what the
//! stack test needs, and a form they do not know is an error rather than
//! a silent default, so a change the harness cannot follow fails loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_norway::Value;
use stem_testkit::installed;

/// A `.env` profile (`.env.hmac`, …): `KEY=VALUE` lines, `#` comments.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file name, e.g. `.env.hmac_tls`.
    pub name: String,
    /// Its variables, in file order of first appearance.
    pub vars: BTreeMap<String, String>,
}

impl Profile {
    /// Reads `path` the way compose reads an `env_file`: one `KEY=VALUE`
    /// per line, the value taken verbatim (the shipped profiles quote
    /// nothing), blank lines and `#` comments skipped.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut vars = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("{}:{}: not KEY=VALUE: {line:?}", path.display(), n + 1);
            };
            vars.insert(key.trim().to_string(), value.to_string());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Profile { name, vars })
    }

    /// The value of `var`, which the profile must set.
    pub fn required(&self, var: &str) -> anyhow::Result<String> {
        self.vars
            .get(var)
            .cloned()
            .with_context(|| format!("{} sets no {var}", self.name))
    }

    /// Whether the profile makes Redis serve TLS (a `rediss://` broker).
    pub fn tls(&self) -> bool {
        self.vars
            .get("STEM_BROKER_URL")
            .is_some_and(|u| u.starts_with("rediss://"))
    }
}

/// What a service waits for in `depends_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `service_started` (or the short list form).
    Started,
    /// `service_healthy`: its healthcheck passes.
    Healthy,
}

/// A healthcheck's `test`.
#[derive(Debug, Clone)]
pub enum Healthcheck {
    /// `["CMD", program, args…]`.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "…"]` or a plain string: run by `sh -c`.
    Shell(String),
}

/// A published port: `[ip:]host:container`.
#[derive(Debug, Clone)]
pub struct Published {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

/// One service of the compose file, interpolated.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// `command:`, split into words (empty: the image's default).
    pub command: Vec<String>,
    /// `env_file` values overlaid by `environment:`.
    pub environment: BTreeMap<String, String>,
    pub healthcheck: Option<Healthcheck>,
    /// `(source, container path)`: a `./relative` bind source or a named
    /// volume.
    pub volumes: Vec<(String, String)>,
    pub ports: Vec<Published>,
    pub depends_on: Vec<(String, Condition)>,
}

/// The compose file and the image's files, for one profile.
#[derive(Debug, Clone)]
pub struct Project {
    pub services: BTreeMap<String, Service>,
    /// Files the Dockerfile copies from the build context into the image:
    /// container path → repository path.
    pub image_files: BTreeMap<String, PathBuf>,
}

impl Project {
    /// The project as `docker-compose config` resolves it for `profile`:
    /// compose itself applies the merge keys, interpolates `${…}` (and
    /// refuses a `${VAR:?…}` the profile leaves unset), reads `env_file`
    /// into each service's environment and writes every field in one
    /// form; this only types what it prints. The profile is written as
    /// `.env` of a scratch project directory (compose resolves relative
    /// paths against it; [`Service::volumes`] gives them back relative).
    pub fn load(repo: &Path, profile: &Profile) -> anyhow::Result<Self> {
        let compose = installed("docker-compose", "docker-compose")?;
        let dir = tempfile::tempdir().context("a scratch project directory")?;
        let env: String = profile
            .vars
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(dir.path().join(".env"), env).context("writing the profile as .env")?;
        let out = std::process::Command::new(compose)
            .arg("--project-directory")
            .arg(dir.path())
            .arg("-f")
            .arg(repo.join("docker-compose.yml"))
            .arg("config")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .context("running docker-compose config")?;
        if !out.status.success() {
            bail!(
                "docker-compose config refuses the project with {}: {}",
                profile.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let config: Config = serde_norway::from_slice(&out.stdout)
            .context("reading docker-compose config's output")?;
        let root = format!("{}/", dir.path().display());
        let services = config
            .services
            .into_iter()
            .map(|(name, raw)| {
                let service = raw
                    .typed(&name, &root)
                    .with_context(|| format!("service {name} of docker-compose.yml"))?;
                Ok((name, service))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Project {
            services,
            image_files: dockerfile_copies(repo)?,
        })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .get(name)
            .with_context(|| format!("docker-compose.yml has no service {name}"))
    }

    /// Service names in an order where every service comes after those it
    /// depends on.
    pub fn start_order(&self) -> anyhow::Result<Vec<String>> {
        let mut order: Vec<String> = Vec::new();
        while order.len() < self.services.len() {
            let before = order.len();
            for (name, s) in &self.services {
                if order.contains(name) {
                    continue;
                }
                if s.depends_on.iter().all(|(d, _)| order.contains(d)) {
                    order.push(name.clone());
                }
            }
            if order.len() == before {
                bail!("docker-compose.yml: depends_on has a cycle or names a missing service");
            }
        }
        Ok(order)
    }
}

/// What `docker-compose config` prints, as far as the harness reads it;
/// the rest (build, restart, stop_grace_period, …) is compose's business.
#[derive(Debug, Deserialize)]
struct Config {
    services: BTreeMap<String, RawService>,
}

/// One service as compose prints it: every field in one form (a command
/// is a string or a list, depends_on always a mapping with conditions).
#[derive(Debug, Deserialize)]
struct RawService {
    image: String,
    command: Option<Words>,
    #[serde(default)]
    environment: BTreeMap<String, Option<Value>>,
    healthcheck: Option<RawHealthcheck>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    depends_on: BTreeMap<String, RawDependency>,
}

/// A command or a healthcheck test: one shell line or a list of words.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    Line(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawHealthcheck {
    test: Words,
}

#[derive(Debug, Deserialize)]
struct RawDependency {
    condition: String,
}

impl RawService {
    /// The service as the harness reads it; `root` is the scratch project
    /// directory compose resolved relative paths against.
    fn typed(self, name: &str, root: &str) -> anyhow::Result<Service> {
        let command = match self.command {
            None => Vec::new(),
            Some(Words::Line(line)) => line.split_whitespace().map(str::to_string).collect(),
            Some(Words::List(words)) => words,
        };
        let environment = self
            .environment
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_ref().map(scalar).transpose()?.unwrap_or_default())))
            .collect::<anyhow::Result<_>>()?;
        let healthcheck = match self.healthcheck.map(|h| h.test) {
            None => None,
            Some(Words::Line(line)) => Some(Healthcheck::Shell(line)),
            Some(Words::List(words)) => match words.split_first() {
                Some((kind, rest)) if kind == "CMD" => Some(Healthcheck::Exec(rest.to_vec())),
                Some((kind, [cmd])) if kind == "CMD-SHELL" => Some(Healthcheck::Shell(cmd.clone())),
                Some((kind, _)) if kind == "NONE" => None,
                _ => bail!("healthcheck test neither CMD nor CMD-SHELL: {words:?}"),
            },
        };
        let volumes = self
            .volumes
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                match (parts.next(), parts.next()) {
                    // Back to `./path`: what the harness maps to the
                    // repository's files or the stack's certificates.
                    (Some(src), Some(dst)) => Ok((
                        src.strip_prefix(root)
                            .map_or_else(|| src.to_string(), |rest| format!("./{rest}")),
                        dst.to_string(),
                    )),
                    _ => bail!("volume {v:?} is not source:target[:mode]"),
                }
            })
            .collect::<anyhow::Result<_>>()?;
        let ports = self
            .ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<_>>()?;
        let depends_on = self
            .depends_on
            .into_iter()
            .map(|(dep, d)| {
                let condition = match d.condition.as_str() {
                    "service_started" => Condition::Started,
                    "service_healthy" => Condition::Healthy,
                    other => bail!("depends_on {dep}: condition {other}"),
                };
                Ok((dep, condition))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Service {
            name: name.to_string(),
            image: self.image,
            command,
            environment,
            healthcheck,
            volumes,
            ports,
            depends_on,
        })
    }
}

/// A YAML scalar as compose reads it (numbers and booleans as text).
fn scalar(v: &Value) -> anyhow::Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => bail!("expected a scalar, got {other:?}"),
    }
}

/// `[ip:]host:container[/tcp]` (compose prints the protocol).
fn parse_port(p: &str) -> anyhow::Result<Published> {
    let bare = p.strip_suffix("/tcp").unwrap_or(p);
    let parts: Vec<&str> = bare.split(':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .with_context(|| format!("port {p:?}: {s:?} is not a port"))
    };
    match parts.as_slice() {
        [host, container] => Ok(Published {
            host_ip: None,
            host_port: port(host)?,
            container_port: port(container)?,
        }),
        [ip, host, container] => Ok(Published {
            host_ip: Some(ip.to_string()),
            host_port: port(host)?,
            container_port: port(container)?,
        }),
        _ => bail!("port {p:?} is not [ip:]host:container"),
    }
}

/// `COPY <source> <absolute target>` lines of `deploy/Dockerfile` that copy
/// a file of the build context (not `--from=` another stage, not `. .`).
fn dockerfile_copies(repo: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let path = repo.join("deploy/Dockerfile");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["COPY", src, dst] = words.as_slice() {
            if dst.starts_with('/') && !src.starts_with("--") {
                files.insert(dst.to_string(), repo.join(src));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_and_without_address() -> anyhow::Result<()> {
        let p = parse_port("127.0.0.1:8080:80")?;
        assert_eq!(
            (p.host_ip.as_deref(), p.host_port, p.container_port),
            (Some("127.0.0.1"), 8080, 80)
        );
        assert_eq!(parse_port("4317:4317")?.host_port, 4317);
        assert_eq!(parse_port("127.0.0.1:6379:6379/tcp")?.container_port, 6379);
        assert!(parse_port("8080").is_err());
        Ok(())
    }
}
