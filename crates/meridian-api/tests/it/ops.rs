//! Operational endpoints: health, readiness, metrics and the OpenAPI document.

use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::support::TestApp;

#[tokio::test]
async fn health_and_readiness_need_no_authentication() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/healthz").no_auth().send().await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = app.call(Method::GET, "/readyz").no_auth().send().await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ready", "store": "sqlite"}));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_orders() {
    let app = TestApp::new().await;
    app.seed().await;
    app.get("/v1/products/SKU-1")
        .await
        .assert_status(StatusCode::OK);
    app.get("/v1/no-such-route")
        .await
        .assert_status(StatusCode::NOT_FOUND);
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 100}]}),
    )
    .await
    .assert_status(StatusCode::CONFLICT);

    let r = app.call(Method::GET, "/metrics").no_auth().send().await;
    r.assert_status(StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = r.text();
    for want in [
        r#"http_requests_total{method="GET",route="/v1/products/{sku}",status="200"}"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"http_requests_total{method="POST",route="/v1/orders",status="201"}"#,
        r#"http_requests_total{method="POST",route="/v1/orders",status="409"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/v1/products/{sku}",status="200",le="0.005"}"#,
        "orders_created_total",
        "stock_reservations_refused_total",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    // Raw paths never become labels.
    assert!(!text.contains("route=\"/v1/products/SKU-1\""), "{text}");
    assert!(!text.contains("no-such-route"), "{text}");
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let app = TestApp::new().await;
    let r = app
        .call(Method::GET, "/openapi.json")
        .no_auth()
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    let doc: Value = r.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let expected: &[(&str, &[&str])] = &[
        ("/v1/products", &["get", "post"]),
        ("/v1/products/{sku}", &["get", "patch", "delete"]),
        ("/v1/warehouses", &["get", "post"]),
        ("/v1/inventory/{warehouse_code}/{sku}", &["put"]),
        (
            "/v1/inventory/{warehouse_code}/{sku}/adjustments",
            &["post"],
        ),
        ("/v1/inventory/{sku}", &["get"]),
        ("/v1/inventory/{sku}/ledger", &["get"]),
        ("/v1/orders", &["get", "post"]),
        ("/v1/orders/{id}", &["get"]),
        ("/v1/orders/{id}/events", &["get"]),
        ("/v1/orders/{id}/cancel", &["post"]),
        ("/v1/orders/{id}/fulfill", &["post"]),
        ("/v1/orders/{id}/hold", &["post"]),
        ("/v1/orders/{id}/release", &["post"]),
        ("/v1/shipments", &["get"]),
        ("/v1/shipments/{id}", &["get"]),
        ("/v1/shipments/{id}/label", &["get"]),
        ("/v1/shipments/{id}/tracking", &["post"]),
        ("/v1/carrier-webhooks/tracking", &["post"]),
        ("/v1/shipments/{id}/label-url", &["get"]),
        ("/v1/labels/{id}", &["get"]),
        ("/v1/dead-letters", &["get"]),
        ("/v1/dead-letters/{id}", &["get"]),
        ("/v1/dead-letters/{id}/replay", &["post"]),
        ("/v1/api-keys", &["get", "post"]),
        ("/v1/api-keys/{id}", &["delete"]),
        ("/v1/api-keys/{id}/rotate", &["post"]),
        ("/v1/users", &["get", "post"]),
        ("/v1/users/{id}", &["get", "patch", "delete"]),
        ("/v1/webhooks", &["get", "post"]),
        ("/v1/notifications", &["get"]),
        ("/v1/templates", &["get", "post"]),
        ("/v1/templates/preview", &["post"]),
        ("/v1/templates/{id}", &["get", "patch", "delete"]),
        ("/v1/webhooks/{id}", &["get", "patch", "delete"]),
        ("/v1/webhooks/{id}/rotate-secret", &["post"]),
        ("/v1/webhooks/{id}/deliveries", &["get"]),
        (
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            &["post"],
        ),
        ("/v1/auth/token", &["post"]),
        ("/v1/auth/revoke", &["post"]),
        ("/v1/auth/signing-keys/rotate", &["post"]),
        ("/v1/plugins", &["get", "post"]),
        ("/v1/plugins/{plugin}", &["get", "delete"]),
        ("/v1/plugins/{plugin}/grants/{grant}/approve", &["post"]),
        ("/v1/plugins/{plugin}/grants/{grant}/deny", &["post"]),
        ("/v1/plugins/{plugin}/audit", &["get"]),
        ("/v1/plugin-audit", &["get"]),
        ("/.well-known/jwks.json", &["get"]),
        ("/.well-known/openid-configuration", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is missing from the OpenAPI document"));
        for m in *methods {
            assert!(item.get(*m).is_some(), "{m} {path} is missing");
        }
    }
    let v1_in_doc = paths.keys().filter(|p| p.starts_with("/v1/")).count();
    let v1_expected = expected
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/"))
        .count();
    assert_eq!(
        v1_in_doc, v1_expected,
        "undocumented or unexpected /v1 paths"
    );

    // Operation ids are unique (code generators name functions after them).
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "duplicate operationId");

    // Bearer authentication everywhere, except on the operational endpoints.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));

    // Errors are documented as problem+json with the problem schema.
    let create_order = &doc["paths"]["/v1/orders"]["post"]["responses"];
    assert!(create_order["409"]["content"]["application/problem+json"].is_object());
    assert!(doc["components"]["schemas"]["ProblemDetails"].is_object());
    assert!(doc["components"]["schemas"]["CreateOrderRequest"].is_object());
}

/// A bus whose broker is down: every call fails as unavailable.
struct DownBus;

#[async_trait::async_trait]
impl meridian_bus::Bus for DownBus {
    fn name(&self) -> &'static str {
        "nats"
    }
    fn capabilities(&self) -> meridian_bus::Capabilities {
        meridian_bus::MemoryBus::new().capabilities()
    }
    async fn publish(&self, _: meridian_bus::Message) -> Result<(), meridian_bus::BusError> {
        Err(meridian_bus::BusError::Unavailable("down".into()))
    }
    async fn subscribe(
        &self,
        _: &meridian_bus::TopicPattern,
        _: meridian_bus::SubscribeOptions,
    ) -> Result<Box<dyn meridian_bus::Subscription>, meridian_bus::BusError> {
        Err(meridian_bus::BusError::Unavailable("down".into()))
    }
    async fn ping(&self) -> Result<(), meridian_bus::BusError> {
        Err(meridian_bus::BusError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn readiness_reports_the_bus_and_a_down_bus_only_degrades() {
    use meridian_bus::Bus as _;
    let app = TestApp::with_bus(std::sync::Arc::new(meridian_bus::MemoryBus::new())).await;
    let r = app.call(Method::GET, "/readyz").no_auth().send().await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"status": "ready", "store": "sqlite", "bus": "ok", "bus_backend": "memory"})
    );
    assert!(DownBus.ping().await.is_err());

    let app = TestApp::with_bus(std::sync::Arc::new(DownBus)).await;
    let r = app.call(Method::GET, "/readyz").no_auth().send().await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"status": "ready", "store": "sqlite", "bus": "unavailable", "bus_backend": "nats"})
    );
    // Orders still commit while the bus is down.
    app.seed().await;
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
    )
    .await
    .assert_status(StatusCode::CREATED);
}
