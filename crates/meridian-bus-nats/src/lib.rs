//! The NATS JetStream backend of Meridian's Bus API ([`NatsBus`], name `"nats"`).
//!
//! # Layout on the broker
//!
//! - **Streams:** one per domain per deployment, `MERIDIAN_{deployment}_DOMAIN_{domain}`,
//!   capturing `deployment.{deployment}.platform.{domain}.>`. Dead letters (`<topic>.dlq`) sit
//!   under the same domain and so land in the same stream, with the same durable profile.
//!   Streams are created on first use (publish or subscribe) with the durable profile: file
//!   storage, no age, size or count limit, `deny_delete` and `deny_purge` (history is only
//!   removed by deleting the whole stream, an operator's decision), and a duplicate window
//!   so that a publish retried after a lost ack is stored once (`Nats-Msg-Id` = event id).
//! - **Consumers:** one pull consumer per (stream, consumer name), durable or not, with
//!   explicit acks, the pattern (`TopicPattern::to_nats`) as filter subject,
//!   `max_ack_pending` = `max_in_flight` (a limit for the whole consumer, so for a group it
//!   is shared by its members) and the subscription's `ack_wait`. Subscriptions with the
//!   same consumer name bind to the same JetStream consumer and so compete for its messages
//!   (a consumer group); different names get separate consumers and each sees every message
//!   (fan-out). A consumer name stands for one pattern: reusing it with another pattern is
//!   refused (`Internal`) rather than silently moving the consumer's position.
//! - **Patterns across domains** (`deployment.d.platform.*.order.created`,
//!   `deployment.d.platform.**`) bind one consumer on each domain stream of the deployment
//!   (the domains of DESIGN.md §5 plus any the deployment already has) and merge their
//!   deliveries fairly; domain streams that appear later are joined within a few seconds
//!   and read from their start. Positions are per stream, so such a subscription cannot
//!   start at a position (`Unsupported`); starting at a time works.
//! - **Ephemeral consumers** are named JetStream consumers with an inactivity threshold:
//!   deleted when the last local subscription drops, and expired by the server when a
//!   process dies. Messages a dropped subscription had pulled but not handed out are
//!   nacked back at once instead of waiting out their ack wait.
//!
//! # Guarantees ([`Capabilities`])
//!
//! - `durable`: a publish returns after the JetStream ack, i.e. once the message is stored.
//! - `replay`: [`StartAt::Position`](meridian_bus::StartAt::Position) (the stream
//!   sequence) and [`StartAt::Time`](meridian_bus::StartAt::Time) map to the
//!   `by_start_sequence` and `by_start_time` deliver policies.
//! - `native_wildcards`: the pattern becomes the consumer's filter subject.
//! - `native_dlq` is false: JetStream has no dead-letter routing, so
//!   `meridian_bus::consumer` publishes dead letters itself.
//! - `ordered_per_key` is false. JetStream delivers a consumer's messages in stream order,
//!   but with more than one message in flight a nack (or an ack timeout) redelivers a message
//!   after later messages of the same key were already delivered, and the members of a
//!   group each get different messages of the same key. Per-key order would need a single
//!   in-flight message per consumer or subject-partitioned consumers (NATS 2.10+), neither
//!   of which this backend promises.
//!
//! # Acks and duplicates
//!
//! With [`NatsConfig::confirm_acks`] (the default) `ack` and `nack` return once the server
//! has recorded them, so an acknowledged message is never delivered again, even across a
//! crash; it costs a round trip per ack. Publishes carry `Nats-Msg-Id` = the event id, so a
//! publish retried after a lost ack is stored once within [`NatsConfig::duplicate_window`].
//!
//! # Failures
//!
//! async-nats reconnects by itself. Publishes that cannot be acknowledged in time fail with
//! [`BusError::Unavailable`] (a retry is deduplicated by the server). A subscription whose
//! pull stream breaks (missed heartbeats after a broker restart, its consumer or stream gone)
//! re-binds its consumer, recreating it if needed; while the broker stays unreachable,
//! [`Subscription::next`] returns `Unavailable` after [`NatsConfig::unavailable_after`] and
//! may simply be called again. Client error text goes to the log, never into a `BusError`.
//!
//! # Server version
//!
//! async-nats is built without its `server_2_10`+ features: everything here works with
//! NATS 2.9 (the version on Meridian's machines) and later.

pub mod bench;
mod error;
mod naming;
mod subscription;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_trait::async_trait;
use bytes::Bytes;
use meridian_bus::{
    Bus, BusError, Capabilities, MAX_PAYLOAD_BYTES, Message, SubscribeOptions, Subscription,
    TopicPattern,
};
use meridian_core::Topic;
use parking_lot::Mutex;

use crate::error::{internal, unavailable};
use crate::naming::Reach;

/// The domains of DESIGN.md §5. A subscription whose pattern spans domains binds to these
/// streams (created if missing) plus any other domain stream the deployment already has.
pub const KNOWN_DOMAINS: [&str; 6] = ["data", "oms", "fulfillment", "billing", "notify", "reports"];

/// Bytes kept free under the server's `max_payload` for the headers this backend adds
/// (`Nats-Msg-Id` with a UUID is about 60 bytes on the wire).
const HEADER_RESERVE: usize = 128;

/// Capabilities of this backend; see the crate documentation for why each holds or not.
pub const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    replay: true,
    native_wildcards: true,
    native_dlq: false,
    ordered_per_key: false,
};

/// How to reach and use the NATS server.
#[derive(Clone)]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    /// The connection name the server shows in its monitoring.
    pub client_name: String,
    /// How long a JetStream request (publish ack, stream and consumer management) may take.
    pub request_timeout: Duration,
    /// Stream replicas (1 on a single server; 3 in a production cluster).
    pub replicas: usize,
    /// How long the server remembers event ids (`Nats-Msg-Id`) to drop duplicate publishes.
    /// It covers a publish retried after its ack was lost (the outbox relay retries within
    /// seconds, and a publish buffered during a disconnect may land next to its retry). It
    /// is kept short because a deliberate re-publish of the same event id inside the window
    /// (replaying a dead letter seconds after it was published) is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// Wait for the server to confirm each ack and nack. With it, an acknowledged message is
    /// never redelivered, even if the process stops right after the ack; without it, acks
    /// cost no round trip but the last ones may be lost with the process (the message is
    /// then redelivered, which inbox deduplication absorbs).
    pub confirm_acks: bool,
    /// How long [`Subscription::next`] keeps trying to re-bind during an outage before it
    /// reports [`BusError::Unavailable`].
    pub unavailable_after: Duration,
    /// Idle heartbeat of pull requests: a broken pull is noticed after two missed beats.
    pub heartbeat: Duration,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client_name: "meridian".into(),
            request_timeout: Duration::from_secs(5),
            replicas: 1,
            duplicate_window: Duration::from_secs(30),
            confirm_acks: true,
            unavailable_after: Duration::from_secs(15),
            heartbeat: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted(&self.url))
            .field("client_name", &self.client_name)
            .field("request_timeout", &self.request_timeout)
            .field("replicas", &self.replicas)
            .field("duplicate_window", &self.duplicate_window)
            .field("confirm_acks", &self.confirm_acks)
            .field("unavailable_after", &self.unavailable_after)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// The server URL(s) without credentials (`nats://user:secret@host` shows as
/// `nats://***@host`), for logs and Debug output.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &one[..scheme + 3], &one[at..])
            }
            (None, Some(at)) => format!("***{}", &one[at..]),
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Meridian's bus on NATS JetStream. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &redacted(&self.inner.config.url))
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsConfig,
    /// Streams known to exist, so publishing does not ask the server every time. An entry
    /// is dropped when the server says the stream is gone (then it is created again).
    ensured: Mutex<HashSet<String>>,
    /// Local members of each ephemeral consumer `(stream, name)`: the last one to leave
    /// deletes it. Members in other processes keep it alive through its pulls (the server
    /// removes it after `inactive_threshold` without any).
    pub(crate) ephemeral_members: Mutex<HashMap<(String, String), usize>>,
}

impl NatsBus {
    /// Connects to `url` with the defaults of [`NatsConfig::new`].
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        Self::connect_with(NatsConfig::new(url)).await
    }

    /// Connects and checks that JetStream is enabled. Fails with `Unavailable` when the
    /// server cannot be reached now; once connected, the client reconnects by itself.
    pub async fn connect_with(config: NatsConfig) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            // Reconnect forever: a bus that gives up would need the whole process restarted.
            .max_reconnects(None)
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| unavailable("cannot connect to the NATS server", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        // A raw account-info request: the typed `query_account` expects fields that only
        // NATS 2.10+ sends. Any JetStream answer proves JetStream is on.
        let info: Response<serde_json::Value> = js
            .request("INFO", &serde_json::json!({}))
            .await
            .map_err(|e| unavailable("JetStream is not enabled on the NATS server", e))?;
        if let Response::Err { error } = info {
            return Err(internal(
                "JetStream refused the account-info request",
                error,
            ));
        }
        Ok(NatsBus {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                ensured: Mutex::new(HashSet::new()),
                ephemeral_members: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The JetStream context, for tools and tests that manage streams directly.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The largest serialized envelope this bus accepts: Meridian's limit, or the server's
    /// `max_payload` less room for headers when that is smaller (reported in
    /// `PayloadTooLarge` when the server's limit is the one hit).
    pub fn payload_limit(&self) -> usize {
        let server = self.inner.client.server_info().max_payload;
        MAX_PAYLOAD_BYTES.min(server.saturating_sub(HEADER_RESERVE))
    }

    /// Deletes every stream of `deployment` (and with them its consumers and history).
    /// For tests and for decommissioning a deployment; the durable profile forbids deleting
    /// single messages, not whole streams.
    pub async fn delete_deployment(&self, deployment: &str) -> Result<usize, BusError> {
        let names = self.inner.deployment_streams(deployment).await?;
        for name in &names {
            self.inner
                .js
                .delete_stream(name)
                .await
                .map_err(|e| unavailable("cannot delete a stream", e))?;
            self.inner.ensured.lock().remove(name);
        }
        Ok(names.len())
    }

    fn encode(&self, message: &Message) -> Result<(String, Bytes), BusError> {
        // A `Topic` built with `Topic::platform` is only checked in debug builds; the
        // contract wants every published topic validated, so parse it again.
        let topic = Topic::parse(message.topic.as_str()).map_err(BusError::InvalidTopic)?;
        let (deployment, domain) = naming::topic_parts(topic.as_str())
            .ok_or_else(|| BusError::InvalidTopic(format!("{topic}: no deployment/domain")))?;
        let stream = naming::stream_name(deployment, domain);
        // Meridian's limit here; the server's own (lower, if so configured) is checked by
        // the client before sending, see `send`.
        let bytes = message.encode(MAX_PAYLOAD_BYTES)?;
        Ok((stream, bytes))
    }

    /// Sends one publish and returns the future of its JetStream ack.
    async fn send(
        &self,
        message: &Message,
        bytes: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message.id().to_string().as_str());
        let size = bytes.len();
        self.inner
            .js
            .publish_with_headers(message.topic.as_str().to_owned(), headers, bytes)
            .await
            .map_err(|e| match e.kind() {
                // The server takes less than Meridian's limit (its max_payload covers the
                // headers too): report it in the contract's terms.
                PublishErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                    size,
                    limit: self.payload_limit(),
                },
                _ => map_publish_error(e),
            })
    }

    /// Publishes one message and waits for its ack; if the stream turns out to be missing
    /// (deleted behind our back), recreates it and tries once more.
    async fn publish_one(&self, message: &Message) -> Result<(), BusError> {
        let (stream, bytes) = self.encode(message)?;
        self.inner
            .ensure_stream(&stream, message.topic.as_str())
            .await?;
        let ack = self.send(message, bytes).await?.await;
        match ack {
            Ok(ack) => {
                if ack.duplicate {
                    // Stored before (a retried publish): the idempotent outcome, but worth
                    // seeing when a deliberate re-publish seems to vanish.
                    tracing::debug!(id = %message.id(), stream = %ack.stream, "nats: duplicate publish dropped by the server");
                }
                Ok(())
            }
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.inner.forget_stream(&stream);
                self.inner
                    .ensure_stream(&stream, message.topic.as_str())
                    .await?;
                // The message's bytes again: a shared buffer, not a copy.
                let (_, bytes) = self.encode(message)?;
                self.send(message, bytes)
                    .await?
                    .await
                    .map(|_| ())
                    .map_err(map_publish_error)
            }
            Err(e) => Err(map_publish_error(e)),
        }
    }
}

fn map_publish_error(e: jetstream::context::PublishError) -> BusError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => {
            unavailable("no JetStream stream accepted the message", e)
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            unavailable("the NATS server did not acknowledge the publish in time", e)
        }
        _ => unavailable("the publish was not acknowledged", e),
    }
}

impl Inner {
    /// The durable profile of a domain stream.
    fn stream_config(&self, name: &str, deployment: &str, domain: &str) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            description: Some(format!(
                "Meridian events of domain {domain} in deployment {deployment}"
            )),
            subjects: vec![naming::stream_subjects(deployment, domain)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            // No age, size or count limit: history is kept for replay (Duration::ZERO and
            // -1 mean unlimited to the server).
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            deny_delete: true,
            deny_purge: true,
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window,
            ..Default::default()
        }
    }

    /// Makes sure the stream `name` for `topic_or_pattern`'s deployment and domain exists.
    pub(crate) async fn ensure_stream(
        &self,
        name: &str,
        topic_or_pattern: &str,
    ) -> Result<(), BusError> {
        if self.ensured.lock().contains(name) {
            return Ok(());
        }
        let Some((deployment, domain)) = naming::topic_parts(topic_or_pattern) else {
            return Err(BusError::InvalidTopic(format!(
                "{topic_or_pattern}: no deployment/domain"
            )));
        };
        self.ensure_domain_stream(name, deployment, domain).await
    }

    pub(crate) async fn ensure_domain_stream(
        &self,
        name: &str,
        deployment: &str,
        domain: &str,
    ) -> Result<(), BusError> {
        if self.ensured.lock().contains(name) {
            return Ok(());
        }
        let config = self.stream_config(name, deployment, domain);
        // get_or_create keeps an existing stream as it is (an operator may have raised its
        // replicas or limits); it only creates a missing one.
        self.js.get_or_create_stream(config).await.map_err(|e| {
            if matches!(
                e.kind(),
                jetstream::context::CreateStreamErrorKind::JetStream(_)
            ) {
                internal("the NATS server refused to create a stream", e)
            } else {
                unavailable("cannot create a JetStream stream", e)
            }
        })?;
        self.ensured.lock().insert(name.to_owned());
        Ok(())
    }

    pub(crate) fn forget_stream(&self, name: &str) {
        self.ensured.lock().remove(name);
    }

    /// The names of every domain stream of `deployment` on the server. Asks the server to
    /// filter by subject (the client's own listing cannot), so the cost does not grow with
    /// the other deployments' streams.
    pub(crate) async fn deployment_streams(
        &self,
        deployment: &str,
    ) -> Result<Vec<String>, BusError> {
        #[derive(serde::Deserialize)]
        struct Page {
            total: usize,
            streams: Option<Vec<String>>,
        }
        let prefix = naming::stream_prefix(deployment);
        let subject = format!("deployment.{deployment}.>");
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page: Response<Page> = self
                .js
                .request(
                    "STREAM.NAMES",
                    &serde_json::json!({ "offset": offset, "subject": subject }),
                )
                .await
                .map_err(|e| unavailable("cannot list JetStream streams", e))?;
            let page = match page {
                Response::Ok(page) => page,
                Response::Err { error } => {
                    return Err(internal("the NATS server refused to list streams", error));
                }
            };
            let names = page.streams.unwrap_or_default();
            offset += names.len();
            let done = names.is_empty() || offset >= page.total;
            out.extend(names.into_iter().filter(|n| n.starts_with(&prefix)));
            if done {
                return Ok(out);
            }
        }
    }

    /// The domain streams a pattern binds to, created where missing.
    pub(crate) async fn streams_for(
        &self,
        pattern: &TopicPattern,
    ) -> Result<Vec<(String, String)>, BusError> {
        let deployment = pattern.deployment();
        match naming::reach(pattern.as_str()) {
            Reach::Nothing => Ok(Vec::new()),
            Reach::Domain(domain) => {
                let name = naming::stream_name(deployment, &domain);
                self.ensure_domain_stream(&name, deployment, &domain)
                    .await?;
                Ok(vec![(name, domain)])
            }
            Reach::AllDomains => {
                let mut domains: Vec<String> =
                    KNOWN_DOMAINS.iter().map(|d| (*d).to_owned()).collect();
                let prefix = naming::stream_prefix(deployment);
                for name in self.deployment_streams(deployment).await? {
                    if let Some(domain) = name.strip_prefix(&prefix)
                        && !domains.iter().any(|d| d == domain)
                    {
                        domains.push(domain.to_owned());
                    }
                }
                let mut out = Vec::with_capacity(domains.len());
                for domain in domains {
                    let name = naming::stream_name(deployment, &domain);
                    self.ensure_domain_stream(&name, deployment, &domain)
                        .await?;
                    out.push((name, domain));
                }
                Ok(out)
            }
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        self.publish_one(&message).await
    }

    /// Sends every valid message without waiting, then collects the acks in order, so a
    /// batch costs about one round trip instead of one per message.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let mut out: Vec<Result<(), BusError>> = Vec::with_capacity(messages.len());
        let mut pending = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let sent = async {
                let (stream, bytes) = self.encode(message)?;
                self.inner
                    .ensure_stream(&stream, message.topic.as_str())
                    .await?;
                self.send(message, bytes).await
            }
            .await;
            match sent {
                Ok(ack) => {
                    out.push(Ok(()));
                    pending.push((i, ack));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        for (i, ack) in pending {
            if let Err(e) = ack.await {
                out[i] = match e.kind() {
                    // The stream vanished under us: one more try through the slow path,
                    // which recreates it.
                    PublishErrorKind::StreamNotFound => {
                        if let Ok((stream, _)) = self.encode(&messages[i]) {
                            self.inner.forget_stream(&stream);
                        }
                        self.publish_one(&messages[i]).await
                    }
                    _ => Err(map_publish_error(e)),
                };
            }
        }
        out
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let sub =
            subscription::NatsSubscription::open(self.inner.clone(), pattern, options).await?;
        Ok(Box::new(sub))
    }

    async fn ping(&self) -> Result<(), BusError> {
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable(
                "not connected to the NATS server".into(),
            ));
        }
        // A flush is a PING/PONG round trip: it proves the server answers, not only that
        // the socket is open.
        match tokio::time::timeout(self.inner.config.request_timeout, self.inner.client.flush())
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("the NATS server did not answer a ping", e)),
            Err(_) => Err(BusError::Unavailable(
                "the NATS server did not answer a ping in time".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_debug_output() {
        assert_eq!(
            redacted("nats://user:secret@h1:4222,nats://h2:4222"),
            "nats://***@h1:4222,nats://h2:4222"
        );
        assert_eq!(redacted("tok@h1"), "***@h1");
        let shown = format!("{:?}", NatsConfig::new("nats://u:pw@host:4222"));
        assert!(!shown.contains("pw"), "{shown}");
    }
}
