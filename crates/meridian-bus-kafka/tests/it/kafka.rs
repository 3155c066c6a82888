//! What the conformance suite cannot see: how the backend lays things out on the broker,
//! patterns across domains, ack-wait redelivery, a group member without partitions, an
//! unreachable broker, and a durable consumer resuming from its committed offsets after
//! the broker crashed.

use std::collections::HashSet;
use std::time::Duration;

use meridian_bus::conformance::unique_deployment;
use meridian_bus::{Bus, BusError, Message, SubscribeOptions, TopicPattern};
use meridian_bus_kafka::{KafkaBus, KafkaConfig};
use meridian_core::{Envelope, TenantId, Topic};
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::time::timeout;

use crate::fixture::{Cleanup, PrivateBroker, connect, shared_url};

const WAIT: Duration = Duration::from_secs(10);

fn message(topic: &Topic, key: &str, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/kafka",
            "meridian.test.ping",
            TenantId::new(),
            key,
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

async fn setup() -> (KafkaBus, String, Cleanup) {
    let url = shared_url();
    let bus = connect(&url).await;
    let deployment = unique_deployment();
    let cleanup = Cleanup {
        url,
        deployment: deployment.clone(),
    };
    (bus, deployment, cleanup)
}

/// One Kafka topic per domain with the configured partitions; the record key is the
/// subject and the Meridian topic is in a header; dead letters share the domain's topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_in_the_domain_topic_with_key_and_header() {
    let (bus, d, _cleanup) = setup().await;
    let created = topic(&d, "oms.order.created");
    let sent = [
        message(&created, "order-1", 1),
        message(&created.dead_letter(), "order-1", 2),
    ];
    for m in &sent {
        bus.publish(m.clone()).await.expect("publish");
    }
    bus.publish(message(&topic(&d, "data.stock.changed"), "sku-1", 3))
        .await
        .expect("publish to another domain");

    let kafka_topic = format!("meridian.{d}.oms");
    let records = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", shared_url())
            .set("group.id", "meridian-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a reader");
        let metadata = reader
            .fetch_metadata(Some(&kafka_topic), WAIT)
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&kafka_topic, p as i32, Offset::Beginning)
                .expect("partition");
        }
        reader.assign(&tpl).expect("assign");
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while records.len() < 2 && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                let header = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "meridian-topic"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                records.push((m.partition(), key, header));
            }
        }
        (partitions, records)
    })
    .await
    .expect("reader");
    let (partitions, records) = records;
    assert_eq!(partitions, 4, "the default partition count");
    assert_eq!(records.len(), 2, "{records:?}");
    let topics: HashSet<Option<String>> = records.iter().map(|r| r.2.clone()).collect();
    assert_eq!(
        topics,
        HashSet::from([
            Some(created.as_str().to_owned()),
            Some(created.dead_letter().as_str().to_owned())
        ])
    );
    assert!(records.iter().all(|r| r.1.as_deref() == Some("order-1")));
    assert_eq!(records[0].0, records[1].0, "one key, one partition");

    // The durable profile: no retention limit.
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", shared_url())
        .create()
        .expect("an admin client");
    let oms = format!("meridian.{d}.oms");
    let configs = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(&oms)],
            &AdminOptions::new().request_timeout(Some(WAIT)),
        )
        .await
        .expect("describe configs");
    let config = configs
        .into_iter()
        .next()
        .expect("one result")
        .expect("the topic's config");
    assert_eq!(
        config.get("retention.ms").and_then(|e| e.value.as_deref()),
        Some("-1"),
        "{:?}",
        config.entries
    );
}

/// A pattern with a wildcard domain reads every domain topic and joins one created after
/// it started, reading that one from its beginning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_across_domains_joins_new_domains() {
    let (bus, d, _cleanup) = setup().await;
    let mut sub = bus
        .subscribe(
            &pattern(&d, "*.order.created"),
            SubscribeOptions::ephemeral("everywhere"),
        )
        .await
        .expect("subscribe");
    let oms = message(&topic(&d, "oms.order.created"), "a", 1);
    // `plugins` is not one of the known domains: its topic appears with this publish.
    let late = message(&topic(&d, "plugins.order.created"), "b", 2);
    for m in [
        oms.clone(),
        message(&topic(&d, "billing.invoice.created"), "c", 3),
        late.clone(),
    ] {
        bus.publish(m).await.expect("publish");
    }
    let mut got = HashSet::new();
    for _ in 0..2 {
        let delivery = timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("delivered within the discovery period")
            .expect("next");
        got.insert(delivery.message.id());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(got, HashSet::from([oms.id(), late.id()]));
    assert!(
        timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "the billing event does not match"
    );
}

/// A delivery neither acked nor nacked within `ack_wait` is handed out again, with its
/// attempt count raised; the late ack of the first delivery settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_delivery_comes_back_after_ack_wait() {
    let (bus, d, _cleanup) = setup().await;
    let t = topic(&d, "oms.order.created");
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(&t),
            SubscribeOptions {
                ack_wait: Duration::from_millis(300),
                ..SubscribeOptions::ephemeral("slow")
            },
        )
        .await
        .expect("subscribe");
    let sent = message(&t, "k", 1);
    bus.publish(sent.clone()).await.expect("publish");
    let first = timeout(WAIT, sub.next())
        .await
        .expect("first")
        .expect("next");
    assert_eq!(first.attempt, 1);
    let second = timeout(WAIT, sub.next())
        .await
        .expect("redelivered after the ack wait")
        .expect("next");
    assert_eq!(second.message.id(), sent.id());
    assert_eq!(second.attempt, 2);
    first.ack().await.expect("late ack");
    second.ack().await.expect("ack");
}

/// A position on a pattern that spans domains cannot be honoured: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_across_domains_is_unsupported() {
    let (bus, d, _cleanup) = setup().await;
    let result = bus
        .subscribe(
            &pattern(&d, "**"),
            SubscribeOptions {
                start: meridian_bus::StartAt::Position(0),
                ..SubscribeOptions::ephemeral("nowhere")
            },
        )
        .await;
    assert!(
        matches!(result, Err(BusError::Unsupported { .. })),
        "{:?}",
        result.err()
    );
}

/// Connecting to nothing is `Unavailable`, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = KafkaConfig {
        request_timeout: Duration::from_secs(2),
        ..KafkaConfig::new(format!("127.0.0.1:{port}"))
    };
    let result = timeout(WAIT, KafkaBus::connect_with(config))
        .await
        .expect("connect returns in time");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
}

/// While the broker is down, `ping` and `publish` report `Unavailable` (no hang); once it
/// is back, `ping` succeeds again and a client opened then publishes and subscribes.
///
/// The private broker keeps its data in memory, so its restart also forgets the idempotent
/// producer's state: the bus that published before keeps timing out against it (a broker
/// with persistent storage keeps that state), which is why a new client is used after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_then_recovered() {
    let broker = PrivateBroker::start().await;
    let config = KafkaConfig {
        request_timeout: Duration::from_secs(2),
        ..KafkaConfig::from_url(&broker.url()).expect("url")
    };
    let bus = KafkaBus::connect_with(config.clone())
        .await
        .expect("connect");
    let d = unique_deployment();
    let t = topic(&d, "oms.order.created");
    bus.publish(message(&t, "k", 1)).await.expect("publish");

    broker.stop().await;
    let ping = timeout(WAIT, bus.ping()).await.expect("ping returns");
    assert!(matches!(ping, Err(BusError::Unavailable(_))), "{ping:?}");
    let publish = timeout(WAIT, bus.publish(message(&t, "k", 2)))
        .await
        .expect("publish returns");
    assert!(
        matches!(publish, Err(BusError::Unavailable(_))),
        "{publish:?}"
    );

    broker.start_again().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bus.ping().await {
            Ok(()) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "ping: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let fresh = KafkaBus::connect_with(config).await.expect("reconnect");
    let mut sub = fresh
        .subscribe(
            &TopicPattern::exact(&t),
            SubscribeOptions::ephemeral("after"),
        )
        .await
        .expect("subscribe after the restart");
    let sent = message(&t, "k", 3);
    fresh.publish(sent.clone()).await.expect("publish");
    let delivery = timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("next");
    assert_eq!(delivery.message.id(), sent.id());
    delivery.ack().await.expect("ack");
}

/// The lag of a durable consumer counts what the group has not acknowledged on its
/// partitions: with two of N records delivered and unacked, at least N - 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_records_the_group_has_not_acknowledged() {
    const N: u64 = 8;
    let (bus, d, _cleanup) = setup().await;
    let t = topic(&d, "oms.order.created");
    for n in 0..N {
        bus.publish(message(&t, &format!("k{n}"), n))
            .await
            .expect("publish");
    }
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(&t),
            SubscribeOptions {
                start: meridian_bus::StartAt::Earliest,
                ..SubscribeOptions::durable("lagging")
            },
        )
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            timeout(WAIT, sub.next())
                .await
                .expect("a delivery")
                .expect("next"),
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let lag = loop {
        let lag = sub.lag().await;
        if lag.is_some_and(|l| l >= N - 2) || tokio::time::Instant::now() >= deadline {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        lag.is_some_and(|l| l >= N - 2),
        "lag {lag:?}, expected at least {}",
        N - 2
    );
    drop(held);
}

/// Publishes, retrying while a restarted broker is coming back.
async fn publish_through_restart(bus: &KafkaBus, m: Message) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match timeout(WAIT, bus.publish(m.clone())).await {
            Ok(Ok(())) => return,
            Ok(Err(BusError::Unavailable(_))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Ok(Err(e)) => panic!("publish failed after the restart: {e}"),
            Err(_) => panic!("publish kept timing out after the restart"),
        }
    }
}

/// A durable consumer's committed offsets survive a broker crash: after the broker starts
/// again on its PostgreSQL storage, a new subscription in the same group receives exactly
/// what the group had not acknowledged (including what was published after the crash) and
/// nothing it had. The bus that published before the crash publishes after it too: the
/// broker kept the idempotent producer's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_resumes_after_a_broker_crash() {
    let broker = PrivateBroker::start_durable().await;
    let bus = connect(&broker.url()).await;
    let d = unique_deployment();
    let t = topic(&d, "oms.order.created");
    let pattern = TopicPattern::exact(&t);
    let options = SubscribeOptions::durable("resumer");
    let mut sub = bus
        .subscribe(&pattern, options.clone())
        .await
        .expect("subscribe");
    let mut sent = HashSet::new();
    for n in 0..10 {
        let m = message(&t, "k", n);
        sent.insert(m.id());
        bus.publish(m).await.expect("publish");
    }
    let mut acked = HashSet::new();
    for _ in 0..5 {
        let delivery = timeout(WAIT, sub.next())
            .await
            .expect("a delivery")
            .expect("next");
        acked.insert(delivery.message.id());
        delivery.ack().await.expect("ack");
    }
    drop(sub);

    broker.restart().await;
    for n in 10..15 {
        let m = message(&t, "k", n);
        sent.insert(m.id());
        publish_through_restart(&bus, m).await;
    }
    let marker = message(&t, "k", u64::MAX);
    publish_through_restart(&bus, marker.clone()).await;

    let mut sub = bus
        .subscribe(&pattern, options)
        .await
        .expect("subscribe after the restart");
    let expected: HashSet<_> = sent.difference(&acked).copied().collect();
    let mut got = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of the {} unacknowledged messages and no marker arrived after the restart",
            got.len(),
            expected.len()
        );
        let Ok(next) = timeout(WAIT, sub.next()).await else {
            continue;
        };
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(BusError::Unavailable(_)) => continue,
            Err(e) => panic!("next failed after the restart: {e}"),
        };
        let id = delivery.message.id();
        assert!(
            !acked.contains(&id),
            "a message acknowledged before the crash came back: {id}"
        );
        delivery.ack().await.expect("ack");
        if id == marker.id() {
            break;
        }
        got.insert(id);
    }
    assert_eq!(
        got, expected,
        "every unacknowledged message, and only those, arrives before the marker"
    );
}

/// A group member that the rebalance leaves without partitions (two members, one
/// partition) keeps working and the message reaches the group once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_partitions_is_harmless() {
    let url = shared_url();
    let config = KafkaConfig::from_url(&format!("kafka://{url}?partitions=1")).expect("url");
    let bus = KafkaBus::connect_with(config).await.expect("connect");
    let d = unique_deployment();
    let _cleanup = Cleanup {
        url,
        deployment: d.clone(),
    };
    let t = topic(&d, "oms.order.created");
    let pattern = TopicPattern::exact(&t);
    let mut first = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("pair"))
        .await
        .expect("subscribe");
    let mut second = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("pair"))
        .await
        .expect("subscribe a second member");
    let sent = message(&t, "k", 1);
    bus.publish(sent.clone()).await.expect("publish");
    let delivery = timeout(Duration::from_secs(30), async {
        tokio::select! {
            d = first.next() => d,
            d = second.next() => d,
        }
    })
    .await
    .expect("delivered to one member")
    .expect("next");
    assert_eq!(delivery.message.id(), sent.id());
    delivery.ack().await.expect("ack");
}
