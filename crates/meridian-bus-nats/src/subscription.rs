//! Subscriptions: durable or ephemeral pull consumers, one per domain stream the pattern
//! reaches, re-bound after broker failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{
    AckPolicy, DeliverPolicy, FromConsumer, PullConsumer, ReplayPolicy, pull,
};
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_trait::async_trait;
use futures::StreamExt;
use futures::future::select_all;
use meridian_bus::{
    AckHandle, BusError, Delivery, Message, StartAt, SubscribeOptions, Subscription, TopicPattern,
};
use meridian_core::valid_segment;

use crate::Inner;
use crate::error::{internal, unavailable};
use crate::naming;

/// How long the server keeps an ephemeral consumer that nobody pulls from: long enough to
/// ride out a reconnect, short enough that crashed processes do not leave consumers behind.
const EPHEMERAL_IDLE: Duration = Duration::from_secs(30);

/// Pull requests stay open this long; idle heartbeats keep them checked meanwhile.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// The most messages one pull request asks for. More buys little on one connection and
/// holds messages in the client that another group member could be handling.
const MAX_BATCH: usize = 256;

/// The longest a lag query waits for the server: a gauge sample must not hold up
/// deliveries while the broker is slow or away.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct NatsSubscription {
    inner: Arc<Inner>,
    pattern: TopicPattern,
    feeds: Vec<Feed>,
    durable: bool,
    /// Set for a pattern whose domain is a wildcard: domain streams created after the
    /// subscription are looked for periodically and joined.
    discovery: Option<Discovery>,
}

struct Discovery {
    options: SubscribeOptions,
    nats_pattern: String,
    next_at: tokio::time::Instant,
}

/// How often a subscription across domains looks for new domain streams.
const DISCOVERY_EVERY: Duration = Duration::from_secs(5);

/// One JetStream consumer on one domain stream, and its open pull stream.
struct Feed {
    stream: String,
    name: String,
    config: pull::Config,
    batch: usize,
    messages: Option<pull::Stream>,
}

impl NatsSubscription {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<NatsSubscription, BusError> {
        if !valid_segment(&options.consumer) {
            return Err(BusError::Internal(format!(
                "invalid consumer name {:?}: use a-z, 0-9, '_' and '-'",
                options.consumer
            )));
        }
        let streams = inner.streams_for(pattern).await?;
        if streams.len() > 1 && matches!(options.start, StartAt::Position(_)) {
            // Sequences are per stream: one position cannot name a point in several.
            return Err(BusError::Unsupported {
                backend: "nats",
                what: "starting at a position on a pattern that spans domains",
            });
        }
        let nats_pattern = pattern.to_nats();
        let all_domains = matches!(naming::reach(pattern.as_str()), naming::Reach::AllDomains);
        let mut sub = NatsSubscription {
            inner: inner.clone(),
            pattern: pattern.clone(),
            feeds: Vec::with_capacity(streams.len()),
            durable: options.durable,
            discovery: all_domains.then(|| Discovery {
                options: options.clone(),
                nats_pattern: nats_pattern.clone(),
                next_at: tokio::time::Instant::now() + DISCOVERY_EVERY,
            }),
        };
        for (stream, domain) in streams {
            let config = consumer_config(&options, naming::stream_filter(&nats_pattern, &domain));
            // Bind now: with StartAt::New the consumer must exist before `subscribe`
            // returns, or messages published right after would be missed.
            sub.join(stream, &options.consumer, config).await?;
        }
        Ok(sub)
    }

    /// Adds a feed on `stream` and opens it. The feed is registered before it is opened, so
    /// that Drop releases an ephemeral membership even when opening fails.
    async fn join(
        &mut self,
        stream: String,
        consumer: &str,
        config: pull::Config,
    ) -> Result<(), BusError> {
        if !self.durable {
            *self
                .inner
                .ephemeral_members
                .lock()
                .entry((stream.clone(), consumer.to_owned()))
                .or_insert(0) += 1;
        }
        let batch = usize::try_from(config.max_ack_pending)
            .unwrap_or(MAX_BATCH)
            .clamp(1, MAX_BATCH);
        self.feeds.push(Feed {
            stream,
            name: consumer.to_owned(),
            config,
            batch,
            messages: None,
        });
        let inner = self.inner.clone();
        let feed = self.feeds.last_mut().ok_or(BusError::Closed)?;
        feed.messages = Some(feed.open(&inner).await?);
        Ok(())
    }

    /// Joins the domain streams of the deployment that appeared since the last look. A new
    /// domain's stream is read from its start: all of it was published after this
    /// subscription began. Failures are logged and retried at the next look.
    async fn discover(&mut self) {
        let Some(discovery) = self.discovery.as_mut() else {
            return;
        };
        discovery.next_at = tokio::time::Instant::now() + DISCOVERY_EVERY;
        let options = discovery.options.clone();
        let nats_pattern = discovery.nats_pattern.clone();
        let deployment = self.pattern.deployment().to_owned();
        let names = match self.inner.deployment_streams(&deployment).await {
            Ok(names) => names,
            Err(e) => {
                tracing::debug!(error = %e, "nats: domain discovery failed");
                return;
            }
        };
        let prefix = naming::stream_prefix(&deployment);
        for name in names {
            if self.feeds.iter().any(|f| f.stream == name) {
                continue;
            }
            let Some(domain) = name.strip_prefix(&prefix).map(str::to_owned) else {
                continue;
            };
            let mut config =
                consumer_config(&options, naming::stream_filter(&nats_pattern, &domain));
            config.deliver_policy = DeliverPolicy::All;
            tracing::info!(stream = %name, consumer = %options.consumer, "nats: joining a new domain stream");
            if let Err(e) = self.join(name.clone(), &options.consumer, config).await {
                // The feed stays registered and re-binds on its own, like any broken feed.
                tracing::warn!(error = %e, stream = %name, "nats: cannot join a new domain stream yet");
            }
        }
    }

    /// The consumer's lag on one feed: messages matching its filter not yet delivered
    /// (`num_pending`) plus those delivered and not yet acknowledged (`num_ack_pending`).
    /// One `CONSUMER.INFO` request; `None` (logged at debug) when it fails or times out.
    async fn feed_lag(&self, feed: &Feed) -> Option<u64> {
        let query = async {
            let stream = self.inner.js.get_stream_no_info(&feed.stream).await?;
            let info = stream.consumer_info(&feed.name).await?;
            Ok::<_, async_nats::Error>(info)
        };
        match tokio::time::timeout(LAG_QUERY_TIMEOUT, query).await {
            Ok(Ok(info)) => Some(
                info.num_pending
                    .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)),
            ),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, stream = %feed.stream, consumer = %feed.name, "nats: consumer lag not read");
                None
            }
            Err(_) => {
                tracing::debug!(stream = %feed.stream, consumer = %feed.name, "nats: consumer lag query timed out");
                None
            }
        }
    }

    /// Turns a JetStream message into a delivery; `None` for a message this subscription
    /// cannot use, which is settled here so it does not come back.
    async fn to_delivery(&self, m: jetstream::Message) -> Option<Delivery> {
        let (attempt, position) = match m.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                info.stream_sequence,
            ),
            Err(e) => {
                // Not a JetStream delivery (no ack reply subject): nothing to settle.
                tracing::error!(error = %e, subject = %m.subject, "nats: message without delivery info");
                return None;
            }
        };
        match Message::decode(m.subject.as_str(), &m.payload) {
            Ok(message) if self.pattern.matches(&message.topic) => Some(Delivery::new(
                message,
                attempt,
                Some(position),
                Box::new(NatsAck {
                    message: m,
                    confirm: self.inner.config.confirm_acks,
                }),
            )),
            Ok(message) => {
                // The filter subject should make this impossible; ack so it is not retried.
                tracing::warn!(topic = %message.topic, pattern = %self.pattern, "nats: delivery outside the pattern");
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "nats: cannot ack a stray delivery");
                }
                None
            }
            Err(e) => {
                // Not a Meridian envelope (published by something else): retrying cannot
                // help, so terminate its delivery instead of redelivering it forever.
                tracing::error!(error = %e, subject = %m.subject, position, "nats: undecodable message terminated");
                if let Err(e) = m.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "nats: cannot terminate an undecodable message");
                }
                None
            }
        }
    }
}

fn consumer_config(options: &SubscribeOptions, filter: String) -> pull::Config {
    let max_in_flight = options.max_in_flight.max(1);
    let deliver_policy = match options.start {
        StartAt::New => DeliverPolicy::New,
        StartAt::Earliest => DeliverPolicy::All,
        StartAt::Position(seq) => DeliverPolicy::ByStartSequence {
            // Stream sequences start at 1; the server refuses 0.
            start_sequence: seq.max(1),
        },
        StartAt::Time(t) => DeliverPolicy::ByStartTime { start_time: t },
    };
    let (durable_name, name, inactive_threshold) = if options.durable {
        (Some(options.consumer.clone()), None, Duration::ZERO)
    } else {
        (None, Some(options.consumer.clone()), EPHEMERAL_IDLE)
    };
    pull::Config {
        durable_name,
        name,
        description: Some(format!("Meridian consumer {}", options.consumer)),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        // Unlimited: the consumer runtime dead-letters after its own attempt limit and
        // must see every attempt to do so.
        max_deliver: -1,
        filter_subject: filter,
        replay_policy: ReplayPolicy::Instant,
        max_ack_pending: i64::try_from(max_in_flight).unwrap_or(i64::MAX),
        inactive_threshold,
        ..Default::default()
    }
}

impl Feed {
    /// Binds the consumer (creating it if missing) and opens a pull stream on it.
    async fn open(&self, inner: &Inner) -> Result<pull::Stream, BusError> {
        let consumer = self.bind(inner).await?;
        consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(PULL_EXPIRES)
            .heartbeat(inner.config.heartbeat)
            .messages()
            .await
            .map_err(|e| unavailable("cannot start pulling from a JetStream consumer", e))
    }

    /// An existing consumer of this name is used as it is, so a durable consumer resumes
    /// where it was whatever the subscription's start says; a missing one is created.
    async fn bind(&self, inner: &Inner) -> Result<PullConsumer, BusError> {
        match inner
            .js
            .get_consumer_from_stream::<pull::Config, _, _>(&self.name, &self.stream)
            .await
        {
            Ok(consumer) => {
                let existing = &consumer.cached_info().config.filter_subject;
                if *existing != self.config.filter_subject {
                    return Err(BusError::Internal(format!(
                        "consumer {} already exists on {existing}, not {}",
                        self.name, self.config.filter_subject
                    )));
                }
                let current = &consumer.cached_info().config;
                if current.ack_wait == self.config.ack_wait
                    && current.max_ack_pending == self.config.max_ack_pending
                {
                    return Ok(consumer);
                }
                // The code asks for another ack wait or in-flight limit than the consumer
                // was made with: update those two (the server allows it), keeping its
                // position and start policy. If the server refuses, go on as it is.
                let Ok(existing) = pull::Config::try_from_consumer_config(current.clone()) else {
                    return Ok(consumer);
                };
                let updated = pull::Config {
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: self.config.max_ack_pending,
                    ..existing
                };
                match inner
                    .js
                    .create_consumer_on_stream(updated, &self.stream)
                    .await
                {
                    Ok(updated) => Ok(updated),
                    Err(e) => {
                        tracing::warn!(error = %e, consumer = %self.name, stream = %self.stream, "nats: consumer limits not updated");
                        Ok(consumer)
                    }
                }
            }
            Err(e) => match e.kind() {
                ConsumerErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    self.create(inner).await
                }
                ConsumerErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    // The stream was lost (a broker restarted without its store, or an
                    // operator deleted it): recreate it empty, then the consumer.
                    inner.forget_stream(&self.stream);
                    inner
                        .ensure_stream(&self.stream, &self.config.filter_subject)
                        .await?;
                    self.create(inner).await
                }
                ConsumerErrorKind::JetStream(_) => {
                    Err(internal("the NATS server refused a consumer lookup", e))
                }
                _ => Err(unavailable("cannot look up a JetStream consumer", e)),
            },
        }
    }

    async fn create(&self, inner: &Inner) -> Result<PullConsumer, BusError> {
        inner
            .js
            .create_consumer_on_stream(self.config.clone(), &self.stream)
            .await
            .map_err(|e| match e.kind() {
                ConsumerErrorKind::JetStream(_) => {
                    internal("the NATS server refused to create a consumer", e)
                }
                _ => unavailable("cannot create a JetStream consumer", e),
            })
    }

    /// The next message of this feed. Re-binds after a broken pull; while the broker stays
    /// unreachable for `unavailable_after`, reports `Unavailable` (calling again goes on
    /// trying). Cancel-safe: state only changes after each await completes.
    async fn next(&mut self, inner: &Inner) -> Result<jetstream::Message, BusError> {
        let mut down_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.open(inner).await {
                    Ok(stream) => {
                        tracing::info!(stream = %self.stream, consumer = %self.name, "nats: consumer re-bound");
                        self.messages = Some(stream);
                    }
                    Err(BusError::Unavailable(what)) => {
                        let since = *down_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= inner.config.unavailable_after {
                            return Err(BusError::Unavailable(what));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    Err(other) => return Err(other),
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(m)) => return Ok(m),
                Some(Err(e)) => {
                    // Every error here means the pull is no longer trustworthy (missed
                    // heartbeats after a broker restart, the consumer deleted, a refused
                    // pull): start a fresh one, re-binding or recreating the consumer.
                    tracing::warn!(error = %e, stream = %self.stream, consumer = %self.name, "nats: pull stream broken, re-binding");
                    self.messages = None;
                }
                None => self.messages = None,
            }
        }
    }
}

/// The next message of any feed; never resolves without feeds.
async fn next_of(feeds: &mut [Feed], inner: &Inner) -> Result<jetstream::Message, BusError> {
    match feeds.len() {
        0 => std::future::pending().await,
        1 => feeds[0].next(inner).await,
        _ => {
            let (message, winner, rest) =
                select_all(feeds.iter_mut().map(|f| Box::pin(f.next(inner)))).await;
            drop(rest);
            // Rotate so the feed that just delivered is polled last next time: a busy
            // domain cannot starve the others.
            feeds.rotate_left(winner + 1);
            message
        }
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let message = match self.discovery.as_ref().map(|d| d.next_at) {
                None => next_of(&mut self.feeds, &self.inner).await?,
                Some(at) => {
                    let inner = self.inner.clone();
                    tokio::select! {
                        message = next_of(&mut self.feeds, &inner) => message?,
                        () = tokio::time::sleep_until(at) => {
                            self.discover().await;
                            continue;
                        }
                    }
                }
            };
            if let Some(delivery) = self.to_delivery(message).await {
                return Ok(delivery);
            }
        }
    }

    /// The sum over the domain streams this subscription reads of the JetStream
    /// consumer's pending messages (matching its filter, not delivered yet) and its ack
    /// pending ones (delivered to any member, not acknowledged yet), from one
    /// `CONSUMER.INFO` request per stream, sent together. `None` if any of them fails: a
    /// partial sum would understate the lag.
    async fn lag(&mut self) -> Option<u64> {
        let lags = futures::future::join_all(self.feeds.iter().map(|f| self.feed_lag(f))).await;
        lags.into_iter()
            .try_fold(0u64, |sum, lag| Some(sum.saturating_add(lag?)))
    }
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        // Ephemeral consumers whose last local member this was: deleted below.
        let mut gone = Vec::new();
        if !self.durable {
            let mut members = self.inner.ephemeral_members.lock();
            for feed in &self.feeds {
                let key = (feed.stream.clone(), feed.name.clone());
                if let Some(n) = members.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        members.remove(&key);
                        gone.push(key);
                    }
                }
            }
        }
        // Messages already pulled into this client but never handed out would otherwise
        // stay "in flight" on the server until their ack wait runs out (30 s by default),
        // holding up the consumer's other members or its next incarnation: give them back.
        let pulled: Vec<pull::Stream> = self
            .feeds
            .iter_mut()
            .filter(|f| !gone.iter().any(|(s, n)| *s == f.stream && *n == f.name))
            .filter_map(|f| f.messages.take())
            .collect();
        if gone.is_empty() && pulled.is_empty() {
            return;
        }
        // Without a runtime (dropped after shutdown) the server's ack wait and inactive
        // threshold take care of both.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let js = self.inner.js.clone();
        runtime.spawn(async move {
            for stream in pulled {
                give_back(stream).await;
            }
            for (stream, name) in gone {
                if let Err(e) = js.delete_consumer_from_stream(&name, &stream).await {
                    tracing::debug!(error = %e, %stream, consumer = %name, "nats: ephemeral consumer not deleted; the server will expire it");
                }
            }
        });
    }
}

/// Naks what a dropped pull stream still holds or receives within a short grace period,
/// so the server redelivers it at once.
async fn give_back(mut stream: pull::Stream) {
    const GRACE: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match tokio::time::timeout(GRACE, stream.next()).await {
            Ok(Some(Ok(m))) => {
                if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "nats: cannot give back a pulled message");
                }
            }
            _ => break,
        }
    }
}

/// Settles one JetStream delivery.
struct NatsAck {
    message: jetstream::Message,
    confirm: bool,
}

impl NatsAck {
    async fn settle(&self, kind: AckKind) -> Result<(), BusError> {
        let result = if self.confirm {
            self.message.double_ack_with(kind).await
        } else {
            self.message.ack_with(kind).await
        };
        result.map_err(|e| unavailable("the NATS server did not take the ack", e))
    }
}

#[async_trait]
impl AckHandle for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(AckKind::Ack).await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.settle(AckKind::Nak(delay)).await
    }
}
