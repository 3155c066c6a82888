//! The order-events projection consumer.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetterSink};
use meridian_bus::{
    BatchHandler, Bus, BusError, HandlerError, Message, RetryPolicy, StartAt, SubscribeOptions,
    TopicPattern,
};
use meridian_core::Envelope;
use meridian_store::{Store, StoreError};
use tokio::sync::watch;

/// The consumer name: its bus subscription and its inbox rows.
pub const ORDER_EVENTS_CONSUMER: &str = "order-events";

/// `deployment.{deployment}.platform.oms.order.*`: every order event of the deployment.
pub fn order_events_pattern(deployment: &str) -> Result<TopicPattern, BusError> {
    TopicPattern::parse(&format!("deployment.{deployment}.platform.oms.order.*"))
}

/// Records each order event in the store's projection through the inbox, so a redelivered
/// event is a no-op. A store failure fails the delivery (it is retried, then dead-lettered).
pub struct OrderEventsProjection {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for OrderEventsProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderEventsProjection")
            .field("store", &self.store.backend())
            .finish()
    }
}

impl OrderEventsProjection {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// The most events recorded in one store transaction.
pub const ORDER_EVENTS_BATCH: usize = 256;

#[async_trait]
impl BatchHandler for OrderEventsProjection {
    /// Records the whole batch in one store transaction, in delivery order (so each order's
    /// events stay in order). If the store refuses the batch because of one event (one that
    /// is not an order event), the events are recorded one by one, so only that one fails
    /// and goes on to its retries and dead letter.
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let events: Vec<Envelope> = messages.iter().map(|m| m.envelope().clone()).collect();
        match self
            .store
            .record_order_events(ORDER_EVENTS_CONSUMER, &events)
            .await
        {
            Ok(recorded) => {
                let repeats = recorded.iter().filter(|r| !**r).count();
                if repeats > 0 {
                    tracing::debug!(repeats, "order events already recorded");
                }
                vec![Ok(()); messages.len()]
            }
            Err(StoreError::Validation(_)) if events.len() > 1 => {
                let mut results = Vec::with_capacity(events.len());
                for event in &events {
                    results.push(self.record_one(event).await);
                }
                results
            }
            Err(e) => {
                let e = HandlerError::new(format!("cannot record the order events: {e}"));
                vec![Err(e); messages.len()]
            }
        }
    }
}

impl OrderEventsProjection {
    async fn record_one(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.store
            .record_order_event(ORDER_EVENTS_CONSUMER, event)
            .await
            .map(|_| ())
            .map_err(|e| HandlerError::new(format!("cannot record the order event: {e}")))
    }
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        start: StartAt::Earliest,
        // Enough for several full batches: one being recorded, others being acknowledged.
        max_in_flight: 4 * ORDER_EVENTS_BATCH,
        ..SubscribeOptions::durable(ORDER_EVENTS_CONSUMER)
    }
}

/// Declares the durable consumer ([`consumer::declare`]), so that every event the relay
/// publishes from now on is kept for it, even before [`run_order_events`] has subscribed.
/// Call it before starting the relay.
pub async fn declare_order_events(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
    consumer::declare(bus, &order_events_pattern(deployment)?, options()).await
}

/// Runs the projection consumer on `bus` until `shutdown` turns `true`: a durable consumer
/// named [`ORDER_EVENTS_CONSUMER`] that starts, the first time, from the earliest message
/// the bus keeps (so events the relay published before it subscribed are not missed on a
/// durable bus).
pub async fn run_order_events(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    deployment: &str,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let pattern = order_events_pattern(deployment)?;
    consumer::run_batched(
        bus,
        pattern,
        options(),
        Arc::new(OrderEventsProjection::new(store)),
        ORDER_EVENTS_BATCH,
        RetryPolicy::default(),
        dead_letters,
        shutdown,
    )
    .await
}
