//! Deadline-bounded polling, so tests never rely on fixed sleeps: one
//! blocking form ([`wait_until`]) for harness code that runs outside a
//! runtime, one async form ([`poll`]) for tests, and [`holds`] for claims
//! that something does *not* happen.

use std::future::Future;
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

/// Polls `f` every 25 ms until it yields `Some(value)`, and returns it.
///
/// `Ok(None)` means "not yet"; `Err(_)` is taken as passing (a connection
/// refused while a service restarts) and reported in the timeout message.
/// Fails once `timeout` has elapsed with "timed out after … waiting for
/// {what}". `f` runs at least once.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        let now = Instant::now();
        if now >= deadline {
            match last_error {
                Some(e) => anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}; last error: {e:#}"
                ),
                None => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// Checks `f` every 25 ms for the whole of `window` and fails the first
/// time it answers false: for claims that something does *not* happen (a
/// paused queue is not fetched), where there is no event to wait for.
pub async fn holds<F, Fut>(what: &str, window: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        anyhow::ensure!(f().await?, "{what} stopped holding within {window:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
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
