use std::time::Duration;

use async_trait::async_trait;
use meridian_core::Timestamp;

use crate::memory::MemoryAck;
use crate::{BusError, Message, TopicPattern};

/// The largest serialized envelope a backend accepts, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// What a backend guarantees. Callers and the conformance suite branch on these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Published messages survive a restart of the backend and of the process.
    pub durable: bool,
    /// A subscription can start from a position or a time in the past ([`StartAt`]).
    pub replay: bool,
    /// The broker matches wildcard patterns itself (otherwise the client filters).
    pub native_wildcards: bool,
    /// The broker moves dead letters itself (otherwise [`crate::consumer`] does).
    pub native_dlq: bool,
    /// A consumer sees the messages of one key on one topic in publish order.
    pub ordered_per_key: bool,
}

/// Where a new consumer starts. An existing durable consumer always resumes after its last
/// acknowledged message, whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// Only messages published after the subscription is set up.
    #[default]
    New,
    /// Everything the backend still holds.
    Earliest,
    /// From this backend position (inclusive); needs [`Capabilities::replay`].
    Position(u64),
    /// From the first message published at or after this time; needs
    /// [`Capabilities::replay`].
    Time(Timestamp),
}

/// How to subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The consumer's name (`[a-z0-9_-]+`). Subscriptions with the same name share the
    /// messages (a consumer group); different names each get every message (fan-out).
    pub consumer: String,
    /// Keep the consumer's position across restarts.
    pub durable: bool,
    /// The most unacknowledged deliveries this subscription holds at once.
    pub max_in_flight: usize,
    /// An unacknowledged delivery is redelivered after this long.
    pub ack_wait: Duration,
    pub start: StartAt,
}

impl SubscribeOptions {
    /// A durable consumer named `consumer` with the defaults: 64 in flight, 30 s ack wait,
    /// new messages only.
    pub fn durable(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            durable: true,
            max_in_flight: 64,
            ack_wait: Duration::from_secs(30),
            start: StartAt::New,
        }
    }

    /// As [`SubscribeOptions::durable`], but forgotten when the subscription ends.
    pub fn ephemeral(consumer: &str) -> Self {
        Self {
            durable: false,
            ..Self::durable(consumer)
        }
    }
}

/// Settles one delivery. Backends implement it; callers use [`Delivery::ack`] and
/// [`Delivery::nack`].
#[async_trait]
pub trait AckHandle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Redeliver after `delay`, with the attempt count raised.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError>;

    /// As [`AckHandle::nack`], handing the delivered message back: a backend that keeps
    /// no copy of delivered messages can redeliver this one. [`Delivery::nack`]
    /// calls this; the default ignores the message and calls `nack`.
    async fn nack_with(self: Box<Self>, message: Message, delay: Duration) -> Result<(), BusError> {
        drop(message);
        self.nack(delay).await
    }

    /// Acknowledges in place, without a future, where the backend can (an in-process
    /// backend; the memory bus settles its deliveries without a handle at all). `None` means it cannot: the delivery is still unsettled and the caller
    /// awaits [`AckHandle::ack`]. [`Delivery::ack_all`] tries this first; the default
    /// returns `None`.
    fn ack_now(&mut self) -> Option<Result<(), BusError>> {
        None
    }
}

/// One delivery of a message to a subscription.
pub struct Delivery {
    pub message: Message,
    /// 1 on the first delivery, 2 on the first redelivery, and so on.
    pub attempt: u32,
    /// The backend's position of the message, where it has one (for replay).
    pub position: Option<u64>,
    settle: Settle,
}

/// How a delivery is settled: through its backend's boxed [`AckHandle`], or, on the memory
/// bus, by its member and sequence number, without an allocation per delivery. `Done` once
/// it was acked or nacked.
enum Settle {
    Boxed(Box<dyn AckHandle>),
    Memory(MemoryAck),
    Done,
}

/// A memory-bus delivery dropped without an ack or a nack is *abandoned*: it hands its
/// message back to the bus, which redelivers it at once (in process, a dropped delivery is
/// certainly not being worked on). Broker backends' handles redeliver after the ack wait.
impl Drop for Delivery {
    fn drop(&mut self) {
        if let Settle::Memory(ack) = &mut self.settle {
            ack.abandon(&self.message);
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.message.topic)
            .field("id", &self.message.id())
            .field("attempt", &self.attempt)
            .field("position", &self.position)
            .finish()
    }
}

impl Delivery {
    pub fn new(
        message: Message,
        attempt: u32,
        position: Option<u64>,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Self {
            message,
            attempt,
            position,
            settle: Settle::Boxed(handle),
        }
    }

    /// A delivery of the memory bus.
    pub(crate) fn memory(message: Message, attempt: u32, ack: MemoryAck) -> Self {
        Self {
            message,
            attempt,
            position: None,
            settle: Settle::Memory(ack),
        }
    }

    /// Done: never deliver this message to this consumer again.
    pub async fn ack(mut self) -> Result<(), BusError> {
        match self.take_settle() {
            Settle::Boxed(handle) => handle.ack().await,
            Settle::Memory(mut ack) => {
                drop(self);
                ack.ack();
                Ok(())
            }
            Settle::Done => Ok(()),
        }
    }

    /// Not done: deliver it again after `delay`.
    pub async fn nack(mut self, delay: Duration) -> Result<(), BusError> {
        // A nack is the rare path: the message is handed back as a copy (reference counts)
        // so that the delivery itself stays whole until it is dropped.
        match self.take_settle() {
            Settle::Boxed(handle) => handle.nack_with(self.message.clone(), delay).await,
            Settle::Memory(mut ack) => {
                ack.nack_with(self.message.clone(), delay);
                Ok(())
            }
            Settle::Done => Ok(()),
        }
    }

    /// Takes the settling handle out, leaving `Done`, so that dropping the delivery
    /// afterwards does not count as abandoning it.
    fn take_settle(&mut self) -> Settle {
        std::mem::replace(&mut self.settle, Settle::Done)
    }

    /// Acknowledges every delivery, in order, as [`Delivery::ack`] would, settling in place
    /// where the backend can ([`AckHandle::ack_now`]) so that a batch from
    /// [`Subscription::next_batch`] costs no future per message; the memory bus settles a
    /// run of one subscription's deliveries with one in-flight update. Stops at the first
    /// error; the deliveries after it are dropped unsettled, which redelivers them as any
    /// abandoned delivery is.
    pub async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), BusError> {
        let mut run = crate::memory::AckRun::default();
        for mut d in deliveries {
            let settle = d.take_settle();
            drop(d);
            match settle {
                Settle::Memory(ack) => run.push(ack),
                Settle::Boxed(mut handle) => {
                    run.finish();
                    match handle.ack_now() {
                        Some(result) => result?,
                        None => handle.ack().await?,
                    }
                }
                Settle::Done => {}
            }
        }
        run.finish();
        Ok(())
    }
}

/// An open subscription. Dropping it stops deliveries; unacknowledged ones are redelivered
/// (to another member of the group, or after a restart).
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; waits until one is available. `Closed` once the bus is shut down.
    ///
    /// Cancel-safe: if the returned future is dropped before it completes, no delivery is
    /// lost (callers `select!` over it with shutdown signals and timeouts).
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// Between 1 and `max` deliveries: waits for the first as [`Subscription::next`] does,
    /// then adds those already available without waiting (never more than `max_in_flight`
    /// allows). Settle them one by one or together with [`Delivery::ack_all`]. Cancel-safe
    /// like `next`. The default returns one delivery from `next`; backends that hold
    /// messages in batches override it to hand a batch over in one call.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let _ = max;
        Ok(vec![self.next().await?])
    }

    /// The consumer's lag: how many messages the backend holds for this subscription's
    /// consumer (its group) that are not yet acknowledged, where the backend can tell
    /// cheaply; `None` where it cannot (the default). A gauge to sample now and then (as
    /// [`crate::MeteredBus`] does), not a per-message figure; each backend documents what
    /// it counts.
    async fn lag(&mut self) -> Option<u64> {
        None
    }
}

/// The bus contract.
///
/// Publishing MUST validate the topic (it lies under `deployment.{id}.`) and refuse a
/// serialized envelope over the backend's payload limit with `PayloadTooLarge`, before
/// anything is sent. `publish` returns only once the backend has accepted the message,
/// durably where [`Capabilities::durable`] holds.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `"memory"`, `"embedded"`, `"nats"`, `"rabbitmq"` or `"kafka"`.
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    async fn publish(&self, message: Message) -> Result<(), BusError>;

    /// Publishes each message, reporting each one's outcome in order. Backends override
    /// this to pipeline; the default publishes one at a time.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.publish(m).await);
        }
        out
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Succeeds when the broker can be reached (for `/readyz`).
    async fn ping(&self) -> Result<(), BusError>;
}
