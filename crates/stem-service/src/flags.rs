//! Value parsers for duration flags of the binaries (`--lease 3s`,
//! `--timeout 500ms`), with the same syntax as the `STEM_*` duration
//! variables (`<n>ms|s|m|h`, a bare number is seconds).

use std::time::Duration;

/// A duration above zero.
pub fn positive_duration(v: &str) -> Result<Duration, String> {
    match stem::env::parse_duration(v) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid duration {v:?} (use <n>ms|s|m|h)")),
    }
}

/// A duration, zero allowed (`--countdown 0`).
pub fn duration(v: &str) -> Result<Duration, String> {
    stem::env::parse_duration(v).ok_or_else(|| format!("invalid duration {v:?} (use <n>ms|s|m|h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_variables() {
        assert_eq!(positive_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(positive_duration("3"), Ok(Duration::from_secs(3)));
        assert!(positive_duration("0s").is_err());
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("soon").is_err());
    }
}
