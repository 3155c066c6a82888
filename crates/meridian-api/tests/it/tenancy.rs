//! Tenant isolation (DESIGN.md §4.4): another tenant's ids are answered with 404, never with
//! its data, and nothing of tenant A changes whatever tenant B sends.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn another_tenant_sees_and_touches_nothing_of_tenant_a() {
    let app = TestApp::new().await;
    app.seed().await;
    let order = app
        .post(
            "/v1/orders",
            json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
        )
        .await;
    order.assert_status(StatusCode::CREATED);
    let order_id = order.json()["id"].as_str().unwrap().to_owned();
    let keys = app.get("/v1/api-keys").await.json();
    let key_a = keys["items"][0]["id"].as_str().unwrap().to_owned();
    let before = app.snapshot().await;

    let (_, b) = app.new_tenant("tenant-b").await;
    let as_b = |method: Method, uri: &str| app.call(method, uri).token(&b);

    let not_found = [
        as_b(Method::GET, "/v1/products/SKU-1").send().await,
        as_b(Method::PATCH, "/v1/products/SKU-1")
            .json(&json!({"name": "mine now"}))
            .send()
            .await,
        as_b(Method::DELETE, "/v1/products/SKU-1").send().await,
        as_b(Method::GET, "/v1/inventory/SKU-1").send().await,
        as_b(Method::GET, "/v1/inventory/SKU-1/ledger").send().await,
        as_b(Method::PUT, "/v1/inventory/WH-A/SKU-1")
            .json(&json!({"on_hand": 0}))
            .send()
            .await,
        as_b(Method::POST, "/v1/inventory/WH-A/SKU-1/adjustments")
            .json(&json!({"delta": -5, "reason": "theft"}))
            .send()
            .await,
        as_b(Method::GET, &format!("/v1/orders/{order_id}"))
            .send()
            .await,
        as_b(Method::POST, &format!("/v1/orders/{order_id}/cancel"))
            .send()
            .await,
        as_b(Method::POST, &format!("/v1/orders/{order_id}/fulfill"))
            .send()
            .await,
        as_b(Method::DELETE, &format!("/v1/api-keys/{key_a}"))
            .send()
            .await,
    ];
    for r in &not_found {
        r.problem(StatusCode::NOT_FOUND, "not_found");
    }

    let p = as_b(Method::POST, "/v1/orders")
        .json(&json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}))
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "unknown_sku");
    assert_eq!(TestResponse::error_fields(&p), ["lines[0].sku"]);

    // B's lists are its own, and empty.
    for uri in ["/v1/products", "/v1/orders", "/v1/warehouses"] {
        let r = as_b(Method::GET, uri).send().await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.json()["items"], json!([]), "{uri}");
    }
    let keys_b = as_b(Method::GET, "/v1/api-keys").send().await.json();
    assert_eq!(keys_b["items"].as_array().unwrap().len(), 1);
    assert_ne!(keys_b["items"][0]["id"], key_a.as_str());

    // B may use the same SKU and warehouse code for its own things.
    as_b(Method::POST, "/v1/products")
        .json(&json!({"sku": "SKU-1", "name": "B's", "price": {"amount": 5, "currency": "EUR"}}))
        .send()
        .await
        .assert_status(StatusCode::CREATED);
    as_b(Method::POST, "/v1/warehouses")
        .json(&json!({"code": "WH-A", "name": "B's"}))
        .send()
        .await
        .assert_status(StatusCode::CREATED);
    let p = as_b(Method::POST, "/v1/orders")
        .json(&json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}))
        .send()
        .await
        .problem(StatusCode::CONFLICT, "insufficient_stock");
    // B's shortage counts B's stock (none), never A's.
    assert_eq!(p["shortages"][0]["available"], 0);

    assert_eq!(app.snapshot().await, before);
    let still = app.get("/v1/api-keys").await;
    still.assert_status(StatusCode::OK);
}
