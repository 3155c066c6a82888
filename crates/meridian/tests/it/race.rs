//! 200 concurrent HTTP clients race for the last 50 units of one SKU spread over three
//! warehouses, against the real binary.

use reqwest::Method;
use serde_json::json;

use crate::support::{Api, Db, Server, create_tenant, run_cli};

async fn race_for_the_last_units(db: Db) {
    let server = Server::start(&db).await;
    let (_, key) = create_tenant(&db, "Race");
    let api = Api::new(&server.base, &key);
    api.seed("LAST-50", &[20, 17, 13]).await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let api = api.clone();
        // Mix the strategies: none may oversell.
        let allocation = ["priority", "most_stock", "split"][i % 3];
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"lines": [{"sku": "LAST-50", "quantity": 1}], "allocation": allocation});
            api.send(Method::POST, "/v1/orders", Some(body))
                .await
                .expect("request")
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => created += 1,
            409 => {
                assert_eq!(body["code"], "insufficient_stock");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (50, 150));

    let stock = api.ok(Method::GET, "/v1/inventory/LAST-50", None).await;
    assert_eq!(
        stock["total"],
        json!({"on_hand": 50, "reserved": 50, "available": 0})
    );
    for level in stock["levels"].as_array().unwrap() {
        assert_eq!(level["on_hand"], level["reserved"]);
    }
    let ledger = api
        .ok(Method::GET, "/v1/inventory/LAST-50/ledger?limit=200", None)
        .await;
    let reserves = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "reserve")
        .count();
    assert_eq!(reserves, 50);
    let out = run_cli(&db, &["stock", "reconcile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_race_for_the_last_fifty_units_on_sqlite() {
    race_for_the_last_units(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_race_for_the_last_fifty_units_on_postgres() {
    race_for_the_last_units(Db::postgres()).await;
}
