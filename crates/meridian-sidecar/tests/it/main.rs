//! The sidecar's router on the in-process `memory` bus: status codes, problem bodies, the
//! token, state, and the ACL on publish and on delivery. The black-box tests of the real
//! `meridian sidecar` process on the embedded bus and NATS are in
//! `crates/meridian/tests/it/sidecar.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meridian_bus::{Bus, MemoryBus, Message, SubscribeOptions, TopicPattern};
use meridian_core::{Envelope, TenantId, Topic};
use meridian_plugin::{Acl, GrantDecisions, Manifest};
use meridian_sidecar::{Sidecar, SidecarConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "router-test-token-0123456789";
const DEP: &str = "rt";

struct Fixture {
    router: axum::Router,
    bus: Arc<MemoryBus>,
    _dir: tempfile::TempDir,
}

async fn fixture(manifest: &str, grants: &str, plugin_config: Value) -> Result<Fixture, String> {
    let manifest = Manifest::from_toml(manifest).map_err(|e| e.to_string())?;
    let decisions = GrantDecisions::from_toml(grants).map_err(|e| e.to_string())?;
    let acl = Acl::new(DEP, &manifest, &decisions).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(MemoryBus::new());
    let sidecar = Sidecar::start(
        SidecarConfig {
            manifest,
            acl,
            token: TOKEN.into(),
            state_dir: dir.path().to_path_buf(),
            plugin_config,
            ack_wait: Duration::from_secs(30),
        },
        bus.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(Fixture {
        router: meridian_sidecar::router(sidecar),
        bus,
        _dir: dir,
    })
}

const OMS: &str = "name = \"fraud\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"f:1\"\n\
                   [grants]\nsubscribe = [\"platform.data.stock.*\"]\n";

impl Fixture {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            ctype,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn topic(rel: &str) -> Topic {
    Topic::parse(&format!("deployment.{DEP}.{rel}")).unwrap()
}

#[tokio::test]
async fn a_refused_publish_is_403_and_never_reaches_the_bus() {
    let f = fixture(OMS, "", json!({})).await.unwrap();
    let mut observer = f
        .bus
        .subscribe(
            &TopicPattern::parse(&format!("deployment.{DEP}.**")).unwrap(),
            SubscribeOptions::ephemeral("observer"),
        )
        .await
        .unwrap();
    let t = TenantId::new();
    for rel in [
        "platform.data.stock.snapshot",
        "platform.oms.order.created.dlq",
        "platform.auth.revoked",
        "deployment.other.platform.oms.order.created",
    ] {
        let (status, ctype, body) = f
            .call(
                "POST",
                "/v1/publish",
                Some(json!({"topic": rel, "data": {}, "tenant": t})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{rel}: {body}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(body["code"], "acl_denied");
    }
    let (status, _, body) = f
        .call(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "platform.oms.order.held", "subject": "o-1", "data": {"why": "x"}, "tenant": t})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The first thing on the bus is the allowed publish, with the envelope the sidecar built.
    let d = observer.next().await.unwrap();
    assert_eq!(d.message.topic, topic("platform.oms.order.held"));
    let env = d.message.envelope();
    assert_eq!(env.id.to_string(), body["id"].as_str().unwrap());
    assert_eq!(env.source, format!("/meridian/{DEP}/plugins/fraud"));
    assert_eq!(env.ty, "meridian.oms.order.held");
    assert_eq!(env.tenant, t);
    assert_eq!(env.subject, "o-1");
}

#[tokio::test]
async fn denied_grants_are_filtered_out_of_a_subscription() {
    let grants = "[[grant]]\ndirection = \"subscribe\"\npattern = \"platform.data.stock.*\"\ndecision = \"approved\"\n\
                  [[grant]]\ndirection = \"subscribe\"\npattern = \"platform.oms.order.secret\"\ndecision = \"denied\"\n";
    let f = fixture(OMS, grants, json!({})).await.unwrap();
    for (pattern, want) in [
        ("platform.oms.**", StatusCode::CREATED),
        ("platform.data.stock.*", StatusCode::CREATED),
        ("platform.data.**", StatusCode::FORBIDDEN),
        ("platform.oms.order.secret", StatusCode::FORBIDDEN),
    ] {
        let name = format!("s{}", pattern.len());
        let (status, _, body) = f
            .call(
                "POST",
                "/v1/subscriptions",
                Some(json!({"name": name, "pattern": pattern})),
            )
            .await;
        assert_eq!(status, want, "{pattern}: {body}");
    }
    // The memory bus delivers only to subscriptions that exist: publish a denied and an
    // allowed event each round until something arrives; only allowed ones ever may.
    let t = TenantId::new();
    let publish = |rel: &str, n: i64| {
        Message::new(
            topic(rel),
            Envelope::new("/t", "t", t, "k", meridian_core::now(), json!({"n": n})),
        )
    };
    let name = format!("s{}", "platform.oms.**".len());
    let mut seen = Vec::new();
    let mut n = 0;
    while seen.is_empty() {
        f.bus
            .publish(publish("platform.oms.order.secret", n))
            .await
            .unwrap();
        f.bus
            .publish(publish("platform.oms.order.created", n))
            .await
            .unwrap();
        n += 1;
        let (status, _, body) = f
            .call(
                "GET",
                &format!("/v1/subscriptions/{name}/messages?max=64&wait_ms=200"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(body["messages"].as_array().unwrap().iter().cloned());
        assert!(n < 500, "nothing arrived");
    }
    for m in &seen {
        assert_eq!(
            m["topic"],
            json!(topic("platform.oms.order.created")),
            "{m}"
        );
    }
    let ids: Vec<u64> = seen
        .iter()
        .map(|m| m["delivery_id"].as_u64().unwrap())
        .collect();
    let (status, _, body) = f
        .call(
            "POST",
            &format!("/v1/subscriptions/{name}/ack"),
            Some(json!({"delivery_ids": ids})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["settled"], json!(ids.len()));
    let (_, _, body) = f
        .call(
            "POST",
            &format!("/v1/subscriptions/{name}/ack"),
            Some(json!({"delivery_ids": ids})),
        )
        .await;
    assert_eq!(
        body["unknown"].as_array().unwrap().len(),
        ids.len(),
        "acked twice: {body}"
    );
}

#[tokio::test]
async fn state_token_and_bad_input() {
    let f = fixture(OMS, "", json!({})).await.unwrap();
    let anonymous = Request::builder()
        .uri("/v1/config")
        .body(Body::empty())
        .unwrap();
    let resp = f.router.clone().oneshot(anonymous).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let wrong = Request::builder()
        .uri("/v1/config")
        .header("authorization", "Bearer router-test-token-0123456780")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        f.router.clone().oneshot(wrong).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let (status, _, _) = f
        .call("PUT", "/v1/state/k", Some(json!({"value": [1, 2]})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = f.call("GET", "/v1/state/k", None).await;
    assert_eq!(
        (status, body["value"].clone()),
        (StatusCode::OK, json!([1, 2]))
    );
    let (status, _, _) = f.call("DELETE", "/v1/state/k", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, ctype, body) = f.call("GET", "/v1/state/k", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(body["code"], "not_found");
    let long = "k".repeat(300);
    let (status, _, body) = f.call("GET", &format!("/v1/state/{long}"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    for bad in [
        json!({"topic": "platform.oms.order.x"}),
        json!({"topic": 1, "data": {}}),
        json!({"topic": "platform.oms.x", "data": {}, "extra": 1}),
    ] {
        let (status, ctype, body) = f.call("POST", "/v1/publish", Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert_eq!(ctype, "application/problem+json", "{bad}");
        assert_eq!(body["code"], "malformed_request", "{bad}: {body}");
    }
    let (status, _, body) = f
        .call(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "platform.OMS.x.y", "data": {}, "tenant": TenantId::new()})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _, body) = f.call("GET", "/v1/subscriptions/none/messages", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn the_plugin_config_must_match_the_schema() {
    let manifest = format!("{OMS}[config_schema]\ntype = \"object\"\nrequired = [\"feed\"]\n");
    let err = fixture(&manifest, "", json!({})).await.err().unwrap();
    assert!(err.contains("\"feed\" is required"), "{err}");
    assert!(fixture(&manifest, "", json!({"feed": "x"})).await.is_ok());
}
