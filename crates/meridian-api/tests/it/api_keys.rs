use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn keys_are_created_shown_once_listed_and_revoked() {
    let app = TestApp::new().await;
    let r = app.post("/v1/api-keys", json!({"name": "sync job"})).await;
    r.assert_status(StatusCode::CREATED);
    let created = r.json();
    let token = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(token.starts_with("mk_"));
    assert_eq!(created["name"], "sync job");
    assert_eq!(created["role"], "admin");

    // The new key works, for the same tenant.
    let r = app
        .call(Method::GET, "/v1/api-keys")
        .token(&token)
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    let list = r.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(!r.text().contains(&token), "the token is never listed");
    let listed = items.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(listed["revoked_at"], serde_json::Value::Null);

    let r = app.delete(&format!("/v1/api-keys/{id}")).await;
    r.assert_status(StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());

    // Revocation takes effect at once.
    app.call(Method::GET, "/v1/products")
        .token(&token)
        .send()
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let list = app.get("/v1/api-keys").await.json();
    let revoked = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(revoked["revoked_at"].as_str().is_some(), "{revoked}");
}

#[tokio::test]
async fn unknown_or_malformed_key_ids_are_not_found() {
    let app = TestApp::new().await;
    for id in ["0190a0a0-0000-7000-8000-000000000000", "nope"] {
        app.delete(&format!("/v1/api-keys/{id}"))
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn key_names_are_validated() {
    let app = TestApp::new().await;
    for name in [" ".to_owned(), "k".repeat(101)] {
        let p = app
            .post("/v1/api-keys", json!({"name": name}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(TestResponse::error_fields(&p), ["name"]);
    }
    let p = app
        .post("/v1/api-keys", json!({"name": "k", "role": "root"}))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(TestResponse::error_fields(&p), ["role"]);
    app.post("/v1/api-keys", json!({"name": "k", "colour": "red"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "malformed_request");
    let keys = app.get("/v1/api-keys").await.json();
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);
}
