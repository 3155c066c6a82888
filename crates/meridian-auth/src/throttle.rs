//! Failed-login throttling, per account and per client address.
//!
//! Each key (an account, an IP) may fail `limit` times in a sliding `window`; past that it
//! is refused until the oldest failure leaves the window. Successes do not count. Held in
//! process: an attacker spreading attempts over instances gets `limit × instances`, which
//! stays small next to the argon2 cost of each guess.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
pub struct Throttle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if `key` has used up its failures.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock();
        let Some(q) = map.get_mut(key) else {
            return Ok(());
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = *q.front().expect("non-empty");
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn fail(&self, key: &str, now: Instant) {
        let mut map = self.failures.lock();
        // Bound the memory: forget keys whose failures have all aged out.
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(key.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.limit {
            q.pop_front();
        }
    }

    /// Forgets a key's failures (after a successful login to the account).
    pub fn clear(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_limit_are_refused_until_the_window_moves() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(t.check("a", t0).is_ok(), "{i}");
            t.fail("a", t0 + Duration::from_secs(i));
        }
        let retry = t.check("a", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(50));
        assert!(t.check("b", t0).is_ok());
        assert!(t.check("a", t0 + Duration::from_secs(60)).is_ok());
        t.clear("a");
        assert!(t.check("a", t0 + Duration::from_secs(10)).is_ok());
    }
}
