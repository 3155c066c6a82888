//! `/v1/templates`: checked when saved (a broken template is a 422 then), unique per event
//! type and channel, tenant-scoped, and previewed.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn templates_are_checked_when_saved_and_crud() {
    let app = TestApp::new().await;
    let created = app
        .post(
            "/v1/templates",
            json!({"event_type": "order.created", "channel": "email",
                   "subject": "Order {{ data.id }}", "body": "Thanks {{ data.customer.name }}"}),
        )
        .await;
    created.assert_status(StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_owned();

    // The same event type and channel again.
    app.post(
        "/v1/templates",
        json!({"event_type": "order.created", "channel": "email", "subject": "x", "body": "y"}),
    )
    .await
    .problem(StatusCode::CONFLICT, "already_exists");

    // Broken templates, and bad fields, are refused with every problem named.
    let p = app
        .post(
            "/v1/templates",
            json!({"event_type": "order.shipped", "channel": "pigeon", "body": "{{ data.id "}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        TestResponse::error_fields(&p),
        vec!["channel".to_owned(), "event_type".to_owned()]
    );
    let p = app
        .post(
            "/v1/templates",
            json!({"event_type": "order.canceled", "channel": "email",
                   "subject": "{% if %}", "body": "{{ data | nope }}"}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        TestResponse::error_fields(&p),
        vec!["subject".to_owned(), "body".to_owned()]
    );
    app.post(
        "/v1/templates",
        json!({"event_type": "order.canceled", "channel": "sms", "subject": "no", "body": "x"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        app.get("/v1/templates").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a refused template changes nothing"
    );

    // A patch that breaks the template is refused too, and leaves it as it was.
    app.patch(
        &format!("/v1/templates/{id}"),
        json!({"body": "{% endfor %}"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let patched = app
        .patch(
            &format!("/v1/templates/{id}"),
            json!({"body": "Hello {{ data.id }}"}),
        )
        .await;
    patched.assert_status(StatusCode::OK);
    assert_eq!(patched.json()["body"], "Hello {{ data.id }}");
    assert_eq!(patched.json()["subject"], "Order {{ data.id }}");

    let (_, other) = app.new_tenant("other").await;
    app.call(Method::GET, &format!("/v1/templates/{id}"))
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::DELETE, &format!("/v1/templates/{id}"))
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");

    app.delete(&format!("/v1/templates/{id}"))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.get(&format!("/v1/templates/{id}"))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn preview_renders_given_or_sample_data() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/templates/preview",
            json!({"event_type": "order.created", "subject": "{{ event.type }}",
                   "body": "Order {{ data.id }} for {{ data.customer.name | upper }}",
                   "data": {"id": "o-1", "customer": {"name": "ada"}}}),
        )
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"subject": "order.created", "body": "Order o-1 for ADA"})
    );
    let sample = app
        .post(
            "/v1/templates/preview",
            json!({"event_type": "shipment.shipped", "body": "{{ data.tracking_number }}"}),
        )
        .await;
    sample.assert_status(StatusCode::OK);
    assert_eq!(sample.json()["body"], "TRACK123");
    app.post(
        "/v1/templates/preview",
        json!({"event_type": "order.created", "body": "{{ oops"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}
