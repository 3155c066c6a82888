//! `kill -9` under load, then restart: every order that got a 201 is there, with its
//! reservation and its outbox event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_store::{PageRequest, StoreConfig};
use reqwest::Method;
use serde_json::json;

use crate::support::{Api, Db, Server, create_tenant, run_cli};

async fn open_store(db: &Db) -> Arc<dyn meridian_store::Store> {
    let config = match db {
        Db::Sqlite { dir } => StoreConfig::Sqlite(meridian_store::sqlite::SqliteConfig {
            path: dir.path().join("meridian.db"),
            readers: 1,
        }),
        Db::Postgres { url, schema, .. } => {
            StoreConfig::Postgres(meridian_store::postgres::PgConfig {
                url: url.clone(),
                schema: Some(schema.clone()),
                pool_size: 2,
            })
        }
    };
    meridian_store::open(config, meridian_core::EventSource::new("local").unwrap())
        .await
        .expect("open store")
}

async fn kill9_under_load(db: Db) {
    let mut server = Server::start(&db).await;
    let (tenant_id, key) = create_tenant(&db, "Crash");
    let api = Api::new(&server.base, &key);
    api.seed("CRASH-1", &[1_000_000, 1_000_000, 1_000_000])
        .await;

    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (api, acked) = (api.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let qty = 1 + (i % 3);
                let body =
                    json!({"lines": [{"sku": "CRASH-1", "quantity": qty}], "allocation": "split"});
                match api.send(Method::POST, "/v1/orders", Some(body)).await {
                    Ok((201, order)) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(order["id"].as_str().unwrap().to_owned(), qty);
                    }
                    Ok((status, body)) => panic!("unexpected {status} under load: {body}"),
                    // The server is gone: stop.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the load build up, then crash the server mid-flight.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for c in clients {
        c.await.expect("client task");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 300);

    let server = Server::start(&db).await;
    let api = Api::new(&server.base, &key);
    for (id, qty) in &acked {
        let order = api.ok(Method::GET, &format!("/v1/orders/{id}"), None).await;
        assert_eq!(order["status"], "confirmed", "{id}");
        assert_eq!(order["lines"][0]["quantity"], *qty, "{id}");
    }

    // Every stored order (acknowledged or committed just before the crash) holds exactly its
    // reservation: nothing lost, nothing leaked.
    let mut stored_units = 0;
    let mut stored = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orders?limit=200&cursor={c}"),
            None => "/v1/orders?limit=200".to_owned(),
        };
        let page = api.ok(Method::GET, &path, None).await;
        for o in page["items"].as_array().unwrap() {
            stored.insert(o["id"].as_str().unwrap().to_owned());
            stored_units += o["lines"][0]["quantity"].as_i64().unwrap();
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(acked.keys().all(|id| stored.contains(id)));
    let stock = api.ok(Method::GET, "/v1/inventory/CRASH-1", None).await;
    assert_eq!(stock["total"]["reserved"], stored_units);
    assert_eq!(stock["total"]["on_hand"], 3_000_000);

    // And each acknowledged order's event is in the outbox.
    let store = open_store(&db).await;
    let mut created_events = HashSet::new();
    let mut after = 0;
    loop {
        let rows = store.outbox_after(after, 1000).await.unwrap();
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            if r.envelope.ty == "meridian.oms.order.created" {
                created_events.insert(r.envelope.subject.clone());
            }
        }
    }
    for id in acked.keys() {
        assert!(
            created_events.contains(id),
            "order {id} has no outbox event"
        );
    }
    let tenant: meridian_core::TenantId = tenant_id.parse().unwrap();
    assert_eq!(
        store
            .list_orders(tenant, None, PageRequest::first(1))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let out = run_cli(&db, &["stock", "reconcile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_order_on_sqlite() {
    kill9_under_load(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_order_on_postgres() {
    kill9_under_load(Db::postgres()).await;
}
