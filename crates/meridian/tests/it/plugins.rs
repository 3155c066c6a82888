//! `meridian plugins` (register, list, approve, deny, deregister, audit) on the configured
//! store, and a sidecar that takes its manifest and grant decisions from the registry
//! (`meridian sidecar --plugin`): a pending grant allows nothing, an approved one does.

use std::process::Stdio;

use meridian_core::TenantId;
use serde_json::{Value, json};

use crate::support::{Db, EXE, run_cli};

const TOKEN: &str = "test-sidecar-token-0123456789";

const MANIFEST: &str = r#"
name = "order-watch"
version = "0.1.0"
pool = "dgm"

[run]
command = ["sleep", "3600"]

[grants]
publish = ["platform.oms.order.flagged"]
subscribe = ["platform.oms.order.*"]
"#;

fn ok(db: &Db, args: &[&str]) -> String {
    let out = run_cli(db, args);
    assert!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn listed(db: &Db) -> Vec<Value> {
    ok(db, &["plugins", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Starts `meridian sidecar --plugin {name}` and publishes one event through it.
async fn publish_through_registry_sidecar(db: &Db, name: &str, rel: &str) -> reqwest::StatusCode {
    let mut child = tokio::process::Command::new(EXE)
        .args(["sidecar", "--plugin", name])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("MERIDIAN_SIDECAR_TOKEN", TOKEN)
        .env("BUS_BACKEND", "embedded")
        .env("MERIDIAN_DEPLOYMENT_ID", "plugtest")
        .envs(db.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the sidecar");
    let base = crate::support::sidecar_base_url(&mut child).await;
    let status = crate::support::http()
        .post(format!("{base}/v1/publish"))
        .bearer_auth(TOKEN)
        .json(&json!({"topic": rel, "subject": "o-1", "tenant": TenantId::new(), "data": {}}))
        .send()
        .await
        .unwrap()
        .status();
    child.kill().await.unwrap();
    status
}

async fn registry_round_trip(db: Db) {
    let manifest = db.data_dir().join("order-watch.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let out = ok(&db, &["plugins", "register", manifest.to_str().unwrap()]);
    assert!(out.starts_with("registered order-watch 0.1.0"), "{out}");

    // A second registration of the name, and an invalid manifest, are refused.
    let again = run_cli(&db, &["plugins", "register", manifest.to_str().unwrap()]);
    assert!(!again.status.success());
    let bad = db.data_dir().join("bad.toml");
    std::fs::write(&bad, MANIFEST.replace("0.1.0", "latest")).unwrap();
    let refused = run_cli(&db, &["plugins", "register", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("version"),
        "the refusal names the field: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let plugins = listed(&db);
    assert_eq!(plugins.len(), 1);
    let grants = plugins[0]["grants"].as_array().unwrap().clone();
    assert!(grants.iter().all(|g| g["state"] == "pending"));
    let grant = |pattern: &str| {
        grants.iter().find(|g| g["pattern"] == pattern).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (publish, subscribe) = (
        grant("platform.oms.order.flagged"),
        grant("platform.oms.order.*"),
    );

    // Pending allows nothing beyond the `dgm` template.
    assert_eq!(
        publish_through_registry_sidecar(&db, "order-watch", "platform.oms.order.flagged").await,
        reqwest::StatusCode::FORBIDDEN
    );
    ok(&db, &["plugins", "approve", "order-watch", &publish]);
    ok(&db, &["plugins", "deny", "order-watch", &subscribe]);
    assert_eq!(
        publish_through_registry_sidecar(&db, "order-watch", "platform.oms.order.flagged").await,
        reqwest::StatusCode::ACCEPTED
    );

    let states: Vec<(String, String)> = listed(&db)[0]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["pattern"].as_str().unwrap().to_owned(),
                g["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("platform.oms.order.flagged".into(), "approved".into()),
            ("platform.oms.order.*".into(), "denied".into())
        ]
    );

    ok(&db, &["plugins", "deregister", "order-watch"]);
    assert!(listed(&db).is_empty());
    let trail: Vec<Value> = ok(&db, &["plugins", "audit"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["registered", "approved", "denied", "deregistered"]
    );
    assert!(
        trail
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("cli:"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_round_trip_on_sqlite() {
    registry_round_trip(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_round_trip_on_postgres() {
    registry_round_trip(Db::postgres()).await;
}
