use std::io::{BufRead, BufReader};
use std::process::Stdio;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Db, Server, command, create_tenant, run_cli};

#[test]
fn bad_configuration_stops_start_up_naming_the_setting() {
    let db = Db::sqlite();
    for (var, value) in [
        ("STORAGE_BACKEND", "mongo"),
        ("MERIDIAN_BIND", "not-an-address"),
        ("MERIDIAN_DEPLOYMENT_ID", "Has Spaces"),
        ("MERIDIAN_BODY_LIMIT_BYTES", "-1"),
    ] {
        let out = command(&db).arg("serve").env(var, value).output().unwrap();
        assert!(!out.status.success(), "{var}={value} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(var),
            "{var}={value}: stderr does not name the setting: {stderr}"
        );
    }
    let out = command(&db)
        .arg("serve")
        .env("STORAGE_BACKEND", "postgres")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[test]
fn migrate_is_idempotent() {
    for db in [Db::sqlite(), Db::postgres()] {
        for _ in 0..2 {
            let out = run_cli(&db, &["migrate"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

async fn tenants_create_while_serving(db: Db) {
    let server = Server::start(&db).await;
    let out = run_cli(&db, &["tenants", "create", "Acme", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("exactly one JSON object on stdout");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["api_key", "tenant_id"]);
    let key = obj["api_key"].as_str().unwrap();
    assert!(
        obj["tenant_id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .is_ok()
    );

    // The running server accepts the key at once.
    let api = Api::new(&server.base, key);
    let page = api.ok(Method::GET, "/v1/products", None).await;
    assert_eq!(page["items"], json!([]));
    // A forged key is refused.
    let forged = Api::new(&server.base, &format!("{}x", &key[..key.len() - 1]));
    assert_eq!(
        forged
            .send(Method::GET, "/v1/products", None)
            .await
            .unwrap()
            .0,
        401
    );
}

#[tokio::test]
async fn tenants_create_while_a_server_runs_on_sqlite() {
    tenants_create_while_serving(Db::sqlite()).await;
}

#[tokio::test]
async fn tenants_create_while_a_server_runs_on_postgres() {
    tenants_create_while_serving(Db::postgres()).await;
}

#[tokio::test]
async fn dev_seeds_a_demo_tenant_once_and_prints_how_to_reach_it() {
    let db = Db::sqlite();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = command(&db)
            .arg("dev")
            .env("MERIDIAN_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (url, key, login) = tokio::task::spawn_blocking(move || {
            let (mut url, mut key, mut login) = (None, None, None);
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                if let Some(u) = line.trim().strip_prefix("API base URL:") {
                    url = Some(u.trim().to_owned());
                }
                if let Some(k) = line.trim().strip_prefix("demo API key:") {
                    key = Some(k.trim().to_owned());
                }
                if let Some(l) = line.trim().strip_prefix("demo login:") {
                    login = Some(l.trim().to_owned());
                    break;
                }
            }
            (
                url.expect("dev prints the API base URL"),
                key.expect("dev prints the demo API key"),
                login.expect("dev prints the demo login"),
            )
        })
        .await
        .unwrap();
        assert_eq!(url, format!("http://127.0.0.1:{port}/v1"));
        let api = Api::new(&format!("http://127.0.0.1:{port}"), &key);
        let products = api.ok(Method::GET, "/v1/products", None).await;
        assert!(products["items"].as_array().unwrap().len() >= 10);
        let warehouses = api.ok(Method::GET, "/v1/warehouses", None).await;
        assert_eq!(
            warehouses
                .as_array()
                .map(Vec::len)
                .or(warehouses["items"].as_array().map(Vec::len)),
            Some(3)
        );
        let stock = api.ok(Method::GET, "/v1/inventory/LAST-ONE", None).await;
        assert_eq!(stock["total"]["available"], 1);
        // The demo login works at the token endpoint.
        let (email, password) = login.split_once(" / ").expect("email / password");
        let r = crate::support::http()
            .post(format!("http://127.0.0.1:{port}/v1/auth/token"))
            .json(&serde_json::json!({"grant_type": "password", "username": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        keys.push(format!("{key} {login}"));
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        keys[0], keys[1],
        "a restart keeps the demo tenant and prints the same key and login"
    );
}

#[tokio::test]
async fn stock_reconcile_agrees_after_orders_cancels_and_fulfilments() {
    let db = Db::sqlite();
    let server = Server::start(&db).await;
    let (_, key) = create_tenant(&db, "Recon");
    let api = Api::new(&server.base, &key);
    api.seed("REC-1", &[5, 5]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let o = api
            .ok(
                Method::POST,
                "/v1/orders",
                Some(json!({"lines": [{"sku": "REC-1", "quantity": 2}], "allocation": "split"})),
            )
            .await;
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    api.ok(Method::POST, &format!("/v1/orders/{}/cancel", ids[0]), None)
        .await;
    api.ok(
        Method::POST,
        &format!("/v1/orders/{}/fulfill", ids[1]),
        None,
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/inventory/W1/REC-1/adjustments",
        Some(json!({"delta": 3, "reason": "receipt"})),
    )
    .await;
    let out = run_cli(&db, &["stock", "reconcile"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
