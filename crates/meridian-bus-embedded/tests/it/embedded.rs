//! What the embedded backend promises beyond the shared suite, run on every database by
//! [`embedded_cases!`]: settles and positions survive a reopen, unacknowledged deliveries
//! come back after `ack_wait`, and the kept history can be replayed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_bus::conformance::TestBus;
use meridian_bus::{Bus, Delivery, Message, StartAt, SubscribeOptions, Subscription, TopicPattern};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;
use tokio::time::timeout;

/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// One `#[tokio::test]` per embedded case, each on a fresh bus from `$factory`.
macro_rules! embedded_cases {
    ($factory:ident) => {
        $crate::embedded::embedded_cases!(@cases $factory;
            nack_survives_reopen,
            out_of_order_acks_survive_reopen,
            ack_wait_redelivers,
            existing_durable_consumer_ignores_start,
            earliest_replays_history,
            departing_member_hands_over,
            mid_pattern_wildcard,
            lag_counts_what_is_not_acknowledged,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::embedded::$case(super::$factory().await).await;
                }
            )*
        }
    };
}
pub(crate) use embedded_cases;

fn message(topic: &Topic, key: &str, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/embedded",
            "meridian.test.ping",
            TenantId::new(),
            key,
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

fn n_of(d: &Delivery) -> u64 {
    d.message.envelope().data["n"]
        .as_u64()
        .expect("test messages carry n")
}

async fn publish(bus: &dyn Bus, m: Message) {
    timeout(WAIT, bus.publish(m))
        .await
        .expect("publish hung")
        .expect("publish failed");
}

async fn subscribe(
    bus: &dyn Bus,
    pattern: &TopicPattern,
    options: SubscribeOptions,
) -> Box<dyn Subscription> {
    timeout(WAIT, bus.subscribe(pattern, options))
        .await
        .expect("subscribe hung")
        .expect("subscribe failed")
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    timeout(WAIT, sub.next())
        .await
        .expect("no delivery in time")
        .expect("next failed")
}

async fn ack(d: Delivery) {
    timeout(WAIT, d.ack())
        .await
        .expect("ack hung")
        .expect("ack failed");
}

/// Publishes a marker and receives (acking) until it arrives, then for a quiet period;
/// returns the `n` of everything else delivered.
async fn others_until_marker(
    bus: &dyn Bus,
    sub: &mut Box<dyn Subscription>,
    topic: &Topic,
) -> Vec<u64> {
    let marker = message(topic, "marker", u64::MAX);
    let id = marker.id();
    publish(bus, marker).await;
    let mut others = Vec::new();
    loop {
        let d = next(sub).await;
        let done = d.message.id() == id;
        if !done {
            others.push(n_of(&d));
        }
        ack(d).await;
        if done {
            break;
        }
    }
    while let Ok(Ok(d)) = timeout(QUIET, sub.next()).await {
        if d.message.id() != id {
            others.push(n_of(&d));
        }
        ack(d).await;
    }
    others
}

/// Drops the test's bus, as a process exit would, and opens a new one on the same state.
async fn restart(t: TestBus) -> (Arc<dyn Bus>, TestBus) {
    let TestBus {
        bus,
        deployment,
        reopen,
        restart_broker,
        _guard,
    } = t;
    drop(bus);
    let reopen = reopen.expect("the embedded bus is durable and its fixture reopens it");
    let bus = timeout(WAIT, reopen()).await.expect("reopen hung");
    let t = TestBus {
        bus: bus.clone(),
        deployment,
        reopen: Some(reopen),
        restart_broker,
        _guard,
    };
    (bus, t)
}

/// A nack's attempt count is stored: after a reopen the next delivery continues the count.
pub async fn nack_survives_reopen(t: TestBus) {
    let topic = t.topic("nack.created");
    let pattern = TopicPattern::exact(&topic);
    let options = SubscribeOptions::durable("nacker");
    let mut sub = subscribe(t.bus.as_ref(), &pattern, options.clone()).await;
    publish(t.bus.as_ref(), message(&topic, "k", 1)).await;
    let d = next(&mut sub).await;
    assert_eq!(d.attempt, 1);
    timeout(WAIT, d.nack(Duration::from_millis(100)))
        .await
        .expect("nack hung")
        .expect("nack failed");
    drop(sub);

    let (bus, _t) = restart(t).await;
    let mut sub = subscribe(bus.as_ref(), &pattern, options).await;
    let d = next(&mut sub).await;
    assert_eq!(n_of(&d), 1);
    assert_eq!(d.attempt, 2, "the attempt count survives the reopen");
    ack(d).await;
    assert!(
        others_until_marker(bus.as_ref(), &mut sub, &topic)
            .await
            .is_empty()
    );
}

/// Acks above the watermark (out of order) are kept: after a reopen only the gaps come back.
pub async fn out_of_order_acks_survive_reopen(t: TestBus) {
    let topic = t.topic("gaps.created");
    let pattern = TopicPattern::exact(&topic);
    let options = SubscribeOptions {
        max_in_flight: 16,
        ..SubscribeOptions::durable("gappy")
    };
    let mut sub = subscribe(t.bus.as_ref(), &pattern, options.clone()).await;
    for n in 1..=6 {
        publish(t.bus.as_ref(), message(&topic, &format!("k{n}"), n)).await;
    }
    let mut held = Vec::new();
    for _ in 1..=6 {
        held.push(next(&mut sub).await);
    }
    held.sort_by_key(n_of);
    let mut kept = Vec::new();
    for d in held {
        if [2, 4, 5].contains(&n_of(&d)) {
            ack(d).await;
        } else {
            kept.push(d);
        }
    }
    drop(kept);
    drop(sub);

    let (bus, _t) = restart(t).await;
    let mut sub = subscribe(bus.as_ref(), &pattern, options).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        got.push(n_of(&d));
        ack(d).await;
    }
    assert_eq!(got, [1, 3, 6], "exactly the unacknowledged ones, in order");
    assert!(
        others_until_marker(bus.as_ref(), &mut sub, &topic)
            .await
            .is_empty()
    );
}

/// A delivery neither acked nor nacked within `ack_wait` is delivered again; acking the
/// stale delivery afterwards settles the message.
pub async fn ack_wait_redelivers(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("slow.created");
    let options = SubscribeOptions {
        ack_wait: Duration::from_millis(100),
        ..SubscribeOptions::ephemeral("sleepy")
    };
    let mut sub = subscribe(bus, &TopicPattern::exact(&topic), options).await;
    publish(bus, message(&topic, "k", 1)).await;
    let first = next(&mut sub).await;
    let again = next(&mut sub).await;
    assert_eq!(again.message, first.message);
    assert_eq!((first.attempt, again.attempt), (1, 2));
    ack(first).await;
    ack(again).await;
    assert!(others_until_marker(bus, &mut sub, &topic).await.is_empty());
}

/// A durable consumer that exists resumes from its position whatever `start` says.
pub async fn existing_durable_consumer_ignores_start(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("resume.created");
    let pattern = TopicPattern::exact(&topic);
    let mut sub = subscribe(bus, &pattern, SubscribeOptions::durable("keeper")).await;
    for n in 1..=3 {
        publish(bus, message(&topic, "k", n)).await;
    }
    for _ in 1..=3 {
        let d = next(&mut sub).await;
        ack(d).await;
    }
    drop(sub);
    let options = SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::durable("keeper")
    };
    let mut sub = subscribe(bus, &pattern, options).await;
    assert!(others_until_marker(bus, &mut sub, &topic).await.is_empty());
}

/// The log keeps history: a new consumer starting at the earliest position gets every
/// message ever published, in order, with rising positions.
pub async fn earliest_replays_history(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("history.created");
    for n in 1..=5 {
        publish(bus, message(&topic, "k", n)).await;
    }
    let options = SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::ephemeral("historian")
    };
    let mut sub = subscribe(bus, &TopicPattern::exact(&topic), options).await;
    let mut last = 0;
    for n in 1..=5 {
        let d = next(&mut sub).await;
        assert_eq!(n_of(&d), n);
        let position = d.position.expect("embedded deliveries carry positions");
        assert!(position > last, "positions rise");
        last = position;
        ack(d).await;
    }
}

/// When a group member goes away holding unacknowledged deliveries, they go to the rest of
/// the group at once (not after `ack_wait`).
pub async fn departing_member_hands_over(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("handover.created");
    let pattern = TopicPattern::exact(&topic);
    let options = SubscribeOptions {
        max_in_flight: 64,
        ..SubscribeOptions::ephemeral("crew")
    };
    let a = subscribe(bus, &pattern, options.clone()).await;
    let mut b = subscribe(bus, &pattern, options).await;
    const N: u64 = 20;
    for n in 0..N {
        publish(bus, message(&topic, &format!("key-{n}"), n)).await;
    }
    // Take everything b gets; a takes nothing and leaves.
    let mut got = HashSet::new();
    while let Ok(Ok(d)) = timeout(QUIET, b.next()).await {
        got.insert(n_of(&d));
        ack(d).await;
    }
    assert!(
        (got.len() as u64) < N,
        "a should have been routed some keys"
    );
    drop(a);
    while got.len() < N as usize {
        let d = next(&mut b).await;
        assert!(got.insert(n_of(&d)), "delivered twice after the handover");
        ack(d).await;
    }
}

/// A wildcard in the middle of a pattern matches exactly one segment.
pub async fn mid_pattern_wildcard(t: TestBus) {
    let bus = t.bus.as_ref();
    let d = &t.deployment;
    let pattern = TopicPattern::parse(&format!("deployment.{d}.platform.*.order.created"))
        .expect("a valid pattern");
    let mut sub = subscribe(bus, &pattern, SubscribeOptions::ephemeral("orders")).await;
    let topic = |s: &str| Topic::parse(&format!("deployment.{d}.platform.{s}")).expect("valid");
    publish(bus, message(&topic("oms.order.created"), "k", 1)).await;
    publish(bus, message(&topic("oms.order.created.dlq"), "k", 2)).await;
    publish(bus, message(&topic("oms.order.canceled"), "k", 3)).await;
    publish(bus, message(&topic("test.order.created"), "k", 4)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        got.push(n_of(&d));
        ack(d).await;
    }
    assert_eq!(got, [1, 4]);
    let marker_topic = topic("marker.order.created");
    assert!(
        others_until_marker(bus, &mut sub, &marker_topic)
            .await
            .is_empty()
    );
}

/// The consumer's lag is what the log holds for it and it has not acknowledged yet.
pub async fn lag_counts_what_is_not_acknowledged(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("lag.created");
    let pattern = TopicPattern::exact(&topic);
    let mut sub = subscribe(bus, &pattern, SubscribeOptions::durable("lagger")).await;
    assert_eq!(sub.lag().await, Some(0));
    for n in 1..=5 {
        publish(bus, message(&topic, "k", n)).await;
    }
    assert_eq!(sub.lag().await, Some(5));
    for _ in 1..=3 {
        let d = next(&mut sub).await;
        ack(d).await;
    }
    assert_eq!(sub.lag().await, Some(2));
    for _ in 4..=5 {
        let d = next(&mut sub).await;
        ack(d).await;
    }
    assert_eq!(sub.lag().await, Some(0));
}
