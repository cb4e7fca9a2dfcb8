//! Store URLs and the TLS settings that go with them: which URLs name a
//! store ([`StoreUrl`]: one Redis server, a Redis Cluster's seed nodes, or
//! the memory adapter), how they are written safely to a log (passwords
//! redacted, even from the URL parser's own messages), and the `STEM_TLS_*`
//! material a connection uses. A leaf: it parses and checks, the rest of
//! [`crate::redis_conn`] connects.

use crate::error::{Result, StemError};

/// Where a store lives: Redis (plain or TLS) or the in-process memory adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `redis://`, `rediss://` (one server), `redis+cluster://` or
    /// `rediss+cluster://` (a Redis Cluster's seed nodes) URL, kept verbatim.
    Redis(String),
    /// `memory://`: the embedded in-memory adapter.
    Memory,
}

impl StoreUrl {
    /// Parses and validates a store URL; `variable` names the setting in errors.
    pub fn parse(variable: &str, value: &str) -> Result<Self> {
        let value = value.trim();
        if value.starts_with("memory://") {
            return Ok(StoreUrl::Memory);
        }
        // Error lines never carry the password: the value is redacted
        // before it is formatted, and so is the parser's own message.
        const SCHEMES: [&str; 4] = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !SCHEMES.iter().any(|scheme| value.starts_with(scheme)) {
            return Err(StemError::config(
                variable,
                format!(
                    "malformed URL {:?}: expected redis://, rediss://, redis+cluster://, \
                     rediss+cluster:// or memory://",
                    redact_url(value)
                ),
            ));
        }
        if value.contains("#insecure") {
            return Err(StemError::config(
                variable,
                "the #insecure fragment turns off TLS certificate verification without a \
                 warning; remove it, and set STEM_TLS_ALLOW_INSECURE=true if you really mean it",
            ));
        }
        let malformed = |why: String| {
            StemError::config(
                variable,
                format!(
                    "malformed URL {:?}: {}",
                    redact_url(value),
                    scrub_userinfo(&why, value)
                ),
            )
        };
        // A cluster URL is checked seed by seed, as one-server URLs.
        let nodes = cluster_seeds(value)
            .map_err(malformed)?
            .unwrap_or_else(|| vec![value.to_string()]);
        for node in nodes {
            redis::IntoConnectionInfo::into_connection_info(node.as_str())
                .map_err(|e| malformed(e.to_string()))?;
        }
        Ok(StoreUrl::Redis(value.to_string()))
    }

    /// True for `rediss://` and `rediss+cluster://` URLs.
    pub fn is_tls(&self) -> bool {
        matches!(self, StoreUrl::Redis(u) if u.starts_with("rediss://") || u.starts_with("rediss+cluster://"))
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Memory => "memory://".into(),
            StoreUrl::Redis(u) => redact_url(u),
        }
    }
}

/// `scheme://***@host…`: everything before the *last* `@` of the value is
/// user information (a password may itself contain `@`). A value without
/// `://` is redacted the same way from its start.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(end) => (&url[..end + 3], &url[end + 3..]),
        None => ("", url),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// `text` with the user information of `url` (if any) replaced by `***`.
fn scrub_userinfo(text: &str, url: &str) -> String {
    let rest = url.find("://").map_or(url, |end| &url[end + 3..]);
    match rest.rfind('@') {
        Some(at) if at > 0 => {
            let mut out = text.replace(&rest[..at], "***");
            for part in rest[..at].split([':', '@']).filter(|p| p.len() > 2) {
                out = out.replace(part, "***");
            }
            out
        }
        _ => text.to_string(),
    }
}

/// TLS settings for Redis connections (`STEM_TLS_*`).
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM CA bundle that verifies the server; system roots when absent.
    pub ca_cert: Option<Vec<u8>>,
    /// PEM client certificate (mTLS).
    pub client_cert: Option<Vec<u8>>,
    /// PEM client key (mTLS).
    pub client_key: Option<Vec<u8>>,
    /// Skip server verification (logged as a warning at start).
    pub allow_insecure: bool,
}

/// The seed nodes of a cluster URL (`redis+cluster://[user:pass@]h1:p1,h2:p2[/0]`
/// or `rediss+cluster://…`) as one single-node URL each (`redis://` or
/// `rediss://`, with the credentials); `Ok(None)` for any other URL; `Err`
/// says what is wrong with a malformed one (never quoting the password).
pub fn cluster_seeds(url: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    // The last '@' ends the credentials (a password may hold a raw '@').
    let (userinfo, hosts) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !(db.is_empty() || db == "0") {
        return Err("a Redis Cluster has only database 0".into());
    }
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
            !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!("seed node {host:?} is not host:port"));
        }
        seeds.push(match userinfo {
            Some(u) => format!("{scheme}://{u}@{host}"),
            None => format!("{scheme}://{host}"),
        });
    }
    Ok(Some(seeds))
}

/// The `host` and `port` of a seed URL `scheme://[userinfo@]host:port`
/// (as [`cluster_seeds`] writes them), read by the redis crate's own URL
/// parser, the one that connects to it.
pub(crate) fn host_port(seed_url: &str) -> Option<(String, u16)> {
    let info = redis::IntoConnectionInfo::into_connection_info(seed_url).ok()?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed addresses as the redis crate reads them: with or without
    /// credentials, plain or TLS, IPv6 without its brackets (what a node
    /// client is then built from, brackets put back).
    #[test]
    fn seed_urls_name_their_host_and_port() {
        assert_eq!(
            host_port("redis://user:p%40ss@h1:7000"),
            Some(("h1".to_string(), 7000))
        );
        assert_eq!(
            host_port("rediss://10.0.0.5:7001"),
            Some(("10.0.0.5".to_string(), 7001))
        );
        assert_eq!(
            host_port("redis://[::1]:7002"),
            Some(("::1".to_string(), 7002))
        );
        assert_eq!(host_port("not a url"), None);
    }
}
