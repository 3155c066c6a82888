//! The memory backend: the conformance suite, in both tracking modes, and what only the
//! memory bus promises (abandoned deliveries, ack wait, groups across subscription drops,
//! closing).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus::{
    Bus, BusError, Delivery, MemoryBus, MemoryBusConfig, Message, StartAt, SubscribeOptions,
    Subscription, TopicPattern,
};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;
use tokio::time::timeout;

/// A bus that keeps a copy of each delivery (redelivers one held past its ack wait).
fn tracking_bus() -> MemoryBus {
    MemoryBus::with_config(MemoryBusConfig {
        track_unacked: true,
        ..MemoryBusConfig::default()
    })
}

async fn tracked() -> TestBus {
    TestBus::ephemeral(Arc::new(tracking_bus()), unique_deployment())
}

/// The low-latency settings: the default (no copies of deliveries), with consumers that
/// spin before parking.
async fn untracked() -> TestBus {
    let bus = MemoryBus::with_config(MemoryBusConfig {
        spin: Duration::from_micros(20),
        ..MemoryBusConfig::default()
    });
    TestBus::ephemeral(Arc::new(bus), unique_deployment())
}

mod conformance_tracked {
    meridian_bus::bus_conformance!(super::tracked);
}

mod conformance_untracked {
    meridian_bus::bus_conformance!(super::untracked);
}

fn topic(d: &str, event: &str) -> Topic {
    Topic::parse(&format!("deployment.{d}.platform.test.{event}")).unwrap()
}

fn message(topic: &Topic, key: &str, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/memory",
            "meridian.test.ping",
            TenantId::new(),
            key,
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

async fn batch(sub: &mut Box<dyn Subscription>, max: usize) -> Vec<Delivery> {
    timeout(WAIT, sub.next_batch(max))
        .await
        .expect("no batch within the wait")
        .unwrap()
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    timeout(WAIT, sub.next())
        .await
        .expect("no delivery in time")
        .expect("next failed")
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_abandoned_delivery_is_redelivered_at_once() {
    for bus in [MemoryBus::new(), tracking_bus()] {
        abandoned_delivery_is_redelivered(bus).await;
    }
}

async fn abandoned_delivery_is_redelivered(bus: MemoryBus) {
    let t = topic("d", "abandon.created");
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&t), SubscribeOptions::ephemeral("c"))
        .await
        .unwrap();
    let m = message(&t, "k", 1);
    bus.publish(m.clone()).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    drop(first);
    let again = next(&mut sub).await;
    assert_eq!(again.message, m);
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn an_unacked_delivery_comes_back_after_the_ack_wait() {
    let bus = tracking_bus();
    let t = topic("d", "ackwait.created");
    let options = SubscribeOptions {
        ack_wait: Duration::from_millis(100),
        max_in_flight: 1,
        ..SubscribeOptions::ephemeral("c")
    };
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&t), options)
        .await
        .unwrap();
    let m = message(&t, "k", 1);
    bus.publish(m.clone()).await.unwrap();
    let held = next(&mut sub).await;
    // The only slot is taken; the expiry of its ack wait frees it.
    let again = next(&mut sub).await;
    assert_eq!(again.message, m);
    assert_eq!(again.attempt, 2);
    // The late ack of the first delivery changes nothing: the slot was already freed.
    held.ack().await.unwrap();
    again.ack().await.unwrap();
    let later = message(&t, "k", 2);
    bus.publish(later.clone()).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(
        d.message, later,
        "the slot accounting survived the late ack"
    );
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_dropped_members_messages_go_back_to_the_group() {
    for bus in [MemoryBus::new(), tracking_bus()] {
        dropped_members_messages_go_back(bus).await;
    }
}

/// A member leaves holding one unsettled delivery: the rest go to the other member at
/// once; the held one too with tracking (from its copy), and otherwise once it is dropped.
async fn dropped_members_messages_go_back(bus: MemoryBus) {
    let tracking = bus.config().track_unacked;
    let t = topic("d", "handover.created");
    let pattern = TopicPattern::exact(&t);
    let mut a = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("g"))
        .await
        .unwrap();
    let mut b = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("g"))
        .await
        .unwrap();
    let sent: Vec<Message> = (0..50).map(|n| message(&t, &format!("k{n}"), n)).collect();
    for m in &sent {
        bus.publish(m.clone()).await.unwrap();
    }
    // `a` takes one delivery and leaves without settling it or reading the rest.
    let held = timeout(Duration::from_millis(200), a.next())
        .await
        .expect("a delivery for the first member")
        .unwrap();
    drop(a);
    let mut got = HashSet::new();
    let before_release = if tracking { sent.len() } else { sent.len() - 1 };
    while got.len() < before_release {
        let d = next(&mut b).await;
        got.insert(d.message.id());
        d.ack().await.unwrap();
    }
    assert!(got.contains(&held.message.id()) == tracking);
    drop(held);
    while got.len() < sent.len() {
        let d = next(&mut b).await;
        assert_eq!(d.attempt, 2, "the held delivery comes back as a redelivery");
        got.insert(d.message.id());
        d.ack().await.unwrap();
    }
    let want: HashSet<_> = sent.iter().map(|m| m.id()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn one_key_stays_in_order_inside_a_group() {
    let bus = MemoryBus::new();
    let t = topic("d", "grouporder.created");
    let pattern = TopicPattern::exact(&t);
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            bus.subscribe(&pattern, SubscribeOptions::ephemeral("g"))
                .await
                .unwrap(),
        );
    }
    let batch: Vec<Message> = (0..300)
        .map(|n| message(&t, &format!("k{}", n % 7), n))
        .collect();
    assert!(bus.publish_batch(batch).await.iter().all(Result::is_ok));
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for sub in &mut members {
        while let Ok(Ok(d)) = timeout(Duration::from_millis(100), sub.next()).await {
            let n = d.message.envelope().data["n"].as_u64().unwrap();
            if let Some(prev) = last.insert(d.message.key().to_owned(), n) {
                assert!(prev < n, "key {} went from {prev} to {n}", d.message.key());
            }
            total += 1;
            d.ack().await.unwrap();
        }
    }
    assert_eq!(total, 300);
}

#[tokio::test]
async fn a_durable_group_keeps_messages_while_no_member_is_attached() {
    let bus = MemoryBus::new();
    let t = topic("d", "durable.created");
    let pattern = TopicPattern::exact(&t);
    let sub = bus
        .subscribe(&pattern, SubscribeOptions::durable("keeper"))
        .await
        .unwrap();
    drop(sub);
    let m = message(&t, "k", 1);
    bus.publish(m.clone()).await.unwrap();
    let mut sub = bus
        .subscribe(&pattern, SubscribeOptions::durable("keeper"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.message, m);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn replay_is_refused_and_closing_ends_everything() {
    let bus = MemoryBus::new();
    let t = topic("d", "close.created");
    let pattern = TopicPattern::exact(&t);
    let replay = SubscribeOptions {
        start: StartAt::Position(1),
        ..SubscribeOptions::ephemeral("c")
    };
    assert!(matches!(
        bus.subscribe(&pattern, replay).await,
        Err(BusError::Unsupported { .. })
    ));
    let mut sub = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("c"))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { sub.next().await.map(|_| ()) });
    tokio::task::yield_now().await;
    bus.close();
    let woken = timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(matches!(woken, Err(BusError::Closed)));
    assert!(matches!(
        bus.publish(message(&t, "k", 1)).await,
        Err(BusError::Closed)
    ));
    assert!(matches!(bus.ping().await, Err(BusError::Closed)));
}

#[tokio::test]
async fn untracked_mode_still_redelivers_nacks() {
    let bus = MemoryBus::with_config(MemoryBusConfig {
        track_unacked: false,
        ..MemoryBusConfig::default()
    });
    let t = topic("d", "untracked.created");
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&t), SubscribeOptions::ephemeral("c"))
        .await
        .unwrap();
    let m = message(&t, "k", 1);
    bus.publish(m.clone()).await.unwrap();
    next(&mut sub).await.nack(Duration::ZERO).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.message.clone(), d.attempt), (m, 2));
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_and_accounts_for_every_message() {
    let options = meridian_bus::bench::BenchOptions {
        messages: 10_000,
        batch: 100,
        track_unacked: true,
        spin: Duration::from_micros(5),
        receive_batch: 64,
    };
    let r = timeout(
        Duration::from_secs(60),
        meridian_bus::bench::bench_memory_with(options),
    )
    .await
    .expect("the benchmark hung")
    .expect("the benchmark failed");
    assert_eq!(r.options, options);
    assert!(r.ns_per_message > 0.0 && r.messages_per_second > 0.0);
    assert!(r.median_round_ns_per_message > 0.0);
    assert!(r.drop_ns_per_message > 0.0 && r.channel_ns_per_message > 0.0);
    assert!(r.transport_ns_per_message() <= r.ns_per_message);
    assert!(r.p50_latency <= r.p99_latency && r.p99_latency > Duration::ZERO);
}

/// `next_batch` hands over what is queued, in order, within `max` and the in-flight limit;
/// `Delivery::ack_all` frees the slots, in both tracking modes.
#[tokio::test]
async fn batch_receive_respects_max_and_in_flight_and_ack_all_settles() {
    for track_unacked in [true, false] {
        let bus = MemoryBus::with_config(MemoryBusConfig {
            track_unacked,
            spin: Duration::ZERO,
        });
        let d = unique_deployment();
        let t = topic(&d, "batched");
        let mut sub = bus
            .subscribe(
                &TopicPattern::exact(&t),
                SubscribeOptions {
                    max_in_flight: 5,
                    ..SubscribeOptions::ephemeral("c")
                },
            )
            .await
            .unwrap();
        let sent: Vec<Message> = (0..12).map(|n| message(&t, "k", n)).collect();
        for r in bus.publish_batch(sent.clone()).await {
            r.unwrap();
        }
        let first = batch(&mut sub, 3).await;
        assert_eq!(first.len(), 3);
        // Two slots are left of five.
        let second = batch(&mut sub, 100).await;
        assert_eq!(second.len(), 2);
        assert!(
            timeout(Duration::from_millis(50), sub.next_batch(1))
                .await
                .is_err(),
            "delivered past max_in_flight"
        );
        let got: Vec<Message> = first
            .iter()
            .chain(&second)
            .map(|d| d.message.clone())
            .collect();
        assert_eq!(got, sent[..5]);
        Delivery::ack_all(first).await.unwrap();
        Delivery::ack_all(second).await.unwrap();
        let mut rest = Vec::new();
        while rest.len() < 7 {
            let b = batch(&mut sub, 100).await;
            rest.extend(b.iter().map(|d| d.message.clone()));
            Delivery::ack_all(b).await.unwrap();
        }
        assert_eq!(rest, sent[5..]);
        // Everything was settled: nothing comes back.
        assert!(
            timeout(Duration::from_millis(50), sub.next())
                .await
                .is_err(),
            "an acknowledged message was redelivered (tracking {track_unacked})"
        );
    }
}

#[tokio::test]
async fn lag_counts_queued_and_in_flight_messages_of_the_group() {
    const N: u64 = 10;
    let bus = MemoryBus::new();
    let t = topic("d", "lag.created");
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&t), SubscribeOptions::ephemeral("c"))
        .await
        .unwrap();
    assert_eq!(sub.lag().await, Some(0));
    for n in 0..N {
        bus.publish(message(&t, "k", n)).await.unwrap();
    }
    assert_eq!(sub.lag().await, Some(N));
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    // Two in flight, the rest taken into the subscription's buffer or still queued.
    assert_eq!(sub.lag().await, Some(N));
    first.ack().await.unwrap();
    assert_eq!(sub.lag().await, Some(N - 1));
    second.nack(Duration::from_secs(60)).await.unwrap();
    // A nacked message waits for redelivery: still held for the group.
    assert_eq!(sub.lag().await, Some(N - 1));
    // A second member's queue counts too.
    let mut other = bus
        .subscribe(&TopicPattern::exact(&t), SubscribeOptions::ephemeral("c"))
        .await
        .unwrap();
    bus.publish(message(&t, "k", N)).await.unwrap();
    assert_eq!(sub.lag().await, Some(N));
    // Another member does not see this one's buffer.
    assert!(other.lag().await.is_some_and(|l| l <= N));
    bus.close();
    assert_eq!(sub.lag().await, None);
}
