//! The `warehouse-sync` reference plugin end to end: `meridian serve` with its instance
//! manager starts the real plugin binary and its sidecar from the registry; the plugin
//! reads a CSV feed (a file, or an HTTP endpoint the test serves) and publishes stock
//! snapshots; the server's `inventory-stock-snapshots` consumer applies them, which the
//! test sees through `GET /v1/inventory/{sku}`. The plugin binary is built with cargo
//! first (once per test process); a failed build fails the tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Db, Server, create_tenant, run_cli};

/// Builds `warehouse-sync` into the target directory `meridian` was built in; its path.
fn plugin_exe() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "warehouse-sync"])
                .current_dir(&root)
                .output()
                .expect("run cargo build -p warehouse-sync");
            assert!(
                out.status.success(),
                "cargo build -p warehouse-sync: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let exe = Path::new(crate::support::EXE).with_file_name("warehouse-sync");
            assert!(exe.exists(), "{} was not built", exe.display());
            exe
        })
        .clone()
}

fn cli(db: &Db, args: &[&str]) -> String {
    let out = run_cli(db, args);
    assert!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Registers the plugin from a manifest like the shipped one (its command the built
/// binary, `env` the given variables) and approves its grant.
fn register(db: &Db, env: &[(&str, String)]) {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/warehouse-sync/manifest.toml"),
    )
    .unwrap();
    // The `[run]` lines of the shipped manifest, replaced; the rest (pool, grants, config
    // schema) is what ships. Rust's `{:?}` of these ASCII strings is a TOML basic string.
    let mut vars = vec![format!("RUST_LOG = {:?}", "warn")];
    vars.extend(env.iter().map(|(k, v)| format!("{k} = {v:?}")));
    let manifest = shipped
        .lines()
        .map(|line| {
            if line.starts_with("command = ") {
                format!("command = [{:?}]", plugin_exe().display().to_string())
            } else if line.starts_with("env = ") {
                format!("env = {{ {} }}", vars.join(", "))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(manifest.contains("warehouse-sync\"]") && manifest.contains("RUST_LOG = \"warn\""));
    let path = db.data_dir().join("warehouse-sync.toml");
    std::fs::write(&path, manifest).unwrap();
    cli(db, &["plugins", "register", path.to_str().unwrap()]);
    let shown: Value = serde_json::from_str(&cli(db, &["plugins", "show", "warehouse-sync"]))
        .expect("plugins show prints JSON");
    for grant in shown["grants"].as_array().unwrap() {
        cli(
            db,
            &[
                "plugins",
                "approve",
                "warehouse-sync",
                grant["id"].as_str().unwrap(),
            ],
        );
    }
}

async fn start_server(db: &Db, extra: &[(&str, String)]) -> Server {
    let mut env = vec![
        ("BUS_BACKEND", "embedded".to_owned()),
        ("MERIDIAN_PLUGIN_POLL_MS", "100".to_owned()),
        ("MERIDIAN_PLUGIN_BACKOFF_MS", "200".to_owned()),
        ("MERIDIAN_PLUGIN_LIVENESS_MS", "500".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Server::start_with(db, &env).await
}

/// `(on_hand, reserved)` of `sku` in warehouse `W0`.
async fn level(api: &Api, sku: &str) -> (i64, i64) {
    let v = api
        .ok(Method::GET, &format!("/v1/inventory/{sku}"), None)
        .await;
    let l = v["levels"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["warehouse"] == "W0"))
        .unwrap_or_else(|| panic!("no W0 level: {v}"));
    (
        l["on_hand"].as_i64().unwrap(),
        l["reserved"].as_i64().unwrap(),
    )
}

/// Waits until `sku` in `W0` is `want`; panics with the server's log after 60 s.
async fn until_level(server: &Server, api: &Api, sku: &str, want: (i64, i64)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = level(api, sku).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sku} stayed at {got:?}, expected {want:?}; server log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_sync_applies_a_csv_file_through_the_manager_for_its_tenant_only() {
    let db = Db::sqlite();
    let (tenant, key) = create_tenant(&db, "acme");
    let (_, other_key) = create_tenant(&db, "other");
    let server = start_server(&db, &[]).await;
    let api = Api::new(&server.base, &key);
    let other = Api::new(&server.base, &other_key);
    api.seed("WS-1", &[5]).await;
    api.seed("WS-2", &[8]).await;
    other.seed("WS-1", &[5]).await;

    // One good row, one that changes nothing known (unknown SKU: a dead letter), and a
    // bad row the plugin skips.
    let feed = db.data_dir().join("stock.csv");
    std::fs::write(
        &feed,
        "warehouse,sku,on_hand\nW0,WS-1,42\nW0,WS-2,many\nW0,NOPE,1\n",
    )
    .unwrap();
    register(
        &db,
        &[
            ("WAREHOUSE_SYNC_FEED", feed.display().to_string()),
            ("WAREHOUSE_SYNC_TENANT", tenant.clone()),
            ("WAREHOUSE_SYNC_INTERVAL_SECS", "1".into()),
        ],
    );
    until_level(&server, &api, "WS-1", (42, 0)).await;
    assert_eq!(level(&api, "WS-2").await, (8, 0), "the bad row is skipped");
    assert_eq!(
        level(&other, "WS-1").await,
        (5, 0),
        "another tenant's stock is untouched"
    );
    // The change went through the ledger as a stock take.
    let ledger = api.ok(Method::GET, "/v1/inventory/WS-1/ledger", None).await;
    let last = ledger["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "set", "{ledger}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("warehouse stock snapshot counted at"),
        "{last}"
    );
    // The unknown SKU is a dead letter that says why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let page = api.ok(Method::GET, "/v1/dead-letters", None).await;
        if let Some(d) = page["items"].as_array().unwrap().first() {
            break d["reason"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("product NOPE not found"), "{reason}");

    // The next read publishes the changed row.
    std::fs::write(&feed, "warehouse,sku,on_hand\nW0,WS-1,30\nW0,WS-2,9\n").unwrap();
    until_level(&server, &api, "WS-1", (30, 0)).await;
    until_level(&server, &api, "WS-2", (9, 0)).await;
    assert_eq!(level(&other, "WS-1").await, (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_sync_reads_an_http_feed_and_a_count_below_reserved_is_a_dead_letter() {
    let db = Db::postgres();
    let (tenant, key) = create_tenant(&db, "acme");
    // The feed, served by the test.
    let csv = Arc::new(Mutex::new("warehouse,sku,on_hand\nW0,HS-1,20\n".to_owned()));
    let app = axum::Router::new().route(
        "/stock.csv",
        axum::routing::get({
            let csv = csv.clone();
            move || {
                let body = csv.lock().unwrap().clone();
                async move { body }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_url = format!("http://{}/stock.csv", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Settings through the plugin's config (checked against the manifest's schema).
    let config = db.data_dir().join("warehouse-sync.json");
    std::fs::write(
        &config,
        json!({"feed": feed_url, "tenant": tenant, "interval_secs": 1}).to_string(),
    )
    .unwrap();
    let server = start_server(
        &db,
        &[(
            "MERIDIAN_SIDECAR_PLUGIN_CONFIG",
            config.display().to_string(),
        )],
    )
    .await;
    let api = Api::new(&server.base, &key);
    api.seed("HS-1", &[1]).await;
    register(&db, &[]);
    until_level(&server, &api, "HS-1", (20, 0)).await;

    // An order reserves 6; a count of 4 would leave fewer on hand than reserved.
    api.ok(
        Method::POST,
        "/v1/orders",
        Some(json!({"lines": [{"sku": "HS-1", "quantity": 6}]})),
    )
    .await;
    *csv.lock().unwrap() = "warehouse,sku,on_hand\nW0,HS-1,4\n".to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let page = api.ok(Method::GET, "/v1/dead-letters", None).await;
        if let Some(d) = page["items"].as_array().unwrap().first() {
            break d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter; server log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = dead["reason"].as_str().unwrap();
    assert!(reason.contains("below the 6 units reserved"), "{reason}");
    assert_eq!(dead["attempts"], 1, "refused at once, not retried: {dead}");
    assert_eq!(dead["consumer"], "inventory-stock-snapshots");
    assert_eq!(level(&api, "HS-1").await, (20, 6), "nothing changed");

    // A count that keeps the reservation is applied.
    *csv.lock().unwrap() = "warehouse,sku,on_hand\nW0,HS-1,7\n".to_owned();
    until_level(&server, &api, "HS-1", (7, 6)).await;
}
