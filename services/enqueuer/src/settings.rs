//! Enqueuer settings from `PORT`, `ENQUEUER_REQUEST_TIMEOUT`,
//! `ENQUEUER_ALLOWED_HOSTS`, `ENQUEUER_TLS_*` and `ENQUEUER_AUTOFILL_*`;
//! invalid values name their variable.

use std::path::PathBuf;

use stem::config::{bool_var, positive_var, process_env, Lookup};
use stem::StemError;

use crate::tls::server_config;
pub(crate) use crate::tls::{Tls, TlsFiles};

/// Demo traffic generator settings (`ENQUEUER_AUTOFILL_*`).
#[derive(Clone, Debug)]
pub struct AutofillConfig {
    pub enabled: bool,
    pub interval_ms: u64,
    pub batch_size: u64,
    pub failure_every: u64,
}

/// Everything the enqueuer reads besides [`stem::config::StemConfig`].
#[derive(Clone, Debug)]
pub struct EnqueuerConfig {
    pub port: u16,
    /// Longest time one request may take, its body included
    /// (`ENQUEUER_REQUEST_TIMEOUT`).
    pub request_timeout: std::time::Duration,
    pub tls: Option<Tls>,
    pub autofill: AutofillConfig,
    /// Host names the API answers besides `localhost`, `*.localhost` and
    /// IP literals (`ENQUEUER_ALLOWED_HOSTS`): see [`stem_service::host`].
    pub allowed_hosts: Vec<String>,
}

use stem::config::non_empty as get;

fn positive(env: &dyn Lookup, key: &str, default: u64) -> Result<u64, StemError> {
    Ok(positive_var(env, key, default as usize)? as u64)
}

fn readable(key: &str, path: String) -> Result<PathBuf, StemError> {
    std::fs::metadata(&path)
        .map_err(|e| StemError::config(key, format!("cannot read {path}: {e}")))?;
    Ok(PathBuf::from(path))
}

impl EnqueuerConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, StemError> {
        Self::from_lookup(&process_env)
    }

    /// Reads through `env`.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self, StemError> {
        let port = match get(env, "PORT") {
            None => 8081,
            Some(p) => p.parse::<u16>().map_err(|_| {
                StemError::config("PORT", format!("expected a port number, got {p:?}"))
            })?,
        };
        let tls = match (get(env, "ENQUEUER_TLS_CERT"), get(env, "ENQUEUER_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: readable("ENQUEUER_TLS_CERT", cert)?,
                    key: readable("ENQUEUER_TLS_KEY", key)?,
                    client_ca: get(env, "ENQUEUER_TLS_CLIENT_CA")
                        .map(|p| readable("ENQUEUER_TLS_CLIENT_CA", p))
                        .transpose()?,
                };
                let config = server_config(&files)?;
                Some(Tls { files, config })
            }
            (None, None) => {
                if get(env, "ENQUEUER_TLS_CLIENT_CA").is_some() {
                    return Err(StemError::config(
                        "ENQUEUER_TLS_CLIENT_CA",
                        "needs ENQUEUER_TLS_CERT and ENQUEUER_TLS_KEY",
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(StemError::config(
                    "ENQUEUER_TLS_KEY",
                    "required with ENQUEUER_TLS_CERT",
                ))
            }
            (None, Some(_)) => {
                return Err(StemError::config(
                    "ENQUEUER_TLS_CERT",
                    "required with ENQUEUER_TLS_KEY",
                ))
            }
        };
        let request_timeout = stem::config::duration_var(
            env,
            "ENQUEUER_REQUEST_TIMEOUT",
            std::time::Duration::from_secs(30),
        )?;
        if request_timeout.is_zero() {
            return Err(StemError::config(
                "ENQUEUER_REQUEST_TIMEOUT",
                "must be above zero",
            ));
        }
        Ok(EnqueuerConfig {
            port,
            request_timeout,
            tls,
            allowed_hosts: stem_service::host::allowed_hosts(
                "ENQUEUER_ALLOWED_HOSTS",
                get(env, "ENQUEUER_ALLOWED_HOSTS").as_deref(),
            )?,
            autofill: AutofillConfig {
                enabled: bool_var(env, "ENQUEUER_AUTOFILL_ENABLED", false)?,
                interval_ms: positive(env, "ENQUEUER_AUTOFILL_INTERVAL_MS", 2500)?,
                batch_size: positive(env, "ENQUEUER_AUTOFILL_BATCH_SIZE", 2)?,
                failure_every: positive(env, "ENQUEUER_AUTOFILL_FAILURE_EVERY", 8)?,
            },
        })
    }
}
