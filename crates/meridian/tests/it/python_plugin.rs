//! The Python SDK and the `fraud-screen` reference plugin, end to end: a real
//! `meridian sidecar` on the embedded bus, the real plugin run by `python3`, order-created
//! events published onto the bus and the decisions read back from it; and the whole loop
//! through `meridian serve`, whose instance manager runs the registered plugin and whose
//! orders service applies its decisions (holds block labels until released). Python is
//! required: these tests fail, never skip, when `python3` cannot be started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, Message, StartAt, SubscribeOptions, Subscription, TopicPattern};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{Api, Db, EXE, Server, create_tenant, run_cli};

const TOKEN: &str = "python-plugin-token-0123456789";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sdk_dir() -> PathBuf {
    repo_root().join("sdk/python")
}

/// A data directory, a deployment of its own and the sidecar for the fraud-screen manifest.
struct World {
    dir: tempfile::TempDir,
    deployment: String,
    /// Killed when the world is dropped.
    _sidecar: Child,
    url: String,
}

/// Starts `meridian sidecar` for the fraud-screen manifest on the embedded stack in `dir`,
/// with `extra` arguments; the process and its URL (from the address line it prints).
pub(crate) async fn spawn_fraud_screen_sidecar(
    dir: &Path,
    deployment: &str,
    token: &str,
    extra: &[&std::ffi::OsStr],
) -> (Child, String) {
    let mut child = Command::new(EXE)
        .arg("sidecar")
        .arg("--manifest")
        .arg(repo_root().join("plugins/fraud-screen/manifest.toml"))
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MERIDIAN_SIDECAR_TOKEN", token)
        .env("RUST_LOG", "warn")
        .env("STORAGE_BACKEND", "sqlite")
        .env("MERIDIAN_DATA_DIR", dir)
        .env("MERIDIAN_DEPLOYMENT_ID", deployment)
        .env("BUS_BACKEND", "embedded")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian sidecar");
    let url = crate::support::sidecar_base_url(&mut child).await;
    (child, url)
}

impl World {
    async fn start(config: Value) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let deployment = format!("py{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let (child, url) = spawn_fraud_screen_sidecar(
            dir.path(),
            &deployment,
            TOKEN,
            &["--plugin-config".as_ref(), config_path.as_os_str()],
        )
        .await;
        World {
            dir,
            deployment,
            _sidecar: child,
            url,
        }
    }

    /// The test's own connection to the sidecar's bus.
    async fn bus(&self) -> EmbeddedBus {
        EmbeddedBus::open(EmbeddedConfig::Sqlite {
            path: self.dir.path().join("meridian.db"),
        })
        .await
        .expect("open the embedded bus")
    }

    fn topic(&self, rel: &str) -> String {
        format!("deployment.{}.{rel}", self.deployment)
    }

    /// Observes the decision topic from its first message on.
    async fn decisions(&self, bus: &EmbeddedBus) -> Box<dyn Subscription> {
        let pattern = TopicPattern::parse(&self.topic("platform.oms.fraud.decision")).unwrap();
        let mut opts = SubscribeOptions::ephemeral("fraud-decisions");
        opts.start = StartAt::Earliest;
        bus.subscribe(&pattern, opts).await.expect("observe")
    }

    /// Publishes an order-created event as the orders service does.
    async fn order(&self, bus: &EmbeddedBus, tenant: TenantId, amount: i64, qty: i64) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let data = json!({
            "id": id, "tenant_id": tenant, "status": "pending",
            "lines": [{"sku": "A-1", "name": "Widget", "quantity": qty,
                       "unit_price": {"amount": amount / qty, "currency": "EUR"}}],
            "total": {"amount": amount, "currency": "EUR"},
        });
        let env = Envelope::new(
            "/meridian/test/orders",
            "meridian.oms.order.created",
            tenant,
            id.clone(),
            meridian_core::now(),
            data,
        );
        let topic = Topic::parse(&self.topic("platform.oms.order.created")).unwrap();
        bus.publish(Message::new(topic, env))
            .await
            .expect("publish order.created");
        id
    }

    /// Starts `python3 plugins/fraud-screen/fraud_screen.py` as the instance manager would.
    fn plugin(&self) -> Child {
        Command::new("python3")
            .arg(repo_root().join("plugins/fraud-screen/fraud_screen.py"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MERIDIAN_SIDECAR_URL", &self.url)
            .env("MERIDIAN_SIDECAR_TOKEN", TOKEN)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 must be installed to run the Python plugin tests")
    }

    async fn state(&self, key: &str) -> Option<Value> {
        let resp = crate::support::http()
            .get(format!("{}/v1/state/{key}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("state request");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let v: Value = resp.json().await.unwrap();
        Some(v["value"].clone())
    }

    /// Waits until the plugin's durable counts report `screened` orders.
    async fn counts_after(&self, screened: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(counts) = self.state("counts").await
                && counts["screened"].as_u64() >= Some(screened)
            {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the counts never reached {screened}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The next `n` decisions: order id → (decision, reason, tenant, source).
async fn next_decisions(
    sub: &mut Box<dyn Subscription>,
    n: usize,
) -> BTreeMap<String, (String, String, TenantId, String)> {
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(remaining, sub.next())
            .await
            .expect("the decisions arrived in time")
            .expect("delivery");
        let env = delivery.message.envelope().clone();
        let _ = delivery.ack().await;
        let order_id = env.data["order_id"].as_str().expect("order_id").to_owned();
        let decision = env.data["decision"].as_str().expect("decision").to_owned();
        let reason = env.data["reason"].as_str().expect("reason").to_owned();
        out.insert(order_id, (decision, reason, env.tenant, env.source));
    }
    out
}

/// Sends SIGTERM and waits for the plugin to finish its batch and exit.
async fn stop(mut plugin: Child) {
    let pid = plugin.id().expect("the plugin runs");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), plugin.wait())
        .await
        .expect("the plugin stopped on SIGTERM")
        .unwrap();
    assert!(exit.success(), "the plugin exited with {exit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fraud_screen_holds_orders_above_the_threshold_and_keeps_its_counts() {
    let world = World::start(json!({"max_amount": 10_000, "max_quantity": 10})).await;
    let bus = world.bus().await;
    let mut decisions = world.decisions(&bus).await;
    let tenant = TenantId::new();
    let over = world.order(&bus, tenant, 50_000, 2).await;
    let under = world.order(&bus, tenant, 2_500, 1).await;

    let plugin = world.plugin();
    let got = next_decisions(&mut decisions, 2).await;
    let source = format!("/meridian/{}/plugins/fraud-screen", world.deployment);
    let (decision, reason, t, src) = &got[&over];
    assert_eq!((decision.as_str(), *t), ("hold", tenant), "{reason}");
    assert!(reason.contains("50000"), "{reason}");
    assert_eq!(src, &source);
    let (decision, reason, t, src) = &got[&under];
    assert_eq!((decision.as_str(), *t), ("approve", tenant), "{reason}");
    assert_eq!(src, &source);
    let counts = world.counts_after(2).await;
    assert_eq!(counts, json!({"screened": 2, "hold": 1, "approve": 1}));

    // A restart of the plugin: its counts come back from the sidecar's state and it resumes
    // after the last acknowledged order (the first two are not screened again).
    stop(plugin).await;
    let many = world.order(&bus, tenant, 1_100, 11).await;
    let plugin = world.plugin();
    let got = next_decisions(&mut decisions, 1).await;
    let (decision, reason, _, _) = &got[&many];
    assert_eq!(decision, "hold", "{reason}");
    assert!(reason.contains("quantity 11"), "{reason}");
    let counts = world.counts_after(3).await;
    assert_eq!(counts, json!({"screened": 3, "hold": 2, "approve": 1}));
    stop(plugin).await;
}

/// A tiny program against the SDK: what it sees of the sidecar's errors.
const SDK_ERRORS: &str = r#"
import json, os, sys
from meridian_plugin import Sidecar, SidecarError, run

out = {}
sc = Sidecar.from_env()
try:
    sc.publish("platform.data.stock.snapshot", {"sku": "A-1"}, tenant=sys.argv[1])
    out["denied"] = None
except SidecarError as e:
    out["denied"] = {"code": e.code, "status": e.status, "detail": e.detail}
out["published"] = sc.publish("platform.oms.fraud.decision", {"n": 1}, tenant=sys.argv[1])["topic"]
out["missing"] = sc.state_get("nothing-here", "default")
sc.state_put("k", {"a": [1, 2]})
out["state"] = sc.state_get("k")
out["deleted"] = [sc.state_delete("k"), sc.state_delete("k")]
sc.heartbeat()
out["pool"] = sc.config()["pool"]
out["created"] = [sc.subscribe("d", "platform.oms.fraud.decision", start="earliest"),
                  sc.subscribe("d", "platform.oms.fraud.decision")]
attempts = []
def handler(message):
    attempts.append(message["attempt"])
    if len(attempts) == 1:
        raise RuntimeError("first attempt fails")
run(sc, "d", handler, wait_ms=500, nack_delay_ms=10, stop=lambda: len(attempts) >= 2)
out["attempts"] = attempts
out["after_ack"] = sc.poll("d", wait_ms=300)
try:
    Sidecar(sc.url, "wrong-token-0123456789").heartbeat()
    out["unauthorized"] = None
except SidecarError as e:
    out["unauthorized"] = {"code": e.code, "status": e.status}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_raises_sidecar_errors_with_their_problem_code() {
    let world = World::start(json!({})).await;
    let tenant = TenantId::new();
    let output = Command::new("python3")
        .args(["-c", SDK_ERRORS, &tenant.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PYTHONPATH", sdk_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MERIDIAN_SIDECAR_URL", &world.url)
        .env("MERIDIAN_SIDECAR_TOKEN", TOKEN)
        .output()
        .await
        .expect("python3 must be installed to run the Python plugin tests");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).expect("a JSON line");
    assert_eq!(out["denied"]["code"], "acl_denied", "{out}");
    assert_eq!(out["denied"]["status"], 403, "{out}");
    assert!(
        out["denied"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_eq!(
        out["published"],
        json!(world.topic("platform.oms.fraud.decision"))
    );
    assert_eq!(out["missing"], "default");
    assert_eq!(out["state"], json!({"a": [1, 2]}));
    assert_eq!(out["deleted"], json!([true, false]));
    assert_eq!(out["pool"], "oms");
    // run(): a failing handler nacks, the message comes back, a passing one acks it.
    assert_eq!(out["created"], json!([true, false]), "{out}");
    assert_eq!(out["attempts"], json!([1, 2]), "{out}");
    assert_eq!(out["after_ack"], json!([]), "{out}");
    assert_eq!(out["unauthorized"]["code"], "unauthorized", "{out}");
    assert_eq!(out["unauthorized"]["status"], 401, "{out}");
}

fn cli(db: &Db, args: &[&str]) -> String {
    let out = run_cli(db, args);
    assert!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `GET path` until `done` holds for its body; panics after 60 s.
async fn until(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = api.ok(reqwest::Method::GET, path, None).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shipment_statuses(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s["status"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn event_types(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_orders_service_applies_fraud_screen_decisions_and_holds_block_labels() {
    let db = Db::sqlite();
    // Registered and approved like an operator would; the server's instance manager runs
    // it (with its default limits: more than 100000 minor units or 50 units is held).
    let manifest = repo_root().join("plugins/fraud-screen/manifest.toml");
    cli(&db, &["plugins", "register", manifest.to_str().unwrap()]);
    let plugin: Value = serde_json::from_str(&cli(&db, &["plugins", "show", "fraud-screen"]))
        .expect("plugins show prints JSON");
    for grant in plugin["grants"].as_array().expect("grants") {
        cli(
            &db,
            &[
                "plugins",
                "approve",
                "fraud-screen",
                grant["id"].as_str().unwrap(),
            ],
        );
    }
    let server = Server::start_in(
        &db,
        &[
            ("BUS_BACKEND", "embedded".into()),
            ("MERIDIAN_PLUGIN_POLL_MS", "100".into()),
            ("MERIDIAN_AWAIT_SCREENING", "true".into()),
        ],
        &repo_root(),
    )
    .await;
    let (_, key) = create_tenant(&db, "Screened");
    let api = Api::new(&server.base, &key);
    api.seed("FRAUD-1", &[500]).await;
    let place = |quantity: i64| {
        let api = api.clone();
        async move {
            let order = api
                .ok(
                    reqwest::Method::POST,
                    "/v1/orders",
                    Some(json!({
                        "lines": [{"sku": "FRAUD-1", "quantity": quantity}],
                        "shipping_address": {"line1": "Main St 1", "city": "Berlin",
                            "postal_code": "10115", "country": "DE"},
                    })),
                )
                .await;
            order["id"].as_str().unwrap().to_owned()
        }
    };
    // 101 units at 9.99: above both limits. One unit: within them.
    let big = place(101).await;
    let small = place(1).await;

    // The small order is approved and its shipment gets its label.
    let got = until(
        &api,
        &format!("/v1/orders/{small}"),
        "the small order screened",
        |o| o["screening"]["decision"] == "approve",
    )
    .await;
    assert!(got.get("hold").is_none(), "{got}");
    assert_eq!(got["screening"]["source"], "fraud-screen");
    until(
        &api,
        &format!("/v1/shipments?order_id={small}"),
        "the small order's label",
        |l| shipment_statuses(l) == ["label_created"],
    )
    .await;

    // The big order is held: it stays confirmed, and its shipment gets no label.
    let got = until(
        &api,
        &format!("/v1/orders/{big}"),
        "the big order held",
        |o| o["hold"].is_object(),
    )
    .await;
    assert_eq!(got["status"], "confirmed");
    assert_eq!(got["hold"]["source"], "fraud-screen");
    assert!(
        got["hold"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("100899")),
        "{got}"
    );
    assert_eq!(got["screening"]["decision"], "hold");
    let list = until(
        &api,
        &format!("/v1/shipments?order_id={big}"),
        "the big order's shipment",
        |l| !shipment_statuses(l).is_empty(),
    )
    .await;
    assert_eq!(shipment_statuses(&list), ["pending"], "{list}");
    let shipment = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert!(list["items"][0]["tracking_number"].is_null(), "{list}");
    // The timeline shows the hold.
    until(
        &api,
        &format!("/v1/orders/{big}/events"),
        "order.held recorded",
        |e| event_types(e).contains(&"meridian.oms.order.held".to_owned()),
    )
    .await;
    // While held it cannot be marked shipped (it has no label either).
    let (status, problem) = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/orders/{big}/fulfill"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("order_on_hold"))
    );

    // An operator releases it: the label is made, and the timeline shows the release.
    let released = api
        .ok(
            reqwest::Method::POST,
            &format!("/v1/orders/{big}/release"),
            None,
        )
        .await;
    assert!(released.get("hold").is_none(), "{released}");
    until(
        &api,
        &format!("/v1/shipments/{shipment}"),
        "the released order's label",
        |s| s["status"] == "label_created",
    )
    .await;
    let events = until(
        &api,
        &format!("/v1/orders/{big}/events"),
        "order.released recorded",
        |e| event_types(e).contains(&"meridian.oms.order.released".to_owned()),
    )
    .await;
    let types = event_types(&events);
    assert_eq!(types[0], "meridian.oms.order.created", "{types:?}");
    drop(server);
}
