//! Exit codes (sysexits, as the README lists them) and configuration
//! errors as one line plus exit 78.

use stem::config::StemConfig;
use stem::StemError;

/// Exit code for invalid configuration (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for bad usage.
pub const EXIT_USAGE: i32 = 64;
/// Exit code for bad input data.
pub const EXIT_DATAERR: i32 = 65;
/// Exit code when Redis is unavailable.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code for an internal error.
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit code when nobody answered.
pub const EXIT_TEMPFAIL: i32 = 75;

/// Returns the value, or prints `configuration error: <VARIABLE>: <why>`
/// and exits 78.
// One of the workspace's sanctioned exits (`clippy::exit` is denied
// elsewhere): a binary's start-up, before anything runs that could be
// left half done.
#[allow(clippy::exit)]
pub fn config_or_exit<T>(result: Result<T, StemError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// The library's configuration, or exit 78 as [`config_or_exit`]; a
/// configuration on the shipped placeholder keys or password (allowed by
/// `STEM_ALLOW_DEMO_KEYS`) is logged as a warning, so every start of a
/// service says so.
pub fn stem_config_or_exit(result: Result<StemConfig, StemError>) -> StemConfig {
    let config = config_or_exit(result);
    warn_demo_keys(&config);
    config
}

/// Logs a warning when `config` uses the placeholder keys or Redis
/// password of the shipped `.env` profiles.
pub fn warn_demo_keys(config: &StemConfig) {
    if config.uses_demo_secrets() {
        tracing::warn!(
            "STEM_ALLOW_DEMO_KEYS is on and placeholders of the shipped .env profiles are in \
             use (signing keys or the Redis password): anyone who has read the repository can \
             sign tasks these workers run or log in to Redis. Make real keys with `stem keys \
             hmac` or `stem keys ed25519`, set your own REDIS_PASSWORD, and remove \
             STEM_ALLOW_DEMO_KEYS before exposing anything"
        );
    }
}
