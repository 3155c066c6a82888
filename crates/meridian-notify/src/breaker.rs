//! Per-endpoint circuit breakers, in a worker's memory: after `threshold` deliveries in a
//! row to one endpoint fail without an answer or with 5xx/429, the breaker opens and the
//! worker sends that endpoint nothing for `cooldown` (its deliveries wait, without spending
//! attempts). Then one delivery probes: a success closes the breaker, a failure opens it
//! again. A 4xx answer is the endpoint working and refusing: it does not count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_store::notify::WebhookId;

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Breakers {
    states: Mutex<HashMap<WebhookId, State>>,
    threshold: u32,
    cooldown: Duration,
}

impl Breakers {
    /// `threshold` 0 turns breaking off.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            states: Mutex::default(),
            threshold,
            cooldown,
        }
    }

    /// Whether a delivery to `id` may go out at `now`. The first call after the cooldown
    /// is the probe: it half-opens the breaker, so one more failure opens it again.
    pub fn allow(&self, id: WebhookId, now: Instant) -> bool {
        if self.threshold == 0 {
            return true;
        }
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = states.get_mut(&id) else {
            return true;
        };
        match state.open_until {
            Some(until) if now < until => false,
            Some(_) => {
                state.open_until = None;
                state.failures = self.threshold - 1;
                true
            }
            None => true,
        }
    }

    /// Records how a delivery to `id` went; returns `true` when this opened the breaker.
    pub fn record(&self, id: WebhookId, failed: bool, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if !failed {
            states.remove(&id);
            return false;
        }
        let state = states.entry(id).or_default();
        state.failures += 1;
        if state.failures >= self.threshold && state.open_until.is_none() {
            state.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_closes_on_success() {
        let b = Breakers::new(3, Duration::from_secs(30));
        let (id, other) = (WebhookId::new(), WebhookId::new());
        let t0 = Instant::now();
        assert!(!b.record(id, true, t0));
        assert!(!b.record(id, true, t0));
        assert!(b.allow(id, t0));
        assert!(b.record(id, true, t0), "the third failure opens it");
        assert!(!b.allow(id, t0 + Duration::from_secs(29)));
        assert!(b.allow(other, t0), "other endpoints are not affected");
        // The probe after the cooldown fails: open again at once.
        assert!(b.allow(id, t0 + Duration::from_secs(30)));
        assert!(b.record(id, true, t0 + Duration::from_secs(31)));
        assert!(!b.allow(id, t0 + Duration::from_secs(40)));
        // A successful probe closes it.
        assert!(b.allow(id, t0 + Duration::from_secs(61)));
        b.record(id, false, t0 + Duration::from_secs(61));
        assert!(!b.record(id, true, t0 + Duration::from_secs(62)));
        assert!(b.allow(id, t0 + Duration::from_secs(62)));
    }

    #[test]
    fn a_zero_threshold_never_breaks() {
        let b = Breakers::new(0, Duration::from_secs(30));
        let id = WebhookId::new();
        for _ in 0..10 {
            assert!(!b.record(id, true, Instant::now()));
        }
        assert!(b.allow(id, Instant::now()));
    }
}
