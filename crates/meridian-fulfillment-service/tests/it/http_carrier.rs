//! The HTTP carrier against a real HTTP server the test starts (axum on a random port) that
//! behaves like a carrier API: it times out or answers 503 for a while, then recovers.
//! The label step retries with backoff; after the third failed attempt the work is a dead
//! letter with the carrier's reason, and a replay of it resumes the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meridian_bus::{Bus, MemoryBus, RetryPolicy};
use meridian_catalog::{Attributes, NewProduct};
use meridian_core::{EventSource, Money, Quantity, TenantId};
use meridian_fulfillment::{Shipment, ShipmentStatus};
use meridian_fulfillment_service::{
    Carrier, Fulfillment, HttpCarrier, HttpCarrierConfig, LABELS_CONSUMER, LabelStore,
    LocalLabelStore,
};
use meridian_inventory::NewWarehouse;
use meridian_orders::{AllocationStrategy, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_relay::{Relay, RelayConfig, StoreDeadLetterSink};
use meridian_store::sqlite::{SqliteConfig, SqliteStore};
use meridian_store::{DeadLetterRecord, PageRequest, Store};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How the fake carrier answers its next calls.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Waits longer than the client's time limit.
    Timeout,
    /// `503 Service Unavailable`.
    Unavailable,
}

struct CarrierState {
    failure: Failure,
    /// Calls still to fail before the carrier recovers.
    failures_left: AtomicU32,
    calls: AtomicU32,
    /// The idempotency keys the carrier saw, in order.
    keys: std::sync::Mutex<Vec<String>>,
}

async fn labels(
    State(state): State<Arc<CarrierState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.keys.lock().unwrap().push(key);
    let failing = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        match state.failure {
            Failure::Timeout => tokio::time::sleep(Duration::from_secs(5)).await,
            Failure::Unavailable => {
                return (StatusCode::SERVICE_UNAVAILABLE, "carrier overloaded").into_response();
            }
        }
    }
    let pdf = b"%PDF-1.4\n% a carrier's label\n%%EOF\n";
    use base64::Engine;
    Json(json!({
        "tracking_number": format!("1Z{}", &body["shipment_id"].as_str().unwrap()[24..]),
        "label_pdf": base64::engine::general_purpose::STANDARD.encode(pdf),
    }))
    .into_response()
}

/// A carrier API on a random port that fails its first `failures` calls with `failure`.
async fn carrier(failure: Failure, failures: u32) -> (String, Arc<CarrierState>) {
    let state = Arc::new(CarrierState {
        failure,
        failures_left: AtomicU32::new(failures),
        calls: AtomicU32::new(0),
        keys: Default::default(),
    });
    let app = axum::Router::new()
        .route("/v1/labels", post(labels))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

pub(crate) struct Stack {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub labels: Arc<dyn LabelStore>,
    pub stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A SQLite store, the memory bus, the relay, and the fulfillment consumers with the HTTP
/// carrier at `base_url` (300 ms per call) and quick retries.
async fn stack(base_url: &str) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let labels: Arc<dyn LabelStore> = Arc::new(LocalLabelStore::new(dir.path().join("objects")));
    let carrier = HttpCarrier::new(HttpCarrierConfig {
        timeout: Duration::from_millis(300),
        ..HttpCarrierConfig::new(base_url)
    })
    .unwrap();
    stack_with(dir, Arc::new(carrier), labels).await
}

/// As [`stack`], with the given carrier and label store.
pub(crate) async fn stack_with(
    dir: tempfile::TempDir,
    carrier: Arc<dyn Carrier>,
    labels: Arc<dyn LabelStore>,
) -> Stack {
    let events = EventSource::new("test").unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("m.db")), events)
            .await
            .unwrap(),
    );
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let service = Fulfillment {
        carriers: vec![carrier],
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Fulfillment::new(store.clone(), labels.clone())
    };
    Fulfillment::declare(bus.as_ref(), "test").await.unwrap();
    let (stop, shutdown) = watch::channel(false);
    let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
    tokio::spawn(service.run(bus.clone(), "test", sink, shutdown.clone()));
    let relay = Relay::new(store.clone(), bus.clone(), RelayConfig::default());
    tokio::spawn(relay.run(shutdown));
    Stack {
        store,
        bus,
        labels,
        stop,
        _dir: dir,
    }
}

/// Places a one-line order of a fresh tenant; returns the tenant.
pub(crate) async fn place_order(store: &dyn Store) -> TenantId {
    let t = store.create_tenant("carrier").await.unwrap().id;
    let sku = "SKU-1".parse().unwrap();
    store
        .create_product(
            t,
            NewProduct {
                sku: "SKU-1".parse().unwrap(),
                name: "Product".into(),
                description: None,
                price: Money::new(100, "EUR".parse().unwrap()),
                attributes: Attributes::new(),
            },
        )
        .await
        .unwrap();
    store
        .create_warehouse(
            t,
            NewWarehouse {
                code: "W1".parse().unwrap(),
                name: "W1".into(),
                priority: 0,
            },
        )
        .await
        .unwrap();
    store
        .set_stock(t, &"W1".parse().unwrap(), &sku, 5, "seed")
        .await
        .unwrap();
    let line = OrderLineRequest {
        sku,
        quantity: Quantity::new(1).unwrap(),
    };
    store
        .place_order(PlaceOrder {
            tenant_id: t,
            request: OrderRequest::new(vec![line], None, None, AllocationStrategy::Priority)
                .unwrap(),
            idempotency_key: None,
            request_hash: "one".into(),
        })
        .await
        .unwrap();
    t
}

/// Waits until the tenant's one shipment satisfies `done`.
pub(crate) async fn wait_shipment(
    store: &dyn Store,
    t: TenantId,
    done: impl Fn(&Shipment) -> bool,
) -> Shipment {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = store
            .fulfillment()
            .list_shipments(t, None, PageRequest::default())
            .await
            .unwrap();
        if let Some(s) = page.items.first()
            && done(s)
        {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "shipments: {:?}", page.items);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `wait` for the tenant's first dead letter.
pub(crate) async fn first_dead_letter(
    store: &dyn Store,
    t: TenantId,
    wait: Duration,
) -> DeadLetterRecord {
    let deadline = Instant::now() + wait;
    loop {
        let page = store
            .list_dead_letters(Some(t), PageRequest::default())
            .await
            .unwrap();
        if let Some(d) = page.items.into_iter().next() {
            return d;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_labelled(stack: &Stack, s: &Shipment) {
    assert_eq!(s.status, ShipmentStatus::LabelCreated);
    assert_eq!(s.carrier, "http");
    assert_eq!(
        s.tracking_number.as_deref(),
        Some(format!("1Z{}", &s.id.to_string()[24..]).as_str())
    );
    let pdf = stack
        .labels
        .get(s.label_key.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4\n% a carrier's label"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_carrier_times_out_then_recovers() {
    let (url, carrier) = carrier(Failure::Timeout, 2).await;
    let stack = stack(&url).await;
    let t = place_order(&*stack.store).await;
    let s = wait_shipment(&*stack.store, t, |s| s.status != ShipmentStatus::Pending).await;
    assert_labelled(&stack, &s).await;
    // Two timeouts, then the call that worked; every call with the shipment's key.
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 3);
    let keys = carrier.keys.lock().unwrap().clone();
    assert_eq!(keys, vec![s.id.to_string(); 3]);
    let dead = stack
        .store
        .list_dead_letters(None, PageRequest::default())
        .await
        .unwrap();
    assert!(dead.items.is_empty(), "{:?}", dead.items);
    let _ = stack.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_three_failures_the_label_is_a_dead_letter_and_a_replay_resumes_it() {
    let (url, carrier) = carrier(Failure::Unavailable, 3).await;
    let stack = stack(&url).await;
    let t = place_order(&*stack.store).await;

    // Three attempts, three 503s: a dead letter with the carrier's reason.
    let dead = first_dead_letter(&*stack.store, t, Duration::from_secs(30)).await;
    assert_eq!(dead.consumer, LABELS_CONSUMER);
    assert_eq!(dead.attempts, 3);
    assert!(dead.reason.contains("503"), "{}", dead.reason);
    assert_eq!(
        dead.original_topic.as_str(),
        "deployment.test.platform.fulfillment.shipment.created"
    );
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 3);
    let s = wait_shipment(&*stack.store, t, |_| true).await;
    assert_eq!(s.status, ShipmentStatus::Pending);

    // The carrier has recovered; the operator replays the dead letter.
    meridian_relay::replay_dead_letter(&*stack.store, &*stack.bus, Some(t), dead.id)
        .await
        .unwrap();
    let s = wait_shipment(&*stack.store, t, |s| s.status != ShipmentStatus::Pending).await;
    assert_labelled(&stack, &s).await;
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 4);
    let _ = stack.stop.send(true);
}

/// Two deliveries of one `shipment.created` in one batch (a redelivery beside the
/// original) make one carrier call, and both deliveries are settled by its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_twice_in_one_label_batch_gets_one_carrier_call() {
    use meridian_bus::{BatchHandler, Message};
    use meridian_fulfillment_service::{LabelBatches, LabelMaker};

    // Three 503s leave the shipment pending, with its event as a dead letter.
    let (url, carrier) = carrier(Failure::Unavailable, 3).await;
    let stack = stack(&url).await;
    let t = place_order(&*stack.store).await;
    let dead = first_dead_letter(&*stack.store, t, Duration::from_secs(30)).await;
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 3);

    let http: Arc<dyn Carrier> = Arc::new(
        HttpCarrier::new(HttpCarrierConfig {
            timeout: Duration::from_millis(300),
            ..HttpCarrierConfig::new(&url)
        })
        .unwrap(),
    );
    let batches = LabelBatches(Arc::new(LabelMaker::new(
        stack.store.clone(),
        stack.labels.clone(),
        vec![http],
    )));
    let event = Message::new(dead.original_topic.clone(), dead.envelope.clone());
    let results = batches.handle_batch(&[&event, &event]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 4, "one call for both");
    let s = wait_shipment(&*stack.store, t, |s| s.status != ShipmentStatus::Pending).await;
    assert_labelled(&stack, &s).await;
    let _ = stack.stop.send(true);
}
