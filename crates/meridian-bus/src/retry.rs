use std::time::Duration;

use rand::Rng;

/// Retries with exponential backoff and full jitter, then a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before a message is dead-lettered (DESIGN.md §5: 3).
    pub max_attempts: u32,
    /// The backoff cap before the first redelivery; doubles with each attempt.
    pub base: Duration,
    /// The largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before redelivering a message whose `attempt`-th delivery failed: a random
    /// duration in `[cap/2, cap]` with `cap = min(max, base * 2^(attempt-1))`. The random
    /// half spreads out retries of messages that failed together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let cap = self.base.saturating_mul(1 << exp).min(self.max);
        let cap_ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
    }

    /// Whether a message whose `attempt`-th delivery failed goes to the dead-letter topic.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let b1 = p.backoff(1).as_millis();
            let b3 = p.backoff(3).as_millis();
            let b9 = p.backoff(9).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b9), "{b9}");
        }
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
    }
}
