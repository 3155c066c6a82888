//! `/v1/webhooks`: endpoints (secret shown once), validation, tenant isolation, the
//! delivery log and redelivery.

use axum::http::{Method, StatusCode};
use meridian_core::EventId;
use meridian_store::notify::{
    AfterAttempt, Channel, DeliveryAttempt, NewNotification, NotificationId, WebhookId,
};
use serde_json::json;

use crate::support::{TestApp, TestResponse};

async fn create(app: &TestApp) -> serde_json::Value {
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://example.com/hooks", "event_types": ["order.*", "order.created"]}),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    r.json()
}

/// Queues a notification of `event_type` for the test tenant's endpoint `webhook`, due now.
async fn enqueue(
    app: &TestApp,
    webhook: WebhookId,
    event_type: &str,
    payload: &str,
) -> NotificationId {
    let id = NotificationId::new();
    app.store
        .enqueue_notifications(&[NewNotification {
            id,
            tenant_id: app.tenant,
            event_id: EventId::new(),
            event_type: event_type.into(),
            channel: Channel::Webhook,
            recipient: webhook.to_string(),
            webhook_id: Some(webhook),
            payload: payload.into(),
            next_attempt_at: meridian_core::now(),
        }])
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn the_secret_is_shown_once_and_endpoints_are_crud() {
    let app = TestApp::new().await;
    let created = create(&app).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["event_types"], json!(["order.*", "order.created"]));
    assert_eq!(created["enabled"], true);

    let got = app.get(&format!("/v1/webhooks/{id}")).await;
    got.assert_status(StatusCode::OK);
    assert!(got.json().get("secret").is_none(), "{}", got.text());
    let list = app.get("/v1/webhooks").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["items"][0].get("secret").is_none());

    let patched = app
        .patch(
            &format!("/v1/webhooks/{id}"),
            json!({"enabled": false, "description": "paused"}),
        )
        .await;
    patched.assert_status(StatusCode::OK);
    assert_eq!(patched.json()["enabled"], false);
    assert_eq!(patched.json()["url"], "https://example.com/hooks");

    let rotated = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    rotated.assert_status(StatusCode::OK);
    let new_secret = rotated.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, created["secret"].as_str().unwrap());
    assert!(rotated.json()["previous_secret_expires_at"].is_string());

    app.delete(&format!("/v1/webhooks/{id}"))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.get(&format!("/v1/webhooks/{id}"))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bad_endpoints_are_422_and_change_nothing() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "ftp://example.com", "event_types": ["stock.*", "order.created"]}),
        )
        .await;
    let p = r.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        TestResponse::error_fields(&p),
        vec!["url".to_owned(), "event_types[0]".to_owned()]
    );
    app.post(
        "/v1/webhooks",
        json!({"url": "https://e.com", "event_types": []}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    app.post(
        "/v1/webhooks",
        json!({"url": "https://e.com", "secret": "mine"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "malformed_request");
    assert!(
        app.get("/v1/webhooks").await.json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let created = create(&app).await;
    app.patch(
        &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
        json!({"url": "not a url"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn another_tenants_endpoint_is_404() {
    let app = TestApp::new().await;
    let created = create(&app).await;
    let id = created["id"].as_str().unwrap();
    let (_, other) = app.new_tenant("other").await;
    for (method, uri) in [
        (Method::GET, format!("/v1/webhooks/{id}")),
        (Method::PATCH, format!("/v1/webhooks/{id}")),
        (Method::DELETE, format!("/v1/webhooks/{id}")),
        (Method::POST, format!("/v1/webhooks/{id}/rotate-secret")),
        (Method::GET, format!("/v1/webhooks/{id}/deliveries")),
        (Method::GET, "/v1/webhooks/not-a-uuid".to_owned()),
    ] {
        app.call(method.clone(), &uri)
            .token(&other)
            .json(&json!({}))
            .send()
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
    }
    let list = app
        .call(Method::GET, "/v1/webhooks")
        .token(&other)
        .send()
        .await
        .json();
    assert!(list["items"].as_array().unwrap().is_empty());
    // Still there for its owner.
    app.get(&format!("/v1/webhooks/{id}"))
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn the_delivery_log_shows_every_attempt_and_redelivery_requeues() {
    let app = TestApp::new().await;
    let created = create(&app).await;
    let webhook: WebhookId = created["id"].as_str().unwrap().parse().unwrap();
    let id = enqueue(
        &app,
        webhook,
        "order.created",
        r#"{"type":"order.created","data":{}}"#,
    )
    .await;
    app.store
        .record_attempt(
            &DeliveryAttempt {
                notification_id: id,
                attempt: 1,
                at: meridian_core::now(),
                status_code: Some(404),
                error: Some("the endpoint answered 404".into()),
                duration_ms: 4,
                succeeded: false,
            },
            AfterAttempt::Failed,
        )
        .await
        .unwrap();

    let log = app.get(&format!("/v1/webhooks/{webhook}/deliveries")).await;
    log.assert_status(StatusCode::OK);
    let log = log.json();
    let item = &log["items"][0];
    assert_eq!(item["id"], id.to_string());
    assert_eq!(item["status"], "failed");
    assert_eq!(item["payload"]["type"], "order.created");
    assert_eq!(item["attempts"][0]["status_code"], 404);
    assert_eq!(item["attempts"][0]["succeeded"], false);

    let again = app
        .post(
            &format!("/v1/webhooks/{webhook}/deliveries/{id}/redeliver"),
            json!({}),
        )
        .await;
    again.assert_status(StatusCode::ACCEPTED);
    assert_eq!(again.json()["status"], "pending");

    // Under another endpoint of the same tenant, or another tenant, it is not found.
    let other_endpoint = create(&app).await;
    app.post(
        &format!(
            "/v1/webhooks/{}/deliveries/{id}/redeliver",
            other_endpoint["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "not_found");
    let (_, stranger) = app.new_tenant("stranger").await;
    app.call(
        Method::POST,
        &format!("/v1/webhooks/{webhook}/deliveries/{id}/redeliver"),
    )
    .token(&stranger)
    .json(&json!({}))
    .send()
    .await
    .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn the_notification_log_lists_the_tenants_notifications_only() {
    let app = TestApp::new().await;
    let created = create(&app).await;
    let webhook: WebhookId = created["id"].as_str().unwrap().parse().unwrap();
    let id = enqueue(&app, webhook, "order.canceled", "{}").await;
    let log = app.get("/v1/notifications").await;
    log.assert_status(StatusCode::OK);
    let log = log.json();
    assert_eq!(log["items"][0]["id"], id.to_string());
    assert_eq!(log["items"][0]["channel"], "webhook");
    assert_eq!(log["items"][0]["status"], "pending");
    app.get("/v1/notifications?colour=red")
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let (_, other) = app.new_tenant("other").await;
    let theirs = app
        .call(Method::GET, "/v1/notifications")
        .token(&other)
        .send()
        .await
        .json();
    assert!(theirs["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_open_with_the_master_key() {
    let app = TestApp::new().await;
    let created = create(&app).await;
    let id: WebhookId = created["id"].as_str().unwrap().parse().unwrap();
    let shown = created["secret"].as_str().unwrap().to_owned();
    let stored = app.store.get_webhook(app.tenant, id).await.unwrap();
    assert!(
        meridian_notify::secrets::is_sealed(&stored.secret),
        "{}",
        stored.secret
    );
    assert!(
        !stored.secret.contains(&shown),
        "the stored column is not the secret"
    );
    let sealer = meridian_notify::SecretSealer::new(app.master_key.clone());
    assert_eq!(sealer.open(app.tenant, &stored.secret).unwrap(), shown);

    // A rotation stores the new secret sealed; the previous one stays sealed beside it.
    let rotated = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    rotated.assert_status(StatusCode::OK);
    let new = rotated.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, shown);
    let stored = app.store.get_webhook(app.tenant, id).await.unwrap();
    assert_eq!(sealer.open(app.tenant, &stored.secret).unwrap(), new);
    let previous = stored.previous_secret.unwrap();
    assert!(meridian_notify::secrets::is_sealed(&previous));
    assert_eq!(sealer.open(app.tenant, &previous).unwrap(), shown);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let app = TestApp::new().await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "https://10.0.0.5/hook",
        "http://[::1]/hook",
        "http://localhost:3000/hook",
    ] {
        let r = app.post("/v1/webhooks", json!({"url": url})).await;
        let p = r.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(
            TestResponse::error_fields(&p),
            vec!["url".to_owned()],
            "{url}"
        );
        assert!(
            r.text().contains("public address") || r.text().contains("loopback"),
            "{}",
            r.text()
        );
    }
    let created = create(&app).await;
    app.patch(
        &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
        json!({"url": "http://192.168.1.10/hook"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    let open = TestApp::with_config(meridian_api::ApiConfig {
        webhook_address_guard: meridian_http::AddressGuard::ALLOW_PRIVATE,
        ..meridian_api::ApiConfig::default()
    })
    .await;
    open.post("/v1/webhooks", json!({"url": "http://127.0.0.1:8080/hook"}))
        .await
        .assert_status(StatusCode::CREATED);
}
