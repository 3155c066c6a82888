//! The fulfillment service end to end, on SQLite with the embedded bus and on PostgreSQL
//! with NATS: an order split over two warehouses gets two shipments, each gets a PDF label
//! in the label store, tracking updates ship them, and the order becomes fulfilled (its
//! stock committed); a canceled order's shipments are canceled; another tenant sees none
//! of it.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::events::Streams;
use crate::support::{Api, Db, Server, create_tenant};

/// Polls `path` until `done` holds for its body.
async fn wait_for(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let body = api.ok(Method::GET, path, None).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn statuses(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|s| s["status"].as_str()).collect())
        .unwrap_or_default()
}

async fn download(api: &Api, key: &str, path: &str) -> (u16, String, Vec<u8>) {
    let r = crate::support::http()
        .get(format!("{}{path}", api.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ty = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ty, r.bytes().await.unwrap().to_vec())
}

async fn fulfillment_end_to_end(db: &Db, server: &Server) {
    let (_, key) = create_tenant(db, "Fulfil");
    let api = Api::new(&server.base, &key);
    api.seed("FUL-1", &[1, 1]).await;
    let order = api
        .ok(
            Method::POST,
            "/v1/orders",
            Some(json!({
                "lines": [{"sku": "FUL-1", "quantity": 2}],
                "allocation": "split",
                "shipping_address": {"name": "Ana Example", "line1": "Main St 1",
                    "city": "Berlin", "postal_code": "10115", "country": "DE"},
            })),
        )
        .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let list_path = format!("/v1/shipments?order_id={order_id}");

    // Two shipments, one per warehouse, each with its label.
    let list = wait_for(&api, &list_path, "two labelled shipments", |b| {
        statuses(b) == ["label_created", "label_created"]
    })
    .await;
    let shipments = list["items"].as_array().unwrap().clone();
    let mut warehouses: Vec<&str> = shipments
        .iter()
        .map(|s| s["warehouse"].as_str().unwrap())
        .collect();
    warehouses.sort_unstable();
    assert_eq!(warehouses, ["W0", "W1"]);
    for s in &shipments {
        assert_eq!(s["order_id"], order_id.as_str());
        assert_eq!(s["carrier"], "manual");
        assert_eq!(s["items"][0]["sku"], "FUL-1");
        assert_eq!(s["items"][0]["quantity"], 1);
        assert_eq!(s["ship_to"]["city"], "Berlin");
        let tracking = s["tracking_number"].as_str().unwrap();
        let label_url = s["label_url"].as_str().unwrap();
        let (status, ty, pdf) = download(&api, &key, label_url).await;
        assert_eq!((status, ty.as_str()), (200, "application/pdf"));
        assert!(pdf.starts_with(b"%PDF-1.4"));
        let text = String::from_utf8_lossy(&pdf);
        assert!(
            text.contains(&format!("({tracking}) Tj")),
            "label without tracking number"
        );
        assert!(text.contains("(Ana Example) Tj"));
    }
    let stored = std::fs::read_dir(db.data_dir().join("objects").join("labels"))
        .expect("labels are stored under the data directory")
        .count();
    assert_eq!(stored, 1, "one tenant directory of labels");

    // Another tenant sees none of it.
    let (_, other_key) = create_tenant(db, "Other");
    let other = Api::new(&server.base, &other_key);
    let first = shipments[0]["id"].as_str().unwrap().to_owned();
    let second = shipments[1]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/shipments/{first}"),
        format!("/v1/shipments/{first}/label"),
    ] {
        let (status, body) = other.send(Method::GET, &path, None).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let (status, _) = other
        .send(
            Method::POST,
            &format!("/v1/shipments/{first}/tracking"),
            Some(json!({"status": "shipped"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let theirs = other.ok(Method::GET, &list_path, None).await;
    assert_eq!(theirs["items"], json!([]));

    // Tracking: delivered before shipped is refused; shipping one is not enough.
    let (status, body) = api
        .send(
            Method::POST,
            &format!("/v1/shipments/{first}/tracking"),
            Some(json!({"status": "delivered"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    let shipped = api
        .ok(
            Method::POST,
            &format!("/v1/shipments/{first}/tracking"),
            Some(json!({"status": "shipped", "detail": "picked up"})),
        )
        .await;
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(shipped["detail"], "picked up");
    let now = api
        .ok(Method::GET, &format!("/v1/orders/{order_id}"), None)
        .await;
    assert_eq!(now["status"], "confirmed");

    // The last one ships: the order is fulfilled and its stock committed.
    api.ok(
        Method::POST,
        &format!("/v1/shipments/{second}/tracking"),
        Some(json!({"status": "shipped"})),
    )
    .await;
    wait_for(
        &api,
        &format!("/v1/orders/{order_id}"),
        "the order fulfilled",
        |o| o["status"] == "fulfilled",
    )
    .await;
    let stock = api.ok(Method::GET, "/v1/inventory/FUL-1", None).await;
    for level in stock["levels"].as_array().unwrap() {
        assert_eq!(
            (&level["on_hand"], &level["reserved"]),
            (&json!(0), &json!(0)),
            "{stock}"
        );
    }
    api.ok(
        Method::POST,
        &format!("/v1/shipments/{first}/tracking"),
        Some(json!({"status": "delivered"})),
    )
    .await;

    // Canceling an order before it ships cancels its shipment.
    api.seed("FUL-2", &[3]).await;
    let order = api
        .ok(
            Method::POST,
            "/v1/orders",
            Some(json!({"lines": [{"sku": "FUL-2", "quantity": 1}]})),
        )
        .await;
    let id = order["id"].as_str().unwrap();
    let path = format!("/v1/shipments?order_id={id}");
    wait_for(&api, &path, "one labelled shipment", |b| {
        statuses(b) == ["label_created"]
    })
    .await;
    api.ok(Method::POST, &format!("/v1/orders/{id}/cancel"), None)
        .await;
    let list = wait_for(&api, &path, "the shipment canceled", |b| {
        statuses(b) == ["canceled"]
    })
    .await;
    assert_eq!(list["items"][0]["detail"], "the order was canceled");
}

#[tokio::test(flavor = "multi_thread")]
async fn fulfillment_on_sqlite_with_the_embedded_bus() {
    let db = Db::sqlite();
    let server = Server::start(&db).await;
    fulfillment_end_to_end(&db, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fulfillment_on_postgres_with_nats() {
    let url =
        std::env::var("MERIDIAN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let deployment = format!("ful{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let _streams = Streams {
        url: url.clone(),
        deployment: deployment.clone(),
    };
    let addr = url.trim_start_matches("nats://").to_owned();
    tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| {
            panic!("NATS at {addr} is not reachable (run scripts/services.sh): {e}")
        });
    let db = Db::postgres();
    let server = Server::start_with(
        &db,
        &[
            ("BUS_BACKEND", "nats".into()),
            ("BUS_URL", url),
            ("MERIDIAN_DEPLOYMENT_ID", deployment),
        ],
    )
    .await;
    fulfillment_end_to_end(&db, &server).await;
}

/// A carrier API for the HTTP carrier: every label is `1Z` and the end of the shipment id.
async fn fake_carrier() -> String {
    use base64::Engine;
    async fn labels(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        let id = body["shipment_id"].as_str().unwrap_or_default();
        let pdf = b"%PDF-1.4\n% carrier label\n%%EOF\n";
        axum::Json(json!({
            "tracking_number": format!("1Z{}", &id[id.len().saturating_sub(12)..]),
            "label_pdf": base64::engine::general_purpose::STANDARD.encode(pdf),
        }))
    }
    let app = axum::Router::new().route("/v1/labels", axum::routing::post(labels));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

const WEBHOOK_SECRET: &str = "carrier-webhook-secret-for-tests";

/// Posts a carrier webhook signed with `secret`.
async fn webhook(base: &str, secret: &str, body: Value) -> (u16, Value) {
    let body = serde_json::to_vec(&body).unwrap();
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let ts = chrono::Utc::now().timestamp();
    let sig = meridian_fulfillment_service::WebhookSecret::new(secret).sign(&id, ts, &body);
    let r = crate::support::http()
        .post(format!("{base}/v1/carrier-webhooks/tracking"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn http_carrier_labels_and_signed_tracking_webhooks() {
    let carrier = fake_carrier().await;
    let db = Db::sqlite();
    let server = Server::start_with(
        &db,
        &[
            ("MERIDIAN_CARRIER_URL", carrier),
            ("MERIDIAN_CARRIER_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ],
    )
    .await;
    let (_, key) = create_tenant(&db, "Carrier");
    let api = Api::new(&server.base, &key);
    api.seed("HTTP-1", &[5]).await;
    let order = api
        .ok(
            Method::POST,
            "/v1/orders",
            Some(json!({"lines": [{"sku": "HTTP-1", "quantity": 1}]})),
        )
        .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let list = wait_for(
        &api,
        &format!("/v1/shipments?order_id={order_id}"),
        "a shipment labelled by the HTTP carrier",
        |b| statuses(b) == ["label_created"],
    )
    .await;
    let s = &list["items"][0];
    assert_eq!(s["carrier"], "http");
    let id = s["id"].as_str().unwrap();
    let tracking = s["tracking_number"].as_str().unwrap().to_owned();
    assert_eq!(tracking, format!("1Z{}", &id[id.len() - 12..]));
    let (status, ty, pdf) = download(&api, &key, s["label_url"].as_str().unwrap()).await;
    assert_eq!((status, ty.as_str()), (200, "application/pdf"));
    assert!(pdf.starts_with(b"%PDF-1.4\n% carrier label"));

    // A pre-signed link downloads it without a credential; an altered one is refused.
    let link = api
        .ok(
            Method::GET,
            &format!("/v1/shipments/{id}/label-url?expires_in=60"),
            None,
        )
        .await;
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("/v1/labels/{id}?")), "{link}");
    let r = crate::support::http()
        .get(format!("{}{url}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.bytes()
            .await
            .unwrap()
            .starts_with(b"%PDF-1.4\n% carrier label")
    );
    let tampered = url.replace("expires=", "expires=9");
    let r = crate::support::http()
        .get(format!("{}{tampered}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (status, _) = api
        .send(
            Method::GET,
            &format!("/v1/shipments/{id}/label-url?expires_in=0"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 422);

    // A forged or unsigned webhook changes nothing.
    let event = json!({"tracking_number": tracking, "status": "shipped"});
    let (status, body) = webhook(&server.base, "not-the-carrier-secret", event.clone()).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let r = crate::support::http()
        .post(format!("{}/v1/carrier-webhooks/tracking", server.base))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let now = api
        .ok(Method::GET, &format!("/v1/shipments/{id}"), None)
        .await;
    assert_eq!(now["status"], "label_created");
    let (status, _) = webhook(
        &server.base,
        WEBHOOK_SECRET,
        json!({"tracking_number": "1ZUNKNOWN", "status": "shipped"}),
    )
    .await;
    assert_eq!(status, 404);

    // The carrier's signed webhook ships it, and the order is fulfilled.
    let (status, body) = webhook(&server.base, WEBHOOK_SECRET, event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    wait_for(
        &api,
        &format!("/v1/orders/{order_id}"),
        "the order fulfilled",
        |o| o["status"] == "fulfilled",
    )
    .await;
    let (status, body) = webhook(
        &server.base,
        WEBHOOK_SECRET,
        json!({"tracking_number": tracking, "status": "delivered", "detail": "left at the door"}),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("delivered")),
        "{body}"
    );
}
