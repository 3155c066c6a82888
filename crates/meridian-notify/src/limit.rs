//! Per-tenant send rate limits, in a worker's memory (GCRA): at most `per_second` sends a
//! second per tenant, with bursts of `burst`. A delivery over its tenant's limit is not
//! sent now: the worker moves it to when the tenant's next send is allowed, without
//! spending an attempt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_core::TenantId;

#[derive(Debug)]
pub struct TenantLimits {
    /// The theoretical arrival time of each tenant's next send.
    tat: Mutex<HashMap<TenantId, Instant>>,
    interval: Duration,
    burst: u32,
}

impl TenantLimits {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            tat: Mutex::default(),
            interval: Duration::from_secs(1) / per_second,
            burst: burst.max(1),
        })
    }

    /// `Ok` if `tenant` may send at `now` (and counts the send), or how long until it may.
    pub fn check(&self, tenant: TenantId, now: Instant) -> Result<(), Duration> {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let t = tat.get(&tenant).copied().unwrap_or(now).max(now);
        // GCRA: a send is allowed while its tenant is at most `burst - 1` intervals ahead.
        let allowance = self.interval * (self.burst - 1);
        let earliest = t.checked_sub(allowance).unwrap_or(now);
        if earliest > now {
            return Err(earliest - now);
        }
        tat.insert(tenant, t + self.interval);
        // Forget tenants that have been idle long enough to have a full burst again, so
        // the map stays as small as the set of busy tenants.
        if tat.len() > 10_000 {
            tat.retain(|_, t| *t > now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces_per_tenant() {
        let l = TenantLimits::new(10, 3).unwrap();
        let (a, b) = (TenantId::new(), TenantId::new());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(a, t0).is_ok());
        }
        let wait = l.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.check(b, t0).is_ok(), "another tenant has its own budget");
        assert!(l.check(a, t0 + wait).is_ok());
        assert!(l.check(a, t0 + wait).is_err());
        assert!(TenantLimits::new(0, 5).is_none());
    }
}
