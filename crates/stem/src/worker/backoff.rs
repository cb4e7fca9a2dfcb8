//! Retry delays: `min(2 s · 2^attempt, 300 s)` minus up to 25 % jitter.

use std::time::Duration;

use rand::Rng;

/// Base delay before the retry that follows failed attempt `attempt`.
pub fn retry_cap(attempt: u32) -> Duration {
    let ms = 2_000u64.saturating_mul(1u64 << attempt.min(20));
    Duration::from_millis(ms.min(300_000))
}

/// The delay with jitter: uniformly within `[0.75·cap, cap]`.
pub fn retry_delay(attempt: u32) -> Duration {
    let cap = retry_cap(attempt).as_millis() as u64;
    let jitter = rand::thread_rng().gen_range(0..=cap / 4);
    Duration::from_millis(cap - jitter)
}

/// Backoff for reconnect loops: 100 ms doubling to 5 s.
pub(super) fn outage_delay(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5_000))
}

/// Sleeps [`outage_delay`]`(failures)`; false when `stop` fired first.
pub(crate) async fn back_off(stop: &tokio_util::sync::CancellationToken, failures: u32) -> bool {
    stop.run_until_cancelled(tokio::time::sleep(outage_delay(failures)))
        .await
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_contract() {
        assert_eq!(retry_cap(0), Duration::from_secs(2));
        assert_eq!(retry_cap(1), Duration::from_secs(4));
        assert_eq!(retry_cap(10), Duration::from_secs(300));
        assert_eq!(retry_cap(u32::MAX), Duration::from_secs(300));
        for attempt in 0..12 {
            let cap = retry_cap(attempt);
            for _ in 0..50 {
                let d = retry_delay(attempt);
                assert!(d <= cap && d >= cap * 3 / 4, "{attempt}: {d:?} vs {cap:?}");
            }
        }
    }
}
