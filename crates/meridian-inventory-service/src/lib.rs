//! The inventory service's bus consumer: `inventory-stock-snapshots` applies each
//! `platform.data.stock.snapshot` event (published by a warehouse feed plugin such as
//! `warehouse-sync`) to the stock level it names, as a stock take through the ledger.
//!
//! - The envelope's tenant decides whose stock changes; the data never names a tenant.
//! - The inbox row and the stock take commit in one store transaction
//!   ([`Store::apply_stock_snapshot`]), so a redelivered snapshot is applied once.
//! - A snapshot counted before the last one applied to the same level is ignored.
//! - A snapshot the store refuses (an unknown warehouse or SKU, a count below what is
//!   reserved, bad data) is dead-lettered at once with the reason: retrying cannot help,
//!   and an operator can replay it once the cause is fixed. Only a store that cannot be
//!   reached is retried.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetterSink, Handler, HandlerError};
use meridian_bus::{Bus, BusError, Message, RetryPolicy, StartAt, SubscribeOptions, TopicPattern};
use meridian_core::{Envelope, Sku, Timestamp, WarehouseCode};
use meridian_inventory::MAX_ON_HAND;
use meridian_store::{SnapshotOutcome, StockSnapshot, Store, StoreError};
use serde::Deserialize;
use tokio::sync::watch;

/// The consumer's name (inbox key and durable subscription).
pub const STOCK_SNAPSHOTS_CONSUMER: &str = "inventory-stock-snapshots";

/// The pattern it consumes, in `deployment`.
pub fn pattern(deployment: &str) -> Result<TopicPattern, BusError> {
    TopicPattern::parse(&format!(
        "deployment.{deployment}.platform.data.stock.snapshot"
    ))
}

/// The same options when declaring and when running, so a broker that stores a durable
/// consumer's settings (NATS) sees one configuration.
fn options() -> SubscribeOptions {
    SubscribeOptions {
        // Snapshots published before the first subscription are not missed on a bus that
        // keeps history.
        start: StartAt::Earliest,
        ..SubscribeOptions::durable(STOCK_SNAPSHOTS_CONSUMER)
    }
}

/// Declares the durable consumer ([`consumer::declare`]), so that no snapshot published
/// before it first runs is lost.
pub async fn declare(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
    consumer::declare(bus, &pattern(deployment)?, options()).await
}

/// Runs the consumer until `shutdown` turns `true`.
pub async fn run(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    deployment: &str,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    consumer::run(
        bus,
        pattern(deployment)?,
        options(),
        Arc::new(StockSnapshots::new(store)),
        RetryPolicy::default(),
        dead_letters,
        shutdown,
    )
    .await
}

/// A snapshot event's data. Other fields are ignored (a newer producer may add some); a
/// tenant named in the data is one of them: the envelope's tenant decides.
#[derive(Debug, Deserialize)]
struct SnapshotData {
    /// The warehouse's code (as in `/v1/warehouses` and `/v1/inventory`).
    warehouse: WarehouseCode,
    sku: Sku,
    on_hand: i64,
    counted_at: Timestamp,
}

/// Reads the stock snapshot an envelope carries; the reason if it carries none.
pub fn snapshot_of(e: &Envelope) -> Result<StockSnapshot, String> {
    let data: SnapshotData = serde_json::from_value(e.data.clone()).map_err(|err| {
        format!(
            "event {} is not a stock snapshot ({{warehouse, sku, on_hand, counted_at}}): {err}",
            e.id
        )
    })?;
    if !(0..=MAX_ON_HAND).contains(&data.on_hand) {
        return Err(format!(
            "event {}: on_hand {} must be 0 to {MAX_ON_HAND}",
            e.id, data.on_hand
        ));
    }
    Ok(StockSnapshot {
        event_id: e.id,
        tenant: e.tenant,
        warehouse: data.warehouse,
        sku: data.sku,
        on_hand: data.on_hand,
        counted_at: data.counted_at,
    })
}

/// The handler: one snapshot, one store transaction.
pub struct StockSnapshots {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for StockSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockSnapshots").finish_non_exhaustive()
    }
}

impl StockSnapshots {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Handler for StockSnapshots {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let e = message.envelope();
        let snapshot = snapshot_of(e).map_err(HandlerError::permanent)?;
        let what = || {
            format!(
                "stock snapshot {} (tenant {}, warehouse {}, sku {}, on_hand {})",
                e.id, e.tenant, snapshot.warehouse, snapshot.sku, snapshot.on_hand
            )
        };
        match self
            .store
            .apply_stock_snapshot(STOCK_SNAPSHOTS_CONSUMER, &snapshot)
            .await
        {
            Ok(SnapshotOutcome::Applied(level)) => {
                tracing::debug!(
                    tenant.id = %e.tenant,
                    warehouse = %snapshot.warehouse,
                    sku = %snapshot.sku,
                    on_hand = level.on_hand,
                    reserved = level.reserved,
                    "stock snapshot applied"
                );
                Ok(())
            }
            Ok(SnapshotOutcome::Duplicate) => Ok(()),
            Ok(SnapshotOutcome::Stale { last_counted_at }) => {
                tracing::info!(
                    event.id = %e.id,
                    tenant.id = %e.tenant,
                    warehouse = %snapshot.warehouse,
                    sku = %snapshot.sku,
                    counted_at = %snapshot.counted_at,
                    %last_counted_at,
                    "stock snapshot older than the last one applied; ignored"
                );
                Ok(())
            }
            Err(err @ (StoreError::Unavailable(_) | StoreError::Internal(_))) => {
                Err(HandlerError::new(format!("cannot apply {}: {err}", what())))
            }
            Err(StoreError::StockConflict(reason)) => Err(HandlerError::permanent(format!(
                "{} refused: {reason}; the count is not applied (no overselling)",
                what()
            ))),
            Err(err) => Err(HandlerError::permanent(format!(
                "{} refused: {err}",
                what()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::TenantId;
    use serde_json::json;

    fn envelope(data: serde_json::Value) -> Envelope {
        Envelope::new(
            "/meridian/d/plugins/warehouse-sync",
            "meridian.data.stock.snapshot",
            TenantId::new(),
            "A-1",
            meridian_core::now(),
            data,
        )
    }

    #[test]
    fn snapshots_are_read_from_the_event_with_the_envelope_tenant() {
        let e = envelope(json!({"warehouse": "WH1", "sku": "A-1", "on_hand": 7,
                                "counted_at": "2026-11-21T10:00:00Z"}));
        let s = snapshot_of(&e).unwrap();
        assert_eq!((s.tenant, s.event_id), (e.tenant, e.id));
        assert_eq!(
            (s.warehouse.as_str(), s.sku.as_str(), s.on_hand),
            ("WH1", "A-1", 7)
        );
        assert_eq!(s.counted_at.to_rfc3339(), "2026-11-21T10:00:00+00:00");
        // A tenant in the data changes nothing: the envelope's tenant decides.
        let mut other = e.clone();
        other.data["tenant"] = json!(TenantId::new());
        assert_eq!(snapshot_of(&other).unwrap().tenant, e.tenant);
    }

    #[test]
    fn bad_snapshots_say_what_is_wrong() {
        for (data, want) in [
            (
                json!({"warehouse": "WH1", "sku": "A-1", "on_hand": -1,
                    "counted_at": "2026-11-21T10:00:00Z"}),
                "on_hand -1 must be 0 to",
            ),
            (
                json!({"warehouse": "WH 1", "sku": "A-1", "on_hand": 1,
                    "counted_at": "2026-11-21T10:00:00Z"}),
                "warehouse code may contain only",
            ),
            (
                json!({"warehouse": "WH1", "sku": "A-1", "on_hand": 1}),
                "missing field `counted_at`",
            ),
            (
                json!({"warehouse": "WH1", "sku": "A-1", "on_hand": 1.5,
                    "counted_at": "2026-11-21T10:00:00Z"}),
                "not a stock snapshot",
            ),
        ] {
            let err = snapshot_of(&envelope(data.clone())).unwrap_err();
            assert!(err.contains(want), "{data}: {err}");
        }
    }
}
