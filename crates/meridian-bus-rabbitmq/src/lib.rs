//! The RabbitMQ backend of the Bus API ([`RabbitBus`], name `"rabbitmq"`), on lapin.
//!
//! # Topology
//!
//! - One durable **topic exchange per deployment**, `meridian.{deployment}`. A message is
//!   published with its topic name as the routing key, persistent (delivery mode 2), and
//!   [`Bus::publish`] returns only after the broker's **publisher confirm**, that is once
//!   every queue it was routed to has it (on disk, for quorum queues). `publish_batch`
//!   sends the whole batch and then awaits the confirms, reporting each one.
//! - A subscription consumes a queue named after its consumer and pattern, bound with the
//!   pattern in AMQP syntax ([`TopicPattern::to_amqp`]). Durable consumers get a durable
//!   **quorum queue**: the same name on the same pattern shares the queue (competing
//!   consumers, a group), different names get a queue each (fan-out), and the queue keeps
//!   the consumer's messages while it is away (it resumes after its last ack). Transient
//!   consumers get a classic, non-durable queue deleted when its last consumer leaves (not
//!   `exclusive`, so same-named transient subscriptions on other connections still compete).
//! - AMQP's `#` matches zero or more words, Meridian's `**` one or more: deliveries the
//!   pattern does not match are acknowledged and skipped.
//! - `basic.qos` prefetch = [`SubscribeOptions::max_in_flight`].
//! - [`SubscribeOptions::ack_wait`]: RabbitMQ 3.10 only has a broker-wide consumer timeout
//!   that closes the whole channel, so each subscription runs a small task that requeues a
//!   delivery left unsettled past its ack wait (`basic.nack(requeue)`, attempt raised); a
//!   late `ack` of it then fails with `Unavailable`.
//!
//! # Attempts, nack with delay, and dead letters
//!
//! - `attempt` is the quorum queue's `x-delivery-count` header + 1. The broker raises it on
//!   every returned delivery: a nack with requeue, or a consumer that went away without
//!   settling (crash, lost connection). On transient classic queues, which keep no count,
//!   the subscription counts its own nacks per message id (and counts a broker
//!   redelivery it did not nack as at least attempt 2); in a transient group the count is
//!   per member, so it is a lower bound there.
//! - **Nack with delay.** RabbitMQ has no delayed requeue. We hold the delivery for the
//!   delay and then `basic.nack(requeue = true)`. This keeps the broker's delivery count
//!   (so attempts and the broker's delivery limit work), never copies the message (a
//!   republish-to-retry-queue scheme publishes a copy and then acks the original, which
//!   duplicates on a crash in between, loses `x-delivery-count`, and with per-message TTL
//!   blocks short delays behind long ones at the head of the retry queue). The cost: a held
//!   delivery occupies one prefetch slot for its delay, and with `max_in_flight > 1` later
//!   messages overtake it. If the consumer goes away meanwhile, the broker requeues the
//!   message at once (an early retry, never a lost one). With `max_in_flight = 1` the held
//!   delivery blocks the subscription, and the requeued message comes back before the
//!   ones published after it (tested on both queue types). Retry delays (at most 30 s with
//!   the default policy) must stay below the broker's consumer timeout (30 min by default),
//!   or the broker closes the channel and requeues early.
//! - **Dead letters.** After the last attempt the backend-neutral consumer loop publishes
//!   the `<topic>.dlq` envelope (with reason and attempt count) through this bus and then
//!   acks the original; that is the dead-letter path of record, so
//!   `native_dlq` is `false`. Each queue still has a broker-side dead-letter exchange,
//!   `meridian.{deployment}.dlx`, feeding the quorum queue `meridian.{deployment}.dlx.parked`,
//!   for what the broker itself gives up on: messages that cannot be decoded (rejected
//!   without requeue) and messages over the quorum queue's `x-delivery-limit` (default 20,
//!   a guard against a consumer that crashes the process before it can nack). The parking
//!   queue is for operators; the broker moves messages there at most once (its default
//!   dead-lettering strategy).
//!
//! # Ordering
//!
//! `ordered_per_key` is `true`, in the sense the flag defines: a subscription sees the
//! messages of one key on one topic in publish order. A queue is FIFO, one confirm channel
//! per client publishes in call order, and a publisher that awaits each confirm (the outbox
//! relay does) never has two messages of a key in flight. Two things bend it, as on every
//! backend with retries: with `max_in_flight > 1` a nacked message is redelivered after
//! messages published later (with 1, nothing overtakes it), and competing members of a
//! group each see their share in order but process a key's messages concurrently. For ordered groups set
//! [`RabbitConfig::single_active_consumer`]: the queues get `x-single-active-consumer`,
//! one member consumes and the others stand by (fail-over, not parallelism).
//!
//! # Reconnection
//!
//! lapin does not reconnect on its own. A supervisor task owns the connection and
//! re-establishes it with exponential backoff and jitter. While it is down, `publish` waits
//! up to [`RabbitConfig::unavailable_after`] for it and then fails with
//! [`BusError::Unavailable`] (the message was not taken); a subscription's `next()` does the
//! same, and once the broker is back it opens a new channel and resumes consuming the same
//! durable queue. Unacknowledged deliveries of the lost connection are redelivered by the
//! broker (at least once; handlers are idempotent).

pub mod bench;
mod error;
mod link;
mod subscription;
mod topology;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Confirmation, ExchangeKind, PublisherConfirm};
use meridian_bus::{
    Bus, BusError, Capabilities, MAX_PAYLOAD_BYTES, Message, StartAt, SubscribeOptions,
    Subscription, TopicPattern,
};
use meridian_core::{Topic, valid_segment};

use crate::link::{Connector, Timing};
use crate::subscription::RabbitSubscription;
use crate::topology::QueueSpec;

/// The URL used when none is configured: the local broker's default vhost.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How to reach and use RabbitMQ.
#[derive(Clone, Debug)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`).
    pub url: String,
    /// The connection name the broker shows (management UI, `rabbitmqctl`).
    pub connection_name: String,
    /// How long an operation waits for a lost connection to come back before it fails
    /// with `Unavailable`.
    pub unavailable_after: Duration,
    /// Limit for one connection attempt.
    pub connect_timeout: Duration,
    /// How long a publish waits for the broker's confirm before reporting `Unavailable`
    /// (the message may still have been stored: at least once).
    pub confirm_timeout: Duration,
    /// The first and the largest pause between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The quorum queues' `x-delivery-limit`: deliveries after which the broker
    /// dead-letters a message to the parking queue. Keep it above the retry policy's
    /// attempts, so the consumer loop's `<topic>.dlq` path normally wins. Part of the
    /// queue's identity: changing it for existing queues makes their declaration fail.
    pub delivery_limit: u32,
    /// Declare consumer queues with `x-single-active-consumer` (ordered groups; see the
    /// crate docs). Also part of the queue's identity.
    pub single_active_consumer: bool,
}

impl RabbitConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connection_name: "meridian".into(),
            unavailable_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            delivery_limit: 20,
            single_active_consumer: false,
        }
    }
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

/// The queues one client declared, by name: what a deployment's teardown must delete
/// besides its exchanges (AMQP cannot list queues). Cheap to clone; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct DeclaredQueues(Arc<Mutex<BTreeSet<String>>>);

impl DeclaredQueues {
    pub fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn insert(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }
}

/// What the bus and its subscriptions share.
pub(crate) struct Shared {
    pub(crate) connector: Connector,
    pub(crate) declared: DeclaredQueues,
    /// [`RabbitConfig::unavailable_after`].
    pub(crate) wait: Duration,
    config: RabbitConfig,
}

/// The RabbitMQ bus. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("url", &link::redact(&self.shared.config.url))
            .finish()
    }
}

impl RabbitBus {
    /// Connects to the broker; fails with `Unavailable` if it cannot be reached now. Must
    /// be called inside a tokio runtime, which then runs the connection.
    pub async fn connect(config: RabbitConfig) -> Result<RabbitBus, BusError> {
        let timing = Timing {
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            connect_timeout: config.connect_timeout,
        };
        let connector =
            Connector::start(config.url.clone(), config.connection_name.clone(), timing).await?;
        Ok(RabbitBus {
            shared: Arc::new(Shared {
                connector,
                declared: DeclaredQueues::default(),
                wait: config.unavailable_after,
                config,
            }),
        })
    }

    /// Closes the connection; subscriptions then end with [`BusError::Closed`].
    pub fn close(&self) {
        self.shared.connector.close();
    }

    /// The consumer queues this client has declared so far.
    pub fn declared_queues(&self) -> DeclaredQueues {
        self.shared.declared.clone()
    }

    /// Deletes a deployment's broker objects: its exchanges, its dead-letter parking queue
    /// and `queues` (consumer queues, as [`RabbitBus::declared_queues`] lists them),
    /// whatever messages they hold. For retiring a deployment and for test teardown; the
    /// bus never calls it itself. Deleting what does not exist is not an error.
    pub async fn delete_deployment(
        &self,
        deployment: &str,
        queues: &[String],
    ) -> Result<(), BusError> {
        if !valid_segment(deployment) {
            return Err(BusError::InvalidTopic(format!("deployment {deployment:?}")));
        }
        let link = self.shared.connector.link(self.shared.wait).await?;
        let channel = link
            .conn
            .create_channel()
            .await
            .map_err(|e| error::map("open channel", &e))?;
        let prefix = format!("meridian.{deployment}.");
        for queue in queues
            .iter()
            .filter(|q| q.starts_with(&prefix))
            .cloned()
            .chain([topology::parked_queue(deployment)])
        {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| error::map(&format!("delete queue {queue}"), &e))?;
        }
        for exchange in [
            topology::exchange(deployment),
            topology::dead_letter_exchange(deployment),
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| error::map(&format!("delete exchange {exchange}"), &e))?;
        }
        link.forget_declared();
        let _ = channel.close(200, "deployment deleted".into()).await;
        Ok(())
    }

    /// Encodes and validates `message` before anything is sent.
    fn prepare(message: &Message) -> Result<(Bytes, BasicProperties), BusError> {
        // `Topic` is validated on construction; parsing again guards against a topic built
        // by a path that skipped validation, since a bad routing key would be unroutable.
        Topic::parse(message.topic.as_str()).map_err(BusError::InvalidTopic)?;
        let body = message.encode(MAX_PAYLOAD_BYTES)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(message.id().to_string().into());
        Ok((body, properties))
    }

    /// Sends each prepared message on one confirm channel and returns the pending confirms,
    /// in order. Stops at the first send failure: the channel is then unusable.
    async fn send(
        &self,
        items: Vec<(usize, &Message, Bytes, BasicProperties)>,
        wait: Duration,
        out: &mut [Option<Result<(), BusError>>],
    ) -> Vec<(usize, PublisherConfirm)> {
        let mut pending = Vec::with_capacity(items.len());
        if items.is_empty() {
            return pending;
        }
        let link = match self.shared.connector.link(wait).await {
            Ok(link) => link,
            Err(e) => {
                for (i, ..) in items {
                    out[i] = Some(Err(clone_err(&e)));
                }
                return pending;
            }
        };
        let channel = match link.publisher().await {
            Ok(ch) => ch,
            Err(e) => {
                self.shared.connector.kick();
                for (i, ..) in items {
                    out[i] = Some(Err(clone_err(&e)));
                }
                return pending;
            }
        };
        let mut failed: Option<BusError> = None;
        for (i, message, body, properties) in items {
            if let Some(e) = &failed {
                out[i] = Some(Err(clone_err(e)));
                continue;
            }
            let exchange = topology::exchange(message.topic.deployment());
            let sent = match link
                .ensure_exchange(&channel, &exchange, ExchangeKind::Topic)
                .await
            {
                Ok(()) => channel
                    .basic_publish(
                        exchange.as_str().into(),
                        message.topic.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .map_err(|e| error::map("publish", &e)),
                Err(e) => Err(e),
            };
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => {
                    self.shared.connector.kick();
                    // The exchange may have been deleted under us (NOT_FOUND closes the
                    // channel): declare again on the next attempt.
                    link.forget_declared();
                    out[i] = Some(Err(clone_err(&e)));
                    failed = Some(e);
                }
            }
        }
        pending
    }

    async fn confirm(&self, confirm: PublisherConfirm) -> Result<(), BusError> {
        let Ok(confirmed) = tokio::time::timeout(self.shared.config.confirm_timeout, confirm).await
        else {
            // A broker under a resource alarm blocks publishers instead of refusing them.
            return Err(BusError::Unavailable(format!(
                "rabbitmq did not confirm within {:?} (is the broker blocked by an alarm?)",
                self.shared.config.confirm_timeout
            )));
        };
        match confirmed {
            Ok(Confirmation::Ack(_)) => Ok(()),
            // The broker could not take it (for example a quorum queue without a leader):
            // not stored, so the caller retries.
            Ok(Confirmation::Nack(_)) => Err(BusError::Unavailable(
                "rabbitmq refused the message (negative publisher confirm)".into(),
            )),
            Ok(Confirmation::NotRequested) => Err(BusError::Internal(
                "publisher confirms are not enabled on the publishing channel".into(),
            )),
            Err(e) => {
                self.shared.connector.kick();
                Err(error::map("publisher confirm", &e))
            }
        }
    }

    /// Publishes `messages`, waiting up to `wait` for a connection.
    async fn publish_all(&self, messages: &[Message], wait: Duration) -> Vec<Result<(), BusError>> {
        let mut out: Vec<Option<Result<(), BusError>>> = Vec::with_capacity(messages.len());
        let mut items = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match Self::prepare(m) {
                Ok((body, props)) => {
                    out.push(None);
                    items.push((i, m, body, props));
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        for (i, confirm) in self.send(items, wait, &mut out).await {
            out[i] = Some(self.confirm(confirm).await);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Internal("message not published".into()))))
            .collect()
    }
}

/// `BusError` is not `Clone`; a batch reports one failure to several messages.
fn clone_err(e: &BusError) -> BusError {
    match e {
        BusError::InvalidTopic(s) => BusError::InvalidTopic(s.clone()),
        BusError::PayloadTooLarge { size, limit } => BusError::PayloadTooLarge {
            size: *size,
            limit: *limit,
        },
        BusError::Unsupported { backend, what } => BusError::Unsupported { backend, what },
        BusError::Unavailable(s) => BusError::Unavailable(s.clone()),
        BusError::Closed => BusError::Closed,
        BusError::Internal(s) => BusError::Internal(s.clone()),
    }
}

#[async_trait]
impl Bus for RabbitBus {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            // Classic and quorum queues forget a message once it is acked: no history to
            // replay (that would take RabbitMQ streams).
            replay: false,
            native_wildcards: true,
            native_dlq: false,
            // Each queue is FIFO and one confirm channel publishes in call order, so a
            // subscription sees each key's messages in publish order (see the crate docs for
            // nacks and groups).
            ordered_per_key: true,
        }
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        let deadline = Instant::now() + self.shared.wait;
        let mut first = true;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = self
                .publish_all(std::slice::from_ref(&message), remaining)
                .await
                .pop()
                .unwrap_or_else(|| Err(BusError::Internal("message not published".into())));
            match result {
                // The connection died under this publish: one more try on the next
                // connection, within the same wait (at least once: a confirm lost in
                // flight may duplicate the message, which consumers tolerate).
                Err(BusError::Unavailable(_))
                    if first && !remaining.is_zero() && !self.shared.connector.is_closed() =>
                {
                    first = false;
                }
                other => return other,
            }
        }
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        self.publish_all(&messages, self.shared.wait).await
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if !valid_segment(&options.consumer) {
            return Err(BusError::InvalidTopic(format!(
                "consumer name {:?}: use a-z, 0-9, '_' and '-'",
                options.consumer
            )));
        }
        match options.start {
            StartAt::New | StartAt::Earliest => {}
            StartAt::Position(_) | StartAt::Time(_) => {
                return Err(BusError::Unsupported {
                    backend: "rabbitmq",
                    what: "replay from a position or a time",
                });
            }
        }
        let name = topology::consumer_queue(pattern, &options.consumer, options.durable);
        if name.len() > 255 {
            return Err(BusError::InvalidTopic(format!(
                "consumer name {:?} is too long for a queue name",
                options.consumer
            )));
        }
        let prefetch = u16::try_from(options.max_in_flight.max(1)).unwrap_or(u16::MAX);
        let spec = QueueSpec {
            name,
            deployment: pattern.deployment().to_owned(),
            binding: pattern.to_amqp(),
            durable: options.durable,
            delivery_limit: self.shared.config.delivery_limit,
            single_active_consumer: self.shared.config.single_active_consumer,
        };
        let sub = RabbitSubscription::open(
            self.shared.clone(),
            pattern.clone(),
            spec,
            prefetch,
            options.ack_wait,
        )
        .await?;
        Ok(Box::new(sub))
    }

    async fn ping(&self) -> Result<(), BusError> {
        let link = self.shared.connector.link(Duration::ZERO).await?;
        // A channel open is a round trip to the broker: proof it answers, not only that
        // the socket is up.
        let channel = link.conn.create_channel().await.map_err(|e| {
            self.shared.connector.kick();
            error::map("ping", &e)
        })?;
        let _ = channel.close(200, "ping".into()).await;
        Ok(())
    }
}
