//! The [`FulfillmentStore`](meridian_store::FulfillmentStore) contract, as every backend
//! must keep it: shipments created once per order event and per warehouse, state changes
//! through the state machine with their outbox events, cancellation, tenant isolation.
//!
//! A backend runs every case with `crate::fulfillment::fulfillment_suite!(factory)`, where
//! `factory` is the same one the store conformance suite uses.

use std::sync::Arc;

use meridian_catalog::{Attributes, NewProduct};
use meridian_core::{EventId, Money, Quantity, TenantId};
use meridian_fulfillment::{Shipment, ShipmentStatus, plan_shipments};
use meridian_inventory::NewWarehouse;
use meridian_orders::{
    AllocationStrategy, Order, OrderAction, OrderLineRequest, OrderRequest, PlaceOrder,
};
use meridian_store::{OutboxRecord, PageRequest, Store, StoreError};

macro_rules! fulfillment_suite {
    ($factory:path) => {
        $crate::fulfillment::fulfillment_suite!(@cases $factory;
            shipments_are_created_once_per_event_and_per_warehouse,
            a_batch_of_order_events_creates_each_order_s_shipments_once,
            shipments_move_through_the_state_machine_with_their_events,
            shipments_of_another_tenant_are_not_found,
            canceling_an_order_cancels_its_unshipped_shipments,
            no_shipments_for_an_order_that_is_no_longer_confirmed,
        );
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        mod fulfillment_conformance {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test_store = $factory().await;
                    $crate::fulfillment::$case(::std::sync::Arc::clone(&test_store.store)).await;
                    drop(test_store);
                }
            )+
        }
    };
}
pub(crate) use fulfillment_suite;

const CONSUMER: &str = "fulfillment-shipments";

/// A tenant with one unit of SKU-1 in each of W1 and W2, and a confirmed order of two units
/// split over both.
pub(crate) async fn split_order(store: &dyn Store) -> Order {
    let t = store.create_tenant("fulfil").await.unwrap().id;
    store
        .create_product(
            t,
            NewProduct {
                sku: "SKU-1".parse().unwrap(),
                name: "Product 1".into(),
                description: None,
                price: Money::new(100, "EUR".parse().unwrap()),
                attributes: Attributes::new(),
            },
        )
        .await
        .unwrap();
    for (i, code) in ["W1", "W2"].into_iter().enumerate() {
        store
            .create_warehouse(
                t,
                NewWarehouse {
                    code: code.parse().unwrap(),
                    name: code.into(),
                    priority: i as i32,
                },
            )
            .await
            .unwrap();
        store
            .set_stock(
                t,
                &code.parse().unwrap(),
                &"SKU-1".parse().unwrap(),
                1,
                "seed",
            )
            .await
            .unwrap();
    }
    let line = OrderLineRequest {
        sku: "SKU-1".parse().unwrap(),
        quantity: Quantity::new(2).unwrap(),
    };
    store
        .place_order(PlaceOrder {
            tenant_id: t,
            request: OrderRequest::new(vec![line], None, None, AllocationStrategy::Split).unwrap(),
            idempotency_key: None,
            request_hash: "split".into(),
        })
        .await
        .unwrap()
}

async fn created(store: &dyn Store, order: &Order) -> Vec<Shipment> {
    let planned = plan_shipments(order, "manual", meridian_core::now());
    store
        .fulfillment()
        .create_shipments(CONSUMER, EventId::new(), &planned)
        .await
        .unwrap()
}

async fn shipment_events(store: &dyn Store) -> Vec<OutboxRecord> {
    store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.topic.as_str().contains(".platform.fulfillment."))
        .collect()
}

fn event_types(records: &[OutboxRecord]) -> Vec<&str> {
    records.iter().map(|r| r.envelope.ty.as_str()).collect()
}

pub async fn shipments_are_created_once_per_event_and_per_warehouse(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let planned = plan_shipments(&order, "manual", meridian_core::now());
    assert_eq!(planned.len(), 2);
    let event = EventId::new();
    let f = store.fulfillment();
    let first = f.create_shipments(CONSUMER, event, &planned).await.unwrap();
    assert_eq!(first, planned);
    // The same event again: the inbox drops it.
    assert!(
        f.create_shipments(CONSUMER, event, &planned)
            .await
            .unwrap()
            .is_empty()
    );
    // Another event about the same order (say `order.confirmed` after `order.created`):
    // the order already has its shipments.
    let again = plan_shipments(&order, "manual", meridian_core::now());
    assert!(
        f.create_shipments(CONSUMER, EventId::new(), &again)
            .await
            .unwrap()
            .is_empty()
    );

    let listed = f
        .list_shipments(order.tenant_id, Some(order.id), PageRequest::default())
        .await
        .unwrap();
    let mut ids: Vec<_> = listed.items.iter().map(|s| s.id).collect();
    ids.sort();
    let mut want: Vec<_> = planned.iter().map(|s| s.id).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        f.get_shipment(order.tenant_id, planned[1].id)
            .await
            .unwrap(),
        planned[1]
    );

    // One `shipment.created` event per shipment, with the shipment as data.
    let events = shipment_events(&*store).await;
    assert_eq!(
        event_types(&events),
        ["meridian.fulfillment.shipment.created"; 2]
    );
    for (record, s) in events.iter().zip(&planned) {
        assert_eq!(
            record.topic.as_str(),
            "deployment.test.platform.fulfillment.shipment.created"
        );
        assert_eq!(record.envelope.tenant, order.tenant_id);
        assert_eq!(record.envelope.subject, s.id.to_string());
        let data: Shipment = serde_json::from_value(record.envelope.data.clone()).unwrap();
        assert_eq!(&data, s);
    }

    // Pages, newest first.
    let page = f
        .list_shipments(order.tenant_id, None, PageRequest::first(1))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = f
        .list_shipments(
            order.tenant_id,
            None,
            PageRequest {
                limit: 1,
                cursor: page.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.items[0].id < page.items[0].id);
}

pub async fn a_batch_of_order_events_creates_each_order_s_shipments_once(store: Arc<dyn Store>) {
    let a = split_order(&*store).await;
    let b = split_order(&*store).await;
    let now = meridian_core::now();
    let (ea, eb) = (EventId::new(), EventId::new());
    let batch = vec![
        (ea, plan_shipments(&a, "manual", now)),
        (eb, plan_shipments(&b, "manual", now)),
        // A second copy of the first event in the same batch, and an empty plan.
        (ea, plan_shipments(&a, "manual", now)),
        (EventId::new(), Vec::new()),
    ];
    let f = store.fulfillment();
    let created = f.create_shipments_batch(CONSUMER, &batch).await.unwrap();
    let counts: Vec<usize> = created.iter().map(Vec::len).collect();
    assert_eq!(counts, [2, 2, 0, 0]);
    assert_eq!(created[0], batch[0].1);
    // Redelivered: nothing new.
    let again = f
        .create_shipments_batch(CONSUMER, &batch[..2])
        .await
        .unwrap();
    assert!(again.iter().all(Vec::is_empty));
    assert_eq!(shipment_events(&*store).await.len(), 4);

    // One bad event (shipments of two orders) refuses the whole batch, writing nothing.
    let c = split_order(&*store).await;
    let mut mixed = plan_shipments(&c, "manual", now);
    mixed.extend(plan_shipments(&a, "manual", now));
    let ec = EventId::new();
    let bad = vec![
        (ec, plan_shipments(&c, "manual", now)),
        (EventId::new(), mixed),
    ];
    let r = f.create_shipments_batch(CONSUMER, &bad).await;
    assert!(matches!(r, Err(StoreError::Validation(_))), "{r:?}");
    let listed = f
        .list_shipments(c.tenant_id, Some(c.id), PageRequest::default())
        .await
        .unwrap();
    assert!(listed.items.is_empty());
    // The good event alone still goes through: its inbox row was not kept.
    let ok = f.create_shipments_batch(CONSUMER, &bad[..1]).await.unwrap();
    assert_eq!(ok[0].len(), 2);
}

pub async fn shipments_move_through_the_state_machine_with_their_events(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let s = created(&*store, &order).await.remove(0);
    let (t, f) = (order.tenant_id, store.fulfillment());

    let labeled = f
        .record_label(t, s.id, "MRD1", "labels/a.pdf")
        .await
        .unwrap();
    assert_eq!(labeled.status, ShipmentStatus::LabelCreated);
    assert_eq!(labeled.tracking_number.as_deref(), Some("MRD1"));
    assert_eq!(labeled.label_key.as_deref(), Some("labels/a.pdf"));
    // A retried label step changes nothing.
    assert_eq!(
        f.record_label(t, s.id, "MRD1", "labels/a.pdf")
            .await
            .unwrap(),
        labeled
    );
    // Carriers' webhooks find it by tracking number, whatever the tenant.
    assert_eq!(
        f.shipment_by_tracking("manual", "MRD1").await.unwrap(),
        labeled
    );
    for (carrier, tracking) in [("manual", "MRD2"), ("other", "MRD1")] {
        let r = f.shipment_by_tracking(carrier, tracking).await;
        assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    }

    let err = f
        .update_shipment_status(t, s.id, ShipmentStatus::Delivered, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition(_)), "{err:?}");
    assert_eq!(err.code(), meridian_core::ErrorCode::InvalidTransition);

    let shipped = f
        .update_shipment_status(t, s.id, ShipmentStatus::Shipped, None)
        .await
        .unwrap();
    assert_eq!(shipped.status, ShipmentStatus::Shipped);
    // A repeated tracking update is a no-op.
    assert_eq!(
        f.update_shipment_status(t, s.id, ShipmentStatus::Shipped, None)
            .await
            .unwrap(),
        shipped
    );
    let detail = Some("address not found".to_owned());
    let ex = f
        .update_shipment_status(t, s.id, ShipmentStatus::Exception, detail)
        .await
        .unwrap();
    assert_eq!(ex.detail.as_deref(), Some("address not found"));
    f.update_shipment_status(t, s.id, ShipmentStatus::Delivered, None)
        .await
        .unwrap();
    assert_eq!(
        f.get_shipment(t, s.id).await.unwrap().status,
        ShipmentStatus::Delivered
    );

    let events = shipment_events(&*store).await;
    let mine: Vec<_> = events
        .iter()
        .filter(|r| r.envelope.subject == s.id.to_string())
        .cloned()
        .collect();
    assert_eq!(
        event_types(&mine),
        [
            "meridian.fulfillment.shipment.created",
            "meridian.fulfillment.shipment.label_created",
            "meridian.fulfillment.shipment.shipped",
            "meridian.fulfillment.shipment.exception",
            "meridian.fulfillment.shipment.delivered",
        ]
    );
    assert_eq!(mine[2].envelope.data["status"], "shipped");
    assert_eq!(mine[2].envelope.data["tracking_number"], "MRD1");
    assert_eq!(mine[2].envelope.data["order_id"], order.id.to_string());
}

pub async fn shipments_of_another_tenant_are_not_found(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let s = created(&*store, &order).await.remove(0);
    let other: TenantId = store.create_tenant("other").await.unwrap().id;
    let f = store.fulfillment();
    let not_found = |r: Result<Shipment, StoreError>| {
        assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    };
    not_found(f.get_shipment(other, s.id).await);
    not_found(f.record_label(other, s.id, "X", "labels/x.pdf").await);
    not_found(
        f.update_shipment_status(other, s.id, ShipmentStatus::Canceled, None)
            .await,
    );
    let listed = f
        .list_shipments(other, Some(order.id), PageRequest::default())
        .await
        .unwrap();
    assert!(listed.items.is_empty());
    let canceled = f
        .cancel_order_shipments(CONSUMER, EventId::new(), other, order.id)
        .await
        .unwrap();
    assert!(canceled.is_empty());
    assert_eq!(
        f.get_shipment(order.tenant_id, s.id).await.unwrap().status,
        ShipmentStatus::Pending
    );
}

pub async fn canceling_an_order_cancels_its_unshipped_shipments(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let shipments = created(&*store, &order).await;
    let (t, f) = (order.tenant_id, store.fulfillment());
    f.record_label(t, shipments[0].id, "MRD1", "labels/a.pdf")
        .await
        .unwrap();
    f.update_shipment_status(t, shipments[0].id, ShipmentStatus::Shipped, None)
        .await
        .unwrap();

    let event = EventId::new();
    let canceled = f
        .cancel_order_shipments(CONSUMER, event, t, order.id)
        .await
        .unwrap();
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0].id, shipments[1].id);
    assert_eq!(canceled[0].status, ShipmentStatus::Canceled);
    assert!(
        f.cancel_order_shipments(CONSUMER, event, t, order.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.get_shipment(t, shipments[0].id).await.unwrap().status,
        ShipmentStatus::Shipped
    );
    // A label that arrives after the cancel is refused.
    let late = f
        .record_label(t, shipments[1].id, "MRD2", "labels/b.pdf")
        .await;
    assert!(
        matches!(late, Err(StoreError::IllegalTransition(_))),
        "{late:?}"
    );
    let types: Vec<String> = shipment_events(&*store)
        .await
        .into_iter()
        .filter(|r| r.envelope.subject == shipments[1].id.to_string())
        .map(|r| r.envelope.ty)
        .collect();
    assert_eq!(
        types,
        [
            "meridian.fulfillment.shipment.created",
            "meridian.fulfillment.shipment.canceled"
        ]
    );
}

pub async fn no_shipments_for_an_order_that_is_no_longer_confirmed(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    // Planned from the `order.created` event, but the order was canceled before the
    // consumer got to it.
    let planned = plan_shipments(&order, "manual", meridian_core::now());
    store
        .transition_order(order.tenant_id, order.id, OrderAction::Cancel)
        .await
        .unwrap();
    let created = store
        .fulfillment()
        .create_shipments(CONSUMER, EventId::new(), &planned)
        .await
        .unwrap();
    assert!(created.is_empty());
    assert!(shipment_events(&*store).await.is_empty());
}
