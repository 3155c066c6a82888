//! Cross-cutting errors: authentication, unknown routes and methods, body limits, request ids.

use axum::http::{Method, StatusCode, header};
use meridian_api::ApiConfig;
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn v1_routes_need_a_valid_api_key() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let order = json!({"lines": [{"sku": "SKU-1", "quantity": 1}]});
    // Well-formed but unknown: the shape of a real key with random parts.
    let unknown = "mk_0190a0a000007000800000000000000a_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("basic auth", Some("Basic dXNlcjpwYXNz".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("not an api key", Some("Bearer hello".into())),
        ("garbled key", Some("Bearer mk_nope".into())),
        ("unknown key", Some(format!("Bearer {unknown}"))),
        ("tampered key", Some(format!("Bearer {}x", app.token))),
    ];
    for (what, auth) in cases {
        for (method, uri) in [
            (Method::GET, "/v1/products"),
            (Method::POST, "/v1/orders"),
            (Method::GET, "/v1/inventory/SKU-1"),
            (Method::GET, "/v1/api-keys"),
        ] {
            let mut call = app.call(method.clone(), uri).no_auth().json(&order);
            if let Some(a) = &auth {
                call = call.header("authorization", a);
            }
            let r = call.send().await;
            r.problem(StatusCode::UNAUTHORIZED, "unauthorized");
            let challenge = r.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn authentication_comes_before_body_parsing() {
    let app = TestApp::new().await;
    app.call(Method::POST, "/v1/orders")
        .no_auth()
        .raw(Some("text/plain"), "garbage")
        .send()
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn unknown_routes_are_not_found_problems() {
    let app = TestApp::new().await;
    for uri in ["/", "/v1", "/v1/nope", "/v2/products", "/v1/products/A/B/C"] {
        app.get(uri)
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn wrong_methods_are_method_not_allowed_problems_with_allow() {
    let app = TestApp::new().await;
    for (method, uri, allow) in [
        (Method::PUT, "/v1/products", vec!["GET", "POST"]),
        (
            Method::POST,
            "/v1/products/SKU-1",
            vec!["GET", "PATCH", "DELETE"],
        ),
        (Method::DELETE, "/v1/orders", vec!["GET", "POST"]),
        (Method::GET, "/v1/orders/x/cancel", vec!["POST"]),
        (Method::POST, "/healthz", vec!["GET"]),
    ] {
        let r = app.call(method.clone(), uri).send().await;
        r.problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let got = r.headers[header::ALLOW].to_str().unwrap().to_owned();
        for m in allow {
            assert!(got.contains(m), "{method} {uri}: Allow: {got}");
        }
    }
}

#[tokio::test]
async fn the_body_limit_is_configurable_and_refusals_change_nothing() {
    let app = TestApp::with_config(ApiConfig {
        body_limit_bytes: 256,
        ..ApiConfig::default()
    })
    .await;
    app.seed().await;
    let before = app.snapshot().await;
    let p = app
        .post(
            "/v1/products",
            json!({"sku": "BIG", "name": "n".repeat(300), "price": {"amount": 1, "currency": "USD"}}),
        )
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(p["detail"].as_str().unwrap().contains("256"), "{p}");
    app.put(
        "/v1/inventory/WH-A/SKU-1",
        json!({"on_hand": 1, "reason": "r".repeat(300)}),
    )
    .await
    .problem(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated_and_quoted_in_problems() {
    let app = TestApp::new().await;
    let r = app
        .call(Method::GET, "/v1/products/NOPE")
        .header("x-request-id", "req-abc-123")
        .send()
        .await;
    assert_eq!(r.headers["x-request-id"], "req-abc-123");
    let p = r.problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(p["request_id"], "req-abc-123");
    assert_eq!(p["instance"], "/v1/products/NOPE");

    let r = app.get("/healthz").await;
    let generated = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    // An id that is too long or has spaces is replaced, not echoed.
    for bad in ["x".repeat(200), "has space".to_owned()] {
        let r = app
            .call(Method::GET, "/healthz")
            .header("x-request-id", &bad)
            .send()
            .await;
        let got = r.headers["x-request-id"].to_str().unwrap();
        assert_ne!(got, bad);
        assert!(uuid::Uuid::parse_str(got).is_ok(), "{got}");
    }
}
