//! Meridian's shared vocabulary: typed ids, SKUs, quantities, money in minor units, the
//! CloudEvents envelope, topic names and the stable error codes.
//!
//! This crate does no IO. Everything here is parsed once at the edge and trusted afterwards.

mod envelope;
mod error;
mod ids;
mod money;
mod sku;

pub use envelope::{Envelope, EventSource, OutboxEvent, Topic, valid_segment};
pub use error::{ErrorCode, FieldError, ValidationErrors};
pub use ids::{
    ApiKeyId, EventId, LedgerEntryId, OrderId, ProductId, ShipmentId, TenantId, UserId, WarehouseId,
};
pub use money::{Currency, Money};
pub use sku::{MAX_ORDER_QUANTITY, Quantity, Sku, WarehouseCode};

/// Timestamps are UTC everywhere.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The current time, truncated to microseconds so that it survives a round trip through
/// PostgreSQL and SQLite unchanged.
pub fn now() -> Timestamp {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
