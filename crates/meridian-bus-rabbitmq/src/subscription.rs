//! A subscription: one channel consuming one queue, re-established on a new connection
//! after the old one is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use meridian_bus::{AckHandle, BusError, Delivery, Message, Subscription, TopicPattern};
use meridian_core::EventId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::error;
use crate::link::State;
use crate::topology::{self, QueueSpec};

/// Nacks counted per message id on a transient (classic) queue, which, unlike a quorum
/// queue, keeps no delivery count of its own.
type Attempts = Arc<Mutex<HashMap<EventId, u32>>>;

/// The longest a lag query waits for the broker: a gauge sample must not hold up
/// deliveries while the broker is slow or away.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct RabbitSubscription {
    shared: Arc<Shared>,
    pattern: TopicPattern,
    spec: QueueSpec,
    prefetch: u16,
    active: Option<Active>,
    attempts: Attempts,
    /// `ack_wait`; `None` when too large to matter.
    ack_wait: Option<Duration>,
    /// Deliveries in the order they were handed out, for the task that requeues them when
    /// `ack_wait` runs out.
    expiries: Arc<Mutex<VecDeque<Expiry>>>,
    /// The channel lag queries are sent on, opened on first use and after it closed. Kept
    /// apart from the consuming channel: a passive declare of a missing queue closes the
    /// channel it is sent on.
    lag_channel: Option<Channel>,
}

/// The channel and consumer of one connection generation.
struct Active {
    generation: u64,
    channel: Channel,
    consumer: Consumer,
    /// Watches for this generation's connection being withdrawn.
    state: watch::Receiver<State>,
}

impl RabbitSubscription {
    /// Declares the queue and starts consuming, so that everything published after this
    /// returns reaches the queue.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        pattern: TopicPattern,
        spec: QueueSpec,
        prefetch: u16,
        ack_wait: Duration,
    ) -> Result<RabbitSubscription, BusError> {
        // Beyond a day the broker's own consumer timeout (30 min by default) acts first.
        let ack_wait = (ack_wait < Duration::from_secs(86_400)).then_some(ack_wait);
        let expiries = Arc::default();
        if let Some(wait) = ack_wait {
            tokio::spawn(expire_unsettled(Arc::downgrade(&expiries), wait));
        }
        let mut sub = RabbitSubscription {
            shared,
            pattern,
            spec,
            prefetch,
            active: None,
            attempts: Arc::default(),
            ack_wait,
            expiries,
            lag_channel: None,
        };
        sub.establish().await?;
        Ok(sub)
    }

    async fn establish(&mut self) -> Result<(), BusError> {
        let link = self.shared.connector.link(self.shared.wait).await?;
        let result = async {
            let channel = link
                .conn
                .create_channel()
                .await
                .map_err(|e| error::map("open consumer channel", &e))?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| error::map("set prefetch", &e))?;
            self.spec.declare(&link, &channel).await?;
            if self.spec.durable {
                self.shared.declared.insert(&self.spec.name);
            }
            let consumer = channel
                .basic_consume(
                    self.spec.name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    if error::is_not_found(&e) {
                        // The transient queue was auto-deleted between declare and consume
                        // (its last other consumer left): declaring again recreates it.
                        link.forget_declared();
                        BusError::Unavailable(format!(
                            "queue {} vanished while subscribing; retry",
                            self.spec.name
                        ))
                    } else {
                        error::map("consume", &e)
                    }
                })?;
            Ok::<_, BusError>(Active {
                generation: link.generation,
                channel,
                consumer,
                state: self.shared.connector.watch(),
            })
        }
        .await;
        match result {
            Ok(active) => {
                self.active = Some(active);
                Ok(())
            }
            Err(e) => {
                if matches!(e, BusError::Unavailable(_)) {
                    self.shared.connector.kick();
                }
                Err(e)
            }
        }
    }

    /// The ready messages of the queue, from a passive `queue.declare` on the lag channel.
    async fn ready_messages(&mut self) -> Result<u64, BusError> {
        let channel = match self.lag_channel.as_ref() {
            Some(ch) if ch.status().connected() => ch.clone(),
            _ => {
                self.lag_channel = None;
                let link = self.shared.connector.link(Duration::ZERO).await?;
                let ch = link
                    .conn
                    .create_channel()
                    .await
                    .map_err(|e| error::map("open lag channel", &e))?;
                self.lag_channel = Some(ch.clone());
                ch
            }
        };
        let queue = channel
            .queue_declare(
                self.spec.name.as_str().into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error::map(&format!("inspect queue {}", self.spec.name), &e))?;
        Ok(u64::from(queue.message_count()))
    }

    /// Turns a broker delivery into a [`Delivery`], or settles and skips it.
    ///
    /// Not async on purpose: `next()` must be cancel-safe, so once a delivery is taken off
    /// the consumer stream nothing may be awaited before it is handed out (a skipped one is
    /// settled in the background).
    fn accept(&self, d: lapin::message::Delivery) -> Option<Delivery> {
        let message = match Message::decode(d.routing_key.as_str(), &d.data) {
            Ok(m) => m,
            Err(e) => {
                // Not ours to handle and never will be: retrying cannot fix the bytes. The
                // broker dead-letters it to the parking queue instead of dropping it.
                tracing::error!(queue = %self.spec.name, error = %e, "undecodable message parked");
                settle_in_background(d.acker, Settle::Park);
                return None;
            }
        };
        if !self.pattern.matches(&message.topic) {
            // AMQP's `#` also matches zero words, so `a.#` routes `a` here while `a.**` does
            // not match it: settle and skip.
            settle_in_background(d.acker, Settle::Skip);
            return None;
        }
        let id = message.id();
        let attempt = if self.spec.durable {
            // Quorum queues count returned deliveries (nacks with requeue and consumers
            // that went away) in `x-delivery-count`, absent on the first delivery.
            let count = topology::int_header(d.properties.headers().as_ref(), "x-delivery-count")
                .unwrap_or(0);
            u32::try_from(count.max(0))
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        } else {
            let nacks = self
                .attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .copied()
                .unwrap_or(0);
            // A redelivery we did not nack ourselves (another member's, or a dropped
            // channel's) still counts as a retry.
            (nacks + 1).max(if d.redelivered { 2 } else { 1 })
        };
        let tracked = Tracked {
            acker: d.acker,
            settled: Arc::default(),
            attempts: (!self.spec.durable).then(|| (self.attempts.clone(), id)),
        };
        if let Some(wait) = self.ack_wait {
            let mut pending = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
            // At most `prefetch` deliveries are unsettled at once; settled ones pile up
            // behind one that waits, so drop them now and then.
            if pending.len() > 2 * usize::from(self.prefetch) + 16 {
                pending.retain(|e| !e.tracked.is_done());
            }
            pending.push_back(Expiry {
                deadline: Instant::now() + wait,
                tracked: tracked.clone(),
            });
        }
        Some(Delivery::new(
            message,
            attempt,
            None,
            Box::new(RabbitAck { tracked }),
        ))
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if self.shared.connector.is_closed() {
                return Err(BusError::Closed);
            }
            if self.active.is_none() {
                self.establish().await?;
            }
            let Some(active) = self.active.as_mut() else {
                continue;
            };
            let generation = active.generation;
            let next = tokio::select! {
                d = active.consumer.next() => d,
                // Resolves once the connection this channel lives on is withdrawn.
                _ = active
                    .state
                    .wait_for(|s| !matches!(s, State::Up(l) if l.generation == generation)) => None,
            };
            match next {
                Some(Ok(d)) => match self.accept(d) {
                    Some(delivery) => return Ok(delivery),
                    None => continue,
                },
                Some(Err(e)) => {
                    self.active = None;
                    self.shared.connector.kick();
                    tracing::warn!(queue = %self.spec.name, error = %e, "consumer lost; resubscribing");
                    return Err(error::map("consume", &e));
                }
                None => {
                    // The connection went away, or the broker cancelled the consumer (its
                    // queue was deleted). Either way: subscribe again on the next call.
                    self.active = None;
                    self.shared.connector.kick();
                    if self.shared.connector.is_closed() {
                        return Err(BusError::Closed);
                    }
                    return Err(BusError::Unavailable(format!(
                        "rabbitmq consumer on {} stopped; resubscribing",
                        self.spec.name
                    )));
                }
            }
        }
    }

    /// The messages ready in the consumer's queue (shared by the group), from a passive
    /// `queue.declare` on a channel of its own. RabbitMQ counts only messages waiting for
    /// delivery there: those delivered to members and not yet acknowledged (at most
    /// `max_in_flight` per member) are not included. `None` (logged at debug) when the
    /// broker cannot be asked now or does not answer within a second.
    async fn lag(&mut self) -> Option<u64> {
        if self.shared.connector.is_closed() {
            return None;
        }
        match tokio::time::timeout(LAG_QUERY_TIMEOUT, self.ready_messages()).await {
            Ok(Ok(ready)) => Some(ready),
            Ok(Err(e)) => {
                tracing::debug!(queue = %self.spec.name, error = %e, "consumer lag not read");
                None
            }
            Err(_) => {
                // The channel may be stuck mid-request: open a fresh one next time.
                if let Some(ch) = self.lag_channel.take() {
                    close_lag_channel(ch);
                }
                tracing::debug!(queue = %self.spec.name, "consumer lag query timed out");
                None
            }
        }
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        if let Some(ch) = self.lag_channel.take() {
            close_lag_channel(ch);
        }
    }
}

/// Closes a lag channel in the background (if no runtime is left, the end of the
/// connection does).
fn close_lag_channel(channel: Channel) {
    if !channel.status().connected() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = channel.close(200, "lag channel closed".into()).await;
        });
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.channel.status().connected() {
            return;
        }
        // Closing the channel returns its unacknowledged deliveries to the queue at once
        // (to another group member, or for the next subscriber), and lets an auto-delete
        // queue go. Spawned, because drop cannot wait; if no runtime is left, the end of
        // the connection does the same.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            rt.spawn(async move {
                let _ = channel.close(200, "subscription dropped".into()).await;
            });
        }
    }
}

/// One delivery's settlement state, shared by its handle and the ack-wait task.
#[derive(Clone)]
struct Tracked {
    /// Clones share lapin's "used" switch: whoever settles first wins, later settles see
    /// `Ok(false)`.
    acker: Acker,
    /// Set as soon as `ack` or `nack` is called, before a delayed nack is sent, so the
    /// ack-wait task leaves a delivery being retried alone.
    settled: Arc<AtomicBool>,
    /// On a transient queue: the shared nack counts and this message's id.
    attempts: Option<(Attempts, EventId)>,
}

impl Tracked {
    /// Marks the delivery settled; false if it already was.
    fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::SeqCst)
    }

    fn is_done(&self) -> bool {
        self.settled.load(Ordering::SeqCst) || !self.acker.usable()
    }

    /// Counts a failed attempt on a transient queue (quorum queues count themselves).
    fn count_attempt(&self) {
        if let Some((attempts, id)) = &self.attempts {
            *attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(*id)
                .or_insert(0) += 1;
        }
    }

    fn forget_attempts(&self) {
        if let Some((attempts, id)) = &self.attempts {
            attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
    }
}

const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// Settles one delivery through its channel.
struct RabbitAck {
    tracked: Tracked,
}

#[async_trait]
impl AckHandle for RabbitAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let t = self.tracked;
        if !t.settle() {
            return Err(expired("ack"));
        }
        t.forget_attempts();
        settled(t.acker.ack(BasicAckOptions::default()).await, "ack")
    }

    /// RabbitMQ cannot requeue with a delay, so the delivery is held (unacknowledged, still
    /// counting against the prefetch window) for `delay` and then returned with
    /// `basic.nack(requeue)`. The broker puts it back in the queue and raises its delivery
    /// count. If the subscription or the connection goes away meanwhile, the broker
    /// requeues it anyway: the delay can only get shorter, never lose the message.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let t = self.tracked;
        if !t.settle() {
            return Err(expired("nack"));
        }
        t.count_attempt();
        if delay.is_zero() {
            return settled(t.acker.nack(REQUEUE).await, "nack");
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = t.acker.nack(REQUEUE).await {
                tracing::debug!(error = %e, "delayed nack failed; the broker requeues on channel close");
            }
        });
        Ok(())
    }
}

fn expired(what: &str) -> BusError {
    BusError::Unavailable(format!(
        "{what}: the delivery was already settled or its ack wait ran out; it will be \
         redelivered"
    ))
}

/// A delivery to requeue at `deadline` unless settled by then.
struct Expiry {
    deadline: Instant,
    tracked: Tracked,
}

/// Requeues deliveries left unsettled for longer than `ack_wait` (the contract's SHOULD;
/// RabbitMQ 3.10 has only a broker-wide consumer timeout, which closes the whole channel).
///
/// Deliveries are queued in time order with the same wait, so their deadlines are in order:
/// the task sleeps until the oldest one's deadline (or a whole `ack_wait` when none is
/// pending, since nothing queued later can expire sooner). Queuing wakes nobody, which
/// keeps the per-delivery cost to a lock and a push. The task ends once the subscription
/// is gone.
async fn expire_unsettled(pending: Weak<Mutex<VecDeque<Expiry>>>, ack_wait: Duration) {
    loop {
        let mut expired = Vec::new();
        let wake_at = {
            let Some(pending) = pending.upgrade() else {
                return;
            };
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            while let Some(front) = pending.front() {
                if front.tracked.is_done() {
                    pending.pop_front();
                } else if front.deadline <= now {
                    expired.extend(pending.pop_front());
                } else {
                    break;
                }
            }
            pending.front().map_or(now + ack_wait, |e| e.deadline)
        };
        for e in expired {
            if e.tracked.settle() {
                e.tracked.count_attempt();
                tracing::warn!("delivery unsettled past its ack wait; requeued");
                let _ = e.tracked.acker.nack(REQUEUE).await;
            }
        }
        tokio::time::sleep_until(wake_at).await;
    }
}

/// How a delivery that is not handed out is settled.
enum Settle {
    /// Acknowledged: not for this pattern.
    Skip,
    /// Rejected without requeue: the broker dead-letters it to the parking queue.
    Park,
}

fn settle_in_background(acker: Acker, how: Settle) {
    tokio::spawn(async move {
        let result = match how {
            Settle::Skip => acker.ack(BasicAckOptions::default()).await,
            Settle::Park => acker.reject(BasicRejectOptions { requeue: false }).await,
        };
        if let Err(e) = result {
            // The channel is gone; the broker redelivers and the next consumer decides again.
            tracing::debug!(error = %e, "settling a skipped delivery failed");
        }
    });
}

fn settled(result: Result<bool, lapin::Error>, what: &str) -> Result<(), BusError> {
    match result {
        Ok(true) => Ok(()),
        // lapin refuses to use an acker twice or after its channel failed.
        Ok(false) => Err(BusError::Unavailable(format!(
            "{what}: the channel was closed; the message will be redelivered"
        ))),
        Err(e) => Err(error::map(what, &e)),
    }
}
