//! The rate limiter the gateway consults once per request: policy `off`, `local` or
//! `redis`, and the conservative local fallback when Redis cannot be reached.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::gcra::{Decision, Quota};
use crate::local::LocalLimiter;
use crate::plan::{Plans, RouteClass};
use crate::redis::{RedisGcra, RedisLimitError};

pub const DECISIONS_TOTAL: &str = "meridian_rate_limit_decisions_total";
pub const DEGRADED: &str = "meridian_rate_limit_degraded";
pub const REDIS_ERRORS_TOTAL: &str = "meridian_rate_limit_redis_errors_total";

/// Where rate-limit state lives (`MERIDIAN_RATE_LIMIT_POLICY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No limits.
    Off,
    /// Per instance, in memory.
    Local,
    /// Shared by every instance through Redis.
    Redis,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::Local => "local",
            Policy::Redis => "redis",
        }
    }
}

/// Everything the limiter needs; validated by the binary's configuration.
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    pub policy: Policy,
    /// `redis://host:port[/db]`, required for [`Policy::Redis`].
    pub redis_url: Option<String>,
    /// Prepended to every Redis key, so deployments (and tests) sharing a Redis stay apart.
    pub redis_prefix: String,
    /// How long one decision may wait for Redis before the fallback answers.
    pub redis_timeout: Duration,
    /// Instances sharing the limits: while Redis is unreachable each gets `1/n` of a quota.
    pub expected_instances: u32,
    /// How often a degraded limiter checks whether Redis is back.
    pub probe_interval: Duration,
    pub max_local_keys: usize,
    pub plans: Plans,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            policy: Policy::Local,
            redis_url: None,
            redis_prefix: "meridian:rl:".to_owned(),
            redis_timeout: Duration::from_millis(50),
            expected_instances: 2,
            probe_interval: Duration::from_millis(500),
            max_local_keys: LocalLimiter::DEFAULT_MAX_KEYS,
            plans: Plans::builtin(),
        }
    }
}

/// Who a limit is counted for.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// An authenticated tenant, by id.
    Tenant(&'a str),
    /// An unauthenticated client, by IP (the token endpoint).
    Client(IpAddr),
}

/// Which state decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Redis,
    /// The per-instance fallback while Redis is unreachable.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Redis => "redis",
            Source::Fallback => "fallback",
        }
    }
}

/// A decision with what produced it, ready to become headers.
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    pub decision: Decision,
    pub quota: Quota,
    pub class: RouteClass,
    pub source: Source,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.decision.allowed
    }

    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.decision.retry_after).max(1)
    }

    /// The `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers),
    /// plus `Retry-After` when refused.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let name = self.class.as_str();
        let policy = format!(
            "\"{name}\";q={};w={}",
            self.quota.burst,
            ceil_secs(self.quota.window()).max(1)
        );
        let limit = format!(
            "\"{name}\";r={};t={}",
            self.decision.remaining,
            ceil_secs(self.decision.reset_after)
        );
        let mut out = Vec::with_capacity(3);
        if let Ok(v) = HeaderValue::from_str(&policy) {
            out.push((HeaderName::from_static("ratelimit-policy"), v));
        }
        if let Ok(v) = HeaderValue::from_str(&limit) {
            out.push((HeaderName::from_static("ratelimit"), v));
        }
        if !self.allowed() {
            out.push((
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs()),
            ));
        }
        out
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RateLimitStatus {
    pub policy: &'static str,
    /// True while Redis cannot be reached and the local fallback decides.
    pub degraded: bool,
}

pub struct RateLimiter {
    policy: Policy,
    plans: Plans,
    local: LocalLimiter,
    redis: Option<RedisGcra>,
    degraded: AtomicBool,
    expected_instances: u32,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policy", &self.policy)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("MERIDIAN_REDIS_URL is required when MERIDIAN_RATE_LIMIT_POLICY=redis")]
    MissingRedisUrl,
    #[error("invalid MERIDIAN_REDIS_URL: {0}")]
    Redis(#[from] RedisLimitError),
}

impl RateLimiter {
    /// Builds the limiter. With the `redis` policy this must run inside a Tokio runtime: it
    /// starts the task that notices when Redis comes back. It does not wait for Redis; a
    /// Redis that is down at start-up means starting degraded.
    pub fn start(config: RateLimitConfig) -> Result<Arc<RateLimiter>, LimiterError> {
        let redis = match config.policy {
            Policy::Redis => {
                let url = config
                    .redis_url
                    .as_deref()
                    .ok_or(LimiterError::MissingRedisUrl)?;
                Some(RedisGcra::new(
                    url,
                    &config.redis_prefix,
                    config.redis_timeout,
                )?)
            }
            Policy::Off | Policy::Local => None,
        };
        let limiter = Arc::new(RateLimiter {
            policy: config.policy,
            plans: config.plans,
            local: LocalLimiter::new(config.max_local_keys),
            redis,
            degraded: AtomicBool::new(false),
            expected_instances: config.expected_instances.max(1),
        });
        metrics::gauge!(DEGRADED).set(0.0);
        if limiter.redis.is_some() {
            tokio::spawn(probe(Arc::downgrade(&limiter), config.probe_interval));
        }
        Ok(limiter)
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    pub fn status(&self) -> RateLimitStatus {
        RateLimitStatus {
            policy: self.policy.as_str(),
            degraded: self.degraded.load(Ordering::Relaxed),
        }
    }

    /// Decides one request; `None` when the policy is `off`. Never fails: a Redis error
    /// answers from the local fallback and marks the limiter degraded.
    pub async fn check(
        &self,
        subject: Subject<'_>,
        plan: &str,
        class: RouteClass,
    ) -> Option<Verdict> {
        let quota = self.plans.get(plan).quota(class);
        let key = match subject {
            Subject::Tenant(t) => format!("{}:t:{t}", class.as_str()),
            Subject::Client(ip) => format!("{}:ip:{ip}", class.as_str()),
        };
        let verdict = match (&self.redis, self.policy) {
            (_, Policy::Off) => return None,
            (None, _) => Verdict {
                decision: self.local.check(&key, quota),
                quota,
                class,
                source: Source::Local,
            },
            (Some(redis), _) => self.check_redis(redis, &key, quota, class).await,
        };
        metrics::counter!(
            DECISIONS_TOTAL,
            "class" => class.as_str(),
            "outcome" => if verdict.allowed() { "allowed" } else { "limited" },
            "source" => verdict.source.as_str(),
        )
        .increment(1);
        Some(verdict)
    }

    async fn check_redis(
        &self,
        redis: &RedisGcra,
        key: &str,
        quota: Quota,
        class: RouteClass,
    ) -> Verdict {
        if !self.degraded.load(Ordering::Relaxed) {
            match redis.check(key, quota).await {
                Ok(decision) => {
                    return Verdict {
                        decision,
                        quota,
                        class,
                        source: Source::Redis,
                    };
                }
                Err(e) => {
                    metrics::counter!(REDIS_ERRORS_TOTAL).increment(1);
                    self.set_degraded(true, Some(&e));
                }
            }
        }
        // Each instance gets its share of the quota, so that together they stay within it.
        let quota = quota.divided(self.expected_instances);
        Verdict {
            decision: self.local.check(key, quota),
            quota,
            class,
            source: Source::Fallback,
        }
    }

    fn set_degraded(&self, degraded: bool, cause: Option<&RedisLimitError>) {
        if self.degraded.swap(degraded, Ordering::Relaxed) != degraded {
            metrics::gauge!(DEGRADED).set(if degraded { 1.0 } else { 0.0 });
            if degraded {
                tracing::warn!(
                    error = cause.map(tracing::field::display),
                    share = format!("1/{}", self.expected_instances),
                    "Redis is unreachable; rate limits fall back to a per-instance share"
                );
            } else {
                tracing::info!("Redis is reachable again; rate limits are shared again");
            }
        }
    }
}

/// While the limiter lives: when degraded, ping Redis and leave the fallback once it answers.
async fn probe(limiter: Weak<RateLimiter>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        if !limiter.degraded.load(Ordering::Relaxed) {
            continue;
        }
        if let Some(redis) = &limiter.redis
            && redis.ping().await.is_ok()
        {
            limiter.set_degraded(false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_policy_limits_per_tenant_and_class() {
        let mut specs = std::collections::BTreeMap::new();
        specs.insert(
            "standard".to_owned(),
            crate::plan::PlanSpec {
                read: Some("1/s burst 2".into()),
                ..Default::default()
            },
        );
        let limiter = RateLimiter::start(RateLimitConfig {
            plans: Plans::with_specs(&specs).unwrap(),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let read =
            |t: &'static str| limiter.check(Subject::Tenant(t), "standard", RouteClass::Read);
        assert!(read("a").await.unwrap().allowed());
        assert!(read("a").await.unwrap().allowed());
        let refused = read("a").await.unwrap();
        assert!(!refused.allowed());
        assert_eq!(refused.source, Source::Local);
        let headers = refused.headers();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("ratelimit-policy").unwrap(), "\"read\";q=2;w=2");
        assert_eq!(get("ratelimit").unwrap(), "\"read\";r=0;t=2");
        assert_eq!(get("retry-after").unwrap(), "1");
        // Another tenant, and another class of the same tenant, are unaffected.
        assert!(read("b").await.unwrap().allowed());
        assert!(
            limiter
                .check(Subject::Tenant("a"), "standard", RouteClass::Write)
                .await
                .unwrap()
                .allowed()
        );
    }

    #[tokio::test]
    async fn the_off_policy_decides_nothing() {
        let limiter = RateLimiter::start(RateLimitConfig {
            policy: Policy::Off,
            ..RateLimitConfig::default()
        })
        .unwrap();
        assert!(
            limiter
                .check(Subject::Tenant("a"), "standard", RouteClass::Read)
                .await
                .is_none()
        );
    }

    #[test]
    fn the_redis_policy_needs_a_url() {
        let err = RateLimiter::start(RateLimitConfig {
            policy: Policy::Redis,
            ..RateLimitConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("MERIDIAN_REDIS_URL"));
    }
}
