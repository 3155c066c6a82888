//! The Kafka backend of Meridian's Bus API ([`KafkaBus`], name `"kafka"`), on rdkafka
//! (librdkafka 2.3, built from source).
//!
//! librdkafka is held at 2.3: from 2.4 on (KIP-951 leader discovery) it dereferences a null
//! topic name when a Fetch v12 reply carries a CurrentLeader tag, as the `tansu` broker's
//! do, and the process crashes. The workspace pins `rdkafka-sys` for that reason.
//!
//! # Layout on the broker
//!
//! - **Topics:** one Kafka topic per domain per deployment, `meridian.{deployment}.{domain}`,
//!   created on first use (publish or subscribe) with [`KafkaConfig::partitions`] partitions,
//!   [`KafkaConfig::replication`] replicas and the durable profile: `retention.ms=-1` (no
//!   age limit) and `max.message.bytes` large enough for Meridian's payload limit. Dead
//!   letters (`<topic>.dlq`) sit under the same domain and so in the same Kafka topic.
//! - **Records:** the value is the envelope's JSON, the key the envelope's subject (the
//!   aggregate id), so all messages of one key go to one partition in publish order; the
//!   Meridian topic travels in the `meridian-topic` header.
//! - **Consumers:** each subscription is one member of the Kafka consumer group
//!   `meridian.{deployment}.{consumer}`: subscriptions with the same consumer name share the
//!   partitions (a consumer group), different names are different groups and each sees
//!   every message (fan-out). A consumer name stands for one pattern.
//! - **Patterns:** Kafka cannot match Meridian patterns, so the subscription reads its
//!   domain topic (or, for a wildcard domain, every domain topic of the deployment through
//!   a regex subscription, which picks up new domain topics within a few seconds and reads
//!   them from their start) and filters by pattern on the client.
//!
//! # Acks, nacks and redelivery
//!
//! Kafka tracks one committed offset per partition and group, not per-message acks. A
//! subscription therefore commits, per partition, the lowest offset it has not settled
//! yet: a nacked (or unacknowledged) message holds the committed offset back, so after a
//! crash or a rebalance it is redelivered from Kafka, together with the settled messages
//! after it (at-least-once; consumers dedupe by event id). While the subscription lives, a
//! nack redelivers the message from the client after its delay with the attempt count
//! raised, and a delivery neither acked nor nacked within `ack_wait` is redelivered the
//! same way. `ack` returns once the advanced offset is committed (synchronously). Attempt
//! counts live in the client: a message redelivered from Kafka after a restart or a
//! rebalance starts again at attempt 1. `max_in_flight` bounds the deliveries a
//! subscription hands out before they are settled; fetched messages beyond that wait in
//! a bounded buffer (when it is full the consumer is polled only every two seconds, to
//! serve rebalances).
//!
//! # Guarantees ([`Capabilities`])
//!
//! - `durable`: the producer is idempotent with `acks=all`, and `publish` returns once the
//!   broker acknowledged the record.
//! - `replay`: [`StartAt::Position`](meridian_bus::StartAt::Position) takes a delivery's
//!   position (partition in the top 16 bits, offset in the low 48); that partition starts
//!   at the offset and the other partitions of the topic at the time of the message there
//!   (`ListOffsets` by time). [`StartAt::Time`](meridian_bus::StartAt::Time) maps to
//!   `ListOffsets` by time on every partition. The start only applies to partitions the
//!   group has no committed offset for: an existing durable consumer resumes. A position
//!   on a pattern that spans domains is refused (`Unsupported`).
//! - `native_wildcards` is false: the client filters by pattern.
//! - `native_dlq` is false: `meridian_bus::consumer` publishes dead letters itself.
//! - `ordered_per_key`: one key is one partition, and one partition is read by one group
//!   member in offset order. A nack redelivers its message after later messages of the same
//!   key were delivered, like every backend's nack.

mod error;
mod naming;
mod subscription;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_bus::{
    Bus, BusError, Capabilities, MAX_PAYLOAD_BYTES, Message, SubscribeOptions, Subscription,
    TopicPattern,
};
use meridian_core::Topic;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::error::{internal, unavailable};
use crate::naming::Reach;

/// The domains of DESIGN.md §5. A subscription whose pattern spans domains creates these
/// topics if missing, so it can join its group at once.
pub const KNOWN_DOMAINS: [&str; 6] = ["data", "oms", "fulfillment", "billing", "notify", "reports"];

/// Room above Meridian's payload limit for the key, headers and record overhead, in the
/// producer's and the topic's message size limits.
const RECORD_OVERHEAD: usize = 64 * 1024;

/// Capabilities of this backend; see the crate documentation for why each holds or not.
pub const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    replay: true,
    native_wildcards: false,
    native_dlq: false,
    ordered_per_key: true,
};

/// How to reach and use the Kafka cluster.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port` bootstrap brokers, comma-separated.
    pub brokers: String,
    /// Partitions of a domain topic created by this backend.
    pub partitions: i32,
    /// Replicas of a domain topic created by this backend (1 on a single broker; 3 in a
    /// production cluster).
    pub replication: i32,
    /// How long a publish may wait for the broker's ack, and admin and offset requests
    /// for their answer.
    pub request_timeout: Duration,
    /// The client id the brokers show for this process's connections.
    pub client_id: String,
}

impl KafkaConfig {
    /// A config for `brokers`: `host:port[,host:port...]`, or a URL
    /// `kafka://host:port[,host:port][?partitions=N&replication=N]`.
    pub fn from_url(url: &str) -> Result<KafkaConfig, BusError> {
        let rest = url.strip_prefix("kafka://").unwrap_or(url);
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() || hosts.contains('@') || hosts.contains('/') {
            return Err(BusError::Internal(format!(
                "invalid Kafka bus URL {url:?}: expected kafka://host:port[,host:port]"
            )));
        }
        let mut config = KafkaConfig {
            brokers: hosts.to_owned(),
            ..KafkaConfig::new("")
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| {
                value
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        BusError::Internal(format!(
                            "invalid Kafka bus URL {url:?}: {what} must be a positive number"
                        ))
                    })
            };
            match key {
                "partitions" => config.partitions = number("partitions")?,
                "replication" => config.replication = number("replication")?,
                other => {
                    return Err(BusError::Internal(format!(
                        "invalid Kafka bus URL {url:?}: unknown parameter {other:?} \
                         (known: partitions, replication)"
                    )));
                }
            }
        }
        Ok(config)
    }

    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 4,
            replication: 1,
            request_timeout: Duration::from_secs(10),
            client_id: "meridian".into(),
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("socket.keepalive.enable", "true")
            // Reconnect quickly after a broker restart.
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "4");
        c
    }
}

/// Meridian's bus on Kafka. Cheap to clone; clones share the producer and admin client.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics known to exist, so publishing does not ask the broker every time.
    ensured: Mutex<HashSet<String>>,
}

impl KafkaBus {
    /// Connects with [`KafkaConfig::from_url`].
    pub async fn connect(url: &str) -> Result<KafkaBus, BusError> {
        Self::connect_with(KafkaConfig::from_url(url)?).await
    }

    /// Creates the producer and admin client and checks that a broker answers. Fails with
    /// `Unavailable` when none can be reached now; later, librdkafka reconnects by itself.
    pub async fn connect_with(config: KafkaConfig) -> Result<KafkaBus, BusError> {
        let timeout_ms = config.request_timeout.as_millis().to_string();
        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", &timeout_ms)
            .set(
                "message.max.bytes",
                (MAX_PAYLOAD_BYTES + RECORD_OVERHEAD).to_string(),
            )
            .create()
            .map_err(|e| internal("cannot create the Kafka producer", e))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client_config()
            .create()
            .map_err(|e| internal("cannot create the Kafka admin client", e))?;
        let bus = KafkaBus {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                ensured: Mutex::new(HashSet::new()),
            }),
        };
        bus.ping().await?;
        Ok(bus)
    }

    /// Deletes every Kafka topic of `deployment` (and with them their history) and the
    /// deployment's consumer groups. For tests and for decommissioning a deployment.
    pub async fn delete_deployment(&self, deployment: &str) -> Result<usize, BusError> {
        let prefix = naming::topic_prefix(deployment);
        let topics: Vec<String> = self
            .inner
            .topic_names()
            .await?
            .into_iter()
            .filter(|t| t.starts_with(&prefix))
            .collect();
        if !topics.is_empty() {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            self.inner
                .admin
                .delete_topics(&names, &self.inner.admin_options())
                .await
                .map_err(|e| unavailable("cannot delete Kafka topics", e))?;
            let mut ensured = self.inner.ensured.lock();
            for t in &topics {
                ensured.remove(t);
            }
        }
        Ok(topics.len())
    }

    /// The largest serialized envelope this bus accepts.
    pub fn payload_limit(&self) -> usize {
        MAX_PAYLOAD_BYTES
    }

    /// Validates and encodes a message: `(kafka topic, bytes)`.
    fn encode(message: &Message) -> Result<(String, Bytes), BusError> {
        // A `Topic` can arrive unchecked (it deserializes without validation): parse again.
        let topic = Topic::parse(message.topic.as_str()).map_err(BusError::InvalidTopic)?;
        let (deployment, domain) = naming::topic_parts(topic.as_str())
            .ok_or_else(|| BusError::InvalidTopic(format!("{topic}: no deployment/domain")))?;
        let kafka_topic = naming::kafka_topic(deployment, domain);
        let bytes = message.encode(MAX_PAYLOAD_BYTES)?;
        Ok((kafka_topic, bytes))
    }

    /// Validates, makes sure the topic exists and hands the record to the producer;
    /// returns the future of the broker's ack.
    async fn send(&self, message: &Message) -> Result<(DeliveryFuture, usize), BusError> {
        let (kafka_topic, bytes) = Self::encode(message)?;
        self.inner.ensure_topic(&kafka_topic).await?;
        let headers = OwnedHeaders::new().insert(Header {
            key: naming::TOPIC_HEADER,
            value: Some(message.topic.as_str()),
        });
        let record = FutureRecord::to(&kafka_topic)
            .key(message.key())
            .payload(&bytes[..])
            .headers(headers);
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        let mut record = record;
        loop {
            match self.inner.producer.send_result(record) {
                Ok(delivery) => return Ok((delivery, bytes.len())),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => return Err(map_produce_error(&e, bytes.len())),
            }
        }
    }

    async fn settle(delivery: DeliveryFuture, size: usize) -> Result<(), BusError> {
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(map_produce_error(&e, size)),
            Err(_) => Err(BusError::Unavailable(
                "the Kafka producer went away before the broker acknowledged".into(),
            )),
        }
    }
}

fn map_produce_error(e: &KafkaError, size: usize) -> BusError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            tracing::warn!(error = %e, "kafka: record refused as too large");
            BusError::PayloadTooLarge {
                size,
                limit: MAX_PAYLOAD_BYTES,
            }
        }
        _ => unavailable("the broker did not acknowledge the publish", e),
    }
}

impl Inner {
    pub(crate) fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.config.request_timeout))
            .operation_timeout(Some(self.config.request_timeout))
    }

    /// Makes sure the Kafka topic `name` exists, creating it with the durable profile.
    pub(crate) async fn ensure_topic(&self, name: &str) -> Result<(), BusError> {
        if self.ensured.lock().contains(name) {
            return Ok(());
        }
        let max_bytes = (MAX_PAYLOAD_BYTES + RECORD_OVERHEAD).to_string();
        let topic = NewTopic::new(
            name,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication),
        )
        // Durable profile: keep history forever (replay, resume after long outages).
        .set("retention.ms", "-1")
        .set("max.message.bytes", &max_bytes);
        let results = self
            .admin
            .create_topics([&topic], &self.admin_options())
            .await
            .map_err(|e| unavailable("cannot create a Kafka topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(internal(
                        "the broker refused to create a Kafka topic",
                        format!("{topic}: {code}"),
                    ));
                }
            }
        }
        self.ensured.lock().insert(name.to_owned());
        Ok(())
    }

    /// After a failed publish, forgets that the message's topic exists, so the next publish
    /// checks again and recreates it if it was deleted (an operator, or a broker that lost
    /// its data): otherwise every later publish would wait for a topic that is gone.
    fn forget_topic_on_failure(&self, message: &Message, result: &Result<(), BusError>) {
        if let Err(BusError::Unavailable(_)) = result
            && let Some((deployment, domain)) = naming::topic_parts(message.topic.as_str())
        {
            self.ensured
                .lock()
                .remove(&naming::kafka_topic(deployment, domain));
        }
    }

    /// Every topic name on the cluster.
    pub(crate) async fn topic_names(&self) -> Result<Vec<String>, BusError> {
        let producer = self.producer.clone();
        let timeout = self.config.request_timeout;
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .map_err(|e| internal("a metadata request panicked", e))?
        .map_err(|e| unavailable("cannot list Kafka topics", e))
    }

    /// The Kafka topics a pattern reads, created where missing, and whether the pattern
    /// spans domains (a regex subscription).
    pub(crate) async fn topics_for(
        &self,
        pattern: &TopicPattern,
    ) -> Result<(Vec<String>, bool), BusError> {
        let deployment = pattern.deployment();
        match naming::reach(pattern.as_str()) {
            Reach::Nothing => Ok((Vec::new(), false)),
            Reach::Domain(domain) => {
                let name = naming::kafka_topic(deployment, &domain);
                self.ensure_topic(&name).await?;
                Ok((vec![name], false))
            }
            Reach::AllDomains => {
                for domain in KNOWN_DOMAINS {
                    self.ensure_topic(&naming::kafka_topic(deployment, domain))
                        .await?;
                }
                let prefix = naming::topic_prefix(deployment);
                let mut names: Vec<String> = self
                    .topic_names()
                    .await?
                    .into_iter()
                    .filter(|t| {
                        t.strip_prefix(&prefix)
                            .is_some_and(meridian_core::valid_segment)
                    })
                    .collect();
                for domain in KNOWN_DOMAINS {
                    let name = naming::kafka_topic(deployment, domain);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Ok((names, true))
            }
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        let (delivery, size) = self.send(&message).await?;
        let result = Self::settle(delivery, size).await;
        self.inner.forget_topic_on_failure(&message, &result);
        result
    }

    /// Hands every valid message to the producer without waiting, then collects the
    /// broker's acks in order: the batch costs about one round trip, not one per message.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let mut out: Vec<Result<(), BusError>> = Vec::with_capacity(messages.len());
        let mut pending = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            match self.send(message).await {
                Ok(sent) => {
                    out.push(Ok(()));
                    pending.push((i, sent));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        for (i, (delivery, size)) in pending {
            out[i] = Self::settle(delivery, size).await;
            self.inner.forget_topic_on_failure(&messages[i], &out[i]);
        }
        out
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let sub =
            subscription::KafkaSubscription::open(self.inner.clone(), pattern, options).await?;
        Ok(Box::new(sub))
    }

    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.inner.producer.clone();
        let timeout = self
            .inner
            .config
            .request_timeout
            .min(Duration::from_secs(5));
        tokio::task::spawn_blocking(move || {
            // A metadata round trip proves a broker answers (naming no topic, so none
            // can be auto-created by it).
            producer.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .map_err(|e| internal("a ping panicked", e))?
        .map_err(|e| unavailable("no Kafka broker answered a ping", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:19092").expect("valid");
        assert_eq!(c.brokers, "127.0.0.1:19092");
        assert_eq!((c.partitions, c.replication), (4, 1));
        let c = KafkaConfig::from_url("h1:9092,h2:9092").expect("bare host list");
        assert_eq!(c.brokers, "h1:9092,h2:9092");
        let c = KafkaConfig::from_url("kafka://h1:9092,h2:9092/?partitions=12&replication=3")
            .expect("with parameters");
        assert_eq!((c.partitions, c.replication), (12, 3));
        for bad in [
            "kafka://",
            "kafka://h:1?partitions=0",
            "kafka://h:1?colour=red",
            "kafka://user:pw@h:1",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
