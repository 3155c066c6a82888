//! What only the RabbitMQ backend promises: the `#` zero-word filter, quorum delivery
//! counts as attempts, parking of undecodable messages, errors while the broker is down
//! and the resumption after it returns.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use meridian_bus::conformance::unique_deployment;
use meridian_bus::{
    Bus, BusError, Delivery, Message, SubscribeOptions, Subscription, TopicPattern,
};
use meridian_bus_rabbitmq::{RabbitBus, RabbitConfig};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;
use tokio::time::timeout;

use crate::support::{PrivateBroker, Teardown, amqp_url, config, connect};

const WAIT: Duration = Duration::from_secs(10);

fn topic(deployment: &str, event: &str) -> Topic {
    Topic::parse(&format!("deployment.{deployment}.platform.test.{event}")).expect("valid")
}

fn message(topic: &Topic, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/rabbitmq",
            "meridian.test.ping",
            TenantId::new(),
            "k",
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    timeout(WAIT, sub.next())
        .await
        .expect("no delivery in time")
        .expect("next failed")
}

/// A bus on the machine's broker, with teardown of its deployment.
async fn bus() -> (RabbitBus, String, Teardown) {
    let url = amqp_url();
    let deployment = unique_deployment();
    let bus = connect(config(&url, &deployment)).await;
    let teardown = Teardown::new(&url, &deployment);
    teardown.track(&bus);
    (bus, deployment, teardown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_unavailable() {
    let config = RabbitConfig {
        connect_timeout: Duration::from_secs(2),
        // Port 1 (tcpmux) is closed on any machine that would run these tests.
        ..RabbitConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")
    };
    match RabbitBus::connect(config).await {
        Err(BusError::Unavailable(why)) => {
            assert!(!why.contains("guest:guest"), "the password leaked: {why}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// AMQP's `#` matches zero words; Meridian's `**` needs one. The broker routes `a` to a
/// queue bound with `a.#`; the subscription must skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_wildcard_needs_one_more_segment() {
    let (bus, d, _teardown) = bus().await;
    let pattern =
        TopicPattern::parse(&format!("deployment.{d}.platform.test.order.**")).expect("valid");
    let mut sub = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("rest"))
        .await
        .expect("subscribe");
    let bare = message(&topic(&d, "order"), 0);
    let deeper = message(&topic(&d, "order.created"), 1);
    bus.publish(bare).await.expect("publish");
    bus.publish(deeper.clone()).await.expect("publish");
    let got = next(&mut sub).await;
    assert_eq!(got.message, deeper, "`**` skipped the zero-segment match");
    got.ack().await.expect("ack");
    assert!(
        timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing else arrives"
    );
}

/// The lag is the queue's ready messages: everything published for the consumer except
/// what the broker has already handed to it unacknowledged (at most `max_in_flight`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_ready_messages_of_the_queue() {
    let (bus, d, _teardown) = bus().await;
    let t = topic(&d, "lag.created");
    let max_in_flight = 4;
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(&t),
            SubscribeOptions {
                max_in_flight,
                ..SubscribeOptions::durable("lagging")
            },
        )
        .await
        .expect("subscribe");
    let published = 20;
    for n in 0..published {
        bus.publish(message(&t, n)).await.expect("publish");
    }
    // Two deliveries taken and held unacknowledged; the rest never asked for.
    let held = vec![next(&mut sub).await, next(&mut sub).await];
    let expected = published - max_in_flight as u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        last = sub.lag().await.or(last);
        if last.is_some_and(|n| n >= expected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {last:?} never reached {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

/// On a durable (quorum) queue the attempt is the broker's delivery count + 1, so it
/// survives a new subscription, unlike a count the client keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_attempts_come_from_the_broker() {
    let (bus, d, _teardown) = bus().await;
    let t = topic(&d, "attempts.created");
    let pattern = TopicPattern::exact(&t);
    let options = SubscribeOptions::durable("counter");
    let mut sub = bus
        .subscribe(&pattern, options.clone())
        .await
        .expect("subscribe");
    let sent = message(&t, 1);
    bus.publish(sent.clone()).await.expect("publish");
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    first.nack(Duration::from_millis(20)).await.expect("nack");
    let second = next(&mut sub).await;
    assert_eq!(second.attempt, 2);
    // Leaving without settling also counts: the next subscription sees attempt 3.
    drop(second);
    drop(sub);
    let mut sub = bus.subscribe(&pattern, options).await.expect("resubscribe");
    let third = next(&mut sub).await;
    assert_eq!(third.message, sent);
    assert_eq!(third.attempt, 3);
    third.ack().await.expect("ack");
}

/// A message that is not an envelope cannot be handled by anyone: the subscription rejects
/// it and the broker dead-letters it to the deployment's parking queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_parked() {
    let (bus, d, _teardown) = bus().await;
    let t = topic(&d, "garbage.created");
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&t), SubscribeOptions::durable("picky"))
        .await
        .expect("subscribe");
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        format!("meridian.{d}").as_str().into(),
        t.as_str().into(),
        BasicPublishOptions::default(),
        b"not json",
        BasicProperties::default(),
    )
    .await
    .expect("raw publish");
    let good = message(&t, 2);
    bus.publish(good.clone()).await.expect("publish");
    let got = next(&mut sub).await;
    assert_eq!(got.message, good, "the garbage was skipped");
    got.ack().await.expect("ack");

    let parked = format!("meridian.{d}.dlx.parked");
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        if let Some(m) = ch
            .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            break m.delivery.data;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body, b"not json");
    let _ = conn.close(200, "done".into()).await;
}

/// While the broker is down, publishing, subscribing and pinging fail with `Unavailable`
/// after the configured wait instead of hanging; an open subscription reports
/// `Unavailable` and resumes its durable queue once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_then_recovers() {
    let mut broker = tokio::task::block_in_place(PrivateBroker::start);
    let d = unique_deployment();
    let bus = connect(RabbitConfig {
        unavailable_after: Duration::from_millis(500),
        ..config(&broker.url(), &d)
    })
    .await;
    let t = topic(&d, "outage.created");
    let pattern = TopicPattern::exact(&t);
    let mut sub = bus
        .subscribe(&pattern, SubscribeOptions::durable("patient"))
        .await
        .expect("subscribe");
    bus.ping().await.expect("ping while up");

    tokio::task::block_in_place(|| broker.stop());
    let down = timeout(WAIT, sub.next())
        .await
        .expect("next hung while down");
    assert!(
        matches!(down, Err(BusError::Unavailable(_))),
        "next while down: {down:?}"
    );
    let published = timeout(WAIT, bus.publish(message(&t, 1)))
        .await
        .expect("publish hung while down");
    assert!(
        matches!(published, Err(BusError::Unavailable(_))),
        "publish while down: {published:?}"
    );
    let pinged = timeout(WAIT, bus.ping()).await.expect("ping hung");
    assert!(
        matches!(pinged, Err(BusError::Unavailable(_))),
        "{pinged:?}"
    );
    let subscribed = timeout(
        WAIT,
        bus.subscribe(&pattern, SubscribeOptions::durable("late")),
    )
    .await
    .expect("subscribe hung while down");
    assert!(
        matches!(subscribed, Err(BusError::Unavailable(_))),
        "subscribe while down"
    );

    tokio::task::block_in_place(|| broker.restart());
    let sent = message(&t, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(sent.clone()).await {
            Ok(()) => break,
            Err(BusError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("publish after the restart: {e}"),
        }
    }
    bus.ping().await.expect("ping after the restart");
    let got = loop {
        match timeout(WAIT, sub.next()).await.expect("next hung") {
            Ok(d) => break d,
            Err(BusError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("next after the restart: {e}"),
        }
    };
    assert_eq!(
        got.message, sent,
        "the same durable queue is consumed again"
    );
    got.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_refused_and_names_are_checked() {
    let (bus, d, _teardown) = bus().await;
    let pattern = TopicPattern::parse(&format!("deployment.{d}.platform.**")).expect("valid");
    let replay = SubscribeOptions {
        start: meridian_bus::StartAt::Position(1),
        ..SubscribeOptions::ephemeral("rewind")
    };
    assert!(matches!(
        bus.subscribe(&pattern, replay).await,
        Err(BusError::Unsupported { .. })
    ));
    assert!(matches!(
        bus.subscribe(&pattern, SubscribeOptions::ephemeral("Not Valid"))
            .await,
        Err(BusError::InvalidTopic(_))
    ));
}

/// With one delivery in flight, a nacked message keeps its place: it comes back before the
/// messages published after it, on quorum and on transient queues alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_not_overtaken_with_one_in_flight() {
    let (bus, d, _teardown) = bus().await;
    for durable in [true, false] {
        let t = topic(
            &d,
            if durable {
                "keep.durable"
            } else {
                "keep.transient"
            },
        );
        let options = SubscribeOptions {
            max_in_flight: 1,
            durable,
            ..SubscribeOptions::durable("keeper")
        };
        let mut sub = bus
            .subscribe(&TopicPattern::exact(&t), options)
            .await
            .expect("subscribe");
        for n in 0..3 {
            bus.publish(message(&t, n)).await.expect("publish");
        }
        let first = next(&mut sub).await;
        assert_eq!(first.message.envelope().data["n"], 0);
        first.nack(Duration::from_millis(100)).await.expect("nack");
        let mut order = Vec::new();
        for _ in 0..3 {
            let got = next(&mut sub).await;
            order.push((got.message.envelope().data["n"].as_u64(), got.attempt));
            got.ack().await.expect("ack");
        }
        assert_eq!(
            order,
            [(Some(0), 2), (Some(1), 1), (Some(2), 1)],
            "durable: {durable}"
        );
    }
}

/// A delivery left unsettled past `ack_wait` goes back to the queue with its attempt
/// raised, and settling it late is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_deliveries_come_back_after_ack_wait() {
    let (bus, d, _teardown) = bus().await;
    for durable in [true, false] {
        let t = topic(
            &d,
            if durable {
                "slow.durable"
            } else {
                "slow.transient"
            },
        );
        let options = SubscribeOptions {
            ack_wait: Duration::from_millis(300),
            durable,
            ..SubscribeOptions::durable("sloth")
        };
        let mut sub = bus
            .subscribe(&TopicPattern::exact(&t), options)
            .await
            .expect("subscribe");
        let sent = message(&t, 1);
        bus.publish(sent.clone()).await.expect("publish");
        let first = next(&mut sub).await;
        assert_eq!(first.attempt, 1);
        let started = tokio::time::Instant::now();
        let again = next(&mut sub).await;
        assert!(started.elapsed() >= Duration::from_millis(250), "too early");
        assert_eq!(again.message, sent);
        assert_eq!(again.attempt, 2, "durable: {durable}");
        assert!(
            matches!(first.ack().await, Err(BusError::Unavailable(_))),
            "a late ack is refused"
        );
        again.ack().await.expect("ack in time");
        assert!(
            timeout(Duration::from_millis(500), sub.next())
                .await
                .is_err(),
            "an acknowledged delivery stays acknowledged"
        );
    }
}
