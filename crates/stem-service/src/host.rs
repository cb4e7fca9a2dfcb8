//! Which host names a service's HTTP answers under: the defence against
//! DNS rebinding, shared by the dashboard and the enqueue API. A page that
//! rebinds its own name to a service's address is same-origin with it in
//! the browser, but its requests carry that name in `Host`; a service that
//! answers only `localhost`, names under `.localhost` (which resolve to
//! loopback by definition, RFC 6761), IP literals (rebinding needs a name)
//! and the names its operator lists is out of such a page's reach.

use std::net::IpAddr;

use stem::StemError;

/// `authority` (a `Host` value or a URL's authority) as (host name
/// lowercased, port): `[v6]:p`, `name:p` or `name`.
pub fn split_authority(authority: &str) -> (String, Option<&str>) {
    let (name, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) => (v6, tail.strip_prefix(':')),
            None => (authority, None),
        },
        None => match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        },
    };
    (name.to_ascii_lowercase(), port)
}

/// The host name and port a request was made under: its `Host` header,
/// or (HTTP/2) its URI's authority; empty when it names neither.
pub fn request_host<B>(req: &axum::http::Request<B>) -> &str {
    req.headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// Whether a service answers under `host` (a `Host` header value), given
/// the names its operator allowed besides the defaults (lowercase).
pub fn serves(host: &str, allowed: &[String]) -> bool {
    let (name, _) = split_authority(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok()
        || allowed.contains(&name)
}

/// A CSV of host names (`ops.example.com`, no scheme, port or path) from
/// `variable`, lowercased; an error naming `variable` otherwise.
pub fn allowed_hosts(variable: &str, raw: Option<&str>) -> Result<Vec<String>, StemError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            match h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                true => Ok(h.to_ascii_lowercase()),
                false => Err(StemError::config(
                    variable,
                    format!(
                        "expected host names like ops.example.com (no scheme, port or path), \
                         got {h:?}"
                    ),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_name_and_port() {
        assert_eq!(
            split_authority("LocalHost:8080"),
            ("localhost".into(), Some("8080"))
        );
        assert_eq!(split_authority("[::1]:3080"), ("::1".into(), Some("3080")));
        assert_eq!(split_authority("example.com"), ("example.com".into(), None));
    }

    #[test]
    fn only_local_names_ip_literals_and_listed_names_are_served() {
        let allowed = vec!["ops.example.com".to_string()];
        for host in [
            "localhost",
            "localhost:8080",
            "api.localhost:8080",
            "127.0.0.1:3080",
            "[::1]:3080",
            "10.0.0.5",
            "OPS.example.com:443",
        ] {
            assert!(serves(host, &allowed), "{host}");
        }
        for host in [
            "attacker.example",
            "localhost.attacker.example",
            "",
            "ops.example.com.evil",
        ] {
            assert!(!serves(host, &allowed), "{host}");
        }
    }

    #[test]
    fn allowed_hosts_are_bare_names() {
        let hosts = allowed_hosts("V", Some(" Ops.Example.com, dash ")).expect("csv");
        assert_eq!(hosts, ["ops.example.com", "dash"]);
        for raw in ["http://x", "x:8080", "x/y"] {
            let err = allowed_hosts("V", Some(raw)).expect_err(raw);
            assert!(err.to_string().starts_with("V"), "{err}");
        }
    }
}
