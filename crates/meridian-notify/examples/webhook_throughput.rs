//! How many events per second become signed webhook deliveries at a local receiver, on the
//! SQLite store with the embedded bus in the same file (the default single-node stack).
//!
//! ```sh
//! cargo run --release -p meridian-notify --example webhook_throughput -- 20000
//! ```
//!
//! Publishes N `order.created` events to the bus first (a backlog, as after a burst), then
//! starts the notification consumers and the delivery worker and times them until the
//! receiver (axum on a random port, verifying every signature) has accepted all N.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use meridian_bus::{Bus, Message, NoopSink};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::{Envelope, EventSource, OrderId, Topic};
use meridian_notify::{Wake, WorkerConfig};
use meridian_store::notify::NewWebhookEndpoint;
use meridian_store::sqlite::SqliteConfig;
use meridian_store::{Store, StoreConfig};
use tokio::sync::{Notify, watch};

const DEPLOYMENT: &str = "notifybench";

struct Receiver {
    secret: String,
    accepted: AtomicUsize,
    bad: AtomicUsize,
    target: usize,
    done: Notify,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = meridian_notify::signing::verify(
        &r.secret,
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &body,
        chrono::Utc::now().timestamp(),
    )
    .is_ok();
    if !ok {
        r.bad.fetch_add(1, Ordering::Relaxed);
    }
    if r.accepted.fetch_add(1, Ordering::Relaxed) + 1 == r.target {
        r.done.notify_one();
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store: Arc<dyn Store> = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(&path)),
        EventSource::new(DEPLOYMENT).unwrap(),
    )
    .await
    .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        EmbeddedBus::open(EmbeddedConfig::Sqlite { path })
            .await
            .unwrap(),
    );
    let tenant = store.create_tenant("bench").await.unwrap().id;

    let secret = meridian_notify::signing::new_secret();
    let receiver = Arc::new(Receiver {
        secret: secret.clone(),
        accepted: AtomicUsize::new(0),
        bad: AtomicUsize::new(0),
        target: n,
        done: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    store
        .create_webhook(
            tenant,
            NewWebhookEndpoint {
                url,
                description: "bench".into(),
                event_types: vec!["order.*".into()],
                enabled: true,
                secret,
            },
        )
        .await
        .unwrap();

    meridian_notify::declare(bus.as_ref(), DEPLOYMENT)
        .await
        .unwrap();
    let topic = Topic::platform(DEPLOYMENT, "oms", "order.created");
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let id = OrderId::new();
            Message::new(
                topic.clone(),
                Envelope::new(
                    format!("/meridian/{DEPLOYMENT}/oms"),
                    "meridian.oms.order.created",
                    tenant,
                    id.to_string(),
                    meridian_core::now(),
                    serde_json::json!({"id": id.to_string(), "n": i, "status": "confirmed"}),
                ),
            )
        })
        .collect();
    for chunk in messages.chunks(1000) {
        for r in bus.publish_batch(chunk.to_vec()).await {
            r.unwrap();
        }
    }
    println!("published {n} events; delivering");

    let (stop, shutdown) = watch::channel(false);
    let wake = Wake::new();
    let started = Instant::now();
    let consumers = tokio::spawn(meridian_notify::run_consumers(
        bus.clone(),
        store.clone(),
        DEPLOYMENT,
        Arc::new(NoopSink),
        wake.clone(),
        shutdown.clone(),
    ));
    let worker = tokio::spawn(meridian_notify::run_worker(
        store.clone(),
        WorkerConfig {
            concurrency: 128,
            // The receiver listens on 127.0.0.1.
            address_guard: meridian_http::AddressGuard::ALLOW_PRIVATE,
            ..WorkerConfig::default()
        },
        wake,
        shutdown,
    ));
    tokio::time::timeout(Duration::from_secs(600), receiver.done.notified())
        .await
        .expect("not every delivery arrived within 10 minutes");
    let elapsed = started.elapsed();
    println!(
        "{n} events -> {} deliveries in {:.2} s: {:.0} deliveries/s ({} bad signatures)",
        receiver.accepted.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        receiver.bad.load(Ordering::Relaxed),
    );
    let _ = stop.send(true);
    let _ = consumers.await;
    let _ = worker.await;
}
