//! From order confirmed to shipment created, on the embedded stack: the SQLite store, the
//! embedded bus in the same file, the outbox relay and the fulfillment consumers, all in
//! one process as `meridian serve` runs them.
//!
//! ```sh
//! cargo run --release -p meridian-fulfillment-service --example shipment_latency -- 2000 200
//! ```
//!
//! Places N orders (default 2,000) at R per second (default 200, open loop: each at its
//! scheduled time, however the previous ones fare), one unit each, and reports the distribution of "shipment created" minus "order confirmed": from the order's
//! commit time (`created_at`, as the API acknowledges it) to the time the planner wrote the
//! order's first shipment (its `created_at`, in the transaction that commits it). The path
//! is outbox row → relay (50 ms poll when idle) → bus → `fulfillment-shipments` → store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, StartAt, SubscribeOptions, TopicPattern};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_catalog::{Attributes, NewProduct};
use meridian_core::{EventSource, Money, OrderId, Quantity, Timestamp};
use meridian_fulfillment::Shipment;
use meridian_fulfillment_service::{Fulfillment, LocalLabelStore};
use meridian_inventory::NewWarehouse;
use meridian_orders::{AllocationStrategy, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_relay::{Relay, RelayConfig, StoreDeadLetterSink};
use meridian_store::StoreConfig;
use meridian_store::sqlite::SqliteConfig;
use tokio::sync::watch;

const DEPLOYMENT: &str = "shipbench";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meridian.db");
    let store = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(&path)),
        EventSource::new(DEPLOYMENT).expect("deployment"),
    )
    .await
    .expect("open the store");
    let bus: Arc<dyn Bus> = Arc::new(
        EmbeddedBus::open(EmbeddedConfig::Sqlite { path })
            .await
            .expect("open the bus"),
    );

    let t = store.create_tenant("bench").await.expect("tenant").id;
    let sku = "BENCH-1".parse().expect("sku");
    store
        .create_product(
            t,
            NewProduct {
                sku: "BENCH-1".parse().expect("sku"),
                name: "Bench".into(),
                description: None,
                price: Money::new(100, "EUR".parse().expect("currency")),
                attributes: Attributes::new(),
            },
        )
        .await
        .expect("product");
    let code: meridian_core::WarehouseCode = "W1".parse().expect("code");
    let warehouse = NewWarehouse {
        code: code.clone(),
        name: "bench".into(),
        priority: 0,
    };
    store
        .create_warehouse(t, warehouse)
        .await
        .expect("warehouse");
    store
        .set_stock(t, &code, &sku, n as i64, "bench")
        .await
        .expect("stock");

    // Watch shipments arrive on the bus, from now on.
    let pattern = TopicPattern::parse(&format!(
        "deployment.{DEPLOYMENT}.platform.fulfillment.shipment.created"
    ))
    .expect("pattern");
    let mut watch_created = bus
        .subscribe(
            &pattern,
            SubscribeOptions {
                start: StartAt::New,
                max_in_flight: 4096,
                ..SubscribeOptions::ephemeral("bench-observer")
            },
        )
        .await
        .expect("subscribe");

    let (stop, shutdown) = watch::channel(false);
    let labels = Arc::new(LocalLabelStore::new(dir.path().join("objects")));
    let service = Fulfillment::new(store.clone(), labels);
    Fulfillment::declare(bus.as_ref(), DEPLOYMENT)
        .await
        .expect("declare");
    let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
    let consumers = tokio::spawn(service.run(bus.clone(), DEPLOYMENT, sink, shutdown.clone()));
    let relay =
        tokio::spawn(Relay::new(store.clone(), bus.clone(), RelayConfig::default()).run(shutdown));

    // Place the orders, open loop.
    let placed: Arc<times::Map> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (store, placed) = (store.clone(), placed.clone());
        let sku = sku.clone();
        tasks.push(tokio::spawn(async move {
            let line = OrderLineRequest {
                sku,
                quantity: Quantity::new(1).expect("quantity"),
            };
            let order = store
                .place_order(PlaceOrder {
                    tenant_id: t,
                    request: OrderRequest::new(
                        vec![line],
                        None,
                        None,
                        AllocationStrategy::Priority,
                    )
                    .expect("request"),
                    idempotency_key: None,
                    request_hash: format!("bench-{i}"),
                })
                .await
                .expect("place order");
            placed.insert(order.id, order.created_at);
        }));
    }
    for task in tasks {
        task.await.expect("order task");
    }

    // Collect the first shipment of each order.
    let mut first: HashMap<OrderId, Timestamp> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.len() < n && Instant::now() < deadline {
        let Ok(Ok(batch)) =
            tokio::time::timeout(Duration::from_secs(5), watch_created.next_batch(1024)).await
        else {
            continue;
        };
        for d in batch {
            if let Ok(s) = serde_json::from_value::<Shipment>(d.message.envelope().data.clone()) {
                let at = first.entry(s.order_id).or_insert(s.created_at);
                *at = (*at).min(s.created_at);
            }
            let _ = d.ack().await;
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let _ = consumers.await;
    let _ = relay.await;

    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let placed = placed.take();
    for (order, shipment_at) in &first {
        if let Some(order_at) = placed.get(order) {
            let micros = (*shipment_at - *order_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(1);
            hist.record(micros as u64).expect("record");
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "orders {n} at {rate}/s over {:.1} s; shipments created for {} orders",
        elapsed.as_secs_f64(),
        first.len()
    );
    println!(
        "order confirmed -> shipment created (ms): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
}

/// A shared map of order commit times.
mod times {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use meridian_core::{OrderId, Timestamp};

    #[derive(Default)]
    pub struct Map(Mutex<HashMap<OrderId, Timestamp>>);

    impl Map {
        pub fn insert(&self, id: OrderId, at: Timestamp) {
            self.0.lock().expect("lock").insert(id, at);
        }

        pub fn take(&self) -> HashMap<OrderId, Timestamp> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }
}
