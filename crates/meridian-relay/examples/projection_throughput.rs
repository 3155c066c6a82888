//! How many order events per second the `order-events` projection records, batched and one
//! at a time, on the SQLite store with the embedded bus in the same file (the default
//! single-node stack).
//!
//! ```sh
//! cargo run --release -p meridian-relay --example projection_throughput -- 50000
//! ```
//!
//! Publishes N `order.created` events to the bus first (a backlog, as after a burst), then
//! times the consumer from its start until every event is recorded and acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_bus::consumer::{self, BatchHandler, Handler};
use meridian_bus::{Bus, HandlerError, Message, NoopSink, RetryPolicy, StartAt, SubscribeOptions};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::{Envelope, EventSource, OrderId, TenantId, Topic};
use meridian_relay::{ORDER_EVENTS_BATCH, OrderEventsProjection, order_events_pattern};
use meridian_store::sqlite::SqliteConfig;
use meridian_store::{Store, StoreConfig};
use serde_json::json;
use tokio::sync::watch;

const DEPLOYMENT: &str = "projbench";

/// Counts what the batched projection recorded.
struct CountingBatch {
    inner: OrderEventsProjection,
    done: AtomicU64,
}

#[async_trait]
impl BatchHandler for CountingBatch {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let results = self.inner.handle_batch(messages).await;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.done.fetch_add(ok, Ordering::Relaxed);
        results
    }
}

/// The projection as it was before batching: one store transaction per event.
struct OneAtATime {
    store: Arc<dyn Store>,
    done: AtomicU64,
}

#[async_trait]
impl Handler for OneAtATime {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        self.store
            .record_order_event("order-events", message.envelope())
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn setup(dir: &std::path::Path, n: u64) -> (Arc<dyn Store>, Arc<dyn Bus>) {
    let path = dir.join("meridian.db");
    let store = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(&path)),
        EventSource::new(DEPLOYMENT).expect("valid deployment"),
    )
    .await
    .expect("open the store");
    let bus: Arc<dyn Bus> = Arc::new(
        EmbeddedBus::open(EmbeddedConfig::Sqlite { path })
            .await
            .expect("open the bus"),
    );
    let topic = Topic::platform(DEPLOYMENT, "oms", "order.created");
    let tenant = TenantId::new();
    let mut published = 0;
    while published < n {
        let batch: Vec<Message> = (published..n.min(published + 256))
            .map(|i| {
                Message::new(
                    topic.clone(),
                    Envelope::new(
                        "/meridian/projbench/oms",
                        "meridian.oms.order.created",
                        tenant,
                        OrderId::new().to_string(),
                        meridian_core::now(),
                        json!({"n": i, "lines": [{"sku": "SKU-1", "quantity": 1}]}),
                    ),
                )
            })
            .collect();
        published += batch.len() as u64;
        for r in bus.publish_batch(batch).await {
            r.expect("publish");
        }
    }
    (store, bus)
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        start: StartAt::Earliest,
        max_in_flight: 4 * ORDER_EVENTS_BATCH,
        ..SubscribeOptions::durable("order-events")
    }
}

async fn wait_for(done: &AtomicU64, n: u64) -> Duration {
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(50_000, |a| a.parse().expect("N is a number"));
    let pattern = order_events_pattern(DEPLOYMENT).expect("valid pattern");

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, bus) = setup(dir.path(), n).await;
    let handler = Arc::new(CountingBatch {
        inner: OrderEventsProjection::new(store.clone()),
        done: AtomicU64::new(0),
    });
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(consumer::run_batched(
        bus.clone(),
        pattern.clone(),
        options(),
        handler.clone(),
        ORDER_EVENTS_BATCH,
        RetryPolicy::default(),
        Arc::new(NoopSink),
        shutdown,
    ));
    let took = wait_for(&handler.done, n).await;
    stop.send(true).expect("stop");
    task.await.expect("join").expect("consumer");
    println!(
        "batched ({} per batch): {n} events in {:.2} s = {:.0} events/s",
        ORDER_EVENTS_BATCH,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    drop((store, bus));

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, bus) = setup(dir.path(), n).await;
    let handler = Arc::new(OneAtATime {
        store: store.clone(),
        done: AtomicU64::new(0),
    });
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        pattern,
        options(),
        handler.clone(),
        RetryPolicy::default(),
        Arc::new(NoopSink),
        shutdown,
    ));
    let took = wait_for(&handler.done, n).await;
    stop.send(true).expect("stop");
    task.await.expect("join").expect("consumer");
    println!(
        "one event per transaction: {n} events in {:.2} s = {:.0} events/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}
