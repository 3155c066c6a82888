//! The fulfillment side of the store: shipments, with their outbox events.
//!
//! [`FulfillmentStore`] is a port of its own beside [`Store`](crate::Store); both backends
//! implement it and [`Store::fulfillment`](crate::Store::fulfillment) hands it out, so that
//! whoever holds the store holds this too. Its conformance cases are in
//! `tests/it/fulfillment.rs`.

use async_trait::async_trait;
use meridian_core::{EventId, OrderId, ShipmentId, TenantId};
use meridian_fulfillment::{IllegalShipmentTransition, Shipment, ShipmentStatus};

use crate::{Page, PageRequest, Result, StoreError};

/// The store contract for shipments. Every method that takes a [`TenantId`] sees only that
/// tenant's shipments: another tenant's is `NotFound`. Every state change writes its
/// `platform.fulfillment.shipment.*` outbox event in the same transaction, and returns only
/// once that transaction is durable.
#[async_trait]
pub trait FulfillmentStore: Send + Sync {
    /// Creates the shipments planned from one order event, idempotently. In one
    /// transaction: inserts `(consumer, event_id)` into the inbox, and, if the event is new
    /// and the order is still confirmed, inserts each shipment its `(tenant, order,
    /// warehouse)` does not already have, with one `shipment.created` event each. Returns
    /// the shipments created now: none for a redelivered event, an order that is no longer
    /// confirmed, or an order whose shipments exist (from another event about it).
    async fn create_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        shipments: &[Shipment],
    ) -> Result<Vec<Shipment>>;

    /// [`FulfillmentStore::create_shipments`] for several order events, in order, as ONE
    /// transaction where the backend can (SQLite: one job on the writer, one fsync): one
    /// result per event, the shipments it created. Fails as a whole, writing nothing, if
    /// any event's shipments are not pending shipments of one order. The default checks
    /// every event first, then runs them one by one (a store failure midway leaves the
    /// earlier ones written, which a redelivery then skips through the inbox).
    async fn create_shipments_batch(
        &self,
        consumer: &str,
        events: &[(EventId, Vec<Shipment>)],
    ) -> Result<Vec<Vec<Shipment>>> {
        for (_, shipments) in events {
            one_order(shipments)?;
        }
        let mut out = Vec::with_capacity(events.len());
        for (event, shipments) in events {
            out.push(self.create_shipments(consumer, *event, shipments).await?);
        }
        Ok(out)
    }

    async fn get_shipment(&self, tenant: TenantId, id: ShipmentId) -> Result<Shipment>;

    /// The shipment `carrier` gave `tracking_number`, in any tenant: a carrier's signed
    /// webhook names only its tracking number. `NotFound` if there is none.
    async fn shipment_by_tracking(&self, carrier: &str, tracking_number: &str) -> Result<Shipment>;

    /// The tenant's shipments, newest first, optionally only one order's.
    async fn list_shipments(
        &self,
        tenant: TenantId,
        order: Option<OrderId>,
        page: PageRequest,
    ) -> Result<Page<Shipment>>;

    /// Records the carrier's label: a pending shipment gets its tracking number and label
    /// key and becomes `label_created` (with its event). A shipment that already has a
    /// label is returned unchanged (a retried label step). `IllegalTransition` for a
    /// canceled shipment; `OrderOnHold`, writing nothing, while its order is held.
    async fn record_label(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        tracking_number: &str,
        label_key: &str,
    ) -> Result<Shipment>;

    /// Moves a shipment to `status` (shipped, delivered, exception or canceled) through the
    /// state machine, with the carrier's `detail`, and writes the status's event. A repeat
    /// of the current status changes nothing and writes nothing. `IllegalTransition` when
    /// the state machine forbids it; `OrderOnHold` for `label_created → shipped` while the
    /// shipment's order is held.
    async fn update_shipment_status(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        status: ShipmentStatus,
        detail: Option<String>,
    ) -> Result<Shipment>;

    /// Cancels every shipment of the order that has not shipped (pending or
    /// label_created), idempotently by `(consumer, event_id)` in the inbox, in one
    /// transaction with a `shipment.canceled` event each. Returns the shipments canceled
    /// now; shipments already on their way are left alone.
    async fn cancel_order_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        tenant: TenantId,
        order: OrderId,
    ) -> Result<Vec<Shipment>>;
}

impl From<IllegalShipmentTransition> for StoreError {
    fn from(e: IllegalShipmentTransition) -> Self {
        StoreError::IllegalTransition(e.to_string())
    }
}

/// Whether moving a shipment from `from` to `to` sends it out of the warehouse: the step a
/// hold on its order forbids (a shipment already on its way is left to the carrier).
pub(crate) fn ships_from_warehouse(from: ShipmentStatus, to: ShipmentStatus) -> bool {
    to == ShipmentStatus::Shipped && from == ShipmentStatus::LabelCreated
}

/// The shipments of `planned` that belong to one order of one tenant, or a validation
/// error: one call creates the shipments of one order.
pub(crate) fn one_order(planned: &[Shipment]) -> Result<Option<(TenantId, OrderId)>> {
    let Some(first) = planned.first() else {
        return Ok(None);
    };
    let key = (first.tenant_id, first.order_id);
    if planned
        .iter()
        .any(|s| (s.tenant_id, s.order_id) != key || s.status != ShipmentStatus::Pending)
    {
        return Err(StoreError::Validation(
            meridian_core::ValidationErrors::single(
                "shipments",
                "must be pending shipments of one order",
            ),
        ));
    }
    Ok(Some(key))
}
