//! When to try a delivery again: exponential backoff with jitter on 5xx, 429 and transport
//! failures (timeouts, refused connections); never on another status.

use std::time::Duration;

use rand::Rng;

/// The retry schedule of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before the second attempt; each later one doubles it.
    pub initial: Duration,
    /// No delay is longer, whatever the doubling or a `Retry-After` asks.
    pub max: Duration,
    /// Attempts in all, the first included; after the last failure the delivery fails.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 5 s, 10 s, 20 s, ... up to 1 h, 10 attempts: about 45 minutes of trying.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(3600),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): `initial * 2^(attempt-1)`, capped
    /// at `max`, jittered down to between half and all of it so that endpoints failing
    /// together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)));
        let full = exp.min(self.max);
        let half = full / 2;
        let jitter = rand::rng().random_range(0..=(full - half).as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// The delay after failed attempt `attempt`, or `None` to give up.
    pub fn next_delay(&self, attempt: u32, outcome: &Outcome) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        match outcome {
            Outcome::Delivered(_) | Outcome::Refused(_) | Outcome::Undeliverable(_) => None,
            Outcome::RetryAfter(_, Some(after)) => Some((*after).min(self.max)),
            Outcome::RetryAfter(_, None) | Outcome::Transport(_) => Some(self.backoff(attempt)),
        }
    }
}

/// How one attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered(u16),
    /// A status that will not change on retry: any 4xx but 429, 1xx, 3xx (redirects are
    /// not followed).
    Refused(u16),
    /// A 5xx or 429, with the receiver's `Retry-After` if it sent one.
    RetryAfter(u16, Option<Duration>),
    /// No answer: timeout, connection refused or reset.
    Transport(String),
    /// Refused for good, with the reason (an SMTP 5xx, an unusable payload).
    Undeliverable(String),
}

impl Outcome {
    /// Classifies an HTTP answer.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => Outcome::Delivered(status),
            429 | 500..=599 => Outcome::RetryAfter(status, retry_after),
            _ => Outcome::Refused(status),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered(s) | Outcome::Refused(s) | Outcome::RetryAfter(s, _) => Some(*s),
            Outcome::Transport(_) | Outcome::Undeliverable(_) => None,
        }
    }

    /// Why it failed, for the delivery log; `None` when delivered.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Delivered(_) => None,
            Outcome::Refused(s) | Outcome::RetryAfter(s, _) => {
                Some(format!("the endpoint answered {s}"))
            }
            Outcome::Transport(e) | Outcome::Undeliverable(e) => Some(e.clone()),
        }
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_attempts: 5,
        }
    }

    #[test]
    fn statuses_are_classified() {
        for (status, retry) in [
            (200, false),
            (204, false),
            (301, false),
            (400, false),
            (404, false),
            (410, false),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let o = Outcome::from_status(status, None);
            assert_eq!(policy().next_delay(1, &o).is_some(), retry, "{status}");
        }
        assert!(
            policy()
                .next_delay(1, &Outcome::Transport("timeout".into()))
                .is_some()
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let p = policy();
        for attempt in 1..=10u32 {
            let full = Duration::from_secs(1u64 << (attempt - 1)).min(p.max);
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_attempts_run_out() {
        let p = policy();
        let o = Outcome::from_status(429, Some(Duration::from_secs(7)));
        assert_eq!(p.next_delay(1, &o), Some(Duration::from_secs(7)));
        let o = Outcome::from_status(503, Some(Duration::from_secs(7200)));
        assert_eq!(p.next_delay(1, &o), Some(p.max));
        assert_eq!(p.next_delay(5, &o), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
