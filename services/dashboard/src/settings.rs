//! Dashboard settings from `DASHBOARD_*` and `STEM_TRACE_UI_URL`
//! (README "Configuration"); an invalid value names its variable.

use std::net::IpAddr;

use stem::config::{bool_var, non_empty as get, process_env, Lookup};
use stem::StemError;

/// Basic-auth credentials (`DASHBOARD_USERNAME`, `DASHBOARD_PASSWORD`).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything the dashboard reads besides [`stem::config::StemConfig`].
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// Bind address (`DASHBOARD_HOST`, default 127.0.0.1).
    pub host: IpAddr,
    /// Port (`DASHBOARD_PORT`, default 3080; 0 picks a free one).
    pub port: u16,
    /// URL prefix every route, link, form, asset and the event stream
    /// carry (`DASHBOARD_BASE_PATH`): empty, or `/seg[/seg…]` without a
    /// trailing slash.
    pub base_path: String,
    /// Basic auth on every route but the health checks, when set.
    pub credentials: Option<Credentials>,
    /// Hide every action and refuse it with 403 (`DASHBOARD_READ_ONLY`).
    pub read_only: bool,
    /// Trace UI a task links to (`STEM_TRACE_UI_URL`): `<url>/trace/<id>`.
    pub trace_ui_url: Option<String>,
    /// Host names the dashboard answers besides `localhost`, names under
    /// `.localhost` and IP literals, its bind address among them
    /// (`DASHBOARD_ALLOWED_HOSTS`, a CSV; lowercase, without ports). A page
    /// asked for under another name is refused: that is how a
    /// DNS-rebinding page would reach it ([`stem_service::host`]).
    pub allowed_hosts: Vec<String>,
    /// Most `/events` streams open at once (`DASHBOARD_MAX_STREAMS`); one
    /// more is answered 503.
    pub max_streams: usize,
    /// The shipped placeholder signing keys or Redis password are in use
    /// (`STEM_ALLOW_DEMO_KEYS`): every page says so in a banner. Set from
    /// [`stem::config::StemConfig::uses_demo_secrets`].
    pub demo_keys: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3080,
            base_path: String::new(),
            credentials: None,
            read_only: false,
            trace_ui_url: None,
            allowed_hosts: Vec::new(),
            max_streams: 1000,
            demo_keys: false,
        }
    }
}

impl DashboardConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, StemError> {
        Self::from_lookup(&process_env)
    }

    /// Reads through `env`.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self, StemError> {
        let defaults = Self::default();
        let host = match get(env, "DASHBOARD_HOST") {
            None => defaults.host,
            Some(h) if h == "localhost" => defaults.host,
            Some(h) => h.parse().map_err(|_| {
                StemError::config(
                    "DASHBOARD_HOST",
                    format!("expected an IP address, got {h:?}"),
                )
            })?,
        };
        let port = match get(env, "DASHBOARD_PORT") {
            None => defaults.port,
            Some(p) => p.parse::<u16>().map_err(|_| {
                StemError::config(
                    "DASHBOARD_PORT",
                    format!("expected a port number, got {p:?}"),
                )
            })?,
        };
        let base_path = base_path(get(env, "DASHBOARD_BASE_PATH").as_deref().unwrap_or(""))?;
        let credentials = match (
            get(env, "DASHBOARD_USERNAME"),
            get(env, "DASHBOARD_PASSWORD"),
        ) {
            (Some(username), Some(password)) => {
                if username.contains(':') {
                    return Err(StemError::config(
                        "DASHBOARD_USERNAME",
                        "must not contain ':' (basic auth splits on it)",
                    ));
                }
                Some(Credentials { username, password })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(StemError::config(
                    "DASHBOARD_PASSWORD",
                    "required with DASHBOARD_USERNAME",
                ))
            }
            (None, Some(_)) => {
                return Err(StemError::config(
                    "DASHBOARD_USERNAME",
                    "required with DASHBOARD_PASSWORD",
                ))
            }
        };
        let trace_ui_url = get(env, "STEM_TRACE_UI_URL")
            .map(|v| {
                stem::telemetry::http_url("STEM_TRACE_UI_URL", &v)
                    .map(|u| u.trim_end_matches('/').to_string())
            })
            .transpose()?;
        Ok(Self {
            host,
            port,
            base_path,
            credentials,
            read_only: bool_var(env, "DASHBOARD_READ_ONLY", false)?,
            trace_ui_url,
            allowed_hosts: stem_service::host::allowed_hosts(
                "DASHBOARD_ALLOWED_HOSTS",
                get(env, "DASHBOARD_ALLOWED_HOSTS").as_deref(),
            )?,
            max_streams: stem::config::positive_var(
                env,
                "DASHBOARD_MAX_STREAMS",
                defaults.max_streams,
            )?,
            demo_keys: false,
        })
    }

    /// Whether the bind address reaches beyond this machine.
    pub fn exposed(&self) -> bool {
        !self.host.is_loopback()
    }
}

/// `DASHBOARD_BASE_PATH` normalised: `""`, or `/a/b` (a trailing slash is
/// dropped); segments of letters, digits, `-`, `_` and `.` only, so the
/// prefix can be written into links and forms as it is.
fn base_path(raw: &str) -> Result<String, StemError> {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let bad = || {
        StemError::config(
            "DASHBOARD_BASE_PATH",
            format!("expected a path like /ops (letters, digits, -, _, .), got {raw:?}"),
        )
    };
    let rest = trimmed.strip_prefix('/').ok_or_else(bad)?;
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !rest.split('/').all(ok_segment) {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<DashboardConfig, StemError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DashboardConfig::from_lookup(&move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn defaults_bind_loopback_without_auth() {
        let c = read(&[]).expect("defaults");
        assert_eq!(c.port, 3080);
        assert!(!c.exposed());
        assert!(c.credentials.is_none());
        assert_eq!(c.base_path, "");
    }

    #[test]
    fn base_paths_are_normalised_or_refused() {
        for (raw, want) in [
            ("/ops", "/ops"),
            ("/ops/", "/ops"),
            ("/a/b-c", "/a/b-c"),
            ("/", ""),
        ] {
            assert_eq!(
                read(&[("DASHBOARD_BASE_PATH", raw)]).expect(raw).base_path,
                want
            );
        }
        for raw in ["ops", "/a//b", "/a/../b", "/x\"y", "/<script>"] {
            let err = read(&[("DASHBOARD_BASE_PATH", raw)]).expect_err(raw);
            assert!(err.to_string().contains("DASHBOARD_BASE_PATH"), "{err}");
        }
    }

    #[test]
    fn allowed_hosts_are_bare_names() {
        let c = read(&[("DASHBOARD_ALLOWED_HOSTS", " Ops.Example.com, dash ")]).expect("csv");
        assert_eq!(c.allowed_hosts, ["ops.example.com", "dash"]);
        for raw in ["http://x", "x:8080", "x/y"] {
            let err = read(&[("DASHBOARD_ALLOWED_HOSTS", raw)]).expect_err(raw);
            assert!(err.to_string().contains("DASHBOARD_ALLOWED_HOSTS"), "{err}");
        }
    }

    #[test]
    fn credentials_come_in_pairs_and_hide_the_password() {
        let err = read(&[("DASHBOARD_USERNAME", "ops")]).expect_err("half");
        assert!(err.to_string().contains("DASHBOARD_PASSWORD"), "{err}");
        let c = read(&[
            ("DASHBOARD_USERNAME", "ops"),
            ("DASHBOARD_PASSWORD", "s3cret"),
        ])
        .expect("pair");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
