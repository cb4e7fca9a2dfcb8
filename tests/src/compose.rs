//! The compose project as `docker compose` reads it: `docker-compose.yml`
//! with its YAML merge keys (`<<: *stem`) applied and `${VAR:-default}`
//! interpolated from the profile copied to `.env`; per service the image,
//! command, environment (`env_file: .env` first, `environment:` over it),
//! healthcheck, volumes, published ports and dependencies; and the files
//! `deploy/Dockerfile` copies into the Stem image (the schedule file).
//!
//! Only what the stack test needs is modelled, and anything it does not
//! understand is an error rather than a silent default, so a change to the
//! compose file that the harness cannot follow fails the test loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_norway::Value;

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
    /// Reads `docker-compose.yml` and `deploy/Dockerfile` of `repo` with
    /// `profile` as the `.env`.
    pub fn load(repo: &Path, profile: &Profile) -> anyhow::Result<Self> {
        let path = repo.join("docker-compose.yml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut doc: Value =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        doc.apply_merge()
            .context("applying the compose file's merge keys")?;
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .context("docker-compose.yml has no services")?;
        let mut out = BTreeMap::new();
        for (name, spec) in services {
            let name = name
                .as_str()
                .context("a service name that is not a string")?;
            let service = Service::parse(name, spec, profile)
                .with_context(|| format!("service {name} of docker-compose.yml"))?;
            out.insert(name.to_string(), service);
        }
        let image_files = dockerfile_copies(repo)?;
        Ok(Project {
            services: out,
            image_files,
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

impl Service {
    fn parse(name: &str, spec: &Value, profile: &Profile) -> anyhow::Result<Self> {
        let image = spec
            .get("image")
            .and_then(Value::as_str)
            .context("no image")?
            .to_string();
        let command = match spec.get("command") {
            None => Vec::new(),
            Some(Value::String(s)) => interpolate(s, profile)?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            Some(Value::Sequence(words)) => words
                .iter()
                .map(|w| scalar(w).and_then(|w| interpolate(&w, profile)))
                .collect::<anyhow::Result<_>>()?,
            Some(other) => bail!("command is neither a string nor a list: {other:?}"),
        };
        let mut environment = BTreeMap::new();
        match spec.get("env_file") {
            None => {}
            Some(Value::String(f)) if f == ".env" => environment.extend(profile.vars.clone()),
            Some(other) => bail!("env_file other than .env: {other:?}"),
        }
        if let Some(env) = spec.get("environment") {
            let env = env.as_mapping().context("environment is not a mapping")?;
            for (k, v) in env {
                let k = k
                    .as_str()
                    .context("an environment key that is not a string")?;
                environment.insert(k.to_string(), interpolate(&scalar(v)?, profile)?);
            }
        }
        let healthcheck = match spec.get("healthcheck").and_then(|h| h.get("test")) {
            None => None,
            Some(Value::String(s)) => Some(Healthcheck::Shell(interpolate(s, profile)?)),
            Some(Value::Sequence(words)) => {
                let words: Vec<String> = words
                    .iter()
                    .map(|w| scalar(w).and_then(|w| interpolate(&w, profile)))
                    .collect::<anyhow::Result<_>>()?;
                match words.split_first() {
                    Some((kind, rest)) if kind == "CMD" => Some(Healthcheck::Exec(rest.to_vec())),
                    Some((kind, [cmd])) if kind == "CMD-SHELL" => {
                        Some(Healthcheck::Shell(cmd.clone()))
                    }
                    _ => bail!("healthcheck test neither CMD nor CMD-SHELL: {words:?}"),
                }
            }
            Some(other) => bail!("healthcheck test is neither a string nor a list: {other:?}"),
        };
        let volumes = list_of_strings(spec.get("volumes"))?
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                match (parts.next(), parts.next()) {
                    (Some(src), Some(dst)) => Ok((src.to_string(), dst.to_string())),
                    _ => bail!("volume {v:?} is not source:target[:mode]"),
                }
            })
            .collect::<anyhow::Result<_>>()?;
        let ports = list_of_strings(spec.get("ports"))?
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<_>>()?;
        let depends_on = match spec.get("depends_on") {
            None => Vec::new(),
            Some(Value::Sequence(names)) => names
                .iter()
                .map(|n| Ok((scalar(n)?, Condition::Started)))
                .collect::<anyhow::Result<_>>()?,
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let dep = scalar(k)?;
                    let cond = match v.get("condition").and_then(Value::as_str) {
                        None | Some("service_started") => Condition::Started,
                        Some("service_healthy") => Condition::Healthy,
                        Some(other) => bail!("depends_on {dep}: condition {other}"),
                    };
                    Ok((dep, cond))
                })
                .collect::<anyhow::Result<_>>()?,
            Some(other) => bail!("depends_on is neither a list nor a mapping: {other:?}"),
        };
        Ok(Service {
            name: name.to_string(),
            image,
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

fn list_of_strings(v: Option<&Value>) -> anyhow::Result<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect(),
        Some(other) => bail!("expected a list, got {other:?}"),
    }
}

/// `[ip:]host:container`.
fn parse_port(p: &str) -> anyhow::Result<Published> {
    let parts: Vec<&str> = p.split(':').collect();
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

/// Compose's interpolation of `${NAME}`, `${NAME:-default}` and
/// `${NAME:?message}` from the `.env` (a variable the profile leaves out is
/// empty, as compose makes it with a warning; with `:?` compose refuses
/// the file, and so does this); `$$` is a literal `$`.
pub fn interpolate(text: &str, profile: &Profile) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .with_context(|| format!("unclosed ${{ in {text:?}"))?;
            let expr = &inner[..end];
            let value = |name: &str| profile.vars.get(name).filter(|v| !v.is_empty());
            if let Some((name, message)) = expr.split_once(":?") {
                let v = value(name).with_context(|| {
                    format!("{name} is unset or empty in {}: {message}", profile.name)
                })?;
                out.push_str(v);
            } else {
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                out.push_str(value(name).map(String::as_str).or(default).unwrap_or(""));
            }
            rest = &inner[end + 1..];
        } else {
            bail!("unsupported interpolation in {text:?} (use ${{NAME}} or ${{NAME:-default}})");
        }
    }
    out.push_str(rest);
    Ok(out)
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

    fn profile(pairs: &[(&str, &str)]) -> Profile {
        Profile {
            name: ".env".into(),
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn interpolation_follows_compose() -> anyhow::Result<()> {
        let p = profile(&[("A", "--tls-port 6379"), ("EMPTY", "")]);
        assert_eq!(interpolate("x ${A:-} y", &p)?, "x --tls-port 6379 y");
        assert_eq!(interpolate("${EMPTY:-d}", &p)?, "d");
        assert_eq!(interpolate("${MISSING}", &p)?, "");
        assert_eq!(interpolate("$$HOME", &p)?, "$HOME");
        assert!(interpolate("$A", &p).is_err());
        assert_eq!(interpolate("${A:?set A}", &p)?, "--tls-port 6379");
        for required in ["${MISSING:?set it}", "${EMPTY:?set it}"] {
            let e = interpolate(required, &p).expect_err(required);
            assert!(format!("{e:#}").contains("set it"), "{e:#}");
        }
        Ok(())
    }

    #[test]
    fn ports_parse_with_and_without_address() -> anyhow::Result<()> {
        let p = parse_port("127.0.0.1:8080:80")?;
        assert_eq!(
            (p.host_ip.as_deref(), p.host_port, p.container_port),
            (Some("127.0.0.1"), 8080, 80)
        );
        assert_eq!(parse_port("4317:4317")?.host_port, 4317);
        assert!(parse_port("8080").is_err());
        Ok(())
    }
}
