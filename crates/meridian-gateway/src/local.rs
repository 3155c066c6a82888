//! The in-process limiter: a sharded map from key to TAT, bounded in size.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use parking_lot::Mutex;

use crate::gcra::{Decision, Quota, decide};

const SHARDS: usize = 32;

/// GCRA state for many keys in this process. Each shard holds at most `max_keys / SHARDS`
/// keys; when one is full, keys whose bucket has refilled (TAT in the past, which is the same
/// as absent) are dropped first, then arbitrary ones, so memory stays bounded under a flood of
/// distinct keys at the cost of forgetting some state.
pub struct LocalLimiter {
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// The default bound on remembered keys.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    pub fn new(max_keys: usize) -> LocalLimiter {
        LocalLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: (max_keys / SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// Microseconds on this limiter's monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn check(&self, key: &str, quota: Quota) -> Decision {
        self.check_at(key, quota, self.now_us())
    }

    pub fn check_at(&self, key: &str, quota: Quota, now_us: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock();
        let tat = map.get(key).copied();
        let (decision, new_tat) = decide(quota, tat, now_us);
        if let Some(t) = new_tat {
            match map.get_mut(key) {
                Some(slot) => *slot = t,
                None => {
                    if map.len() >= self.per_shard {
                        map.retain(|_, tat| *tat > now_us);
                        if map.len() >= self.per_shard
                            && let Some(victim) = map.keys().next().cloned()
                        {
                            map.remove(&victim);
                        }
                    }
                    map.insert(key.to_owned(), t);
                }
            }
        }
        decision
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_limited_independently() {
        let l = LocalLimiter::new(1000);
        let q = Quota::per_second(1.0, 2);
        assert!(l.check_at("a", q, 0).allowed);
        assert!(l.check_at("a", q, 0).allowed);
        assert!(!l.check_at("a", q, 0).allowed);
        assert!(l.check_at("b", q, 0).allowed);
    }

    #[test]
    fn memory_stays_bounded_under_many_keys() {
        let l = LocalLimiter::new(SHARDS * 4);
        let q = Quota::per_second(1.0, 5);
        for i in 0..10_000 {
            l.check_at(&format!("k{i}"), q, 0);
        }
        assert!(l.len() <= SHARDS * 4, "{}", l.len());
    }
}
