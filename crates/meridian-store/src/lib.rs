//! The store port and its backends.
//!
//! [`Store`] is the one contract every backend implements: tenancy and API keys, catalog,
//! warehouses, stock with its ledger, orders and the outbox. Two backends live here:
//! [`sqlite`] (the embedded default: WAL, one writer thread with group commit, a pool of
//! readers) and [`postgres`] (feature `postgres`). Both pass the conformance suite in
//! `tests/it/conformance.rs`.
//!
//! Order placement is batched: requests queue for the backend's writer, which takes a batch,
//! loads and locks the rows it touches, runs [`meridian_orders::plan_batch`] and writes the
//! result in one transaction. A caller is answered only after that transaction is durable.

mod cursor;
mod error;
mod fulfillment;
mod holds;
mod keys;
pub mod notify;
mod plugins;
mod port;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

pub use cursor::{decode_cursor, encode_cursor};
pub use error::StoreError;
pub use fulfillment::FulfillmentStore;
pub use holds::{
    API_SOURCE, HoldChange, HoldStore, MAX_REASON_CHARS, OrderHold, OrderHoldState, Screening,
    ScreeningDecision, ScreeningOutcome,
};
pub use keys::{ApiKeySecret, hash_secret, parse_api_key};
pub use notify::NotifyStore;
pub use plugins::{
    GrantDirection, GrantState, NewPlugin, PluginAction, PluginAuditEntry, PluginGrant,
    PluginRecord, PluginStore,
};
pub use port::*;

use std::sync::Arc;

/// Which backend to open, from configuration.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Sqlite(sqlite::SqliteConfig),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgConfig),
}

/// Opens the configured backend and brings its schema up to date.
pub async fn open(
    config: StoreConfig,
    events: meridian_core::EventSource,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite(c) => Arc::new(sqlite::SqliteStore::open(c, events).await?),
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(c) => Arc::new(postgres::PgStore::open(c, events).await?),
    })
}

/// Opens the configured backend like [`open`], and hands out its plugin registry too (the
/// same database and connections).
pub async fn open_with_plugins(
    config: StoreConfig,
    events: meridian_core::EventSource,
) -> Result<(Arc<dyn Store>, Arc<dyn PluginStore>), StoreError> {
    Ok(match config {
        StoreConfig::Sqlite(c) => {
            let s = Arc::new(sqlite::SqliteStore::open(c, events).await?);
            (s.clone(), s)
        }
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(c) => {
            let s = Arc::new(postgres::PgStore::open(c, events).await?);
            (s.clone(), s)
        }
    })
}

/// The order id an order event is about: its `subject`. Anything else is not an order
/// event, and retrying will not change that.
pub(crate) fn order_id_of(
    event: &meridian_core::Envelope,
) -> Result<meridian_core::OrderId, StoreError> {
    event.subject.parse().map_err(|_| {
        StoreError::Validation(meridian_core::ValidationErrors::single(
            "subject",
            format!(
                "event {} has subject {:?}, which is not an order id",
                event.id, event.subject
            ),
        ))
    })
}

/// The outbox event of a revocation: `platform.auth.revoked`, whose data is the revocation,
/// so that every instance can apply it as soon as the bus delivers it.
pub(crate) fn revocation_event(
    events: &meridian_core::EventSource,
    r: &Revocation,
) -> meridian_core::OutboxEvent {
    let data = serde_json::to_value(r).expect("a revocation serializes");
    events.event(
        "auth",
        "revoked",
        r.tenant_id,
        r.subject.clone(),
        data,
        r.at,
    )
}

/// Emails are compared lowercase and trimmed; anything without one `@` between non-empty
/// parts, or longer than 254 characters, is refused.
pub fn normalize_email(email: &str) -> Result<String, StoreError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && !e.chars().any(char::is_whitespace)
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if valid {
        Ok(e)
    } else {
        Err(StoreError::Validation(
            meridian_core::ValidationErrors::single("email", "must be an email address"),
        ))
    }
}

/// A plan name: 1 to 50 characters of `a-z`, `0-9`, `_` and `-`.
pub(crate) fn check_plan(plan: &str) -> Result<String, StoreError> {
    let ok = !plan.is_empty()
        && plan.len() <= 50
        && plan
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(plan.to_owned())
    } else {
        Err(StoreError::Validation(
            meridian_core::ValidationErrors::single(
                "plan",
                "must be 1 to 50 characters of a-z, 0-9, _ and -",
            ),
        ))
    }
}
