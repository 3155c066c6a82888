//! Tenant webhooks through the real binary: an https receiver under a CA made by the test
//! (trusted through `MERIDIAN_HTTP_CA_FILE`) gets the order's webhook, signed with the
//! secret the API showed once; without `MERIDIAN_WEBHOOK_ALLOW_PRIVATE` the same loopback
//! receiver cannot be registered.

use std::time::Duration;

use meridian_http::test_support::TestCa;
use reqwest::Method;
use serde_json::json;

use crate::support::{Api, Db, Server, create_tenant};

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_reach_an_https_receiver_under_a_private_ca_signed() {
    let ca = TestCa::new();
    let (addr, mut received) = ca.serve(200).await;
    let db = Db::sqlite();
    let ca_file = db.data_dir().join("private-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let server = Server::start_with(
        &db,
        &[
            ("MERIDIAN_HTTP_CA_FILE", ca_file.display().to_string()),
            ("MERIDIAN_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ],
    )
    .await;
    let (_, key) = create_tenant(&db, "Webhooks TLS");
    let api = Api::new(&server.base, &key);
    let url = format!("https://localhost:{}/hook", addr.port());
    let endpoint = api
        .ok(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "event_types": ["order.created"]})),
        )
        .await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    api.seed("TLS-1", &[3]).await;
    let order = api
        .ok(
            Method::POST,
            "/v1/orders",
            Some(json!({"lines": [{"sku": "TLS-1", "quantity": 1}]})),
        )
        .await;

    let got = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("no webhook arrived")
        .unwrap();
    let header = |name: &str| {
        got.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    meridian_notify::signing::verify(
        &secret,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &got.body,
        chrono::Utc::now().timestamp(),
    )
    .expect("the webhook is signed with the secret shown at registration");
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["data"]["id"], order["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_webhooks_are_refused_by_default() {
    let db = Db::sqlite();
    let server = Server::start(&db).await;
    let (_, key) = create_tenant(&db, "Webhooks SSRF");
    let api = Api::new(&server.base, &key);
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://127.0.0.1:9/hook"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "url", "{body}");
}
