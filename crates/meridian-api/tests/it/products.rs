use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn create_read_list_update_and_delete_a_product() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/products",
            json!({
                "sku": "TSHIRT-RED-M",
                "name": "T-shirt",
                "description": "Red, medium",
                "price": {"amount": 1999, "currency": "EUR"},
                "attributes": {"color": "red", "size": "M", "organic": true},
            }),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    assert_eq!(r.headers["location"], "/v1/products/TSHIRT-RED-M");
    let created = r.json();
    assert_eq!(created["sku"], "TSHIRT-RED-M");
    assert_eq!(created["price"], json!({"amount": 1999, "currency": "EUR"}));
    assert_eq!(created["attributes"]["organic"], true);
    assert!(created["id"].as_str().is_some());

    let got = app.get("/v1/products/TSHIRT-RED-M").await;
    got.assert_status(StatusCode::OK);
    assert_eq!(got.json(), created);

    let r = app
        .patch(
            "/v1/products/TSHIRT-RED-M",
            json!({"name": "T-shirt (red)", "description": null, "price": {"amount": 1499, "currency": "EUR"}}),
        )
        .await;
    r.assert_status(StatusCode::OK);
    let patched = r.json();
    assert_eq!(patched["name"], "T-shirt (red)");
    assert_eq!(patched["description"], serde_json::Value::Null);
    assert_eq!(patched["price"]["amount"], 1499);
    assert_eq!(patched["attributes"], created["attributes"]);

    let r = app.delete("/v1/products/TSHIRT-RED-M").await;
    r.assert_status(StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    app.get("/v1/products/TSHIRT-RED-M")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.delete("/v1/products/TSHIRT-RED-M")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn products_are_listed_by_sku_with_cursor_pagination() {
    let app = TestApp::new().await;
    for sku in ["C", "A", "B"] {
        app.post(
            "/v1/products",
            json!({"sku": sku, "name": sku, "price": {"amount": 1, "currency": "USD"}}),
        )
        .await
        .assert_status(StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/products?limit=2".to_owned();
    loop {
        let r = app.get(&uri).await;
        r.assert_status(StatusCode::OK);
        let page = r.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["sku"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/products?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["A", "B", "C"]);
}

#[tokio::test]
async fn a_duplicate_sku_is_already_exists_and_changes_nothing() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    app.post(
        "/v1/products",
        json!({"sku": "SKU-1", "name": "Again", "price": {"amount": 1, "currency": "USD"}}),
    )
    .await
    .problem(StatusCode::CONFLICT, "already_exists");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn invalid_products_list_every_field_and_change_nothing() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let r = app
        .post(
            "/v1/products",
            json!({
                "sku": "x".repeat(65),
                "name": "n".repeat(201),
                "description": "d".repeat(4001),
                "price": {"amount": -5, "currency": "dollars"},
                "attributes": {"nested": {"a": 1}},
            }),
        )
        .await;
    let p = r.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        TestResponse::error_fields(&p),
        [
            "sku",
            "name",
            "description",
            "price.currency",
            "price.amount",
            "attributes.nested"
        ]
    );
    for e in p["errors"].as_array().unwrap() {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }

    let p = app
        .patch("/v1/products/SKU-1", json!({"name": "", "price": null}))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(TestResponse::error_fields(&p), ["name", "price"]);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn patching_or_reading_an_unknown_or_malformed_sku_is_not_found() {
    let app = TestApp::new().await;
    app.patch("/v1/products/NOPE", json!({"name": "x"}))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    // Not a valid SKU at all: still just "not found".
    app.get("/v1/products/has%20space")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get(&format!("/v1/products/{}", "x".repeat(100)))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bad_list_parameters_are_validation_errors() {
    let app = TestApp::new().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("cursor=!!!", "cursor"),
        ("colour=red", "colour"),
        ("limit=1&limit=2", "limit"),
    ] {
        let p = app
            .get(&format!("/v1/products?{query}"))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(TestResponse::error_fields(&p), [field], "{query}: {p}");
    }
    app.get("/v1/products?limit=200")
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn patch_rejects_unknown_fields_and_wrong_types() {
    let app = TestApp::new().await;
    app.seed().await;
    let p = app
        .patch("/v1/products/SKU-1", json!({"sku": "OTHER"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "malformed_request");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `sku`"),
        "{p}"
    );
    let p = app
        .call(Method::PATCH, "/v1/products/SKU-1")
        .json(&json!({"price": {"amount": "12", "currency": "USD"}}))
        .send()
        .await
        .problem(StatusCode::BAD_REQUEST, "malformed_request");
    assert!(
        p["detail"].as_str().unwrap().contains("price.amount"),
        "{p}"
    );
}
