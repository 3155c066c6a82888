use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_gateway::{
    PlanSpec, Plans, Policy, RateLimitConfig, RateLimiter, RouteClass, Source, Subject,
};

use crate::support::{PrivateRedis, require_redis, shared_redis_url, unique_prefix};

/// The `standard` plan with a small read quota that does not refill during a test.
fn config(url: String, prefix: String) -> RateLimitConfig {
    let mut specs = BTreeMap::new();
    specs.insert(
        "standard".to_owned(),
        PlanSpec {
            read: Some("1/h burst 6".into()),
            ..PlanSpec::default()
        },
    );
    RateLimitConfig {
        policy: Policy::Redis,
        redis_url: Some(url),
        redis_prefix: prefix,
        redis_timeout: Duration::from_millis(500),
        expected_instances: 2,
        probe_interval: Duration::from_millis(100),
        plans: Plans::with_specs(&specs).unwrap(),
        ..RateLimitConfig::default()
    }
}

async fn read(limiter: &RateLimiter, tenant: &str) -> meridian_gateway::Verdict {
    limiter
        .check(Subject::Tenant(tenant), "standard", RouteClass::Read)
        .await
        .expect("a policy other than off decides")
}

#[tokio::test]
async fn limits_hold_across_two_instances_sharing_redis() {
    let url = shared_redis_url();
    require_redis(&url).await;
    let prefix = unique_prefix();
    let a = RateLimiter::start(config(url.clone(), prefix.clone())).unwrap();
    let b = RateLimiter::start(config(url, prefix)).unwrap();

    // Six admitted in total, alternating instances; then both refuse.
    let mut admitted = 0;
    for i in 0..10 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let v = read(limiter, "tenant-1").await;
        assert_eq!(v.source, Source::Redis);
        if v.allowed() {
            admitted += 1;
        } else {
            assert!(v.decision.retry_after > Duration::ZERO);
        }
    }
    assert_eq!(admitted, 6);
    assert!(!read(&a, "tenant-1").await.allowed());
    assert!(!read(&b, "tenant-1").await.allowed());
    // Another tenant has its own quota.
    assert!(read(&b, "tenant-2").await.allowed());
    assert!(!a.status().degraded && !b.status().degraded);
}

#[tokio::test]
async fn concurrent_decisions_never_admit_more_than_the_burst() {
    let url = shared_redis_url();
    require_redis(&url).await;
    let prefix = unique_prefix();
    let a = RateLimiter::start(config(url.clone(), prefix.clone())).unwrap();
    let b = RateLimiter::start(config(url, prefix)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let limiter = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            read(&limiter, "racer").await.allowed()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 6);
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_a_local_share_and_recovers() {
    let mut redis = PrivateRedis::start().await;
    let limiter = RateLimiter::start(config(redis.url(), unique_prefix())).unwrap();
    let first = read(&limiter, "t").await;
    assert!(first.allowed());
    assert_eq!(first.source, Source::Redis);

    redis.stop();
    // Every decision still answers; none is an error. The fallback gives this instance half
    // of the burst (two expected instances): 3 of 6.
    let mut admitted = 0;
    for _ in 0..10 {
        let v = read(&limiter, "t").await;
        assert_eq!(v.source, Source::Fallback);
        assert_eq!(v.quota.burst, 3);
        admitted += usize::from(v.allowed());
    }
    assert_eq!(admitted, 3, "the fallback is limited, never permissive");
    assert!(limiter.status().degraded);
    assert_eq!(limiter.status().policy, "redis");

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while limiter.status().degraded {
        assert!(
            Instant::now() < deadline,
            "the limiter did not notice Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh Redis has no state for the key: a full burst again, decided by Redis.
    let v = read(&limiter, "t").await;
    assert_eq!(v.source, Source::Redis);
    assert!(v.allowed());
}

#[tokio::test]
async fn a_redis_down_at_start_up_starts_degraded_not_failed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limiter =
        RateLimiter::start(config(format!("redis://127.0.0.1:{port}"), unique_prefix())).unwrap();
    let v = read(&limiter, "t").await;
    assert_eq!(v.source, Source::Fallback);
    assert!(v.allowed());
    assert!(limiter.status().degraded);
}
