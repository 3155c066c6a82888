use axum::http::StatusCode;
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn warehouses_are_created_and_listed_by_priority() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/warehouses",
            json!({"code": "BER-1", "name": "Berlin", "priority": 5}),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    let w = r.json();
    assert_eq!(w["code"], "BER-1");
    assert_eq!(w["name"], "Berlin");
    assert_eq!(w["priority"], 5);
    assert!(w["id"].as_str().is_some());

    // Priority defaults to 0, which sorts first.
    app.post(
        "/v1/warehouses",
        json!({"code": "HAM-1", "name": "Hamburg"}),
    )
    .await
    .assert_status(StatusCode::CREATED);

    let r = app.get("/v1/warehouses").await;
    r.assert_status(StatusCode::OK);
    let codes: Vec<_> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes, ["HAM-1", "BER-1"]);
}

#[tokio::test]
async fn a_duplicate_code_is_already_exists() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    app.post("/v1/warehouses", json!({"code": "WH-A", "name": "Again"}))
        .await
        .problem(StatusCode::CONFLICT, "already_exists");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn invalid_warehouses_list_every_field() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let p = app
        .post(
            "/v1/warehouses",
            json!({"code": "no spaces allowed", "name": "w".repeat(201), "priority": -1}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(TestResponse::error_fields(&p), ["code", "name", "priority"]);
    assert_eq!(app.snapshot().await, before);
}
