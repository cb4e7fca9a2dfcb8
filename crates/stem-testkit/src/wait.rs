//! Deadline-bounded polling, so tests never rely on fixed sleeps.

use std::time::{Duration, Instant};

/// Interval between two evaluations of the condition in [`wait_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `f` every 25 ms until it returns `true`, or fails once `timeout`
/// has elapsed with "timed out after {timeout:?} waiting for {what}".
///
/// `f` is always evaluated at least once, and once more right at the
/// deadline, so a zero timeout still checks the condition.
pub fn wait_until<F: FnMut() -> bool>(
    what: &str,
    timeout: Duration,
    mut f: F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_when_condition_becomes_true() {
        let mut n = 0;
        let res = wait_until("counter", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert!(res.is_ok());
        assert_eq!(n, 3);
    }

    #[test]
    fn times_out_with_message() {
        let err = wait_until("never", Duration::from_millis(60), || false)
            .expect_err("condition is never true");
        assert!(err.to_string().contains("waiting for never"), "{err}");
    }
}
