//! `meridian sidecar` as a black box: the real binary, over real HTTP, on the embedded bus
//! (SQLite) and on NATS. The ACL matrix (every pool type × allowed and denied topics ×
//! tenant binding), refused publishes that never reach the bus, a tenant-bound plugin that
//! never sees another tenant's events, state that survives `kill -9`, and a durable
//! subscription that resumes without redelivering what was acked.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, Message, StartAt, SubscribeOptions, TopicPattern};
use meridian_core::{Envelope, TenantId, Topic};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::EXE;

const TOKEN: &str = "test-sidecar-token-0123456789";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Nats,
}

/// One test's world: a data directory, a deployment id of its own (so NATS streams of
/// concurrent tests never meet) and the bus backend.
struct World {
    dir: tempfile::TempDir,
    deployment: String,
    backend: Backend,
    nats_url: String,
}

fn nats_url() -> String {
    std::env::var("MERIDIAN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl World {
    fn new(backend: Backend) -> World {
        World {
            dir: tempfile::tempdir().expect("tempdir"),
            deployment: format!("sc{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            backend,
            nats_url: nats_url(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("STORAGE_BACKEND", "sqlite".to_owned()),
            ("MERIDIAN_DATA_DIR", self.dir.path().display().to_string()),
            ("MERIDIAN_DEPLOYMENT_ID", self.deployment.clone()),
        ];
        match self.backend {
            Backend::Embedded => env.push(("BUS_BACKEND", "embedded".into())),
            Backend::Nats => {
                env.push(("BUS_BACKEND", "nats".into()));
                env.push(("BUS_URL", self.nats_url.clone()));
            }
        }
        env
    }

    /// The test's own connection to the same bus.
    async fn bus(&self) -> Arc<dyn Bus> {
        match self.backend {
            Backend::Embedded => Arc::new(
                meridian_bus_embedded::EmbeddedBus::open(
                    meridian_bus_embedded::EmbeddedConfig::Sqlite {
                        path: self.dir.path().join("meridian.db"),
                    },
                )
                .await
                .expect("open the embedded bus"),
            ),
            Backend::Nats => Arc::new(
                meridian_bus_nats::NatsBus::connect(&self.nats_url)
                    .await
                    .expect("NATS must run at MERIDIAN_TEST_NATS_URL"),
            ),
        }
    }

    fn topic(&self, rel: &str) -> Topic {
        Topic::parse(&format!("deployment.{}.{rel}", self.deployment)).unwrap()
    }

    fn manifest(&self, name: &str, pool: &str, tenant: Option<TenantId>) -> PathBuf {
        let tenant = tenant
            .map(|t| format!("tenant = \"{t}\"\n"))
            .unwrap_or_default();
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\npool = \"{pool}\"\n{tenant}\
                 [run]\ncommand = [\"/bin/true\"]\n"
            ),
        )
        .unwrap();
        path
    }

    async fn publish(&self, bus: &dyn Bus, rel: &str, tenant: TenantId, data: Value) -> Envelope {
        let env = Envelope::new(
            "/test",
            "meridian.test",
            tenant,
            "k",
            meridian_core::now(),
            data,
        );
        bus.publish(Message::new(self.topic(rel), env.clone()))
            .await
            .expect("publish");
        env
    }
}

struct Sidecar {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Sidecar {
    async fn start(world: &World, manifest: &PathBuf) -> Sidecar {
        let mut cmd = Command::new(EXE);
        cmd.arg("sidecar")
            .arg("--manifest")
            .arg(manifest)
            .args(["--ack-wait-secs", "2"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MERIDIAN_SIDECAR_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(world.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn meridian sidecar");
        let base = crate::support::sidecar_base_url(&mut child).await;
        Sidecar {
            child,
            base,
            http: crate::support::http(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("sidecar request");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, v, ctype)
    }

    async fn publish(&self, rel: &str, tenant: Option<TenantId>) -> (StatusCode, Value, String) {
        let mut body = json!({"topic": rel, "subject": "s-1", "data": {"n": 1}});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        self.call(reqwest::Method::POST, "/v1/publish", Some(body))
            .await
    }

    async fn subscribe(&self, name: &str, pattern: &str) -> StatusCode {
        self.call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": name, "pattern": pattern, "start": "earliest"})),
        )
        .await
        .0
    }

    async fn poll(&self, name: &str) -> Vec<Value> {
        let (status, body, _) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/subscriptions/{name}/messages?max=64&wait_ms=1000"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    async fn ack(&self, name: &str, ids: &[u64]) {
        let (status, body, _) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/subscriptions/{name}/ack"),
                Some(json!({"delivery_ids": ids})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["settled"], json!(ids.len()), "{body}");
    }

    async fn kill9(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }
}

const POOLS: [&str; 5] = ["dgm", "oms", "fulfillment", "notify", "analytics"];

/// (topic relative to the deployment, pools that may publish it, pools that may subscribe).
const MATRIX: &[(&str, &[&str], &[&str])] = &[
    (
        "platform.data.stock.snapshot",
        &["dgm"],
        &["dgm", "analytics"],
    ),
    (
        "platform.oms.order.created",
        &["oms"],
        &["oms", "analytics"],
    ),
    (
        "platform.fulfillment.shipment.created",
        &["fulfillment"],
        &["fulfillment", "analytics"],
    ),
    ("platform.notify.email.sent", &["notify"], &["notify"]),
    ("platform.billing.invoice.issued", &[], &[]),
    ("platform.auth.revoked", &[], &[]),
];

const DOMAINS: [&str; 6] = ["data", "oms", "fulfillment", "notify", "billing", "auth"];

async fn acl_matrix(backend: Backend) {
    let world = World::new(backend);
    let bus = world.bus().await;
    // One observer per domain, open before anything is published.
    let mut observers = HashMap::new();
    for d in DOMAINS {
        let pattern =
            TopicPattern::parse(&format!("deployment.{}.platform.{d}.**", world.deployment))
                .unwrap();
        let mut opts = SubscribeOptions::ephemeral(&format!("observer-{d}"));
        opts.start = StartAt::Earliest;
        observers.insert(d, bus.subscribe(&pattern, opts).await.expect("observe"));
    }
    let (a, b) = (TenantId::new(), TenantId::new());
    // What the sidecars got onto the bus, by (topic, tenant).
    let mut expected: BTreeSet<(String, TenantId)> = BTreeSet::new();
    for pool in POOLS {
        for bound in [None, Some(a)] {
            let name = format!("{pool}-{}", if bound.is_some() { "bound" } else { "free" });
            let sidecar = Sidecar::start(&world, &world.manifest(&name, pool, bound)).await;
            for (i, (rel, publishers, receivers)) in MATRIX.iter().enumerate() {
                let case = format!("{name} {rel}");
                let (status, body, ctype) = sidecar.publish(rel, Some(a)).await;
                if publishers.contains(&pool) {
                    assert_eq!(status, StatusCode::ACCEPTED, "publish {case}: {body}");
                    expected.insert((world.topic(rel).to_string(), a));
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "publish {case}: {body}");
                    assert_eq!(ctype, "application/problem+json", "{case}");
                    assert_eq!(body["code"], "acl_denied", "{case}: {body}");
                }
                // Another tenant: a bound plugin may not publish for it at all.
                let (status, body, _) = sidecar.publish(rel, Some(b)).await;
                if bound.is_none() && publishers.contains(&pool) {
                    assert_eq!(status, StatusCode::ACCEPTED, "publish for b {case}: {body}");
                    expected.insert((world.topic(rel).to_string(), b));
                } else {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "publish for b {case}: {body}"
                    );
                    assert_eq!(body["code"], "acl_denied", "{case}: {body}");
                }
                let status = sidecar.subscribe(&format!("s{i}"), rel).await;
                let want = if receivers.contains(&pool) {
                    StatusCode::CREATED
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(status, want, "subscribe {case}");
            }
            // Outside the deployment, in full.
            let (status, body, _) = sidecar
                .publish("deployment.elsewhere.platform.data.stock.snapshot", Some(a))
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            let metrics = sidecar
                .http
                .get(format!("{}/metrics", sidecar.base))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                metrics.contains("meridian_sidecar_acl_denials_total{direction=\"publish\""),
                "{metrics}"
            );
            sidecar.kill9().await;
        }
    }
    // A marker per domain, published last: everything the sidecars put on the bus lies
    // before it, and nothing refused is among it.
    let mut seen = BTreeSet::new();
    let marker = TenantId::new();
    for d in DOMAINS {
        world
            .publish(
                bus.as_ref(),
                &format!("platform.{d}.marker.end"),
                marker,
                json!({}),
            )
            .await;
    }
    for d in DOMAINS {
        let sub = observers.get_mut(d).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(remaining, sub.next())
                .await
                .unwrap_or_else(|_| panic!("no marker on {d}"))
                .expect("delivery");
            let m = delivery.message.clone();
            let _ = delivery.ack().await;
            let env = m.envelope();
            if env.tenant == marker {
                break;
            }
            assert!(
                env.source.contains("/plugins/"),
                "only sidecars published: {m:?}"
            );
            seen.insert((m.topic.to_string(), env.tenant));
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_matrix_through_a_real_sidecar_on_the_embedded_bus() {
    acl_matrix(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_matrix_through_a_real_sidecar_on_nats() {
    acl_matrix(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_refuses_requests_without_its_token_and_reports_health() {
    let world = World::new(Backend::Embedded);
    let sidecar = Sidecar::start(&world, &world.manifest("health", "oms", None)).await;
    let resp = sidecar
        .http
        .post(format!("{}/v1/publish", sidecar.base))
        .json(&json!({"topic": "platform.oms.order.created", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz"] {
        let resp = sidecar
            .http
            .get(format!("{}{path}", sidecar.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["heartbeat_age_seconds"].is_number(), "{path}: {v}");
    }
    let (status, _, _) = sidecar
        .call(reqwest::Method::POST, "/v1/heartbeat", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v, _) = sidecar.call(reqwest::Method::GET, "/v1/config", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["pool"], "oms");
    assert_eq!(v["deployment"], json!(world.deployment));
    // An unbound plugin must say which tenant it publishes for.
    let (status, v, _) = sidecar.publish("platform.oms.order.created", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

async fn tenant_bound(backend: Backend) {
    let world = World::new(backend);
    let bus = world.bus().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let sidecar = Sidecar::start(&world, &world.manifest("bound", "oms", Some(a))).await;
    assert_eq!(
        sidecar.subscribe("orders", "platform.oms.order.*").await,
        StatusCode::CREATED
    );
    let mut published_for_a = BTreeSet::new();
    for i in 0..200 {
        let tenant = if i % 2 == 0 { a } else { b };
        let env = world
            .publish(
                bus.as_ref(),
                "platform.oms.order.created",
                tenant,
                json!({"i": i}),
            )
            .await;
        if tenant == a {
            published_for_a.insert(env.id.to_string());
        }
    }
    let marker = world
        .publish(
            bus.as_ref(),
            "platform.oms.order.created",
            a,
            json!({"marker": true}),
        )
        .await;
    published_for_a.insert(marker.id.to_string());
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !received.contains(&marker.id.to_string()) {
        assert!(Instant::now() < deadline, "the marker never arrived");
        let batch = sidecar.poll("orders").await;
        let ids: Vec<u64> = batch
            .iter()
            .map(|m| m["delivery_id"].as_u64().unwrap())
            .collect();
        for m in &batch {
            assert_eq!(
                m["event"]["tenant"],
                json!(a),
                "another tenant's event: {m}"
            );
            received.insert(m["event"]["id"].as_str().unwrap().to_owned());
        }
        if !ids.is_empty() {
            sidecar.ack("orders", &ids).await;
        }
    }
    assert_eq!(received, published_for_a);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_bound_plugin_never_sees_another_tenants_events_embedded() {
    tenant_bound(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_bound_plugin_never_sees_another_tenants_events_nats() {
    tenant_bound(Backend::Nats).await;
}

async fn survives_kill_9(backend: Backend) {
    let world = World::new(backend);
    let bus = world.bus().await;
    let tenant = TenantId::new();
    let manifest = world.manifest("worker", "oms", None);
    let sidecar = Sidecar::start(&world, &manifest).await;
    let (status, v, _) = sidecar
        .call(
            reqwest::Method::PUT,
            "/v1/state/cursor",
            Some(json!({"value": {"n": 42, "names": ["a", "b"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        sidecar.subscribe("work", "platform.oms.**").await,
        StatusCode::CREATED
    );
    let mut ids = Vec::new();
    for i in 0..6 {
        let env = world
            .publish(
                bus.as_ref(),
                "platform.oms.order.created",
                tenant,
                json!({"i": i}),
            )
            .await;
        ids.push(env.id.to_string());
    }
    // Receive all six, ack three.
    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 6 {
        assert!(Instant::now() < deadline, "only {} of 6 arrived", got.len());
        got.extend(sidecar.poll("work").await);
    }
    let acked: Vec<&Value> = got.iter().take(3).collect();
    let acked_ids: BTreeSet<String> = acked
        .iter()
        .map(|m| m["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    let delivery_ids: Vec<u64> = acked
        .iter()
        .map(|m| m["delivery_id"].as_u64().unwrap())
        .collect();
    sidecar.ack("work", &delivery_ids).await;
    sidecar.kill9().await;

    for i in 6..8 {
        let env = world
            .publish(
                bus.as_ref(),
                "platform.oms.order.created",
                tenant,
                json!({"i": i}),
            )
            .await;
        ids.push(env.id.to_string());
    }
    // Restarted on the same state: the state is back and the subscription resumes by
    // itself.
    let sidecar = Sidecar::start(&world, &manifest).await;
    let (status, v, _) = sidecar
        .call(reqwest::Method::GET, "/v1/state/cursor", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["value"], json!({"n": 42, "names": ["a", "b"]}));
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| !acked_ids.contains(*id))
        .cloned()
        .collect();
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received != want {
        assert!(
            Instant::now() < deadline,
            "after the restart got {received:?}, want {want:?}"
        );
        let batch = sidecar.poll("work").await;
        let delivery_ids: Vec<u64> = batch
            .iter()
            .map(|m| m["delivery_id"].as_u64().unwrap())
            .collect();
        for m in &batch {
            let id = m["event"]["id"].as_str().unwrap().to_owned();
            assert!(!acked_ids.contains(&id), "an acked message came back: {m}");
            received.insert(id);
        }
        if !delivery_ids.is_empty() {
            sidecar.ack("work", &delivery_ids).await;
        }
    }
    // State delete, then it is gone.
    let (status, _, _) = sidecar
        .call(reqwest::Method::DELETE, "/v1/state/cursor", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v, ctype) = sidecar
        .call(reqwest::Method::GET, "/v1/state/cursor", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(ctype, "application/problem+json");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_subscriptions_survive_kill_9_embedded() {
    survives_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_subscriptions_survive_kill_9_nats() {
    survives_kill_9(Backend::Nats).await;
}

/// A `nats-server` of the test's own, so that it can be stopped.
fn spawn_nats(port: u16, store: &std::path::Path) -> Child {
    Command::new("/usr/sbin/nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start /usr/sbin/nats-server")
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(sidecar: &Sidecar) -> StatusCode {
    sidecar
        .http
        .get(format!("{}/readyz", sidecar.base))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `/readyz` until it answers `want`.
async fn wait_for_readyz(sidecar: &Sidecar, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(sidecar).await != want {
        assert!(Instant::now() < deadline, "/readyz never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_bus() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let mut nats = spawn_nats(port, store.path());
    wait_for_port(port).await;
    let mut world = World::new(Backend::Nats);
    world.nats_url = format!("nats://127.0.0.1:{port}");
    let sidecar = Sidecar::start(&world, &world.manifest("ready", "oms", None)).await;
    assert_eq!(readyz(&sidecar).await, StatusCode::OK);
    nats.kill().await.expect("stop nats-server");
    wait_for_readyz(&sidecar, StatusCode::SERVICE_UNAVAILABLE).await;
    // Liveness does not depend on the bus.
    let live = sidecar
        .http
        .get(format!("{}/healthz", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let _nats = spawn_nats(port, store.path());
    wait_for_readyz(&sidecar, StatusCode::OK).await;
}
