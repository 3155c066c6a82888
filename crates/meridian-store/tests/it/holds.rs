//! The [`HoldStore`](meridian_store::HoldStore) contract, as every backend must keep it:
//! holds and releases with their outbox events, screening decisions applied once per event,
//! another tenant's order untouched, canceled orders untouched, and a hold that blocks the
//! label, the shipped update and the fulfilment of its order until it is released.
//!
//! A backend runs every case with `crate::holds::holds_suite!(factory)`.

use std::sync::Arc;

use meridian_core::{EventId, OrderId, TenantId};
use meridian_fulfillment::{ShipmentStatus, plan_shipments};
use meridian_orders::{Order, OrderAction, OrderStatus};
use meridian_store::{
    API_SOURCE, HoldChange, OrderHoldState, OutboxRecord, ScreeningDecision, ScreeningOutcome,
    Store, StoreError,
};

use crate::fulfillment::split_order;

macro_rules! holds_suite {
    ($factory:path) => {
        $crate::holds::holds_suite!(@cases $factory;
            holds_are_placed_and_released_with_their_events,
            a_screening_decision_is_applied_once_per_event,
            a_decision_for_another_tenant_s_order_changes_nothing,
            decisions_for_a_canceled_order_change_nothing,
            a_hold_blocks_the_label_the_shipment_and_the_fulfilment,
            hold_states_are_read_for_a_page_of_orders,
        );
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        mod holds_conformance {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test_store = $factory().await;
                    $crate::holds::$case(::std::sync::Arc::clone(&test_store.store)).await;
                    drop(test_store);
                }
            )+
        }
    };
}
pub(crate) use holds_suite;

const CONSUMER: &str = "orders-fraud-decisions";
const SCREEN: &str = "fraud-screen";

/// The order's `order.held`, `order.released` and `order.screened` outbox events, oldest
/// first.
async fn hold_events(store: &dyn Store, order: &Order) -> Vec<OutboxRecord> {
    store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.envelope.subject == order.id.to_string()
                && (r.envelope.ty == "meridian.oms.order.held"
                    || r.envelope.ty == "meridian.oms.order.released"
                    || r.envelope.ty == "meridian.oms.order.screened")
        })
        .collect()
}

fn types(records: &[OutboxRecord]) -> Vec<&str> {
    records.iter().map(|r| r.envelope.ty.as_str()).collect()
}

async fn screen(
    store: &dyn Store,
    event: EventId,
    tenant: TenantId,
    order: &Order,
    decision: ScreeningDecision,
) -> Result<ScreeningOutcome, StoreError> {
    store
        .holds()
        .apply_screening(
            CONSUMER,
            event,
            tenant,
            order.id,
            decision,
            "rule says so",
            SCREEN,
        )
        .await
}

pub async fn holds_are_placed_and_released_with_their_events(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let (t, h) = (order.tenant_id, store.holds());
    assert_eq!(
        h.order_hold(t, order.id).await.unwrap(),
        OrderHoldState::default()
    );
    let (change, state) = h
        .hold_order(t, order.id, "customer asked to wait", API_SOURCE)
        .await
        .unwrap();
    assert_eq!(change, HoldChange::Held);
    let hold = state.hold.clone().unwrap();
    assert_eq!(
        (hold.reason.as_str(), hold.source.as_str()),
        ("customer asked to wait", API_SOURCE)
    );
    assert_eq!(h.order_hold(t, order.id).await.unwrap(), state);
    // The order keeps its status and its reservation.
    assert_eq!(
        store.get_order(t, order.id).await.unwrap().status,
        OrderStatus::Confirmed
    );
    // Holding a held order keeps the first hold and writes nothing.
    let (change, again) = h
        .hold_order(t, order.id, "other", API_SOURCE)
        .await
        .unwrap();
    assert_eq!((change, again), (HoldChange::Unchanged, state));
    // An empty reason is refused.
    assert!(matches!(
        h.hold_order(t, order.id, " ", API_SOURCE).await,
        Err(StoreError::Validation(_))
    ));

    let (change, state) = h.release_order(t, order.id, API_SOURCE).await.unwrap();
    assert_eq!((change, state.hold), (HoldChange::Released, None));
    let (change, _) = h.release_order(t, order.id, API_SOURCE).await.unwrap();
    assert_eq!(change, HoldChange::Unchanged);

    let events = hold_events(&*store, &order).await;
    assert_eq!(
        types(&events),
        ["meridian.oms.order.held", "meridian.oms.order.released"]
    );
    let held = &events[0];
    assert_eq!(
        held.topic.as_str(),
        "deployment.test.platform.oms.order.held"
    );
    assert_eq!(held.envelope.tenant, t);
    assert_eq!(held.envelope.data["reason"], "customer asked to wait");
    assert_eq!(held.envelope.data["source"], API_SOURCE);
    assert_eq!(events[1].envelope.data["source"], API_SOURCE);

    // Another tenant's order is not found, and stays as it is.
    let other = store.create_tenant("other").await.unwrap().id;
    assert!(matches!(
        h.hold_order(other, order.id, "mine", API_SOURCE).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        h.order_hold(other, order.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(h.order_hold(t, order.id).await.unwrap().hold, None);
}

pub async fn a_screening_decision_is_applied_once_per_event(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let (t, h) = (order.tenant_id, store.holds());
    let event = EventId::new();
    assert_eq!(
        screen(&*store, event, t, &order, ScreeningDecision::Hold)
            .await
            .unwrap(),
        ScreeningOutcome::Applied(HoldChange::Held)
    );
    // The same event again: the inbox drops it.
    assert_eq!(
        screen(&*store, event, t, &order, ScreeningDecision::Hold)
            .await
            .unwrap(),
        ScreeningOutcome::Duplicate
    );
    let state = h.order_hold(t, order.id).await.unwrap();
    let (hold, screening) = (state.hold.unwrap(), state.screening.unwrap());
    assert_eq!(hold.source, SCREEN);
    assert_eq!(screening.decision, ScreeningDecision::Hold);
    assert_eq!(screening.reason, "rule says so");
    assert_eq!(
        types(&hold_events(&*store, &order).await),
        ["meridian.oms.order.held"]
    );

    // The screen's approval (a new event) releases its own hold.
    assert_eq!(
        screen(
            &*store,
            EventId::new(),
            t,
            &order,
            ScreeningDecision::Approve
        )
        .await
        .unwrap(),
        ScreeningOutcome::Applied(HoldChange::Released)
    );
    let state = h.order_hold(t, order.id).await.unwrap();
    assert_eq!(state.hold, None);
    assert_eq!(
        state.screening.unwrap().decision,
        ScreeningDecision::Approve
    );

    // An operator's hold is not lifted by a screen's approval; the result is recorded.
    h.hold_order(t, order.id, "manual review", API_SOURCE)
        .await
        .unwrap();
    assert_eq!(
        screen(
            &*store,
            EventId::new(),
            t,
            &order,
            ScreeningDecision::Approve
        )
        .await
        .unwrap(),
        ScreeningOutcome::Applied(HoldChange::Unchanged)
    );
    let state = h.order_hold(t, order.id).await.unwrap();
    assert_eq!(state.hold.unwrap().source, API_SOURCE);
    assert_eq!(
        types(&hold_events(&*store, &order).await),
        [
            "meridian.oms.order.held",
            "meridian.oms.order.released",
            "meridian.oms.order.held",
            "meridian.oms.order.screened"
        ]
    );
}

pub async fn a_decision_for_another_tenant_s_order_changes_nothing(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let other = store.create_tenant("mallory").await.unwrap().id;
    let event = EventId::new();
    assert!(matches!(
        screen(&*store, event, other, &order, ScreeningDecision::Hold).await,
        Err(StoreError::NotFound { .. })
    ));
    let h = store.holds();
    assert_eq!(
        h.order_hold(order.tenant_id, order.id).await.unwrap(),
        OrderHoldState::default()
    );
    assert!(hold_events(&*store, &order).await.is_empty());
    // Nothing was written, not even the inbox row: the same event for the right tenant
    // (a replay after a fix) still applies.
    assert_eq!(
        screen(
            &*store,
            event,
            order.tenant_id,
            &order,
            ScreeningDecision::Hold
        )
        .await
        .unwrap(),
        ScreeningOutcome::Applied(HoldChange::Held)
    );
}

pub async fn decisions_for_a_canceled_order_change_nothing(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let t = order.tenant_id;
    store
        .transition_order(t, order.id, OrderAction::Cancel)
        .await
        .unwrap();
    let event = EventId::new();
    assert_eq!(
        screen(&*store, event, t, &order, ScreeningDecision::Hold)
            .await
            .unwrap(),
        ScreeningOutcome::Ignored(OrderStatus::Canceled)
    );
    assert_eq!(
        screen(&*store, event, t, &order, ScreeningDecision::Hold)
            .await
            .unwrap(),
        ScreeningOutcome::Duplicate
    );
    let h = store.holds();
    assert_eq!(
        h.order_hold(t, order.id).await.unwrap(),
        OrderHoldState::default()
    );
    assert!(matches!(
        h.hold_order(t, order.id, "too late", API_SOURCE).await,
        Err(StoreError::IllegalTransition(_))
    ));
    assert!(matches!(
        h.release_order(t, order.id, API_SOURCE).await,
        Err(StoreError::IllegalTransition(_))
    ));
    assert!(hold_events(&*store, &order).await.is_empty());
}

pub async fn a_hold_blocks_the_label_the_shipment_and_the_fulfilment(store: Arc<dyn Store>) {
    let order = split_order(&*store).await;
    let (t, h, f) = (order.tenant_id, store.holds(), store.fulfillment());
    let planned = plan_shipments(&order, "manual", meridian_core::now());
    let shipments = f
        .create_shipments("fulfillment-shipments", EventId::new(), &planned)
        .await
        .unwrap();
    let (a, b) = (shipments[0].id, shipments[1].id);
    f.record_label(t, b, "MRD-B", "labels/b.pdf").await.unwrap();

    screen(&*store, EventId::new(), t, &order, ScreeningDecision::Hold)
        .await
        .unwrap();
    // No label for a pending shipment of a held order; nothing is written.
    assert!(matches!(
        f.record_label(t, a, "MRD-A", "labels/a.pdf").await,
        Err(StoreError::OrderOnHold(id)) if id == order.id
    ));
    assert_eq!(
        f.get_shipment(t, a).await.unwrap().status,
        ShipmentStatus::Pending
    );
    // A labelled shipment of a held order does not ship.
    assert!(matches!(
        f.update_shipment_status(t, b, ShipmentStatus::Shipped, None)
            .await,
        Err(StoreError::OrderOnHold(_))
    ));
    assert_eq!(
        f.get_shipment(t, b).await.unwrap().status,
        ShipmentStatus::LabelCreated
    );
    // Nor is the order fulfilled by hand.
    assert!(matches!(
        store
            .transition_order(t, order.id, OrderAction::Fulfill)
            .await,
        Err(StoreError::OrderOnHold(_))
    ));

    h.release_order(t, order.id, API_SOURCE).await.unwrap();
    f.record_label(t, a, "MRD-A", "labels/a.pdf").await.unwrap();
    for id in [a, b] {
        f.update_shipment_status(t, id, ShipmentStatus::Shipped, None)
            .await
            .unwrap();
    }
    let fulfilled = store
        .transition_order(t, order.id, OrderAction::Fulfill)
        .await
        .unwrap();
    assert_eq!(fulfilled.status, OrderStatus::Fulfilled);
    // A fulfilled order's decisions change nothing.
    assert_eq!(
        screen(&*store, EventId::new(), t, &order, ScreeningDecision::Hold)
            .await
            .unwrap(),
        ScreeningOutcome::Ignored(OrderStatus::Fulfilled)
    );
    assert_eq!(h.order_hold(t, order.id).await.unwrap().hold, None);
}

pub async fn hold_states_are_read_for_a_page_of_orders(store: Arc<dyn Store>) {
    let mine = split_order(&*store).await;
    let theirs = split_order(&*store).await;
    let (t, h) = (mine.tenant_id, store.holds());
    let page = vec![mine.id, theirs.id, OrderId::new()];
    assert!(
        h.order_hold_states(t, page.clone())
            .await
            .unwrap()
            .is_empty()
    );

    let (_, held) = h
        .hold_order(t, mine.id, "address check", API_SOURCE)
        .await
        .unwrap();
    h.hold_order(theirs.tenant_id, theirs.id, "theirs", API_SOURCE)
        .await
        .unwrap();
    // Only this tenant's held order: another tenant's hold and an unknown id are left out.
    let states = h.order_hold_states(t, page.clone()).await.unwrap();
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[&mine.id], held);
    assert!(h.order_hold_states(t, Vec::new()).await.unwrap().is_empty());

    h.release_order(t, mine.id, API_SOURCE).await.unwrap();
    assert!(h.order_hold_states(t, page).await.unwrap().is_empty());
}
