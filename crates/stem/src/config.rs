//! `StemConfig::from_env()`: every `STEM_*` variable this library reads,
//! parsed and validated once at start-up. A bad value becomes
//! [`StemError::Config`] naming the variable; binaries turn that into exit 78.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, StemError};
use crate::signing::KeyRing;

pub use crate::redis_conn::url::{StoreUrl, TlsConfig};

pub use crate::env::{
    bool_var, count_var, duration_var, non_empty, parse_duration, port_var, positive_var,
    process_env, FlagsOverEnv, Lookup,
};

/// Log output format (`STEM_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`text`, the default).
    Text,
    /// One JSON object per line (`json`).
    Json,
}

/// Settings shared by every process.
#[derive(Clone, Debug)]
pub struct StemConfig {
    /// Where the queues live (`STEM_BROKER_URL`, default
    /// [`DEFAULT_BROKER_URL`]).
    pub broker_url: StoreUrl,
    /// Where task statuses and results live (`STEM_RESULT_BACKEND_URL`; the
    /// broker URL when unset).
    pub result_backend_url: StoreUrl,
    /// Where schedule entries and beat's locks live (`STEM_SCHEDULE_STORE_URL`;
    /// the broker URL when unset).
    pub schedule_store_url: StoreUrl,
    /// How long the result backend keeps its records (`STEM_RESULT_TTL`,
    /// default 24 h).
    pub result_ttl: Duration,
    /// Signing algorithm and keys (`STEM_SIGNING_*`).
    pub keys: KeyRing,
    /// TLS settings for Redis connections (`STEM_TLS_*`).
    pub tls: TlsConfig,
    /// Log output format (`STEM_LOG_FORMAT`); the binaries install the logger.
    pub log_format: LogFormat,
    /// How many dead letters a queue keeps (`STEM_DEAD_LETTER_MAXLEN`).
    pub dead_letter_maxlen: usize,
    /// How many published tasks a queue's recent-task index keeps
    /// (`STEM_RECENT_TASKS`; 0 turns the index off).
    pub recent_tasks: usize,
    /// `STEM_METRIC_EXPORTERS`.
    pub metric_exporters: Vec<crate::telemetry::Exporter>,
    /// The OpenTelemetry collector's OTLP/HTTP base URL
    /// (`STEM_OTLP_ENDPOINT`, e.g. `http://otel-collector:4318`): where a
    /// bare `otlp` exporter pushes metrics (`/v1/metrics` appended).
    pub otlp_endpoint: Option<String>,
    /// The namespace label of this deployment (`STEM_WORKER_NAMESPACE`,
    /// default `stem`): `service.namespace` of every service's telemetry.
    pub namespace: String,
    /// The YAML file beat seeds the schedule store from
    /// (`STEM_SCHEDULE_FILE`).
    pub schedule_file: Option<std::path::PathBuf>,
    /// A store URL carries the placeholder password of the shipped `.env`
    /// profiles (`change-me…`), allowed by `STEM_ALLOW_DEMO_KEYS`; see
    /// [`StemConfig::uses_demo_secrets`].
    pub demo_password: bool,
}

/// What the Redis passwords of the shipped `.env` profiles start with:
/// public in the repository, like their signing keys.
const PLACEHOLDER_PASSWORD: &str = "change-me";

/// The password in a store URL's user information, if any.
fn url_password(url: &StoreUrl) -> Option<&str> {
    let StoreUrl::Redis(url) = url else {
        return None;
    };
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password)
}

/// A worker's configuration: from `STEM_WORKER_*` and friends
/// ([`WorkerConfig::from_env`]) for the worker service, or built in code
/// ([`WorkerConfig::new`]) by an embedder, a test or `stem dev`.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The consumer name in Redis and the control plane
    /// (`STEM_WORKER_NAME`, default `worker-<host>-<pid>`).
    pub name: String,
    /// Queues consumed (`STEM_WORKER_QUEUES`).
    pub queues: Vec<String>,
    /// Metrics label (`STEM_WORKER_NAMESPACE`).
    pub namespace: String,
    /// Task bodies run at once (`STEM_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Entries fetched ahead per slot (`STEM_PREFETCH_MULTIPLIER`).
    pub prefetch_multiplier: usize,
    /// How long a held entry stays leased without a renewal
    /// (`STEM_VISIBILITY_TIMEOUT`, at least 1 s).
    pub visibility_timeout: Duration,
    /// Deliveries of one entry (first read plus recoveries after its worker
    /// died) before it is dead-lettered as `delivery-limit`
    /// (`STEM_MAX_DELIVERIES`).
    pub max_deliveries: u32,
    /// Period of heartbeats to the control plane (`STEM_HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: Duration,
    /// How long running bodies may finish after SIGTERM
    /// (`STEM_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// How long one fetch waits for work.
    pub fetch_block: Duration,
    /// Period of the delayed-task promoter.
    pub promote_interval: Duration,
    /// Port of the worker service's `/healthz` and `/readyz`
    /// (`STEM_WORKER_HEALTH_PORT`); the runtime itself ignores it.
    pub health_port: Option<u16>,
}

/// `STEM_TLS_*`: the CA, the client certificate and key (set together)
/// and whether server certificates go unverified.
fn tls_config(env: &dyn Lookup) -> Result<TlsConfig> {
    let tls = TlsConfig {
        ca_cert: read_pem(env, "STEM_TLS_CA_CERT")?,
        client_cert: read_pem(env, "STEM_TLS_CLIENT_CERT")?,
        client_key: read_pem(env, "STEM_TLS_CLIENT_KEY")?,
        allow_insecure: bool_var(env, "STEM_TLS_ALLOW_INSECURE", false)?,
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        let missing = if tls.client_cert.is_some() {
            "STEM_TLS_CLIENT_KEY"
        } else {
            "STEM_TLS_CLIENT_CERT"
        };
        return Err(StemError::config(
            missing,
            "client certificate and key must be set together",
        ));
    }
    Ok(tls)
}

/// `STEM_LOG_FORMAT`: `text` (the default) or `json`.
fn log_format(env: &dyn Lookup) -> Result<LogFormat> {
    match non_empty(env, "STEM_LOG_FORMAT").as_deref() {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(StemError::config(
            "STEM_LOG_FORMAT",
            format!("expected text or json, got {other:?}"),
        )),
    }
}

/// Whether any of `urls` carries the Redis password shipped in the `.env`
/// profiles (public in the repository): refused unless
/// `STEM_ALLOW_DEMO_KEYS` allows a demo, which services then announce.
fn placeholder_password(env: &dyn Lookup, urls: [(&str, &StoreUrl); 3]) -> Result<bool> {
    let allow_demo = bool_var(env, crate::signing::ALLOW_DEMO_KEYS, false)?;
    let mut demo_password = false;
    for (variable, url) in urls {
        if url_password(url).is_some_and(|p| p.starts_with(PLACEHOLDER_PASSWORD)) {
            if !allow_demo {
                return Err(StemError::config(
                    variable,
                    format!(
                        "the Redis password is the placeholder shipped in the .env profiles, \
                         public in the repository: set your own (REDIS_PASSWORD and the \
                         URLs), or set {}=true for a demo nobody else can reach",
                        crate::signing::ALLOW_DEMO_KEYS
                    ),
                ));
            }
            demo_password = true;
        }
    }
    Ok(demo_password)
}

fn read_pem(env: &dyn Lookup, key: &str) -> Result<Option<Vec<u8>>> {
    match non_empty(env, key) {
        None => Ok(None),
        Some(path) => std::fs::read(PathBuf::from(&path))
            .map(Some)
            .map_err(|e| StemError::config(key, format!("cannot read {path}: {e}"))),
    }
}

/// The shortest visibility timeout a worker accepts. Below it renewals
/// (every third of it) would hammer Redis and recovery would claim the
/// entries of live workers; 0 would claim every pending entry.
pub const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);

fn visibility_timeout(env: &dyn Lookup) -> Result<Duration> {
    let vt = duration_var(env, "STEM_VISIBILITY_TIMEOUT", Duration::from_secs(30))?;
    if vt < MIN_VISIBILITY_TIMEOUT {
        return Err(StemError::config(
            "STEM_VISIBILITY_TIMEOUT",
            format!("{vt:?} is below the minimum of 1s"),
        ));
    }
    Ok(vt)
}

/// Default Redis URL when `STEM_BROKER_URL` is unset.
pub const DEFAULT_BROKER_URL: &str = "redis://127.0.0.1:6379/0";

impl StemConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&process_env)
    }

    /// Reads the process environment, with another default broker URL
    /// (`stem dev` defaults to `memory://`).
    pub fn from_env_with_broker_default(default_broker: &str) -> Result<Self> {
        Self::from_lookup_with_default(&process_env, default_broker)
    }

    /// Reads variables through `env`.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self> {
        Self::from_lookup_with_default(env, DEFAULT_BROKER_URL)
    }

    fn from_lookup_with_default(env: &dyn Lookup, default_broker: &str) -> Result<Self> {
        let broker_raw =
            non_empty(env, "STEM_BROKER_URL").unwrap_or_else(|| default_broker.to_string());
        let broker_url = StoreUrl::parse("STEM_BROKER_URL", &broker_raw)?;
        let result_backend_url = match non_empty(env, "STEM_RESULT_BACKEND_URL") {
            Some(v) => StoreUrl::parse("STEM_RESULT_BACKEND_URL", &v)?,
            None => broker_url.clone(),
        };
        let schedule_store_url = match non_empty(env, "STEM_SCHEDULE_STORE_URL") {
            Some(v) => StoreUrl::parse("STEM_SCHEDULE_STORE_URL", &v)?,
            None => broker_url.clone(),
        };
        let result_ttl = duration_var(env, "STEM_RESULT_TTL", Duration::from_secs(86_400))?;
        let keys = KeyRing::from_lookup(env)?;
        let tls = tls_config(env)?;
        let log_format = log_format(env)?;
        let dead_letter_maxlen = positive_var(env, "STEM_DEAD_LETTER_MAXLEN", 100_000)?;
        let recent_tasks = count_var(
            env,
            "STEM_RECENT_TASKS",
            crate::broker::DEFAULT_RECENT_TASKS,
        )?;
        let metric_exporters = crate::telemetry::parse_exporters(
            &non_empty(env, "STEM_METRIC_EXPORTERS").unwrap_or_default(),
        )?;
        let otlp_endpoint = non_empty(env, "STEM_OTLP_ENDPOINT")
            .map(|url| crate::telemetry::http_url("STEM_OTLP_ENDPOINT", &url))
            .transpose()?
            .map(|url| crate::telemetry::otlp_base(&url));
        let demo_password = placeholder_password(
            env,
            [
                ("STEM_BROKER_URL", &broker_url),
                ("STEM_RESULT_BACKEND_URL", &result_backend_url),
                ("STEM_SCHEDULE_STORE_URL", &schedule_store_url),
            ],
        )?;
        Ok(StemConfig {
            demo_password,
            otlp_endpoint,
            namespace: non_empty(env, "STEM_WORKER_NAMESPACE").unwrap_or_else(|| "stem".into()),
            broker_url,
            result_backend_url,
            schedule_store_url,
            result_ttl,
            keys,
            tls,
            log_format,
            dead_letter_maxlen,
            recent_tasks,
            metric_exporters,
            schedule_file: non_empty(env, "STEM_SCHEDULE_FILE").map(Into::into),
        })
    }

    /// An all-in-memory configuration without signing (tests, examples).
    pub fn memory() -> Self {
        StemConfig {
            broker_url: StoreUrl::Memory,
            result_backend_url: StoreUrl::Memory,
            schedule_store_url: StoreUrl::Memory,
            result_ttl: Duration::from_secs(86_400),
            keys: KeyRing::default(),
            tls: TlsConfig::default(),
            log_format: LogFormat::Text,
            dead_letter_maxlen: 100_000,
            recent_tasks: crate::broker::DEFAULT_RECENT_TASKS,
            metric_exporters: Vec::new(),
            otlp_endpoint: None,
            namespace: "stem".into(),
            schedule_file: None,
            demo_password: false,
        }
    }

    /// True when the shipped placeholder keys or Redis password are in use
    /// (allowed by `STEM_ALLOW_DEMO_KEYS`): services warn at start, the
    /// dashboard shows a banner.
    pub fn uses_demo_secrets(&self) -> bool {
        self.keys.uses_demo_keys() || self.demo_password
    }
}

impl WorkerConfig {
    /// Defaults, for `queues`.
    pub fn new(name: impl Into<String>, queues: &[&str]) -> Self {
        WorkerConfig {
            name: name.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            namespace: "stem".into(),
            concurrency: 4,
            prefetch_multiplier: 2,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 10,
            heartbeat_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            fetch_block: Duration::from_secs(1),
            promote_interval: Duration::from_millis(200),
            health_port: None,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&process_env)
    }

    /// Reads variables through `env`.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self> {
        let queues_raw = non_empty(env, "STEM_WORKER_QUEUES")
            .or_else(|| non_empty(env, "STEM_WORKER_QUEUE"))
            .unwrap_or_else(|| "default".to_string());
        let mut queues: Vec<String> = Vec::new();
        for q in queues_raw
            .split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            validate_queue_name("STEM_WORKER_QUEUES", q)?;
            if !queues.iter().any(|x| x == q) {
                queues.push(q.to_string());
            }
        }
        if queues.is_empty() {
            return Err(StemError::config("STEM_WORKER_QUEUES", "no queue named"));
        }
        let name = non_empty(env, "STEM_WORKER_NAME").unwrap_or_else(default_worker_name);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(WorkerConfig {
            fetch_block: Duration::from_secs(1),
            promote_interval: Duration::from_millis(200),
            name,
            queues,
            namespace: non_empty(env, "STEM_WORKER_NAMESPACE").unwrap_or_else(|| "stem".into()),
            concurrency: positive_var(env, "STEM_WORKER_CONCURRENCY", cpus)?,
            prefetch_multiplier: positive_var(env, "STEM_PREFETCH_MULTIPLIER", 2)?,
            visibility_timeout: visibility_timeout(env)?,
            max_deliveries: positive_var(env, "STEM_MAX_DELIVERIES", 10)?
                .try_into()
                .unwrap_or(u32::MAX),
            heartbeat_interval: duration_var(
                env,
                "STEM_HEARTBEAT_INTERVAL",
                Duration::from_secs(10),
            )?,
            shutdown_grace: duration_var(env, "STEM_SHUTDOWN_GRACE", Duration::from_secs(30))?,
            health_port: port_var(env, "STEM_WORKER_HEALTH_PORT")?,
        })
    }
}

/// This host's name: `$HOSTNAME`, else `/etc/hostname`, else `localhost`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// `worker-<hostname>-<pid>`.
pub fn default_worker_name() -> String {
    format!("worker-{}-{}", hostname(), std::process::id())
}

/// Queue names become part of Redis keys: keep them to a safe alphabet.
pub fn validate_queue_name(variable: &str, q: &str) -> Result<()> {
    let ok = !q.is_empty()
        && q.len() <= 128
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(StemError::config(
            variable,
            format!("invalid queue name {q:?}: use letters, digits, - _ . :"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_flag_wins_over_its_variable_and_an_absent_flag_reads_the_environment() {
        // PATH is set in every environment the tests run in.
        let path = std::env::var("PATH").ok();
        let env = FlagsOverEnv::new()
            .flag("STEM_WORKER_CONCURRENCY", Some(7))
            .flag("STEM_WORKER_NAME", None::<String>);
        assert_eq!(env.get("STEM_WORKER_CONCURRENCY").as_deref(), Some("7"));
        assert_eq!(env.get("PATH"), path);
        let env = FlagsOverEnv::new().flag("PATH", Some("/flag"));
        assert_eq!(env.get("PATH").as_deref(), Some("/flag"));
    }

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5y"), None);
    }

    #[test]
    fn defaults_follow_the_broker_url() {
        let cfg = StemConfig::from_lookup(&lookup(&[("STEM_BROKER_URL", "redis://h:1/2")]))
            .expect("valid config");
        assert_eq!(
            cfg.result_backend_url,
            StoreUrl::Redis("redis://h:1/2".into())
        );
        assert_eq!(cfg.schedule_store_url, cfg.broker_url);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = StemConfig::from_lookup(&lookup(&[("STEM_BROKER_URL", "http://x")]))
            .expect_err("bad url");
        assert!(err.to_string().starts_with("STEM_BROKER_URL"), "{err}");
        let err =
            StemConfig::from_lookup(&lookup(&[("STEM_RESULT_TTL", "soon")])).expect_err("bad ttl");
        assert!(err.to_string().starts_with("STEM_RESULT_TTL"), "{err}");
        let err = StemConfig::from_lookup(&lookup(&[("STEM_TLS_CA_CERT", "/nonexistent.pem")]))
            .expect_err("bad ca");
        assert!(err.to_string().starts_with("STEM_TLS_CA_CERT"), "{err}");
        let err = WorkerConfig::from_lookup(&lookup(&[("STEM_WORKER_CONCURRENCY", "0")]))
            .expect_err("bad concurrency");
        assert!(
            err.to_string().starts_with("STEM_WORKER_CONCURRENCY"),
            "{err}"
        );
    }

    #[test]
    fn redacts_passwords() {
        let u = StoreUrl::parse("X", "redis://user:secret@host:6379/0").expect("url");
        assert_eq!(u.redacted(), "redis://***@host:6379/0");
        // A raw '@' inside the password (C15): the last '@' ends it.
        let u = StoreUrl::parse("X", "redis://user:p@ss@host:6379/0").expect("url");
        assert_eq!(u.redacted(), "redis://***@host:6379/0");
        for bad in [
            "redis//admin:S3cr3tPassw0rd@10.0.0.5:6379/0",
            "redis://admin:S3cr3tPassw0rd@10.0.0.5:6379/notadb",
        ] {
            let err = StoreUrl::parse("X", bad).expect_err("malformed");
            assert!(!err.to_string().contains("S3cr3t"), "{err}");
        }
    }

    #[test]
    fn the_shipped_redis_password_is_refused_without_the_opt_in() {
        let url = "redis://:change-me-redis@redis:6379/0";
        let err = StemConfig::from_lookup(&lookup(&[("STEM_RESULT_BACKEND_URL", url)]))
            .expect_err("placeholder password");
        let text = err.to_string();
        assert!(text.starts_with("STEM_RESULT_BACKEND_URL"), "{text}");
        assert!(
            !text.contains("change-me-redis"),
            "the password is not echoed: {text}"
        );
        let c = StemConfig::from_lookup(&lookup(&[
            (
                "STEM_BROKER_URL",
                "rediss+cluster://u:change-me-x@h1:7000,h2:7001",
            ),
            ("STEM_ALLOW_DEMO_KEYS", "true"),
        ]))
        .expect("allowed");
        assert!(c.uses_demo_secrets());
        let c =
            StemConfig::from_lookup(&lookup(&[("STEM_BROKER_URL", "redis://:s3cret@h:6379/0")]))
                .expect("a real password");
        assert!(!c.uses_demo_secrets());
    }

    #[test]
    fn cluster_urls_name_seed_nodes_on_database_0() {
        let u = StoreUrl::parse("X", "redis+cluster://user:secret@h1:7000,h2:7001").expect("url");
        assert_eq!(u.redacted(), "redis+cluster://***@h1:7000,h2:7001");
        assert!(StoreUrl::parse("X", "rediss+cluster://h1:7000/0")
            .expect("tls url")
            .is_tls());
        for bad in [
            "redis+cluster://h1:7000/1",
            "redis+cluster://h1",
            "redis+cluster://h1:7000,:7001",
            "redis+cluster://admin:S3cr3tPassw0rd@h1:notaport",
        ] {
            let err = StoreUrl::parse("STEM_BROKER_URL", bad).expect_err(bad);
            assert!(err.to_string().starts_with("STEM_BROKER_URL"), "{err}");
            assert!(!err.to_string().contains("S3cr3t"), "{err}");
        }
    }

    #[test]
    fn insecure_fragment_and_short_visibility_timeouts_are_refused() {
        let err =
            StoreUrl::parse("STEM_BROKER_URL", "rediss://h:1/0#insecure").expect_err("#insecure");
        assert!(err.to_string().contains("STEM_TLS_ALLOW_INSECURE"), "{err}");
        for vt in ["0", "999ms"] {
            let err = WorkerConfig::from_lookup(&lookup(&[("STEM_VISIBILITY_TIMEOUT", vt)]))
                .expect_err("too short");
            assert!(
                err.to_string().starts_with("STEM_VISIBILITY_TIMEOUT"),
                "{err}"
            );
        }
        let ok = WorkerConfig::from_lookup(&lookup(&[("STEM_VISIBILITY_TIMEOUT", "1s")]))
            .expect("1 s is the minimum");
        assert_eq!(ok.visibility_timeout, Duration::from_secs(1));
    }

    #[test]
    fn worker_queues_are_deduplicated() {
        let w =
            WorkerConfig::from_lookup(&lookup(&[("STEM_WORKER_QUEUES", "a, b,a")])).expect("valid");
        assert_eq!(w.queues, vec!["a".to_string(), "b".to_string()]);
    }
}
