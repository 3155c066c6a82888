//! `/v1/dead-letters`: listing, inspecting and replaying, tenant-scoped.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use meridian_bus::{Bus, MemoryBus, SubscribeOptions, TopicPattern};
use meridian_store::DeadLetterRecord;
use serde_json::json;

use crate::support::TestApp;

/// Records `n` dead letters of an order event for the app's tenant, oldest first.
async fn dead_letters(app: &TestApp, n: usize) -> Vec<DeadLetterRecord> {
    app.seed().await;
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let rows = app.store.outbox_after(0, 1000).await.unwrap();
    let original = rows
        .into_iter()
        .find(|r| r.envelope.ty == "meridian.oms.order.created")
        .unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let d = DeadLetterRecord {
            id: meridian_core::EventId::new(),
            tenant_id: app.tenant,
            original_topic: original.topic.clone(),
            envelope: original.envelope.clone(),
            reason: format!("handler failed {i}"),
            attempts: 3,
            consumer: "order-events".into(),
            failed_at: meridian_core::now(),
            replayed_at: None,
        };
        assert!(app.store.record_dead_letter(&d).await.unwrap());
        out.push(d);
    }
    out
}

#[tokio::test]
async fn dead_letters_are_listed_newest_first_and_shown_to_their_tenant_only() {
    let app = TestApp::new().await;
    let recorded = dead_letters(&app, 3).await;

    let r = app.get("/v1/dead-letters?limit=2").await;
    r.assert_status(StatusCode::OK);
    let page = r.json();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [recorded[2].id.to_string(), recorded[1].id.to_string()]
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let r = app
        .get(&format!("/v1/dead-letters?limit=2&cursor={cursor}"))
        .await;
    let rest = r.json();
    assert_eq!(rest["items"][0]["id"], recorded[0].id.to_string());
    assert_eq!(rest["next_cursor"], serde_json::Value::Null);

    let path = format!("/v1/dead-letters/{}", recorded[0].id);
    let r = app.get(&path).await;
    r.assert_status(StatusCode::OK);
    let d = r.json();
    assert_eq!(d["reason"], "handler failed 0");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["consumer"], "order-events");
    assert_eq!(d["original_topic"], recorded[0].original_topic.as_str());
    assert_eq!(d["envelope"]["id"], recorded[0].envelope.id.to_string());
    assert_eq!(d["replayed_at"], serde_json::Value::Null);

    // Another tenant sees none of them.
    let (_, other) = app.new_tenant("tenant-b").await;
    let r = app
        .call(Method::GET, "/v1/dead-letters")
        .token(&other)
        .send()
        .await;
    assert_eq!(r.json()["items"], json!([]));
    app.call(Method::GET, &path)
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::POST, &format!("{path}/replay"))
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get("/v1/dead-letters/nope")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get("/v1/dead-letters?cursor=!!")
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // Without a bus there is nothing to replay to.
    app.call(Method::POST, &format!("{path}/replay"))
        .send()
        .await
        .problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn a_replay_republishes_the_original_message_to_its_topic() {
    let bus = Arc::new(MemoryBus::new());
    let app = TestApp::with_bus(bus.clone()).await;
    let recorded = dead_letters(&app, 1).await.remove(0);
    let mut sub = bus
        .subscribe(
            &TopicPattern::parse("deployment.test.platform.oms.**").unwrap(),
            SubscribeOptions::ephemeral("replay-watch"),
        )
        .await
        .unwrap();

    let r = app
        .call(
            Method::POST,
            &format!("/v1/dead-letters/{}/replay", recorded.id),
        )
        .send()
        .await;
    r.assert_status(StatusCode::ACCEPTED);
    assert!(r.json()["replayed_at"].is_string());

    let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the replay is delivered")
        .unwrap();
    assert_eq!(delivery.message.topic, recorded.original_topic);
    assert_eq!(
        *delivery.message.envelope(),
        recorded.envelope,
        "the same event, same id"
    );
    let shown = app
        .get(&format!("/v1/dead-letters/{}", recorded.id))
        .await
        .json();
    assert!(shown["replayed_at"].is_string());
}
