//! The stock snapshot consumer on a real store (SQLite, a fresh file per test) and the
//! memory bus: snapshots applied once, refused ones dead-lettered at once with the reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meridian_bus::consumer::{DeadLetter, DeadLetterSink};
use meridian_bus::{Bus, BusError, MemoryBus, Message, SubscribeOptions, TopicPattern};
use meridian_catalog::{Attributes, NewProduct};
use meridian_core::{Envelope, EventSource, Money, Quantity, TenantId, Topic};
use meridian_inventory::NewWarehouse;
use meridian_inventory_service::{STOCK_SNAPSHOTS_CONSUMER, declare, run};
use meridian_orders::{AllocationStrategy, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_store::Store;
use meridian_store::sqlite::{SqliteConfig, SqliteStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const DEPLOYMENT: &str = "inv";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Recorded(Mutex<Vec<DeadLetter>>);

#[async_trait]
impl DeadLetterSink for Recorded {
    async fn record(&self, dl: &DeadLetter) -> Result<(), BusError> {
        self.0.lock().unwrap().push(dl.clone());
        Ok(())
    }
}

async fn tenant_with_stock(store: &dyn Store, name: &str, on_hand: i64) -> TenantId {
    let t = store.create_tenant(name).await.unwrap().id;
    store
        .create_product(
            t,
            NewProduct {
                sku: "SKU-1".parse().unwrap(),
                name: "Widget".into(),
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
                code: "WH1".parse().unwrap(),
                name: "Main".into(),
                priority: 1,
            },
        )
        .await
        .unwrap();
    store
        .set_stock(
            t,
            &"WH1".parse().unwrap(),
            &"SKU-1".parse().unwrap(),
            on_hand,
            "initial",
        )
        .await
        .unwrap();
    t
}

fn snapshot(tenant: TenantId, data: Value) -> Message {
    let topic = Topic::platform(DEPLOYMENT, "data", "stock.snapshot");
    Message::new(
        topic,
        Envelope::new(
            "/meridian/inv/plugins/warehouse-sync",
            "meridian.data.stock.snapshot",
            tenant,
            "SKU-1",
            meridian_core::now(),
            data,
        ),
    )
}

async fn on_hand(store: &dyn Store, t: TenantId) -> (i64, i64) {
    let l = &store.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap()[0];
    (l.on_hand, l.reserved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_applied_once_and_refused_ones_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            SqliteConfig {
                path: dir.path().join("meridian.db"),
                readers: 2,
            },
            EventSource::new(DEPLOYMENT).unwrap(),
        )
        .await
        .unwrap(),
    );
    let a = tenant_with_stock(store.as_ref(), "a", 10).await;
    let b = tenant_with_stock(store.as_ref(), "b", 50).await;
    // Tenant a has 4 units reserved by an order.
    let line = OrderLineRequest {
        sku: "SKU-1".parse().unwrap(),
        quantity: Quantity::new(4).unwrap(),
    };
    store
        .place_order(PlaceOrder {
            tenant_id: a,
            request: OrderRequest::new(vec![line], None, None, AllocationStrategy::Priority)
                .unwrap(),
            idempotency_key: None,
            request_hash: "h".into(),
        })
        .await
        .unwrap();

    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topic = Topic::platform(DEPLOYMENT, "data", "stock.snapshot");
    let mut dlq = bus
        .subscribe(
            &TopicPattern::exact(&topic.dead_letter()),
            SubscribeOptions::ephemeral("watch"),
        )
        .await
        .unwrap();
    declare(bus.as_ref(), DEPLOYMENT).await.unwrap();
    let sink = Arc::new(Recorded::default());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let (bus, store, sink) = (bus.clone(), store.clone(), sink.clone());
        async move { run(bus, store, DEPLOYMENT, sink, shutdown).await }
    });

    let good = snapshot(
        a,
        json!({"warehouse": "WH1", "sku": "SKU-1", "on_hand": 7, "counted_at": "2026-11-21T10:00:00Z"}),
    );
    // The same event twice (a redelivery), one below the 4 units reserved, one for an
    // unknown SKU, one that is not a snapshot, and tenant b's own count.
    let messages = [
        good.clone(),
        good.clone(),
        snapshot(
            a,
            json!({"warehouse": "WH1", "sku": "SKU-1", "on_hand": 3, "counted_at": "2026-11-21T11:00:00Z"}),
        ),
        snapshot(
            a,
            json!({"warehouse": "WH1", "sku": "NOPE", "on_hand": 1, "counted_at": "2026-11-21T11:00:00Z"}),
        ),
        snapshot(a, json!({"sku": "SKU-1", "on_hand": 1})),
        snapshot(
            b,
            json!({"warehouse": "WH1", "sku": "SKU-1", "on_hand": 20, "counted_at": "2026-11-21T11:00:00Z"}),
        ),
    ];
    for m in messages {
        bus.publish(m).await.unwrap();
    }

    let mut reasons = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(WAIT, dlq.next())
            .await
            .expect("the refused snapshots were dead-lettered")
            .unwrap();
        let data = d.message.envelope().data.clone();
        let _ = d.ack().await;
        assert_eq!(data["attempts"], 1, "dead-lettered without retries: {data}");
        assert_eq!(data["consumer"], STOCK_SNAPSHOTS_CONSUMER);
        reasons.push(data["reason"].as_str().unwrap().to_owned());
    }
    reasons.sort();
    assert!(
        reasons[0].contains("is not a stock snapshot") && reasons[0].contains("warehouse"),
        "{reasons:#?}"
    );
    assert!(
        reasons[1].contains("sku SKU-1, on_hand 3) refused")
            && reasons[1].contains("below the 4 units reserved"),
        "{reasons:#?}"
    );
    assert!(
        reasons[2].contains("refused: product NOPE not found"),
        "{reasons:#?}"
    );

    // Wait for tenant b's snapshot (published last) to be applied.
    let deadline = tokio::time::Instant::now() + WAIT;
    while on_hand(store.as_ref(), b).await != (20, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's snapshot applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_hand(store.as_ref(), a).await, (7, 4));
    // The consumer publishes a dead letter before it records it, and handles one message at
    // a time: once b's snapshot (the last one) is applied, all three are recorded.
    let recorded = sink.0.lock().unwrap().len();
    assert_eq!(recorded, 3);
    // The good snapshot made exactly one ledger row (the redelivery none).
    let ledger = store
        .ledger(a, &"SKU-1".parse().unwrap(), Default::default())
        .await
        .unwrap()
        .items;
    let snapshots = ledger
        .iter()
        .filter(|e| e.reason.starts_with("warehouse stock snapshot"))
        .count();
    assert_eq!(snapshots, 1, "{ledger:#?}");
    assert!(store.reconcile(None).await.unwrap().is_empty());

    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
