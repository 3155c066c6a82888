//! What the conformance suite cannot see: how the backend lays things out on the broker and
//! how it behaves while the broker is away.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use meridian_bus::conformance::unique_deployment;
use meridian_bus::{Bus, BusError, Message, StartAt, SubscribeOptions, TopicPattern};
use meridian_bus_nats::{NatsBus, NatsConfig};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;
use tokio::time::timeout;

use crate::fixture::{Cleanup, PrivateServer, connect, shared_url};

const WAIT: Duration = Duration::from_secs(10);

fn message(topic: &Topic, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/nats",
            "meridian.test.ping",
            TenantId::new(),
            "k",
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

fn topic(deployment: &str, rest: &str) -> Topic {
    Topic::parse(&format!("deployment.{deployment}.platform.{rest}")).expect("valid topic")
}

fn pattern(deployment: &str, rest: &str) -> TopicPattern {
    TopicPattern::parse(&format!("deployment.{deployment}.platform.{rest}")).expect("valid")
}

async fn setup() -> (NatsBus, String, Cleanup) {
    let url = shared_url();
    let bus = connect(&url).await;
    let deployment = unique_deployment();
    let cleanup = Cleanup {
        url,
        deployment: deployment.clone(),
    };
    (bus, deployment, cleanup)
}

/// One stream per domain with the durable profile, holding the domain's dead letters too.
#[tokio::test]
async fn domain_stream_has_the_durable_profile_and_holds_dead_letters() {
    let (bus, d, _cleanup) = setup().await;
    let created = topic(&d, "oms.order.created");
    bus.publish(message(&created, 1)).await.expect("publish");
    bus.publish(message(&created.dead_letter(), 2))
        .await
        .expect("publish a dead letter");
    bus.publish(message(&topic(&d, "data.stock.changed"), 3))
        .await
        .expect("publish to another domain");

    let mut oms = bus
        .jetstream()
        .get_stream(format!("MERIDIAN_{d}_DOMAIN_oms"))
        .await
        .expect("the oms stream exists");
    let info = oms.info().await.expect("stream info");
    let c = &info.config;
    assert_eq!(c.subjects, vec![format!("deployment.{d}.platform.oms.>")]);
    assert_eq!(c.storage, StorageType::File);
    assert!(c.deny_delete && c.deny_purge, "durable profile");
    assert_eq!(c.max_age, Duration::ZERO, "no age limit");
    assert_eq!(
        info.state.messages, 2,
        "the dead letter sits with its topic"
    );

    let mut data = bus
        .jetstream()
        .get_stream(format!("MERIDIAN_{d}_DOMAIN_data"))
        .await
        .expect("the data stream exists");
    assert_eq!(data.info().await.expect("info").state.messages, 1);
}

/// A durable subscription is a durable JetStream consumer named after the consumer.
#[tokio::test]
async fn durable_consumer_is_named_after_the_consumer() {
    let (bus, d, _cleanup) = setup().await;
    let _sub = bus
        .subscribe(
            &pattern(&d, "oms.order.*"),
            SubscribeOptions {
                max_in_flight: 7,
                ..SubscribeOptions::durable("projector")
            },
        )
        .await
        .expect("subscribe");
    let stream = bus
        .jetstream()
        .get_stream(format!("MERIDIAN_{d}_DOMAIN_oms"))
        .await
        .expect("stream");
    let info = stream
        .consumer_info("projector")
        .await
        .expect("the durable consumer exists");
    assert_eq!(info.config.durable_name.as_deref(), Some("projector"));
    assert_eq!(
        info.config.filter_subject,
        format!("deployment.{d}.platform.oms.order.*")
    );
    assert_eq!(info.config.max_ack_pending, 7);

    // The same consumer subscribing again with other limits keeps its position and takes
    // the new limits.
    drop(_sub);
    let _sub = bus
        .subscribe(
            &pattern(&d, "oms.order.*"),
            SubscribeOptions {
                max_in_flight: 9,
                ack_wait: Duration::from_secs(12),
                ..SubscribeOptions::durable("projector")
            },
        )
        .await
        .expect("subscribe again");
    let info = stream.consumer_info("projector").await.expect("info");
    assert_eq!(info.config.max_ack_pending, 9);
    assert_eq!(info.config.ack_wait, Duration::from_secs(12));

    // The same name on another pattern is a mistake, reported as such.
    let other = bus
        .subscribe(
            &pattern(&d, "oms.payment.*"),
            SubscribeOptions::durable("projector"),
        )
        .await;
    assert!(
        matches!(other, Err(BusError::Internal(_))),
        "{:?}",
        other.err()
    );
}

/// The lag counts, over every domain stream the pattern reaches, the messages not
/// delivered yet and those delivered but not acknowledged.
#[tokio::test]
async fn lag_counts_unacknowledged_messages_across_domains() {
    let (bus, d, _cleanup) = setup().await;
    let (oms, fulfillment) = (12, 8);
    for n in 0..oms {
        bus.publish(message(&topic(&d, "oms.order.created"), n))
            .await
            .expect("publish");
    }
    for n in 0..fulfillment {
        bus.publish(message(&topic(&d, "fulfillment.order.created"), n))
            .await
            .expect("publish");
    }
    let mut sub = bus
        .subscribe(
            &pattern(&d, "*.order.created"),
            SubscribeOptions {
                max_in_flight: 4,
                start: StartAt::Earliest,
                ..SubscribeOptions::durable("lagging")
            },
        )
        .await
        .expect("subscribe");
    // Two deliveries taken and held unacknowledged; the rest never asked for.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            timeout(WAIT, sub.next())
                .await
                .expect("delivered in time")
                .expect("next"),
        );
    }
    let expected = oms + fulfillment;
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

/// A subscription across domains joins a domain stream created after it started, and
/// reads that stream from its beginning.
#[tokio::test]
async fn pattern_across_domains_joins_new_domains() {
    let (bus, d, _cleanup) = setup().await;
    let mut sub = bus
        .subscribe(&pattern(&d, "**"), SubscribeOptions::ephemeral("watcher"))
        .await
        .expect("subscribe");
    // `plugins` is not one of the known domains: its stream appears with this publish.
    let late = message(&topic(&d, "plugins.thing.happened"), 1);
    bus.publish(late.clone()).await.expect("publish");
    let delivery = timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("the new domain is joined within the discovery period")
        .expect("next");
    assert_eq!(delivery.message.id(), late.id());
    delivery.ack().await.expect("ack");
}

/// A pattern with a wildcard domain reaches every domain stream, through one subscription.
#[tokio::test]
async fn pattern_across_domains() {
    let (bus, d, _cleanup) = setup().await;
    let mut sub = bus
        .subscribe(
            &pattern(&d, "*.order.created"),
            SubscribeOptions::ephemeral("everywhere"),
        )
        .await
        .expect("subscribe");
    let oms = message(&topic(&d, "oms.order.created"), 1);
    let fulfillment = message(&topic(&d, "fulfillment.order.created"), 2);
    for m in [
        oms.clone(),
        message(&topic(&d, "billing.invoice.created"), 3),
        fulfillment.clone(),
    ] {
        bus.publish(m).await.expect("publish");
    }
    let mut got = HashSet::new();
    for _ in 0..2 {
        let delivery = timeout(WAIT, sub.next())
            .await
            .expect("delivered in time")
            .expect("next");
        got.insert(delivery.message.id());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(got, HashSet::from([oms.id(), fulfillment.id()]));
    assert!(
        timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the billing event does not match"
    );
}

/// An ephemeral consumer is deleted when its last subscription goes away.
#[tokio::test]
async fn ephemeral_consumer_is_cleaned_up() {
    let (bus, d, _cleanup) = setup().await;
    let p = pattern(&d, "oms.order.*");
    let a = bus
        .subscribe(&p, SubscribeOptions::ephemeral("temp"))
        .await
        .expect("subscribe");
    let b = bus
        .subscribe(&p, SubscribeOptions::ephemeral("temp"))
        .await
        .expect("subscribe");
    let stream = bus
        .jetstream()
        .get_stream(format!("MERIDIAN_{d}_DOMAIN_oms"))
        .await
        .expect("stream");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stream.consumer_info("temp").await.is_ok(),
        "still in use by the other member"
    );
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    while stream.consumer_info("temp").await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ephemeral consumer was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connecting to nothing is `Unavailable`, promptly.
#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = NatsConfig {
        request_timeout: Duration::from_secs(1),
        ..NatsConfig::new(format!("nats://127.0.0.1:{port}"))
    };
    let result = timeout(WAIT, NatsBus::connect_with(config))
        .await
        .expect("connect returns in time");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
}

/// While the broker is down, `ping` and `next` report `Unavailable` (no hang, no panic);
/// once it is back, the same subscription delivers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_then_recovered() {
    let server = PrivateServer::start().await;
    let bus = connect(&server.url()).await;
    let d = unique_deployment();
    let t = topic(&d, "oms.order.created");
    let mut sub = bus
        .subscribe(
            &pattern(&d, "oms.order.*"),
            SubscribeOptions::durable("steady"),
        )
        .await
        .expect("subscribe");
    bus.publish(message(&t, 1)).await.expect("publish");
    let first = timeout(WAIT, sub.next())
        .await
        .expect("in time")
        .expect("next");
    first.ack().await.expect("ack");

    server.stop(true).await;
    let result = timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("next reports the outage instead of hanging");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
    let ping = timeout(WAIT, bus.ping()).await.expect("ping returns");
    assert!(matches!(ping, Err(BusError::Unavailable(_))), "{ping:?}");

    server.start_again().await;
    let second = message(&t, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(second.clone()).await {
            Ok(()) => break,
            Err(BusError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish after the restart: {e}"),
        }
    }
    let delivery = loop {
        match timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Ok(delivery)) => break delivery,
            Ok(Err(BusError::Unavailable(_))) => continue,
            other => panic!("next after the restart: {other:?}"),
        }
    };
    assert_eq!(delivery.message.id(), second.id());
    delivery.ack().await.expect("ack");
    timeout(WAIT, bus.ping())
        .await
        .expect("ping returns")
        .expect("ping after the restart");
}

/// A server whose `max_payload` is below Meridian's limit: its limit is the one enforced,
/// before sending, with the same clear error.
#[tokio::test]
async fn server_max_payload_is_respected() {
    let server = PrivateServer::start_with("max_payload: 65536").await;
    let bus = connect(&server.url()).await;
    assert!(bus.payload_limit() < 65536);
    let d = unique_deployment();
    let t = topic(&d, "oms.order.created");
    let mut big = message(&t, 1).into_envelope();
    big.data = json!({ "blob": "x".repeat(100_000) });
    let big = Message::new(t.clone(), big);
    match bus.publish(big).await {
        Err(BusError::PayloadTooLarge { size, limit }) => {
            assert!(size > limit && limit < 65536, "{size} > {limit}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let mut fits = message(&t, 2).into_envelope();
    fits.data = json!({ "blob": "x".repeat(60_000) });
    let fits = Message::new(t.clone(), fits);
    bus.publish(fits)
        .await
        .expect("a message under the server's limit");
}
