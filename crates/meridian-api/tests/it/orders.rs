use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, TestResponse};

#[tokio::test]
async fn an_order_reserves_stock_and_can_be_read_and_listed() {
    let app = TestApp::new().await;
    app.seed().await;
    let r = app
        .post(
            "/v1/orders",
            json!({
                "lines": [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-2", "quantity": 3}],
                "customer": {"email": "ana@example.com", "name": "Ana"},
                "shipping_address": {"line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
            }),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    let order = r.json();
    let id = order["id"].as_str().expect("id").to_owned();
    assert_eq!(r.headers["location"], format!("/v1/orders/{id}"));
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["allocation"], "priority");
    assert_eq!(
        order["total"],
        json!({"amount": 2 * 1000 + 3 * 250, "currency": "USD"})
    );
    assert_eq!(order["customer"]["email"], "ana@example.com");
    assert_eq!(order["shipping_address"]["country"], "DE");
    assert_eq!(order["lines"][0]["sku"], "SKU-1");
    assert_eq!(order["lines"][0]["unit_price"]["amount"], 1000);
    assert_eq!(
        order["lines"][0]["allocations"],
        json!([{"warehouse": "WH-A", "quantity": 2}])
    );
    assert_eq!(
        order["lines"][1]["allocations"],
        json!([{"warehouse": "WH-A", "quantity": 3}])
    );
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 2, 3));
    assert_eq!(app.level("SKU-2", "WH-A").await, (3, 3, 0));

    let got = app.get(&format!("/v1/orders/{id}")).await;
    got.assert_status(StatusCode::OK);
    assert_eq!(got.json(), order);

    let list = app.get("/v1/orders").await;
    list.assert_status(StatusCode::OK);
    assert_eq!(list.json()["items"], json!([order]));
    let confirmed = app.get("/v1/orders?status=confirmed").await.json();
    assert_eq!(confirmed["items"].as_array().unwrap().len(), 1);
    let canceled = app.get("/v1/orders?status=canceled").await.json();
    assert_eq!(canceled["items"], json!([]));

    // Each reservation is in the ledger, tied to the order.
    let ledger = app.get("/v1/inventory/SKU-1/ledger").await.json();
    let last = ledger["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "reserve");
    assert_eq!(last["order_id"], id.as_str());
    assert_eq!(last["reserved_delta"], 2);
}

#[tokio::test]
async fn orders_are_listed_newest_first_with_pagination() {
    let app = TestApp::new().await;
    app.seed().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = app
            .post(
                "/v1/orders",
                json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut uri = "/v1/orders?limit=2".to_owned();
    loop {
        let page = app.get(&uri).await.json();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/orders?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn allocation_strategies_pick_warehouses() {
    let app = TestApp::new().await;
    app.seed().await;
    // SKU-1: WH-A has 5 (priority 1), WH-B has 10.
    let cases = [
        (
            json!(null),
            4,
            json!([{"warehouse": "WH-A", "quantity": 4}]),
        ),
        (
            json!("priority"),
            6,
            json!([{"warehouse": "WH-B", "quantity": 6}]),
        ),
        (
            json!("most_stock"),
            1,
            json!([{"warehouse": "WH-B", "quantity": 1}]),
        ),
        (
            json!("split"),
            4,
            json!([{"warehouse": "WH-A", "quantity": 1}, {"warehouse": "WH-B", "quantity": 3}]),
        ),
    ];
    for (strategy, qty, want) in cases {
        let mut body = json!({"lines": [{"sku": "SKU-1", "quantity": qty}]});
        if !strategy.is_null() {
            body["allocation"] = strategy.clone();
        }
        let r = app.post("/v1/orders", body).await;
        r.assert_status(StatusCode::CREATED);
        assert_eq!(r.json()["lines"][0]["allocations"], want, "{strategy}");
    }
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 5, 0));
    assert_eq!(app.level("SKU-1", "WH-B").await, (10, 10, 0));
}

#[tokio::test]
async fn cancel_releases_and_fulfil_commits_and_illegal_transitions_conflict() {
    let app = TestApp::new().await;
    app.seed().await;
    let place = |qty: i64| {
        let app = &app;
        async move {
            let r = app
                .post(
                    "/v1/orders",
                    json!({"lines": [{"sku": "SKU-1", "quantity": qty}]}),
                )
                .await;
            r.assert_status(StatusCode::CREATED);
            r.json()["id"].as_str().unwrap().to_owned()
        }
    };
    let a = place(2).await;
    let b = place(3).await;
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 5, 0));

    let r = app
        .call(Method::POST, &format!("/v1/orders/{a}/cancel"))
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["status"], "canceled");
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 3, 2));

    let r = app
        .call(Method::POST, &format!("/v1/orders/{b}/fulfill"))
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["status"], "fulfilled");
    assert_eq!(app.level("SKU-1", "WH-A").await, (2, 0, 2));

    let before = app.snapshot().await;
    for (id, action) in [
        (&a, "cancel"),
        (&a, "fulfill"),
        (&b, "cancel"),
        (&b, "fulfill"),
    ] {
        let p = app
            .call(Method::POST, &format!("/v1/orders/{id}/{action}"))
            .send()
            .await
            .problem(StatusCode::CONFLICT, "invalid_transition");
        assert!(p["detail"].as_str().unwrap().contains(action), "{p}");
    }
    assert_eq!(app.snapshot().await, before);
    let fulfilled = app.get("/v1/orders?status=fulfilled").await.json();
    assert_eq!(fulfilled["items"][0]["id"], b.as_str());
}

#[tokio::test]
async fn short_stock_is_insufficient_stock_with_shortages_and_changes_nothing() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let p = app
        .post(
            "/v1/orders",
            json!({"lines": [
                {"sku": "SKU-1", "quantity": 11},
                {"sku": "SKU-2", "quantity": 1},
            ]}),
        )
        .await
        .problem(StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(
        p["shortages"],
        json!([{"sku": "SKU-1", "requested": 11, "available": 15, "max_in_one_warehouse": 10}])
    );
    let p = app
        .post(
            "/v1/orders",
            json!({"lines": [{"sku": "SKU-1", "quantity": 16}], "allocation": "split"}),
        )
        .await
        .problem(StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(p["shortages"][0]["available"], 15);
    assert_eq!(app.snapshot().await, before);

    // The same request fits when split.
    app.post(
        "/v1/orders",
        json!({"lines": [{"sku": "SKU-1", "quantity": 11}], "allocation": "split"}),
    )
    .await
    .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_same_order() {
    let app = TestApp::new().await;
    app.seed().await;
    let first = app
        .call(Method::POST, "/v1/orders")
        .header("Idempotency-Key", "order-0001")
        .raw(
            Some("application/json"),
            r#"{"lines":[{"sku":"SKU-1","quantity":2}],"allocation":"split"}"#,
        )
        .send()
        .await;
    first.assert_status(StatusCode::CREATED);
    // Same JSON, different key order and whitespace: a retry.
    let retry = app
        .call(Method::POST, "/v1/orders")
        .header("Idempotency-Key", "order-0001")
        .raw(
            Some("application/json"),
            "{ \"allocation\": \"split\",\n  \"lines\": [ {\"quantity\": 2, \"sku\": \"SKU-1\"} ] }",
        )
        .send()
        .await;
    retry.assert_status(StatusCode::CREATED);
    assert_eq!(retry.json(), first.json());
    assert_eq!(first.json()["idempotency_key"], "order-0001");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 2, 3));

    let before = app.snapshot().await;
    let p = app
        .call(Method::POST, "/v1/orders")
        .header("Idempotency-Key", "order-0001")
        .json(&json!({"lines": [{"sku": "SKU-1", "quantity": 3}]}))
        .send()
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    assert!(p["detail"].as_str().unwrap().contains("order-0001"), "{p}");
    assert_eq!(app.snapshot().await, before);

    // Keys are per tenant: another tenant may use the same one.
    let (_, token_b) = app.new_tenant("tenant-b").await;
    app.call(Method::POST, "/v1/orders")
        .token(&token_b)
        .header("Idempotency-Key", "order-0001")
        .json(&json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}))
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "unknown_sku");
}

#[tokio::test]
async fn racing_requests_with_one_idempotency_key_create_one_order() {
    let app = TestApp::new().await;
    app.seed().await;
    let body = json!({"lines": [{"sku": "SKU-1", "quantity": 1}]});
    let calls = (0..16).map(|_| {
        app.call(Method::POST, "/v1/orders")
            .header("Idempotency-Key", "race-1")
            .json(&body)
            .send()
    });
    let responses = futures_join_all(calls).await;
    let ids: Vec<Value> = responses
        .iter()
        .map(|r| {
            r.assert_status(StatusCode::CREATED);
            r.json()["id"].clone()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 1, 4));
}

/// Runs futures concurrently on this task (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future completed"))
        .collect()
}

#[tokio::test]
async fn bad_idempotency_keys_are_validation_errors() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    for key in ["k".repeat(256), "has space".to_owned(), String::new()] {
        let p = app
            .call(Method::POST, "/v1/orders")
            .header("Idempotency-Key", &key)
            .json(&json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}))
            .send()
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(
            TestResponse::error_fields(&p),
            ["Idempotency-Key"],
            "{key:?}"
        );
    }
    assert_eq!(app.snapshot().await, before);
}

/// Each bad input of issue 2 gets a problem with its code, and changes nothing.
#[tokio::test]
async fn bad_order_input_is_refused_and_changes_nothing() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let line = |sku: &str, q: i64| json!({"sku": sku, "quantity": q});
    let cases: Vec<(&str, Value, StatusCode, &str, Vec<&str>)> = vec![
        (
            "zero quantity",
            json!({"lines": [line("SKU-1", 0)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines[0].quantity"],
        ),
        (
            "negative quantity",
            json!({"lines": [line("SKU-1", -4)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines[0].quantity"],
        ),
        (
            "quantity over 1,000,000",
            json!({"lines": [line("SKU-1", 1_000_001)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines[0].quantity"],
        ),
        (
            "empty lines",
            json!({"lines": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines"],
        ),
        (
            "duplicate SKUs",
            json!({"lines": [line("SKU-1", 1), line("SKU-2", 1), line("SKU-1", 2)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines[2].sku"],
        ),
        (
            "over-long SKU",
            json!({"lines": [line(&"S".repeat(65), 1)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["lines[0].sku"],
        ),
        (
            "over-long strings",
            json!({
                "lines": [line("SKU-1", 1)],
                "customer": {"email": "ana@example.com", "name": "n".repeat(201)},
                "shipping_address": {"line1": "l".repeat(201), "city": "Berlin", "postal_code": "10115", "country": "DE"},
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["customer.name", "shipping_address.line1"],
        ),
        (
            "unknown allocation",
            json!({"lines": [line("SKU-1", 1)], "allocation": "cheapest"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec!["allocation"],
        ),
        (
            "several problems at once",
            json!({"lines": [line("SKU-1", 0), line("SKU-1", 1), line("bad sku", -1)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec![
                "lines[0].quantity",
                "lines[2].sku",
                "lines[2].quantity",
                "lines[1].sku",
            ],
        ),
        (
            "unknown SKU",
            json!({"lines": [line("SKU-1", 1), line("NOPE", 1)]}),
            StatusCode::NOT_FOUND,
            "unknown_sku",
            vec!["lines[1].sku"],
        ),
        (
            "unknown field",
            json!({"lines": [line("SKU-1", 1)], "coupon": "FREE"}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            vec![],
        ),
        (
            "unknown field in a line",
            json!({"lines": [{"sku": "SKU-1", "quantity": 1, "price": 0}]}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            vec!["lines[0].price"],
        ),
        (
            "wrong type",
            json!({"lines": [{"sku": "SKU-1", "quantity": "1"}]}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            vec!["lines[0].quantity"],
        ),
        (
            "fractional quantity",
            json!({"lines": [{"sku": "SKU-1", "quantity": 1.5}]}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            vec!["lines[0].quantity"],
        ),
        (
            "missing lines",
            json!({"customer": {"email": "ana@example.com"}}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            vec![],
        ),
    ];
    for (what, body, status, code, fields) in cases {
        let r = app.post("/v1/orders", body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let p = r.problem(status, code);
        let got = TestResponse::error_fields(&p);
        if !fields.is_empty() {
            assert_eq!(got, fields, "{what}: {p}");
        }
        if code == "malformed_request" {
            assert!(
                p["detail"].as_str().unwrap().starts_with("invalid JSON"),
                "{what}: {p}"
            );
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_change_nothing() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let json = Some("application/json");
    // (what, content type, body, status, code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "truncated JSON",
            json,
            b"{\"lines\": [".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "not JSON",
            json,
            b"lines=1".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "empty body",
            json,
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "trailing garbage",
            json,
            br#"{"lines":[{"sku":"SKU-1","quantity":1}]} x"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "duplicate keys",
            json,
            br#"{"lines":[],"lines":[{"sku":"SKU-1","quantity":1}]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "JSON array",
            json,
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "no content type",
            None,
            br#"{"lines":[{"sku":"SKU-1","quantity":1}]}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            b"lines=1".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text content type",
            Some("text/plain"),
            br#"{"lines":[{"sku":"SKU-1","quantity":1}]}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "invalid UTF-8",
            json,
            b"{\"lines\": [{\"sku\": \"\xff\", \"quantity\": 1}]}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
    ];
    for (what, ct, body, status, code) in cases {
        let r = app
            .call(Method::POST, "/v1/orders")
            .raw(ct, body)
            .send()
            .await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        r.problem(status, code);
    }

    // A body over the 1 MiB default limit, padded inside a valid order.
    let big = json!({"lines": [{"sku": "SKU-1", "quantity": 1}], "customer": {"email": "a@b.c", "name": "x".repeat(1_100_000)}});
    let p = app
        .post("/v1/orders", big)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(p["detail"].as_str().unwrap().contains("1048576"), "{p}");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn unknown_and_malformed_order_ids_are_not_found() {
    let app = TestApp::new().await;
    app.seed().await;
    let before = app.snapshot().await;
    let unknown = "0190a0a0-0000-7000-8000-000000000000";
    for id in [unknown, "not-a-uuid", "1234", "%F0%9F%92%A9", "%FF"] {
        app.get(&format!("/v1/orders/{id}"))
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
        for action in ["cancel", "fulfill"] {
            app.call(Method::POST, &format!("/v1/orders/{id}/{action}"))
                .send()
                .await
                .problem(StatusCode::NOT_FOUND, "not_found");
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn bad_order_list_parameters_are_validation_errors() {
    let app = TestApp::new().await;
    for (query, field) in [
        ("status=shipped", "status"),
        ("status=CONFIRMED", "status"),
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("cursor=%%%", "cursor"),
        ("state=confirmed", "state"),
    ] {
        let p = app
            .get(&format!("/v1/orders?{query}"))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(TestResponse::error_fields(&p), [field], "{query}: {p}");
    }
}

#[tokio::test]
async fn a_deleted_product_cannot_be_ordered() {
    let app = TestApp::new().await;
    app.seed().await;
    app.delete("/v1/products/SKU-2")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let p = app
        .post(
            "/v1/orders",
            json!({"lines": [{"sku": "SKU-2", "quantity": 1}]}),
        )
        .await
        .problem(StatusCode::NOT_FOUND, "unknown_sku");
    assert_eq!(TestResponse::error_fields(&p), ["lines[0].sku"]);
}

#[tokio::test]
async fn an_orders_events_are_its_recorded_timeline_and_tenant_scoped() {
    let app = TestApp::new().await;
    app.seed().await;
    let id = app.place_one("SKU-1").await;
    let path = format!("/v1/orders/{id}/events");

    // Nothing has been relayed yet: an empty timeline.
    let r = app.get(&path).await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json(), json!({"items": []}));

    app.post(&format!("/v1/orders/{id}/cancel"), json!({}))
        .await
        .assert_status(StatusCode::OK);
    // Stand in for the relay and the projection consumer: hand the outbox events to the
    // projection as the consumer would (twice, as a redelivery would).
    let rows = app.store.outbox_after(0, 1000).await.unwrap();
    for row in rows.iter().filter(|r| r.envelope.subject == id) {
        for _ in 0..2 {
            app.store
                .record_order_event("order-events", &row.envelope)
                .await
                .unwrap();
        }
    }
    let r = app.get(&path).await;
    r.assert_status(StatusCode::OK);
    let body = r.json();
    let types: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["meridian.oms.order.created", "meridian.oms.order.canceled"]
    );
    assert_eq!(body["items"][0]["data"]["id"], id.as_str());

    // Another tenant's order, an unknown order and a malformed id are all 404.
    let (_, other) = app.new_tenant("tenant-b").await;
    app.call(Method::GET, &path)
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get(&format!("/v1/orders/{}/events", uuid_like()))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.get("/v1/orders/nope/events")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::GET, &path)
        .no_auth()
        .send()
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

fn uuid_like() -> String {
    "0190a0b0-0000-7000-8000-000000000000".into()
}

#[tokio::test]
async fn an_operator_holds_and_releases_an_order_by_hand() {
    let app = TestApp::new().await;
    app.seed().await;
    let id = app.place_one("SKU-1").await;
    let got = app.get(&format!("/v1/orders/{id}")).await.json();
    assert!(
        got.get("hold").is_none() && got.get("screening").is_none(),
        "{got}"
    );

    let r = app
        .post(
            &format!("/v1/orders/{id}/hold"),
            json!({"reason": "customer asked us to wait"}),
        )
        .await;
    r.assert_status(StatusCode::OK);
    let held = r.json();
    assert_eq!(held["id"], id.as_str());
    assert_eq!(held["status"], "confirmed", "a hold keeps the status");
    assert_eq!(held["hold"]["reason"], "customer asked us to wait");
    assert_eq!(held["hold"]["source"], "api");
    assert_eq!(app.get(&format!("/v1/orders/{id}")).await.json(), held);
    // The list shows the hold on the held order only.
    let other = app
        .post(
            "/v1/orders",
            json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
        )
        .await
        .json();
    let list = app.get("/v1/orders").await.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        if item["id"] == id.as_str() {
            assert_eq!(item, &held);
        } else {
            assert_eq!(item["id"], other["id"]);
            assert!(item.get("hold").is_none(), "{item}");
        }
    }
    app.call(
        Method::POST,
        &format!("/v1/orders/{}/cancel", other["id"].as_str().unwrap()),
    )
    .send()
    .await
    .assert_status(StatusCode::OK);
    // The reservation stays.
    assert_eq!(app.level("SKU-1", "WH-A").await, (5, 1, 4));

    // Holding again keeps the first hold.
    let again = app
        .post(&format!("/v1/orders/{id}/hold"), json!({"reason": "other"}))
        .await
        .json();
    assert_eq!(again["hold"], held["hold"]);
    // A held order cannot be fulfilled.
    let before = app.snapshot().await;
    let p = app
        .call(Method::POST, &format!("/v1/orders/{id}/fulfill"))
        .send()
        .await
        .problem(StatusCode::CONFLICT, "order_on_hold");
    assert!(p["detail"].as_str().unwrap().contains(&id), "{p}");
    assert_eq!(app.snapshot().await, before);
    // Bad bodies.
    let p = app
        .post(&format!("/v1/orders/{id}/hold"), json!({"reason": "  "}))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(crate::support::TestResponse::error_fields(&p), ["reason"]);
    app.post(
        &format!("/v1/orders/{id}/hold"),
        json!({"reason": "x", "until": "tomorrow"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "malformed_request");

    let r = app
        .call(Method::POST, &format!("/v1/orders/{id}/release"))
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert!(r.json().get("hold").is_none(), "{}", r.json());
    // Releasing an order that is not held changes nothing.
    app.call(Method::POST, &format!("/v1/orders/{id}/release"))
        .send()
        .await
        .assert_status(StatusCode::OK);
    app.call(Method::POST, &format!("/v1/orders/{id}/fulfill"))
        .send()
        .await
        .assert_status(StatusCode::OK);
    // A fulfilled order cannot be held.
    app.post(&format!("/v1/orders/{id}/hold"), json!({"reason": "late"}))
        .await
        .problem(StatusCode::CONFLICT, "invalid_transition");
}

#[tokio::test]
async fn another_tenant_cannot_hold_or_release_an_order() {
    let app = TestApp::new().await;
    app.seed().await;
    let r = app
        .post(
            "/v1/orders",
            json!({"lines": [{"sku": "SKU-1", "quantity": 1}]}),
        )
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let (_, other) = app.new_tenant("other").await;
    for action in ["hold", "release"] {
        app.call(Method::POST, &format!("/v1/orders/{id}/{action}"))
            .token(&other)
            .json(&json!({"reason": "mine"}))
            .send()
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
    }
    let got = app.get(&format!("/v1/orders/{id}")).await.json();
    assert!(got.get("hold").is_none(), "{got}");
    for id in ["0190a0a0-0000-7000-8000-000000000000", "not-a-uuid"] {
        app.post(&format!("/v1/orders/{id}/hold"), json!({"reason": "x"}))
            .await
            .problem(StatusCode::NOT_FOUND, "not_found");
    }
}
