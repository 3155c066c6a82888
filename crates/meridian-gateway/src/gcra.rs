//! The Generic Cell Rate Algorithm: one stored number per key (the theoretical arrival time,
//! TAT) decides whether a request conforms to a rate with a burst allowance.
//!
//! Plain arithmetic on microseconds, without IO or clocks, so that the local limiter and the
//! Redis script make the same decision (the script is a transcription of [`decide`]).

use std::time::Duration;

/// A rate with a burst: `burst` requests may arrive at once, after which they are admitted
/// one every `interval` (so the sustained rate is `1 / interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Microseconds between two requests at the sustained rate; at least 1.
    pub interval_us: u64,
    /// Requests admitted at once from a full bucket; at least 1.
    pub burst: u32,
}

impl Quota {
    /// `per_second` requests per second (may be fractional, e.g. 0.5) with `burst`.
    pub fn per_second(per_second: f64, burst: u32) -> Quota {
        let interval_us = if per_second > 0.0 {
            (1_000_000.0 / per_second).round().max(1.0) as u64
        } else {
            u64::MAX / 4
        };
        Quota {
            interval_us,
            burst: burst.max(1),
        }
    }

    /// The sustained rate in requests per second.
    pub fn rate_per_second(&self) -> f64 {
        1_000_000.0 / self.interval_us as f64
    }

    /// This quota shared by `n` instances that cannot coordinate: each gets `1/n` of the rate
    /// and of the burst (at least one request), so that together they stay within it.
    pub fn divided(&self, n: u32) -> Quota {
        let n = n.max(1);
        Quota {
            interval_us: self.interval_us.saturating_mul(u64::from(n)),
            burst: (self.burst / n).max(1),
        }
    }

    /// The delay variation tolerance: how far ahead of now the TAT may run.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us.saturating_mul(u64::from(self.burst))
    }

    /// How long an idle key takes to refill completely: the RateLimit-Policy window.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.tolerance_us())
    }
}

/// The outcome of one request against one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota's burst (the `q` of RateLimit-Policy).
    pub limit: u32,
    /// Requests that would still be admitted right now.
    pub remaining: u32,
    /// When refused: how long until a request would be admitted.
    pub retry_after: Duration,
    /// How long until the key is back to a full burst.
    pub reset_after: Duration,
}

/// Decides one request arriving at `now_us` against a key whose stored TAT is `tat_us`
/// (`None` for a key never seen or forgotten). Returns the decision and, when admitted, the
/// new TAT to store.
pub fn decide(quota: Quota, tat_us: Option<u64>, now_us: u64) -> (Decision, Option<u64>) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat.saturating_add(quota.interval_us);
    let ahead = new_tat - now_us;
    let tolerance = quota.tolerance_us();
    if ahead > tolerance {
        let decision = Decision {
            allowed: false,
            limit: quota.burst,
            remaining: 0,
            retry_after: Duration::from_micros(ahead - tolerance),
            reset_after: Duration::from_micros(tat - now_us),
        };
        return (decision, None);
    }
    let remaining = ((tolerance - ahead) / quota.interval_us).min(u64::from(quota.burst)) as u32;
    let decision = Decision {
        allowed: true,
        limit: quota.burst,
        remaining,
        retry_after: Duration::ZERO,
        reset_after: Duration::from_micros(ahead),
    };
    (decision, Some(new_tat))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(quota: Quota, times: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| {
                let (d, new) = decide(quota, tat, now);
                if let Some(t) = new {
                    tat = Some(t);
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_exactly_the_burst_at_once() {
        let q = Quota::per_second(10.0, 5);
        let at_once = run(q, &[0; 7]);
        assert_eq!(at_once, [true, true, true, true, true, false, false]);
    }

    #[test]
    fn the_sustained_rate_is_one_per_interval() {
        let q = Quota::per_second(10.0, 1); // one every 100 ms
        let times = [0, 50_000, 100_000, 150_000, 200_000, 299_999, 300_000];
        assert_eq!(
            run(q, &times),
            [true, false, true, false, true, false, true]
        );
    }

    #[test]
    fn refusals_say_when_to_retry_and_do_not_consume() {
        let q = Quota::per_second(2.0, 2); // 500 ms interval
        let (_, t) = decide(q, None, 0);
        let (_, t) = decide(q, t, 0);
        let (refused, none) = decide(q, t, 0);
        assert!(!refused.allowed && none.is_none());
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.reset_after, Duration::from_millis(1000));
        assert_eq!(refused.remaining, 0);
        // Once the retry delay has passed, one request is admitted again.
        assert!(decide(q, t, 500_000).0.allowed);
    }

    #[test]
    fn remaining_counts_down_and_an_idle_key_refills() {
        let q = Quota::per_second(1.0, 3);
        let (d1, t) = decide(q, None, 0);
        let (d2, t) = decide(q, t, 0);
        assert_eq!((d1.remaining, d2.remaining), (2, 1));
        // Long idle: the stale TAT is in the past, so the bucket is full again.
        let (d, _) = decide(q, t, 60_000_000);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_after, Duration::from_secs(1));
    }

    #[test]
    fn dividing_a_quota_among_instances() {
        let q = Quota::per_second(100.0, 200).divided(2);
        assert_eq!(q.interval_us, 20_000);
        assert_eq!(q.burst, 100);
        assert!((q.rate_per_second() - 50.0).abs() < 1e-9);
        assert_eq!(Quota::per_second(1.0, 1).divided(4).burst, 1);
    }
}
