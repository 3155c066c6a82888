use axum::http::StatusCode;
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn set_adjust_and_read_stock_with_its_ledger() {
    let app = TestApp::new().await;
    app.seed().await;

    let r = app
        .put(
            "/v1/inventory/WH-A/SKU-1",
            json!({"on_hand": 20, "reason": "stock take"}),
        )
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"warehouse": "WH-A", "sku": "SKU-1", "on_hand": 20, "reserved": 0, "available": 20})
    );

    let r = app
        .post(
            "/v1/inventory/WH-A/SKU-1/adjustments",
            json!({"delta": -3, "reason": "damaged"}),
        )
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["on_hand"], 17);

    let r = app.get("/v1/inventory/SKU-1").await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({
            "sku": "SKU-1",
            "levels": [
                {"warehouse": "WH-A", "on_hand": 17, "reserved": 0, "available": 17},
                {"warehouse": "WH-B", "on_hand": 10, "reserved": 0, "available": 10},
            ],
            "total": {"on_hand": 27, "reserved": 0, "available": 27},
        })
    );

    // Seed set (default reason), stock take, WH-B seed, adjustment: oldest first.
    let r = app.get("/v1/inventory/SKU-1/ledger").await;
    r.assert_status(StatusCode::OK);
    let ledger = r.json();
    let items = ledger["items"].as_array().unwrap();
    let rows: Vec<_> = items
        .iter()
        .map(|e| {
            (
                e["warehouse"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["on_hand_delta"].as_i64().unwrap(),
                e["on_hand_after"].as_i64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("WH-A".into(), "set".into(), 5, 5, "set via API".into()),
            ("WH-B".into(), "set".into(), 10, 10, "set via API".into()),
            ("WH-A".into(), "set".into(), 15, 20, "stock take".into()),
            ("WH-A".into(), "adjust".into(), -3, 17, "damaged".into()),
        ]
    );
    assert_eq!(ledger["next_cursor"], serde_json::Value::Null);

    // Pagination walks the same rows.
    let first = app.get("/v1/inventory/SKU-1/ledger?limit=3").await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = app
        .get(&format!(
            "/v1/inventory/SKU-1/ledger?limit=3&cursor={cursor}"
        ))
        .await
        .json();
    assert_eq!(rest["items"][0], items[3]);
}

#[tokio::test]
async fn a_product_without_stock_has_empty_levels() {
    let app = TestApp::new().await;
    app.post(
        "/v1/products",
        json!({"sku": "NEW", "name": "New", "price": {"amount": 1, "currency": "USD"}}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    assert_eq!(
        app.get("/v1/inventory/NEW").await.json(),
        json!({"sku": "NEW", "levels": [], "total": {"on_hand": 0, "reserved": 0, "available": 0}})
    );
}

#[tokio::test]
async fn a_sku_named_ledger_can_still_be_counted() {
    let app = TestApp::new().await;
    app.seed().await;
    app.post(
        "/v1/products",
        json!({"sku": "ledger", "name": "A ledger book", "price": {"amount": 900, "currency": "USD"}}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let r = app
        .put("/v1/inventory/WH-A/ledger", json!({"on_hand": 4}))
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["sku"], "ledger");
    assert_eq!(app.level("ledger", "WH-A").await, (4, 0, 4));
}

#[tokio::test]
async fn unknown_warehouses_and_skus_are_not_found() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    for uri in [
        "/v1/inventory/WH-X/SKU-1",
        "/v1/inventory/WH-A/NOPE",
        "/v1/inventory/bad%20code/SKU-1",
    ] {
        app.put(uri, json!({"on_hand": 1}))
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
        app.post(
            &format!("{uri}/adjustments"),
            json!({"delta": 1, "reason": "r"}),
        )
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    }
    app.get("/v1/inventory/NOPE")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get("/v1/inventory/NOPE/ledger")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn stock_cannot_go_below_zero_or_below_what_is_reserved() {
    let app = TestApp::new().await;
    app.seed().await;
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 4}]}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let before = app.snapshot().await;
    // WH-A: on_hand 5, reserved 4.
    app.post(
        "/v1/inventory/WH-A/SKU-1/adjustments",
        json!({"delta": -2, "reason": "lost"}),
    )
    .await
    .problem(StatusCode::CONFLICT, "stock_conflict");
    app.put("/v1/inventory/WH-A/SKU-1", json!({"on_hand": 3}))
        .await
        .problem(StatusCode::CONFLICT, "stock_conflict");
    app.post(
        "/v1/inventory/WH-A/SKU-2/adjustments",
        json!({"delta": -4, "reason": "lost"}),
    )
    .await
    .problem(StatusCode::CONFLICT, "stock_conflict");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn invalid_stock_changes_are_validation_errors() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let p = app
        .put(
            "/v1/inventory/WH-A/SKU-1",
            json!({"on_hand": -1, "reason": "r".repeat(501)}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(TestResponse::error_fields(&p), ["on_hand", "reason"]);
    app.put(
        "/v1/inventory/WH-A/SKU-1",
        json!({"on_hand": 1_000_000_001_i64}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let p = app
        .post(
            "/v1/inventory/WH-A/SKU-1/adjustments",
            json!({"delta": 0, "reason": "  "}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(TestResponse::error_fields(&p), ["delta", "reason"]);
    // `reason` is required for adjustments.
    app.post("/v1/inventory/WH-A/SKU-1/adjustments", json!({"delta": 1}))
        .await
        .problem(StatusCode::BAD_REQUEST, "malformed_request");
    assert_eq!(app.snapshot().await, before);
}
