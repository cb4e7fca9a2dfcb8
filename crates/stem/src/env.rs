//! Reading variables: the [`Lookup`] seam (the process environment, flags
//! over it, or a closure in tests) and the parsers every configuration
//! shares (durations, positive integers, booleans), each failing with an
//! error that names its variable.
//!
//! A leaf module: `config` composes it, and `signing` (key rings) and
//! `telemetry` (exporters) read their own variables through it, so no
//! module of configuration depends on another in a cycle.

use std::time::Duration;

use crate::error::{Result, StemError};

/// Reads variables through a lookup function, so tests need not touch the
/// process environment.
pub trait Lookup {
    /// The value of variable `key`; `None` when it is unset.
    fn get(&self, key: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, key: &str) -> Option<String> {
        self(key)
    }
}

/// The process environment as a [`Lookup`].
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The process environment with some variables given by command-line
/// flags: a flag wins over its variable. Binaries read their configuration
/// through it instead of writing flags into the environment (which is
/// racy once the runtime's threads run, and `unsafe` in edition 2024).
#[derive(Clone, Debug, Default)]
pub struct FlagsOverEnv(Vec<(&'static str, String)>);

impl FlagsOverEnv {
    /// Only the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` reads `value` when the flag was given.
    pub fn flag(mut self, key: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.0.push((key, v.to_string()));
        }
        self
    }
}

impl Lookup for FlagsOverEnv {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| process_env(key))
    }
}

/// `key`'s value, trimmed; `None` when unset or blank.
pub fn non_empty(env: &dyn Lookup, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Parses `<n>ms|s|m|h|d`; a bare number is seconds.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Parses a duration variable (`<n>ms|s|m|h`, a bare number is seconds).
pub fn duration_var(env: &dyn Lookup, key: &str, default: Duration) -> Result<Duration> {
    match non_empty(env, key) {
        None => Ok(default),
        Some(v) => parse_duration(&v).ok_or_else(|| {
            StemError::config(key, format!("invalid duration {v:?} (use <n>ms|s|m|h)"))
        }),
    }
}

/// `key` as an integer above zero, `default` when unset.
pub fn positive_var(env: &dyn Lookup, key: &str, default: usize) -> Result<usize> {
    bounded_var(env, key, default, 1, "a positive integer")
}

/// Parses a count variable that may be 0 (0 turns the feature off).
pub fn count_var(env: &dyn Lookup, key: &str, default: usize) -> Result<usize> {
    bounded_var(env, key, default, 0, "0 or a positive integer")
}

fn bounded_var(
    env: &dyn Lookup,
    key: &str,
    default: usize,
    min: usize,
    expected: &str,
) -> Result<usize> {
    match non_empty(env, key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(StemError::config(
                key,
                format!("expected {expected}, got {v:?}"),
            )),
        },
    }
}

/// A TCP port variable (`1`–`65535`); `None` when unset or blank.
pub fn port_var(env: &dyn Lookup, key: &str) -> Result<Option<u16>> {
    match non_empty(env, key) {
        None => Ok(None),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => Err(StemError::config(
                key,
                format!("expected a port number, got {v:?}"),
            )),
        },
    }
}

/// Parses a boolean variable (`1|true|yes|on`, `0|false|no|off`).
pub fn bool_var(env: &dyn Lookup, key: &str, default: bool) -> Result<bool> {
    match non_empty(env, key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(StemError::config(
            key,
            format!("expected true or false, got {v:?}"),
        )),
    }
}
