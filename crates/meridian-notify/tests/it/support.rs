//! A webhook receiver the tests start (axum on a random port) that verifies every
//! delivery's Standard Webhooks signature, answers with scripted statuses, and records
//! what it got; and the stack under test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use meridian_bus::Bus;
use meridian_bus::consumer::NoopSink;
use meridian_catalog::NewProduct;
use meridian_core::{Money, Quantity, TenantId};
use meridian_inventory::NewWarehouse;
use meridian_notify::{RetryPolicy, Wake, WorkerConfig};
use meridian_orders::{
    AllocationStrategy, Customer, Order, OrderLineRequest, OrderRequest, PlaceOrder,
};
use meridian_relay::{Relay, RelayConfig};
use meridian_store::Store;
use meridian_store::notify::{NewWebhookEndpoint, WebhookEndpoint};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub webhook_id: String,
    pub signature_valid: bool,
    pub authorization: String,
    pub body: serde_json::Value,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct ReceiverState {
    secret: Mutex<Option<String>>,
    script: Mutex<VecDeque<u16>>,
    received: Mutex<Vec<Received>>,
    changed: Notify,
}

/// The test's webhook endpoint.
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let secret = state.secret.lock().clone().unwrap_or_default();
    let signature_valid = meridian_notify::signing::verify(
        &secret,
        &id,
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &body,
        chrono::Utc::now().timestamp(),
    )
    .is_ok();
    let status = state.script.lock().pop_front().unwrap_or(200);
    state.received.lock().push(Received {
        webhook_id: id,
        signature_valid,
        authorization: header("authorization"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
    });
    state.changed.notify_waiters();
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// Starts a receiver that answers the statuses of `script` in turn, then 200.
    pub async fn start(script: &[u16]) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        state.script.lock().extend(script.iter().copied());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
            server,
        }
    }

    /// The secret the receiver verifies signatures with.
    pub fn trust(&self, secret: &str) {
        *self.state.secret.lock() = Some(secret.to_owned());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Waits until `done` holds for what was received; fails after 30 s.
    pub async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let wait = async {
            loop {
                let changed = self.state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let received = self.received();
                if done(&received) {
                    return received;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("never received {what}; got {:#?}", self.received()))
    }
}

/// The store and bus under test, with the relay, the notification consumers and the
/// delivery worker running on them.
pub struct Stack {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub deployment: String,
    pub tenant: TenantId,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Retries quick enough for a test.
pub fn fast_retries() -> WorkerConfig {
    WorkerConfig {
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            max_attempts: 5,
        },
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        // The test receivers listen on 127.0.0.1.
        address_guard: meridian_http::AddressGuard::ALLOW_PRIVATE,
        ..WorkerConfig::default()
    }
}

impl Stack {
    /// Seeds a tenant with one stocked SKU, declares the consumers, then starts them, the
    /// worker (with `worker_config`) and the relay.
    pub async fn start_with(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        deployment: &str,
        worker_config: WorkerConfig,
    ) -> Stack {
        let tenant = store.create_tenant("t").await.unwrap().id;
        let sku: meridian_core::Sku = "SKU-1".parse().unwrap();
        store
            .create_product(
                tenant,
                NewProduct {
                    sku: sku.clone(),
                    name: "One".into(),
                    description: None,
                    price: Money::new(100, "USD".parse().unwrap()),
                    attributes: Default::default(),
                },
            )
            .await
            .unwrap();
        let code = "W1".parse().unwrap();
        store
            .create_warehouse(
                tenant,
                NewWarehouse {
                    code: "W1".parse().unwrap(),
                    name: "W1".into(),
                    priority: 1,
                },
            )
            .await
            .unwrap();
        store
            .set_stock(tenant, &code, &sku, 1000, "seed")
            .await
            .unwrap();

        meridian_notify::declare(bus.as_ref(), deployment)
            .await
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let wake = Wake::new();
        let consumers = {
            let (bus, store, shutdown, wake) =
                (bus.clone(), store.clone(), shutdown.clone(), wake.clone());
            let deployment = deployment.to_owned();
            tokio::spawn(async move {
                meridian_notify::run_consumers(
                    bus,
                    store,
                    &deployment,
                    Arc::new(NoopSink),
                    wake,
                    shutdown,
                )
                .await
                .unwrap();
            })
        };
        let worker = tokio::spawn(meridian_notify::run_worker(
            store.clone(),
            worker_config,
            wake,
            shutdown.clone(),
        ));
        let relay = Relay::new(store.clone(), bus.clone(), RelayConfig::default());
        let relay = tokio::spawn(relay.run(shutdown));
        Stack {
            store,
            bus,
            deployment: deployment.to_owned(),
            tenant,
            stop,
            tasks: vec![consumers, worker, relay],
        }
    }

    /// Registers `receiver` for `event_types` and tells it the secret.
    pub async fn endpoint(&self, receiver: &Receiver, event_types: &[&str]) -> WebhookEndpoint {
        let secret = meridian_notify::signing::new_secret();
        receiver.trust(&secret);
        self.store
            .create_webhook(
                self.tenant,
                NewWebhookEndpoint {
                    url: receiver.url.clone(),
                    description: String::new(),
                    event_types: event_types.iter().map(|s| s.to_string()).collect(),
                    enabled: true,
                    secret,
                },
            )
            .await
            .unwrap()
    }

    pub async fn place_order(&self) -> Order {
        self.place_order_for(None).await
    }

    pub async fn place_order_for(&self, customer: Option<Customer>) -> Order {
        let request = OrderRequest::new(
            vec![OrderLineRequest {
                sku: "SKU-1".parse().unwrap(),
                quantity: Quantity::new(1).unwrap(),
            }],
            customer,
            None,
            AllocationStrategy::Priority,
        )
        .unwrap();
        self.store
            .place_order(PlaceOrder {
                tenant_id: self.tenant,
                request,
                idempotency_key: None,
                request_hash: String::new(),
            })
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a background task did not stop")
                .unwrap();
        }
    }
}

/// A tiny SMTP server that accepts every message and records it: a real SMTP sink.
pub struct SmtpSink {
    pub address: String,
    messages: Arc<Mutex<Vec<SunkMail>>>,
    changed: Arc<Notify>,
    server: JoinHandle<()>,
}

#[derive(Clone, Debug)]
pub struct SunkMail {
    pub rcpt: String,
    pub data: String,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let messages: Arc<Mutex<Vec<SunkMail>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (m, c) = (messages.clone(), changed.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (m, c) = (m.clone(), c.clone());
                tokio::spawn(async move {
                    let mut s = BufReader::new(socket);
                    let _ = s.get_mut().write_all(b"220 sink ready\r\n").await;
                    let (mut rcpt, mut line) = (String::new(), String::new());
                    loop {
                        line.clear();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_owned();
                        let upper = cmd.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-sink\r\n250 OK\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            rcpt = cmd[8..].trim_matches(['<', '>', ' ']).to_owned();
                            b"250 OK\r\n"
                        } else if upper == "DATA" {
                            let _ = s.get_mut().write_all(b"354 go on\r\n").await;
                            let mut data = String::new();
                            loop {
                                line.clear();
                                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" {
                                    break;
                                }
                                data.push_str(&line);
                            }
                            m.lock().push(SunkMail {
                                rcpt: rcpt.clone(),
                                data,
                            });
                            c.notify_waiters();
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = s.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 OK\r\n"
                        };
                        if s.get_mut().write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SmtpSink {
            address,
            messages,
            changed,
            server,
        }
    }

    /// Waits for the first message; fails after 30 s.
    pub async fn first(&self) -> SunkMail {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(m) = self.messages.lock().first() {
                    return m.clone();
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the SMTP sink never received a message")
    }

    pub fn count(&self) -> usize {
        self.messages.lock().len()
    }
}

/// An address where nothing listens: a primary SMTP provider that is down.
pub async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}
