//! The three bus consumers of the fulfillment service. Each is idempotent: delivery is at
//! least once.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::{BatchHandler, Handler, HandlerError, Message};
use meridian_core::{Envelope, OrderId, ShipmentId, TenantId};
use meridian_fulfillment::{Shipment, ShipmentStatus, all_shipped, plan_shipments};
use meridian_orders::{Order, OrderAction, OrderStatus};
use meridian_store::{PageRequest, Store, StoreError};

use crate::carrier::Carrier;
use crate::labels::LabelStore;

/// Plans shipments from order events (inbox consumer name).
pub const SHIPMENTS_CONSUMER: &str = "fulfillment-shipments";
/// Makes labels for new shipments.
pub const LABELS_CONSUMER: &str = "fulfillment-labels";
/// Fulfils orders whose shipments have all shipped.
pub const ORDERS_CONSUMER: &str = "fulfillment-orders";
/// Makes the labels a hold deferred, once it is released.
pub const RELEASES_CONSUMER: &str = "fulfillment-releases";

/// The envelope a message carries: the one place this service reads it from a message.
fn envelope(message: &Message) -> &Envelope {
    message.envelope()
}

fn data<T: serde::de::DeserializeOwned>(e: &Envelope, what: &str) -> Result<T, HandlerError> {
    let value: T = serde_json::from_value(e.data.clone())
        .map_err(|err| HandlerError::new(format!("event {} does not hold {what}: {err}", e.id)))?;
    Ok(value)
}

fn store_failed(what: &str, e: StoreError) -> HandlerError {
    HandlerError::new(format!("cannot {what}: {e}"))
}

/// `deployment.{d}.platform.oms.order.*`: creates one shipment per warehouse allocation of
/// each confirmed order (`order.created` of a confirmed order, `order.confirmed`), and
/// cancels the unshipped shipments of a canceled order. Redeliveries are dropped through
/// the inbox in the same store transaction as the writes.
pub struct ShipmentPlanner {
    store: Arc<dyn Store>,
    carrier: String,
}

impl std::fmt::Debug for ShipmentPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipmentPlanner")
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

impl ShipmentPlanner {
    /// New shipments go to `carrier`.
    pub fn new(store: Arc<dyn Store>, carrier: impl Into<String>) -> Self {
        Self {
            store,
            carrier: carrier.into(),
        }
    }
}

/// What an order event asks of the planner.
enum Step {
    /// Create these shipments (of a confirmed order).
    Create(Vec<meridian_fulfillment::Shipment>),
    /// Cancel the order's unshipped shipments.
    Cancel,
    /// Nothing (another event type, or an order not confirmed).
    Skip,
}

impl ShipmentPlanner {
    fn step(&self, e: &Envelope) -> Result<Step, HandlerError> {
        match e.ty.as_str() {
            "meridian.oms.order.created" | "meridian.oms.order.confirmed" => {
                let order: Order = data(e, "an order")?;
                if order.tenant_id != e.tenant {
                    return Err(HandlerError::new(format!(
                        "event {} is for tenant {} but its order belongs to {}",
                        e.id, e.tenant, order.tenant_id
                    )));
                }
                if order.status != OrderStatus::Confirmed {
                    return Ok(Step::Skip);
                }
                let planned = plan_shipments(&order, &self.carrier, meridian_core::now());
                Ok(Step::Create(planned))
            }
            "meridian.oms.order.canceled" => Ok(Step::Cancel),
            _ => Ok(Step::Skip),
        }
    }

    /// Creates the shipments of a run of order events in one store transaction; if the
    /// store refuses the run for one bad event, the events go one by one so that only that
    /// one fails.
    async fn create_run(
        &self,
        run: &[(usize, meridian_core::EventId, Vec<Shipment>)],
        results: &mut [Result<(), HandlerError>],
    ) {
        if run.is_empty() {
            return;
        }
        let batch: Vec<_> = run.iter().map(|(_, id, s)| (*id, s.clone())).collect();
        let fulfillment = self.store.fulfillment();
        match fulfillment
            .create_shipments_batch(SHIPMENTS_CONSUMER, &batch)
            .await
        {
            Ok(created) => {
                let n: usize = created.iter().map(Vec::len).sum();
                if n > 0 {
                    tracing::debug!(events = run.len(), shipments = n, "shipments created");
                }
            }
            Err(StoreError::Validation(_)) if run.len() > 1 => {
                for (i, id, shipments) in run {
                    results[*i] = fulfillment
                        .create_shipments(SHIPMENTS_CONSUMER, *id, shipments)
                        .await
                        .map(|_| ())
                        .map_err(|err| store_failed("create the shipments", err));
                }
            }
            Err(err) => {
                let err = store_failed("create the shipments", err);
                for (i, _, _) in run {
                    results[*i] = Err(err.clone());
                }
            }
        }
    }
}

/// A batch of order events: the shipments of consecutive creating events are written in
/// one store transaction; a cancel is applied in its place in the sequence, after the
/// creations before it, so one order's events keep their order.
#[async_trait]
impl BatchHandler for ShipmentPlanner {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let mut results: Vec<Result<(), HandlerError>> = vec![Ok(()); messages.len()];
        let mut run = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let e = envelope(message);
            match self.step(e) {
                Ok(Step::Create(planned)) => run.push((i, e.id, planned)),
                Ok(Step::Skip) => {}
                Ok(Step::Cancel) => {
                    self.create_run(&run, &mut results).await;
                    run.clear();
                    results[i] = self.handle(message).await;
                }
                Err(err) => results[i] = Err(err),
            }
        }
        self.create_run(&run, &mut results).await;
        results
    }
}

impl ShipmentPlanner {
    /// One event, in a transaction of its own.
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let e = envelope(message);
        match e.ty.as_str() {
            "meridian.oms.order.created" | "meridian.oms.order.confirmed" => {
                let Step::Create(planned) = self.step(e)? else {
                    return Ok(());
                };
                self.store
                    .fulfillment()
                    .create_shipments(SHIPMENTS_CONSUMER, e.id, &planned)
                    .await
                    .map_err(|err| store_failed("create the shipments", err))?;
                Ok(())
            }
            "meridian.oms.order.canceled" => {
                let order: OrderId = e.subject.parse().map_err(|_| {
                    HandlerError::new(format!("event {} has no order id subject", e.id))
                })?;
                let canceled = self
                    .store
                    .fulfillment()
                    .cancel_order_shipments(SHIPMENTS_CONSUMER, e.id, e.tenant, order)
                    .await
                    .map_err(|err| store_failed("cancel the shipments", err))?;
                if !canceled.is_empty() {
                    tracing::debug!(order.id = %order, shipments = canceled.len(), "shipments canceled");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `deployment.{d}.platform.fulfillment.shipment.created`: asks the shipment's carrier for
/// its label, stores the PDF through the [`LabelStore`], then records the tracking number
/// and the label's key (pending → label_created). The carrier is called with no database
/// transaction open. A shipment that is no longer pending (a redelivery, a replay, a
/// cancel) is left alone; a failure is retried with backoff and, after the last attempt,
/// dead-lettered with the carrier's reason, and a replay of the dead letter resumes here.
pub struct LabelMaker {
    store: Arc<dyn Store>,
    labels: Arc<dyn LabelStore>,
    carriers: HashMap<String, Arc<dyn Carrier>>,
    await_screening: bool,
}

impl std::fmt::Debug for LabelMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelMaker")
            .field("labels", &self.labels.name())
            .field("carriers", &self.carriers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where a shipment's label is kept.
pub fn label_key(shipment: &Shipment) -> String {
    format!("labels/{}/{}.pdf", shipment.tenant_id, shipment.id)
}

impl LabelMaker {
    pub fn new(
        store: Arc<dyn Store>,
        labels: Arc<dyn LabelStore>,
        carriers: Vec<Arc<dyn Carrier>>,
    ) -> Self {
        Self {
            store,
            labels,
            carriers: carriers
                .into_iter()
                .map(|c| (c.name().to_owned(), c))
                .collect(),
            await_screening: false,
        }
    }

    /// With `true`, a shipment's label also waits until a screening plugin has decided on
    /// its order (`order.screened`, `order.held` or `order.released` brings it back).
    pub fn await_screening(mut self, on: bool) -> Self {
        self.await_screening = on;
        self
    }

    /// Makes the label of one shipment if it is still pending.
    pub async fn make_label(
        &self,
        tenant: TenantId,
        id: meridian_core::ShipmentId,
    ) -> Result<(), HandlerError> {
        let fulfillment = self.store.fulfillment();
        let shipment = fulfillment
            .get_shipment(tenant, id)
            .await
            .map_err(|e| store_failed("read the shipment", e))?;
        if shipment.status != ShipmentStatus::Pending {
            return Ok(());
        }
        // A held order's shipments wait: the hold's release (`order.released`) brings them
        // back here through [`HoldReleases`].
        let holds = self
            .store
            .holds()
            .order_hold(tenant, shipment.order_id)
            .await
            .map_err(|e| store_failed("read the order's hold", e))?;
        if let Some(hold) = holds.hold {
            tracing::info!(shipment.id = %id, order.id = %shipment.order_id, hold.source = %hold.source, "order on hold: label deferred until the hold is released");
            return Ok(());
        }
        if self.await_screening && holds.screening.is_none() {
            tracing::debug!(shipment.id = %id, order.id = %shipment.order_id, "label deferred until the order is screened");
            return Ok(());
        }
        let carrier = self.carriers.get(&shipment.carrier).ok_or_else(|| {
            HandlerError::new(format!(
                "shipment {id} names carrier {:?}, which is not configured",
                shipment.carrier
            ))
        })?;
        let label = carrier
            .create_label(&shipment)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        let key = label_key(&shipment);
        self.labels
            .put(&key, label.pdf)
            .await
            .map_err(|e| HandlerError::new(format!("cannot store the label: {e}")))?;
        match fulfillment
            .record_label(tenant, id, &label.tracking_number, &key)
            .await
        {
            Ok(_) => {
                tracing::debug!(shipment.id = %id, "label created");
                Ok(())
            }
            // Held while the carrier was working: the release makes the label again.
            Err(StoreError::OrderOnHold(order)) => {
                tracing::info!(shipment.id = %id, order.id = %order, "order held while its label was made: deferred until the hold is released");
                Ok(())
            }
            // Canceled while the carrier was working: nothing more to do.
            Err(StoreError::IllegalTransition(reason)) => {
                tracing::info!(shipment.id = %id, %reason, "label made for a shipment that moved on");
                Ok(())
            }
            Err(e) => Err(store_failed("record the label", e)),
        }
    }
}

impl LabelMaker {
    /// The shipment a `shipment.created` event asks a label for; `None` for other events.
    fn wanted(message: &Message) -> Result<Option<(TenantId, ShipmentId)>, HandlerError> {
        let e = envelope(message);
        if e.ty != "meridian.fulfillment.shipment.created" {
            return Ok(None);
        }
        let shipment: Shipment = data(e, "a shipment")?;
        if shipment.tenant_id != e.tenant {
            return Err(HandlerError::new(format!(
                "event {} is for tenant {} but its shipment belongs to {}",
                e.id, e.tenant, shipment.tenant_id
            )));
        }
        Ok(Some((shipment.tenant_id, shipment.id)))
    }
}

#[async_trait]
impl Handler for LabelMaker {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        match Self::wanted(message)? {
            Some((tenant, id)) => self.make_label(tenant, id).await,
            None => Ok(()),
        }
    }
}

/// [`LabelMaker`] for a batch of deliveries: their labels are made concurrently (each
/// shipment's label is independent of the others', so the carrier calls, object writes
/// and store updates overlap instead of queueing one behind the other). A shipment named
/// twice in one batch (a redelivery) is made once and both deliveries get its result, so
/// two carrier calls never race to write one label.
pub struct LabelBatches(pub Arc<LabelMaker>);

#[async_trait]
impl BatchHandler for LabelBatches {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let mut results: Vec<Result<(), HandlerError>> = vec![Ok(()); messages.len()];
        let mut wanted: Vec<((TenantId, ShipmentId), Vec<usize>)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            match LabelMaker::wanted(message) {
                Ok(Some(shipment)) => match wanted.iter_mut().find(|(s, _)| *s == shipment) {
                    Some((_, at)) => at.push(i),
                    None => wanted.push((shipment, vec![i])),
                },
                Ok(None) => {}
                Err(e) => results[i] = Err(e),
            }
        }
        let made = futures::future::join_all(
            wanted
                .iter()
                .map(|((tenant, id), _)| self.0.make_label(*tenant, *id)),
        )
        .await;
        for ((_, at), result) in wanted.iter().zip(made) {
            for &i in at {
                results[i] = result.clone();
            }
        }
        results
    }
}

/// `deployment.{d}.platform.oms.order.*`, acting on `order.released` and `order.screened`:
/// a held order's hold was released (or, with screening awaited, the order was screened),
/// so its shipments that the label step left pending get their labels now. Driven by the
/// outbox event of the release, so no deferred label is lost and nothing polls; idempotent
/// like [`LabelMaker::make_label`], which checks the hold again (a shipment already
/// labelled, or an order still held, is left alone).
pub struct HoldReleases {
    labels: Arc<LabelMaker>,
}

impl std::fmt::Debug for HoldReleases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldReleases").finish_non_exhaustive()
    }
}

impl HoldReleases {
    pub fn new(labels: Arc<LabelMaker>) -> Self {
        Self { labels }
    }
}

#[async_trait]
impl Handler for HoldReleases {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let e = envelope(message);
        if e.ty != "meridian.oms.order.released" && e.ty != "meridian.oms.order.screened" {
            return Ok(());
        }
        let order: OrderId = e
            .subject
            .parse()
            .map_err(|_| HandlerError::new(format!("event {} has no order id subject", e.id)))?;
        let store = &self.labels.store;
        let mut page = PageRequest::first(PageRequest::MAX_LIMIT);
        loop {
            let p = store
                .fulfillment()
                .list_shipments(e.tenant, Some(order), page.clone())
                .await
                .map_err(|err| store_failed("list the order's shipments", err))?;
            for s in p
                .items
                .iter()
                .filter(|s| s.status == ShipmentStatus::Pending)
            {
                self.labels.make_label(s.tenant_id, s.id).await?;
            }
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(()),
            }
        }
    }
}

/// `deployment.{d}.platform.fulfillment.shipment.shipped`: when every shipment of the
/// order has shipped, fulfils the order through the core's transition (which commits its
/// stock). Driven by the outbox event of the shipped update, so a crash between the
/// shipment's commit and the order's does not lose the fulfilment: the event is delivered
/// again. Idempotent: an order already fulfilled is left as it is.
pub struct OrderFulfiller {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for OrderFulfiller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderFulfiller").finish_non_exhaustive()
    }
}

impl OrderFulfiller {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Fulfils the order if all its shipments have shipped.
    pub async fn fulfil_if_shipped(
        &self,
        tenant: TenantId,
        order: OrderId,
    ) -> Result<(), HandlerError> {
        let mut shipments = Vec::new();
        let mut page = PageRequest::first(PageRequest::MAX_LIMIT);
        loop {
            let p = self
                .store
                .fulfillment()
                .list_shipments(tenant, Some(order), page.clone())
                .await
                .map_err(|e| store_failed("list the order's shipments", e))?;
            shipments.extend(p.items);
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        if !all_shipped(&shipments) {
            return Ok(());
        }
        match self
            .store
            .transition_order(tenant, order, OrderAction::Fulfill)
            .await
        {
            Ok(_) => {
                tracing::info!(order.id = %order, "order fulfilled: every shipment has shipped");
                Ok(())
            }
            Err(StoreError::InvalidTransition { from, .. }) => {
                if from != OrderStatus::Fulfilled {
                    tracing::warn!(order.id = %order, %from, "every shipment shipped, but the order cannot be fulfilled");
                }
                Ok(())
            }
            Err(e) => Err(store_failed("fulfil the order", e)),
        }
    }
}

#[async_trait]
impl Handler for OrderFulfiller {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let e = envelope(message);
        if e.ty != "meridian.fulfillment.shipment.shipped" {
            return Ok(());
        }
        let shipment: Shipment = data(e, "a shipment")?;
        if shipment.tenant_id != e.tenant {
            return Err(HandlerError::new(format!(
                "event {} is for tenant {} but its shipment belongs to {}",
                e.id, e.tenant, shipment.tenant_id
            )));
        }
        self.fulfil_if_shipped(shipment.tenant_id, shipment.order_id)
            .await
    }
}
