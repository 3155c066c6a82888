//! `/v1/plugins`: registration from TOML or JSON, validation problems, grant decisions and
//! their audit trail, deregistration, and who may do any of it (platform admins only).

use axum::http::{Method, StatusCode};
use meridian_auth::Role;
use serde_json::{Value, json};

use crate::auth::{add_user, login};
use crate::support::TestApp;

const MANIFEST: &str = r#"
name = "warehouse-sync"
version = "1.2.0"
pool = "dgm"

[run]
command = ["./warehouse-sync", "--feed", "stock.csv"]

[grants]
publish = ["platform.data.stock.snapshot"]
subscribe = ["platform.oms.order.*"]
"#;

async fn token(app: &TestApp, role: Role) -> String {
    let email = format!("{role}@example.com");
    add_user(app, &email, role).await;
    login(app, &email).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn register(app: &TestApp, token: &str) -> Value {
    let r = app
        .call(Method::POST, "/v1/plugins")
        .token(token)
        .raw(Some("application/toml"), MANIFEST)
        .send()
        .await;
    r.assert_status(StatusCode::CREATED);
    r.json()
}

#[tokio::test]
async fn registration_starts_grants_pending_and_decisions_are_audited() {
    let app = TestApp::new().await;
    let admin = token(&app, Role::PlatformAdmin).await;
    let p = register(&app, &admin).await;
    assert_eq!(p["name"], "warehouse-sync");
    assert_eq!(p["version"], "1.2.0");
    assert_eq!(p["pool"], "dgm");
    assert_eq!(p["tenant_id"], Value::Null);
    assert!(p["registered_by"].as_str().unwrap().starts_with("user:"));
    let grants = p["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    assert!(grants.iter().all(|g| g["state"] == "pending"));
    assert_eq!(grants[0]["direction"], "publish");
    assert_eq!(grants[0]["pattern"], "platform.data.stock.snapshot");

    // The name is as good as the id.
    let by_name = app
        .call(Method::GET, "/v1/plugins/warehouse-sync")
        .token(&admin)
        .send()
        .await;
    by_name.assert_status(StatusCode::OK);
    assert_eq!(by_name.json()["id"], p["id"]);

    let (publish, subscribe) = (
        grants[0]["id"].as_str().unwrap(),
        grants[1]["id"].as_str().unwrap(),
    );
    let r = app
        .call(
            Method::POST,
            &format!("/v1/plugins/warehouse-sync/grants/{publish}/approve"),
        )
        .token(&admin)
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["state"], "approved");
    assert_eq!(r.json()["decided_by"], p["registered_by"]);
    let r = app
        .call(
            Method::POST,
            &format!(
                "/v1/plugins/{}/grants/{subscribe}/deny",
                p["id"].as_str().unwrap()
            ),
        )
        .token(&admin)
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["state"], "denied");

    // A grant of no plugin, or not a grant id: 404.
    for grant in ["0190a0a0-0000-7000-8000-000000000000", "nope"] {
        app.call(
            Method::POST,
            &format!("/v1/plugins/warehouse-sync/grants/{grant}/approve"),
        )
        .token(&admin)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    }

    let audit = app
        .call(Method::GET, "/v1/plugins/warehouse-sync/audit")
        .token(&admin)
        .send()
        .await;
    audit.assert_status(StatusCode::OK);
    let actions: Vec<(String, String)> = audit.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], p["registered_by"]);
            assert!(e["at"].is_string());
            (
                e["action"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("registered".to_owned(), "version 1.2.0".to_owned()),
            (
                "approved".to_owned(),
                "publish platform.data.stock.snapshot".to_owned()
            ),
            (
                "denied".to_owned(),
                "subscribe platform.oms.order.*".to_owned()
            ),
        ]
    );

    // Deregistration: gone from the registry, still in the deployment's trail.
    app.call(Method::DELETE, "/v1/plugins/warehouse-sync")
        .token(&admin)
        .send()
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.call(Method::GET, "/v1/plugins/warehouse-sync")
        .token(&admin)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    let list = app
        .call(Method::GET, "/v1/plugins")
        .token(&admin)
        .send()
        .await;
    assert_eq!(list.json()["items"], json!([]));
    let all = app
        .call(Method::GET, "/v1/plugin-audit")
        .token(&admin)
        .send()
        .await;
    let last = all.json()["items"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["action"], "deregistered");
    assert_eq!(last["plugin_name"], "warehouse-sync");
}

#[tokio::test]
async fn a_json_manifest_is_kept_as_toml() {
    let app = TestApp::new().await;
    let admin = token(&app, Role::PlatformAdmin).await;
    let tenant = app.tenant.to_string();
    let body = json!({
        "name": "fraud-screen",
        "version": "0.3.1",
        "pool": "oms",
        "tenant": tenant,
        "run": {"command": ["python3", "fraud.py"]},
        "grants": {"subscribe": ["platform.oms.order.created"]},
    });
    let r = app
        .call(Method::POST, "/v1/plugins")
        .token(&admin)
        .json(&body)
        .send()
        .await;
    r.assert_status(StatusCode::CREATED);
    let p = r.json();
    assert_eq!(p["tenant_id"], tenant.as_str());
    assert_eq!(p["grants"][0]["direction"], "subscribe");
    let manifest = meridian_plugin::Manifest::from_toml(p["manifest"].as_str().unwrap())
        .expect("the kept manifest reads back");
    assert_eq!(manifest.name.as_str(), "fraud-screen");
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_every_problem() {
    let app = TestApp::new().await;
    let admin = token(&app, Role::PlatformAdmin).await;
    let bad = r#"
name = "Bad Name"
version = "latest"
pool = "dgm"
[run]
image = "acme/thing:latest"
[grants]
publish = ["deployment.other.platform.data.x"]
"#;
    let r = app
        .call(Method::POST, "/v1/plugins")
        .token(&admin)
        .raw(Some("application/toml"), bad)
        .send()
        .await;
    let problem = r.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let mut fields = crate::support::TestResponse::error_fields(&problem);
    fields.sort();
    assert_eq!(fields, ["grants.publish[0]", "name", "run", "version"]);

    for (content_type, body) in [
        ("application/toml", "name = "),
        (
            "application/toml",
            "name = \"x\"\nversion = \"1.0.0\"\npool = \"dgm\"\nrun = {command = [\"x\"]}\nsurprise = 1\n",
        ),
        ("application/json", "{not json"),
        ("application/json", "[1, 2]"),
    ] {
        app.call(Method::POST, "/v1/plugins")
            .token(&admin)
            .raw(Some(content_type), body)
            .send()
            .await
            .problem(StatusCode::BAD_REQUEST, "malformed_request");
    }
    register(&app, &admin).await;
    app.call(Method::POST, "/v1/plugins")
        .token(&admin)
        .raw(Some("application/toml"), MANIFEST)
        .send()
        .await
        .problem(StatusCode::CONFLICT, "already_exists");
    // Nothing but the one registration happened.
    let all = app
        .call(Method::GET, "/v1/plugin-audit")
        .token(&admin)
        .send()
        .await;
    assert_eq!(all.json()["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_platform_admins_touch_the_registry() {
    let app = TestApp::new().await;
    let admin = token(&app, Role::PlatformAdmin).await;
    let p = register(&app, &admin).await;
    let grant = p["grants"][0]["id"].as_str().unwrap().to_owned();
    let owner = token(&app, Role::Owner).await;
    for (method, uri) in [
        (Method::GET, "/v1/plugins".to_owned()),
        (Method::POST, "/v1/plugins".to_owned()),
        (Method::GET, "/v1/plugins/warehouse-sync".to_owned()),
        (
            Method::POST,
            format!("/v1/plugins/warehouse-sync/grants/{grant}/approve"),
        ),
        (Method::DELETE, "/v1/plugins/warehouse-sync".to_owned()),
    ] {
        // A tenant owner, and the tenant's own API key.
        for t in [owner.as_str(), app.token.as_str()] {
            app.call(method.clone(), &uri)
                .token(t)
                .raw(Some("application/toml"), MANIFEST)
                .send()
                .await
                .problem(StatusCode::FORBIDDEN, "forbidden");
        }
    }
    let now = app
        .call(Method::GET, "/v1/plugins/warehouse-sync")
        .token(&admin)
        .send()
        .await;
    assert_eq!(now.json()["grants"][0]["state"], "pending");
}
