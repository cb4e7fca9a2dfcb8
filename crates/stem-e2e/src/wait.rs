//! How the tests wait for an outcome: by polling with a deadline, never by
//! sleeping a fixed time. [`poll_until`] fails with a message saying what
//! was awaited and what was last seen, so a slow machine costs time rather
//! than a flaky failure, and a real failure says why.

use std::time::Duration;

/// Interval between two evaluations in [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Generous deadline for outcomes that only need the system to get round
/// to them (a 2-core machine running several tests at once can be slow).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls until `f` yields `Some(value)` (the test kit's one async poll;
/// errors count as "not yet" and are reported at the deadline).
pub use stem_testkit::poll as poll_until;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_until_reports_what_it_waited_for() {
        let err =
            poll_until::<(), _, _>("never", Duration::from_millis(120), || async { Ok(None) })
                .await
                .expect_err("never ready");
        assert!(err.to_string().contains("waiting for never"), "{err}");
        let mut n = 0;
        let v = poll_until("third call", Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move { Ok((k >= 3).then_some(k)) }
        })
        .await
        .expect("ready on the third call");
        assert_eq!(v, 3);
    }
}
