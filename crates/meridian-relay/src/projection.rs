//! The order-events projection consumer.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetterSink};
use meridian_bus::{
    Bus, BusError, Handler, HandlerError, Message, RetryPolicy, StartAt, SubscribeOptions,
    TopicPattern,
};
use meridian_store::Store;
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

#[async_trait]
impl Handler for OrderEventsProjection {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let recorded = self
            .store
            .record_order_event(ORDER_EVENTS_CONSUMER, &message.envelope)
            .await
            .map_err(|e| HandlerError::new(format!("cannot record the order event: {e}")))?;
        if !recorded {
            tracing::debug!(event.id = %message.envelope.id, "order event already recorded");
        }
        Ok(())
    }
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::durable(ORDER_EVENTS_CONSUMER)
    }
}

/// Creates the durable consumer on the bus (subscribes once and lets go), so that a
/// backend that keeps messages only for consumers that exist (RabbitMQ queues) keeps
/// every event the relay publishes from now on, even before [`run_order_events`] has
/// subscribed. Call it before starting the relay.
pub async fn declare_order_events(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
    let pattern = order_events_pattern(deployment)?;
    let subscription = bus.subscribe(&pattern, options()).await?;
    drop(subscription);
    Ok(())
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
    consumer::run(
        bus,
        pattern,
        options(),
        Arc::new(OrderEventsProjection::new(store)),
        RetryPolicy::default(),
        dead_letters,
        shutdown,
    )
    .await
}
