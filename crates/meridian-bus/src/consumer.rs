//! The backend-neutral consumer loop: deliver each message to a [`Handler`], acknowledge on
//! success, retry with exponential backoff and jitter ([`RetryPolicy`]) on failure, and after
//! the last attempt move the message to `<topic>.dlq` as a [`DeadLetter`].
//!
//! The loop works the same on every backend; a backend with
//! [`Capabilities::native_dlq`](crate::Capabilities) still receives the dead letter from here,
//! so the dead-letter topic's contents do not depend on the backend.
//!
//! Delivery is at least once: a handler may see a message again after a crash, a failed
//! acknowledgement or a broker restart, so handlers must be idempotent (DESIGN.md §4.3).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use meridian_core::{Envelope, EventId, Timestamp, Topic};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::{Bus, BusError, Delivery, Message, RetryPolicy, SubscribeOptions, TopicPattern};

/// The CloudEvents `type` of a dead-letter envelope.
pub const DEAD_LETTER_TYPE: &str = "meridian.bus.dead_letter";

/// Why a handler could not process a message. The reason is stored with the dead letter,
/// so it should say what failed in terms an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HandlerError {
    pub reason: String,
    /// Retrying cannot help (the message itself is refused): it goes to the dead letters
    /// at once instead of after the last attempt.
    pub permanent: bool,
}

impl HandlerError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            permanent: false,
        }
    }

    /// A failure no retry can fix: the message is dead-lettered on this attempt.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            permanent: true,
        }
    }
}

impl From<String> for HandlerError {
    fn from(reason: String) -> Self {
        Self::new(reason)
    }
}

impl From<&str> for HandlerError {
    fn from(reason: &str) -> Self {
        Self::new(reason)
    }
}

/// Processes one message. Called at least once per message; must be idempotent.
#[async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError>;
}

/// Processes several messages at once (say, in one store transaction), reporting one result
/// per message so that retries and dead letters still work message by message. Called at
/// least once per message; must be idempotent. Messages come in delivery order.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// One result per message, in the order given. A result missing from the end counts as
    /// a failure of that message.
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>>;
}

/// Any [`Handler`] is a [`BatchHandler`] that handles the messages one after the other.
#[async_trait]
impl<H: Handler + ?Sized> BatchHandler for H {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.handle(m).await);
        }
        out
    }
}

/// A shared [`Handler`] as a [`BatchHandler`].
struct OneByOne(Arc<dyn Handler>);

#[async_trait]
impl BatchHandler for OneByOne {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        self.0.handle_batch(messages).await
    }
}

/// A message that failed its last attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The id of the dead-letter envelope published on `<topic>.dlq`.
    pub id: EventId,
    /// The message as it was delivered.
    pub original: Message,
    /// The handler's reason for the last failure.
    pub reason: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
    /// The consumer that gave up.
    pub consumer: String,
    pub failed_at: Timestamp,
}

impl DeadLetter {
    pub fn new(original: Message, reason: String, attempts: u32, consumer: String) -> Self {
        Self {
            id: EventId::new(),
            original,
            reason,
            attempts,
            consumer,
            failed_at: meridian_core::now(),
        }
    }

    /// The message published to `<topic>.dlq`: an envelope of type
    /// [`DEAD_LETTER_TYPE`] for the same tenant and subject, whose data holds the reason,
    /// the attempt count, the consumer, the time, the original topic and the original
    /// envelope.
    pub fn to_message(&self) -> Message {
        let original = &self.original;
        let envelope = Envelope {
            specversion: "1.0".to_owned(),
            id: self.id,
            source: format!(
                "/meridian/{}/bus/{}",
                original.topic.deployment(),
                self.consumer
            ),
            ty: DEAD_LETTER_TYPE.to_owned(),
            time: self.failed_at,
            subject: original.envelope().subject.clone(),
            datacontenttype: "application/json".to_owned(),
            tenant: original.tenant(),
            traceparent: original.envelope().traceparent.clone(),
            schemaversion: "1".to_owned(),
            data: json!({
                "reason": self.reason,
                "attempts": self.attempts,
                "consumer": self.consumer,
                "failed_at": self.failed_at,
                "original_topic": original.topic,
                "original": original.envelope(),
            }),
        };
        Message::new(original.topic.dead_letter(), envelope)
    }

    /// Reads a dead letter back from a message on a `<topic>.dlq` topic (for listing and
    /// replaying dead letters).
    pub fn from_message(message: &Message) -> Result<DeadLetter, BusError> {
        let bad = |what: &str| {
            BusError::Internal(format!(
                "message {} on {} is not a dead letter: {what}",
                message.id(),
                message.topic
            ))
        };
        let e = message.envelope();
        if e.ty != DEAD_LETTER_TYPE {
            return Err(bad("wrong type"));
        }
        let data = &e.data;
        let original_topic = data["original_topic"]
            .as_str()
            .ok_or_else(|| bad("no original_topic"))
            .and_then(|t| Topic::parse(t).map_err(BusError::InvalidTopic))?;
        let original: Envelope = serde_json::from_value(data["original"].clone())
            .map_err(|err| bad(&format!("bad original envelope: {err}")))?;
        let failed_at: Timestamp = serde_json::from_value(data["failed_at"].clone())
            .map_err(|err| bad(&format!("bad failed_at: {err}")))?;
        Ok(DeadLetter {
            id: e.id,
            original: Message::new(original_topic, original),
            reason: data["reason"].as_str().unwrap_or_default().to_owned(),
            attempts: data["attempts"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .ok_or_else(|| bad("no attempts"))?,
            consumer: data["consumer"].as_str().unwrap_or_default().to_owned(),
            failed_at,
        })
    }
}

/// Where dead letters are recorded so that they can be listed and replayed (the store, in
/// the server). Called after the dead letter is on `<topic>.dlq` and before the original
/// is acknowledged; an error makes the loop retry the whole step later.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn record(&self, dead_letter: &DeadLetter) -> Result<(), BusError>;
}

/// A sink that records nothing: the `<topic>.dlq` topic is the only trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopSink;

#[async_trait]
impl DeadLetterSink for NoopSink {
    async fn record(&self, _dead_letter: &DeadLetter) -> Result<(), BusError> {
        Ok(())
    }
}

/// Creates a durable consumer on the bus without consuming anything: subscribes once with
/// `options` and lets go. A backend that keeps messages only for consumers that exist
/// (RabbitMQ queues) then keeps every message published from now on, before the consumer
/// first runs. Services declare their consumers this way before the outbox relay starts.
/// Declare with the same options the consumer runs with, so that a backend that stores a
/// durable consumer's settings (NATS) sees one configuration.
pub async fn declare(
    bus: &dyn Bus,
    pattern: &TopicPattern,
    options: SubscribeOptions,
) -> Result<(), BusError> {
    drop(bus.subscribe(pattern, options).await?);
    Ok(())
}

/// How long the loop waits before asking an unavailable backend again.
const RECONNECT_BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Runs a consumer until `shutdown` turns `true` (then `Ok`) or the bus is closed (then
/// `Err(BusError::Closed)`).
///
/// For each delivery: the handler's `Ok` acknowledges it; an `Err` (or a panic) before the
/// last attempt negatively acknowledges it with `policy.backoff(attempt)`; on the last
/// attempt the message is published to `<topic>.dlq` as a [`DeadLetter`], recorded in
/// `dead_letters`, and then acknowledged. While the backend is unavailable the loop backs off
/// and keeps going; it never gives up on its own. A delivery in progress is finished before
/// shutdown is honoured.
pub async fn run(
    bus: Arc<dyn Bus>,
    pattern: TopicPattern,
    options: SubscribeOptions,
    handler: Arc<dyn Handler>,
    policy: RetryPolicy,
    dead_letters: Arc<dyn DeadLetterSink>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let consumer = options.consumer.clone();
    let Some(mut subscription) = subscribe(bus.as_ref(), &pattern, &options, &mut shutdown).await?
    else {
        return Ok(());
    };
    let handler = OneByOne(handler);
    let step = Step {
        meters: Meters::new(&labels(&pattern, &consumer)),
        bus: bus.as_ref(),
        handler: &handler,
        policy: &policy,
        dead_letters: dead_letters.as_ref(),
        consumer: &consumer,
    };
    let mut failures = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => return Ok(()),
            d = subscription.next() => d,
        };
        match next {
            Ok(delivery) => {
                failures = 0;
                step.process(delivery).await;
            }
            Err(e) => {
                if !unavailable(e, &pattern, &consumer, &mut failures, &mut shutdown).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// As [`run`], for a [`BatchHandler`], with several deliveries in progress at once.
///
/// The loop takes whatever deliveries are ready (up to `max_batch`, and never more than the
/// subscription's `max_in_flight`), hands them to the handler in delivery order in one
/// call, and settles each by its own result: ack, nack with backoff, or dead letter after
/// the last attempt, exactly as [`run`] does. Settling runs concurrently with gathering and
/// handling the next batch, so a backend whose acks are durable commits (the embedded bus)
/// group-commits them while the handler works. The handler sees a batch only after the
/// previous batch's handling finished, so a handler that applies its messages in order
/// keeps the bus's per-key order. On shutdown the loop finishes the batch in progress and
/// settles it before it returns.
// The arguments of `run` plus the batch size; a builder would hide that symmetry.
#[allow(clippy::too_many_arguments)]
pub async fn run_batched(
    bus: Arc<dyn Bus>,
    pattern: TopicPattern,
    options: SubscribeOptions,
    handler: Arc<dyn BatchHandler>,
    max_batch: usize,
    policy: RetryPolicy,
    dead_letters: Arc<dyn DeadLetterSink>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let max_batch = max_batch.max(1);
    let consumer = options.consumer.clone();
    let Some(mut subscription) = subscribe(bus.as_ref(), &pattern, &options, &mut shutdown).await?
    else {
        return Ok(());
    };
    let step = Step {
        meters: Meters::new(&labels(&pattern, &consumer)),
        bus: bus.as_ref(),
        handler: handler.as_ref(),
        policy: &policy,
        dead_letters: dead_letters.as_ref(),
        consumer: &consumer,
    };
    let mut settling = FuturesUnordered::new();
    let mut failures = 0u32;
    let result = loop {
        let next = tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break Ok(()),
            Some(()) = settling.next(), if !settling.is_empty() => continue,
            d = subscription.next_batch(max_batch) => d,
        };
        let mut batch = match next {
            Ok(batch) => batch,
            Err(e) => {
                // Settle what is in progress before pausing or returning.
                while settling.next().await.is_some() {}
                match unavailable(e, &pattern, &consumer, &mut failures, &mut shutdown).await {
                    Ok(true) => continue,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        failures = 0;
        if batch.is_empty() {
            continue;
        }
        // A backend whose `next_batch` hands over one delivery at a time: take the others
        // that are ready too.
        while batch.len() < max_batch {
            // `next` is cancel-safe: a delivery not ready now stays for the next round.
            match subscription.next().now_or_never() {
                Some(Ok(delivery)) => batch.push(delivery),
                // An error shows again on the next call, where it is handled.
                Some(Err(_)) | None => break,
            }
        }
        step.meters.delivered.increment(batch.len() as u64);
        step.meters.in_flight.increment(batch.len() as f64);
        let started = Instant::now();
        let results = {
            let messages: Vec<&Message> = batch.iter().map(|d| &d.message).collect();
            let handled = step.call(&messages);
            tokio::pin!(handled);
            loop {
                tokio::select! {
                    biased;
                    results = &mut handled => break results,
                    Some(()) = settling.next(), if !settling.is_empty() => {}
                }
            }
        };
        for (delivery, result) in batch.into_iter().zip(results) {
            settling.push(step.finish(delivery, result, started));
        }
    };
    while settling.next().await.is_some() {}
    result
}

/// Subscribes, retrying while the backend is unavailable; `None` if shutdown came first.
async fn subscribe(
    bus: &dyn Bus,
    pattern: &TopicPattern,
    options: &SubscribeOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Box<dyn crate::Subscription>>, BusError> {
    let mut failures = 0u32;
    loop {
        let subscribed = tokio::select! {
            biased;
            () = shutdown_requested(shutdown) => return Ok(None),
            s = bus.subscribe(pattern, options.clone()) => s,
        };
        match subscribed {
            Ok(s) => return Ok(Some(s)),
            Err(e) if transient(&e) => {
                failures += 1;
                warn!(pattern = %pattern, consumer = %options.consumer, error = %e, "cannot subscribe yet; retrying");
                if !pause(RECONNECT_BACKOFF.backoff(failures), shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn labels(pattern: &TopicPattern, consumer: &str) -> [(&'static str, String); 2] {
    [
        ("pattern", pattern.to_string()),
        ("consumer", consumer.to_owned()),
    ]
}

/// What the loop does when `next` fails: `Err` to stop with that error (the bus is closed,
/// or the error is permanent), `Ok(false)` if shutdown came during the backoff, `Ok(true)`
/// to ask again.
async fn unavailable(
    e: BusError,
    pattern: &TopicPattern,
    consumer: &str,
    failures: &mut u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, BusError> {
    match e {
        BusError::Closed => Err(BusError::Closed),
        e if transient(&e) => {
            // The backend reconnects inside the subscription; asking again after a pause
            // is all the loop can do, and giving up would silently stop a consumer.
            *failures += 1;
            warn!(pattern = %pattern, consumer = %consumer, error = %e, failures = *failures, "bus unavailable; backing off");
            Ok(pause(RECONNECT_BACKOFF.backoff(*failures), shutdown).await)
        }
        e => Err(e),
    }
}

/// Errors after which asking again later can succeed.
fn transient(e: &BusError) -> bool {
    matches!(e, BusError::Unavailable(_) | BusError::Internal(_))
}

/// Resolves when shutdown is requested; never, if the sender is gone (nobody can ask).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps for `delay`; `false` if shutdown was requested meanwhile.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = shutdown_requested(shutdown) => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// What happened to one delivery; counted per pattern in [`Meters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Nacked,
    DeadLettered,
    /// Settling failed; the backend will redeliver.
    Unsettled,
}

/// The consumer's metrics, labelled by subscription pattern and consumer name (both fixed
/// by the code that subscribes), never by topic instance or tenant.
struct Meters {
    delivered: metrics::Counter,
    acked: metrics::Counter,
    nacked: metrics::Counter,
    dead_lettered: metrics::Counter,
    unsettled: metrics::Counter,
    in_flight: metrics::Gauge,
    end_to_end: metrics::Histogram,
    handler: metrics::Histogram,
}

impl Meters {
    fn new(labels: &[(&'static str, String); 2]) -> Self {
        Self {
            delivered: metrics::counter!("meridian_bus_delivered_total", labels),
            acked: metrics::counter!("meridian_bus_acked_total", labels),
            nacked: metrics::counter!("meridian_bus_nacked_total", labels),
            dead_lettered: metrics::counter!("meridian_bus_dead_lettered_total", labels),
            unsettled: metrics::counter!("meridian_bus_unsettled_total", labels),
            in_flight: metrics::gauge!("meridian_bus_in_flight", labels),
            end_to_end: metrics::histogram!("meridian_bus_end_to_end_seconds", labels),
            handler: metrics::histogram!("meridian_bus_handler_duration_seconds", labels),
        }
    }
}

fn span_for(delivery: &Delivery, consumer: &str) -> tracing::Span {
    info_span!(
        "bus.consume",
        topic = %delivery.message.topic,
        consumer = %consumer,
        attempt = delivery.attempt,
        event.id = %delivery.message.id(),
    )
}

struct Step<'a> {
    meters: Meters,
    bus: &'a dyn Bus,
    handler: &'a dyn BatchHandler,
    policy: &'a RetryPolicy,
    dead_letters: &'a dyn DeadLetterSink,
    consumer: &'a str,
}

impl Step<'_> {
    async fn process(&self, delivery: Delivery) {
        self.meters.delivered.increment(1);
        self.meters.in_flight.increment(1.0);
        let started = Instant::now();
        let result = self
            .call(&[&delivery.message])
            .instrument(span_for(&delivery, self.consumer))
            .await
            .pop()
            .unwrap_or_else(|| Err(HandlerError::new("the handler returned no result")));
        self.finish(delivery, result, started).await;
    }

    /// Calls the handler on `messages`. A panicking handler is a failed attempt for every
    /// message, not a dead consumer: the loop must keep serving the other messages. The
    /// result has exactly one entry per message.
    async fn call(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let mut results = AssertUnwindSafe(self.handler.handle_batch(messages))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                vec![Err(HandlerError::new(format!("handler panicked: {what}"))); messages.len()]
            });
        results.truncate(messages.len());
        results.resize_with(messages.len(), || {
            Err(HandlerError::new("the handler returned no result"))
        });
        results
    }

    /// Settles one delivery by its handler result (started at `started`) and counts it.
    async fn finish(&self, delivery: Delivery, result: Result<(), HandlerError>, started: Instant) {
        let span = span_for(&delivery, self.consumer);
        let m = &self.meters;
        let event_time = delivery.message.time();
        let outcome = self.settle(delivery, result).instrument(span.clone()).await;
        m.in_flight.decrement(1.0);
        m.handler.record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Acked => {
                m.acked.increment(1);
                // From the event's time to its successful handling, retries included.
                let e2e = (meridian_core::now() - event_time)
                    .to_std()
                    .unwrap_or_default();
                m.end_to_end.record(e2e.as_secs_f64());
            }
            Outcome::Nacked => m.nacked.increment(1),
            Outcome::DeadLettered => m.dead_lettered.increment(1),
            Outcome::Unsettled => m.unsettled.increment(1),
        }
        span.in_scope(|| debug!(?outcome, "delivery settled"));
    }

    async fn settle(&self, delivery: Delivery, result: Result<(), HandlerError>) -> Outcome {
        let attempt = delivery.attempt;
        match result {
            Ok(()) => match delivery.ack().await {
                Ok(()) => Outcome::Acked,
                Err(e) => {
                    warn!(error = %e, "ack failed; the message will be redelivered");
                    Outcome::Unsettled
                }
            },
            Err(e) if !e.permanent && !self.policy.exhausted(attempt) => {
                warn!(reason = %e.reason, "handler failed; retrying later");
                self.nack(delivery).await
            }
            Err(e) => self.dead_letter(delivery, e.reason).await,
        }
    }

    async fn nack(&self, delivery: Delivery) -> Outcome {
        let delay = self.policy.backoff(delivery.attempt);
        match delivery.nack(delay).await {
            Ok(()) => Outcome::Nacked,
            Err(e) => {
                warn!(error = %e, "nack failed; the message will be redelivered");
                Outcome::Unsettled
            }
        }
    }

    /// Publishes the dead letter, records it, and only then acknowledges the original, so a
    /// crash in between duplicates a dead letter rather than losing the message.
    async fn dead_letter(&self, delivery: Delivery, reason: String) -> Outcome {
        let dead = DeadLetter::new(
            delivery.message.clone(),
            reason,
            delivery.attempt,
            self.consumer.to_owned(),
        );
        if let Err(e) = self.bus.publish(dead.to_message()).await {
            error!(error = %e, reason = %dead.reason, "cannot publish the dead letter; retrying later");
            return self.nack(delivery).await;
        }
        if let Err(e) = self.dead_letters.record(&dead).await {
            error!(error = %e, "cannot record the dead letter; retrying later");
            return self.nack(delivery).await;
        }
        warn!(reason = %dead.reason, dead_letter.id = %dead.id, "message dead-lettered");
        match delivery.ack().await {
            Ok(()) => Outcome::DeadLettered,
            Err(e) => {
                warn!(error = %e, "ack after dead-lettering failed; the message will be redelivered");
                Outcome::Unsettled
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::TenantId;

    #[test]
    fn dead_letters_round_trip_through_their_message() {
        let topic = Topic::platform("d", "oms", "order.created");
        let original = Message::new(
            topic.clone(),
            Envelope::new(
                "/meridian/d/oms",
                "meridian.oms.order.created",
                TenantId::new(),
                "order-1",
                meridian_core::now(),
                json!({"n": 1}),
            ),
        );
        let dead = DeadLetter::new(original.clone(), "boom".into(), 3, "projector".into());
        let m = dead.to_message();
        assert_eq!(m.topic, topic.dead_letter());
        assert_eq!(m.envelope().ty, DEAD_LETTER_TYPE);
        assert_eq!(m.tenant(), original.tenant());
        assert_eq!(m.envelope().subject, "order-1");
        assert_eq!(m.envelope().data["reason"], "boom");
        assert_eq!(m.envelope().data["attempts"], 3);
        assert_eq!(
            m.envelope().data["original_topic"],
            "deployment.d.platform.oms.order.created"
        );
        assert_eq!(DeadLetter::from_message(&m).unwrap(), dead);
        assert!(DeadLetter::from_message(&original).is_err());
    }
}
