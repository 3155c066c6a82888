//! Moving events from the store to the bus, and the first consumer that reads them back.
//!
//! - [`Relay`] is the outbox relay (DESIGN.md §4.2 and §4.7). It reads the outbox rows not
//!   yet sent, oldest first, publishes them, and marks sent the ones the bus accepted, up to
//!   the first failure, so that rows leave in `seq` (commit) order. While the bus is down it
//!   backs off and tries again; orders keep committing meanwhile and the relay catches up
//!   when the bus returns. A crash between publishing and marking publishes those rows again
//!   on restart: delivery is at least once, and consumers deduplicate by event id.
//!   A row the bus refuses for good (a payload over the limit) is retried like an outage,
//!   so it holds back the rows behind it: order is kept and nothing is skipped silently;
//!   the warning in the log names the row. Several processes may relay the same database
//!   (each publishes every row at least once); one is enough.
//! - [`OrderEventsProjection`] is a [`Handler`](meridian_bus::Handler) for
//!   `deployment.{id}.platform.oms.order.*` that records each order event in the store's
//!   order-events projection through the inbox ([`Store::record_order_event`]), so that a
//!   redelivered event changes nothing. [`run_order_events`] runs it with
//!   [`meridian_bus::consumer::run`] (retries, then a dead letter).
//! - [`StoreDeadLetterSink`] records dead letters in the store, where the API and the CLI
//!   list them, and [`replay_dead_letter`] publishes one's original message again.
//!
//! Metrics (labelled by topic, which is bounded by the deployment's set of event types, and
//! never by tenant): `meridian_relay_publish_failures_total`,
//! `meridian_relay_publish_duration_seconds` (one batch) and `meridian_relay_lag_seconds`
//! (from the event's time to the bus accepting it). Publish counts come from
//! [`meridian_bus::MeteredBus`], consumer counts from [`meridian_bus::consumer::run`].
//!
//! [`Store::record_order_event`]: meridian_store::Store::record_order_event

mod dead_letters;
mod projection;
mod relay;

pub use dead_letters::{ReplayError, StoreDeadLetterSink, replay_dead_letter, to_record};
pub use projection::{
    ORDER_EVENTS_CONSUMER, OrderEventsProjection, declare_order_events, order_events_pattern,
    run_order_events,
};
pub use relay::{Relay, RelayConfig, RelayError};
