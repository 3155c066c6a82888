//! The notification service: tenants hear about their orders and shipments.
//!
//! - [`consumer`]: a bus consumer of `platform.oms.order.*` and
//!   `platform.fulfillment.shipment.*` events that makes one notification per event and
//!   matching endpoint (and one email when the tenant has a template for it), in one store transaction per batch; the store's unique
//!   `(event id, channel, recipient)` makes a redelivered event a no-op.
//! - [`worker`]: the delivery worker. It leases due notifications, posts them signed
//!   ([`signing`], Standard Webhooks), records every attempt, and retries 5xx, 429 (after
//!   its `Retry-After`) and transport failures with exponential backoff and jitter
//!   ([`retry`]); any other status fails the delivery at once. An endpoint whose recent
//!   deliveries all failed is disabled.
//! - [`events`]: the tenant-facing event types, filters and the payload shape.
//! - [`templates`]: minijinja templates per event type and channel, checked when saved;
//!   [`email`]: a small SMTP client with provider failover for email notifications;
//!   [`sms`]: the HTTP SMS provider adapter.
//! - [`breaker`]: a circuit breaker per endpoint; [`limit`]: per-tenant send rates.
//!
//! What it does not own: persistence (the store's `NotifyStore` port) and HTTP routes
//! (`meridian-api`). It knows nothing about which store or bus backend runs underneath.

pub mod breaker;
pub mod consumer;
pub mod email;
pub mod events;
pub mod limit;
pub mod retry;
pub mod secrets;
pub mod signing;
pub mod sms;
pub mod templates;
pub mod webhook;
pub mod worker;

pub use consumer::{NotifyConsumer, declare, run_consumers};
pub use retry::RetryPolicy;
pub use secrets::SecretSealer;
pub use worker::{Wake, WorkerConfig, run_worker};
