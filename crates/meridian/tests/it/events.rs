//! The outbox relay and the order-events projection, end to end: orders placed over HTTP
//! show up in `GET /v1/orders/{id}/events`, on SQLite with the embedded bus, on PostgreSQL
//! with NATS, and on SQLite with RabbitMQ and with Kafka; and orders placed while NATS is
//! down still commit, and their events arrive once it is back.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_store::{Store, StoreConfig};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{Api, Db, Server, create_tenant};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

fn nats_url() -> String {
    std::env::var("MERIDIAN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A deployment id of its own, so that JetStream streams of concurrent tests never meet.
fn unique_deployment() -> String {
    format!("ev{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Polls the order's timeline until it has `want` event types (in that order).
async fn wait_for_timeline(api: &Api, order: &str, want: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let body = api
            .ok(Method::GET, &format!("/v1/orders/{order}/events"), None)
            .await;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let types: Vec<&str> = items.iter().filter_map(|e| e["type"].as_str()).collect();
        if types == want {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "timeline of {order} is {types:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Places an order, cancels it, and sees both events in its timeline; another tenant gets
/// 404 for it.
async fn timeline_end_to_end(db: &Db, server: &Server, bus: &str) {
    let (_, key) = create_tenant(db, "Events");
    let api = Api::new(&server.base, &key);
    let ready = api.ok(Method::GET, "/readyz", None).await;
    assert_eq!(ready["bus"], "ok", "{ready}");
    assert_eq!(ready["bus_backend"], bus, "{ready}");
    api.seed("EV-1", &[10]).await;

    let id = api.place_one("EV-1").await;
    let items = wait_for_timeline(&api, &id, &["meridian.oms.order.created"]).await;
    assert_eq!(items[0]["data"]["id"], id.as_str());
    api.ok(Method::POST, &format!("/v1/orders/{id}/cancel"), None)
        .await;
    wait_for_timeline(
        &api,
        &id,
        &["meridian.oms.order.created", "meridian.oms.order.canceled"],
    )
    .await;

    let (_, other_key) = create_tenant(db, "Other");
    let other = Api::new(&server.base, &other_key);
    let (status, _) = other
        .send(Method::GET, &format!("/v1/orders/{id}/events"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn order_timeline_on_sqlite_with_the_embedded_bus() {
    let db = Db::sqlite();
    // The default bus is the embedded one.
    let server = Server::start(&db).await;
    timeline_end_to_end(&db, &server, "embedded").await;

    // The bus and relay metrics are there, labelled by topic or pattern, never by tenant.
    let text = crate::support::http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "meridian_bus_published_total{topic=\"deployment.local.platform.oms.order.created\"}",
        "meridian_bus_publish_duration_seconds_bucket{topic=\"deployment.local.platform.oms.order.canceled\"",
        "meridian_relay_lag_seconds_bucket{topic=\"deployment.local.platform.oms.order.created\"",
        "meridian_bus_delivered_total{pattern=\"deployment.local.platform.oms.order.*\",consumer=\"order-events\"}",
        "meridian_bus_acked_total{pattern=\"deployment.local.platform.oms.order.*\",consumer=\"order-events\"}",
        "meridian_bus_in_flight{pattern=\"deployment.local.platform.oms.order.*\",consumer=\"order-events\"} 0",
        "meridian_bus_end_to_end_seconds_bucket{pattern=\"deployment.local.platform.oms.order.*\",consumer=\"order-events\"",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    assert!(!text.contains("tenant"), "{text}");
}

/// Deletes a deployment's JetStream streams when the test ends, pass or fail.
pub(crate) struct Streams {
    pub(crate) url: String,
    pub(crate) deployment: String,
}

impl Drop for Streams {
    fn drop(&mut self) {
        let (url, deployment) = (self.url.clone(), self.deployment.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let work = async {
                    let bus = meridian_bus_nats::NatsBus::connect(&url).await.ok()?;
                    bus.delete_deployment(&deployment).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        })
        .join();
    }
}

/// Starts a server on `db` with the broker backend `backend` at `url` (its `BUS_URL`) in
/// `deployment`, and runs [`timeline_end_to_end`] against it. Fails, never skips, when the
/// broker is not reachable.
async fn timeline_on_broker(db: Db, backend: &str, url: String, deployment: String) {
    // `scheme://user:password@host:port/path` → `host:port`.
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let addr = rest.split('/').next().unwrap_or(rest);
    tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| {
            panic!("{backend} at {addr} is not reachable (run scripts/services.sh): {e}")
        });
    let server = Server::start_with(
        &db,
        &[
            ("BUS_BACKEND", backend.into()),
            ("BUS_URL", url),
            ("MERIDIAN_DEPLOYMENT_ID", deployment),
        ],
    )
    .await;
    timeline_end_to_end(&db, &server, backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_timeline_on_postgres_with_nats() {
    let (url, deployment) = (nats_url(), unique_deployment());
    let _streams = Streams {
        url: url.clone(),
        deployment: deployment.clone(),
    };
    timeline_on_broker(Db::postgres(), "nats", url, deployment).await;
}

fn amqp_url() -> String {
    std::env::var("MERIDIAN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Deletes a deployment's RabbitMQ exchanges and the order-events queue when the test ends.
struct Exchanges {
    url: String,
    deployment: String,
}

impl Drop for Exchanges {
    fn drop(&mut self) {
        let (url, deployment) = (self.url.clone(), self.deployment.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                // The backend's queue name: `meridian.{deployment}.{consumer}.{fnv1a32(pattern)}`.
                let pattern = format!("deployment.{deployment}.platform.oms.order.*");
                let hash = pattern.bytes().fold(0x811c_9dc5_u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                });
                let queue = format!("meridian.{deployment}.order-events.{hash:08x}");
                let work = async {
                    let bus = meridian_bus_rabbitmq::RabbitBus::connect(
                        meridian_bus_rabbitmq::RabbitConfig::new(url),
                    )
                    .await
                    .ok()?;
                    bus.delete_deployment(&deployment, &[queue]).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        })
        .join();
    }
}

fn kafka_url() -> String {
    std::env::var("MERIDIAN_TEST_KAFKA_URL").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Deletes a deployment's Kafka topics when the test ends, pass or fail.
struct KafkaTopics {
    url: String,
    deployment: String,
}

impl Drop for KafkaTopics {
    fn drop(&mut self) {
        let (url, deployment) = (self.url.clone(), self.deployment.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let work = async {
                    let bus = meridian_bus_kafka::KafkaBus::connect(&url).await.ok()?;
                    bus.delete_deployment(&deployment).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn order_timeline_on_sqlite_with_kafka() {
    let (url, deployment) = (kafka_url(), unique_deployment());
    let _topics = KafkaTopics {
        url: url.clone(),
        deployment: deployment.clone(),
    };
    let bus_url = format!("kafka://{}", url.trim_start_matches("kafka://"));
    timeline_on_broker(Db::sqlite(), "kafka", bus_url, deployment).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_timeline_on_sqlite_with_rabbitmq() {
    let (url, deployment) = (amqp_url(), unique_deployment());
    let _exchanges = Exchanges {
        url: url.clone(),
        deployment: deployment.clone(),
    };
    timeline_on_broker(Db::sqlite(), "rabbitmq", url, deployment).await;
}

/// A `nats-server` of the test's own, stopped and started again on the same port and
/// JetStream store.
struct PrivateNats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = PrivateNats {
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.start_again().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start_again(&mut self) {
        let child = spawn_nats(self.port, self.store.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop nats-server");
        }
    }
}

fn spawn_nats(port: u16, store: &Path) -> Child {
    Command::new(NATS_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER}: {e}"))
}

async fn open_store(db: &Db) -> Arc<dyn Store> {
    let Db::Sqlite { dir } = db else {
        unreachable!("this test runs on SQLite")
    };
    meridian_store::open(
        StoreConfig::Sqlite(meridian_store::sqlite::SqliteConfig {
            path: dir.path().join("meridian.db"),
            readers: 1,
        }),
        meridian_core::EventSource::new("local").unwrap(),
    )
    .await
    .expect("open the store beside the server")
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_commit_while_the_bus_is_down_and_the_outbox_drains_after() {
    let mut nats = PrivateNats::start().await;
    let db = Db::sqlite();
    let server = Server::start_with(
        &db,
        &[("BUS_BACKEND", "nats".into()), ("BUS_URL", nats.url())],
    )
    .await;
    let (_, key) = create_tenant(&db, "Outage");
    let api = Api::new(&server.base, &key);
    api.seed("OUT-1", &[100]).await;
    let before = api.place_one("OUT-1").await;
    wait_for_timeline(&api, &before, &["meridian.oms.order.created"]).await;

    nats.stop().await;
    let mut during = Vec::new();
    for _ in 0..5 {
        // Degrade, don't fail: 201 while the bus is down.
        during.push(api.place_one("OUT-1").await);
    }
    let ready = api.ok(Method::GET, "/readyz", None).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["bus"], "unavailable", "{ready}");
    let store = open_store(&db).await;
    assert!(
        !store.outbox_unsent(100).await.unwrap().is_empty(),
        "the events wait in the outbox"
    );

    nats.start_again().await;
    for id in &during {
        wait_for_timeline(&api, id, &["meridian.oms.order.created"]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent = store.outbox_unsent(100).await.unwrap();
        if unsent.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain: {unsent:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = api.ok(Method::GET, "/readyz", None).await;
    assert_eq!(ready["bus"], "ok", "{ready}");
}

/// A message the order-events projection cannot handle is retried, dead-lettered into the
/// store, listed by the API and the CLI, and replayed by the CLI (where it fails again and
/// comes back as a new dead letter).
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_and_replayed_over_the_api_and_cli() {
    use meridian_bus::{Bus, Message};
    use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};

    let db = Db::sqlite();
    let server = Server::start(&db).await;
    let (tenant, key) = create_tenant(&db, "Dead");
    let api = Api::new(&server.base, &key);

    // Another process publishes an order event whose subject is no order id.
    let Db::Sqlite { dir } = &db else {
        unreachable!()
    };
    let bus = EmbeddedBus::open(EmbeddedConfig::Sqlite {
        path: dir.path().join("meridian.db"),
    })
    .await
    .unwrap();
    let envelope = meridian_core::EventSource::new("local").unwrap().event(
        "oms",
        "order.created",
        tenant.parse().unwrap(),
        "not-an-order".to_owned(),
        json!({"id": "not-an-order"}),
        meridian_core::now(),
    );
    bus.publish(Message::new(
        envelope.topic.clone(),
        envelope.envelope.clone(),
    ))
    .await
    .unwrap();

    let wait_for = |n: usize| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let page = api.ok(Method::GET, "/v1/dead-letters", None).await;
                // The fulfillment consumers refuse the event too; this test follows the
                // order-events consumer's dead letters.
                let items: Vec<Value> = page["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|d| d["consumer"] == "order-events")
                    .collect();
                if items.len() >= n {
                    return items;
                }
                assert!(
                    Instant::now() < deadline,
                    "{n} dead letter(s) expected: {page}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let first = wait_for(1).await.remove(0);
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["attempts"], 3);
    assert_eq!(first["consumer"], "order-events");
    assert_eq!(first["envelope"]["id"], envelope.envelope.id.to_string());
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("not an order id"),
        "{first}"
    );
    api.ok(Method::GET, &format!("/v1/dead-letters/{id}"), None)
        .await;

    let out = crate::support::run_cli(&db, &["dead-letters", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = crate::support::run_cli(&db, &["dead-letters", "show", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], id.as_str());
    let out = crate::support::run_cli(&db, &["dead-letters", "replay", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The replay fails the same way and is dead-lettered again; the first is marked.
    let both = wait_for(2).await;
    assert_eq!(both[1]["id"], id.as_str());
    assert!(both[1]["replayed_at"].is_string(), "{}", both[1]);
    assert_eq!(both[0]["envelope"]["id"], envelope.envelope.id.to_string());
    let out = crate::support::run_cli(
        &db,
        &[
            "dead-letters",
            "show",
            "0190a0b0-0000-7000-8000-000000000000",
        ],
    );
    assert!(!out.status.success());
}
