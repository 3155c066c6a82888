//! A circuit breaker per upstream: closed → open after N consecutive failures → half-open
//! after a cooldown, where one trial request decides between closed and open again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a trial request is let through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    pub fn state_at(&self, now: Instant) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the upstream now. In half-open, only one trial at a time.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    pub fn try_acquire_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen {
                ref mut trial_in_flight,
            } => !std::mem::replace(trial_in_flight, true),
        }
    }

    pub fn on_success(&self) {
        *self.state.lock() = State::Closed { failures: 0 };
    }

    pub fn on_failure(&self) {
        self.on_failure_at(Instant::now());
    }

    pub fn on_failure_at(&self, now: Instant) {
        let mut state = self.state.lock();
        let open = State::Open {
            until: now + self.config.cooldown,
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::HalfOpen { .. } => open,
            // A request admitted before the circuit opened: the cooldown already runs.
            State::Open { until } => State::Open { until },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        b.on_failure_at(t);
        b.on_failure_at(t);
        b.on_success();
        b.on_failure_at(t);
        b.on_failure_at(t);
        assert_eq!(b.state_at(t), BreakerState::Closed);
        assert!(b.try_acquire_at(t));
        b.on_failure_at(t);
        assert_eq!(b.state_at(t), BreakerState::Open);
        assert!(!b.try_acquire_at(t + Duration::from_secs(9)));
    }

    #[test]
    fn half_open_lets_one_trial_through_and_it_decides() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);
        assert!(b.try_acquire_at(later));
        assert!(!b.try_acquire_at(later), "only one trial at a time");
        b.on_failure_at(later);
        assert_eq!(b.state_at(later), BreakerState::Open);

        let again = later + Duration::from_secs(10);
        assert!(b.try_acquire_at(again));
        b.on_success();
        assert_eq!(b.state_at(again), BreakerState::Closed);
        assert!(b.try_acquire_at(again) && b.try_acquire_at(again));
    }
}
