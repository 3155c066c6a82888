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
//!   the warning in the log names the row.
//! - **One active relay per database.** [`Relay::run`] first takes the store's relay lock
//!   ([`Store::try_lock_relay`]: an exclusive lock on `<database>.relay.lock` on SQLite, a
//!   session-level `pg_try_advisory_lock` on a connection of its own on PostgreSQL). With
//!   several `meridian serve` processes on one database, one publishes and the others
//!   stand by, trying again every `standby_interval` (1 s): when the active one stops or
//!   dies (its file closed, its connection gone), another takes over within about that.
//!   A relay that finds its lock lost (checked every `lock_check_interval`) stops
//!   publishing and stands by; a round already under way may still publish rows the new
//!   relay publishes too, which consumers drop by event id.
//! - [`OrderEventsProjection`] is a [`BatchHandler`](meridian_bus::BatchHandler) for
//!   `deployment.{id}.platform.oms.order.*` that records order events in the store's
//!   order-events projection through the inbox, up to [`ORDER_EVENTS_BATCH`] in one store
//!   transaction ([`Store::record_order_events`]), so that a redelivered event changes
//!   nothing and one commit serves many events. [`run_order_events`] runs it with
//!   [`meridian_bus::consumer::run_batched`] (several deliveries in flight; per-message
//!   retries, then a dead letter).
//! - [`FraudDecisions`] (consumer [`FRAUD_DECISIONS_CONSUMER`], `orders-fraud-decisions`,
//!   on `platform.oms.fraud.decision`) applies screening plugins' hold and approve
//!   decisions to orders through [`HoldStore::apply_screening`], in one transaction with
//!   its inbox row; a decision whose tenant does not own the order, or that is not a
//!   decision, is dead-lettered with the reason and changes nothing.
//! - [`StoreDeadLetterSink`] records dead letters in the store, where the API and the CLI
//!   list them, and [`replay_dead_letter`] publishes one's original message again.
//!
//! Metrics (labelled by topic, which is bounded by the deployment's set of event types, and
//! never by tenant): `meridian_relay_publish_failures_total`,
//! `meridian_relay_publish_duration_seconds` (one batch) and `meridian_relay_lag_seconds`
//! (from the event's time to the bus accepting it). Unlabelled: [`OUTBOX_LAG`]
//! (`meridian_relay_outbox_lag_seconds`, the same lag for every row in one histogram: from
//! the outbox row's creation, whose `created_at` is the envelope's time, to the bus
//! accepting it), [`OUTBOX_UNSENT`] (`meridian_relay_outbox_unsent`, the unsent rows,
//! counted each second by the active relay) and [`RELAY_ACTIVE`] (`meridian_relay_active`,
//! 1 in the process whose relay holds the lock). Publish counts come from
//! [`meridian_bus::MeteredBus`], consumer counts from [`meridian_bus::consumer::run`].
//!
//! [`Store::record_order_events`]: meridian_store::Store::record_order_events
//! [`Store::try_lock_relay`]: meridian_store::Store::try_lock_relay
//! [`HoldStore::apply_screening`]: meridian_store::HoldStore::apply_screening

mod dead_letters;
mod projection;
mod relay;
mod screening;

pub use dead_letters::{ReplayError, StoreDeadLetterSink, replay_dead_letter, to_record};
pub use projection::{
    ORDER_EVENTS_BATCH, ORDER_EVENTS_CONSUMER, OrderEventsProjection, declare_order_events,
    order_events_pattern, run_order_events,
};
pub use relay::{OUTBOX_LAG, OUTBOX_UNSENT, RELAY_ACTIVE, Relay, RelayConfig, RelayError};
pub use screening::{
    FRAUD_DECISIONS, FRAUD_DECISIONS_CONSUMER, FraudDecisions, declare_fraud_decisions,
    fraud_decisions_pattern, run_fraud_decisions, screen_name,
};
