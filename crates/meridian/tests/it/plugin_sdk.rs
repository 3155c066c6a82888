//! The Rust plugin SDK (`meridian-plugin-sdk`) against a real `meridian sidecar` on the
//! embedded bus: every call, the errors it reports with their problem code, and the
//! `run` loop's ack and nack.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_plugin_sdk::{Delivery, Error, RunOptions, Sidecar, Start, run};
use serde_json::{Value, json};
use tokio::process::Child;

const TOKEN: &str = "rust-sdk-test-token-0123456789";

/// A sidecar for a plugin of pool `oms` (the fraud-screen manifest) in a deployment of
/// its own; killed when dropped.
struct World {
    _dir: tempfile::TempDir,
    deployment: String,
    _sidecar: Child,
    url: String,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let deployment = format!("sdk{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let (child, url) =
            crate::python_plugin::spawn_fraud_screen_sidecar(dir.path(), &deployment, TOKEN, &[])
                .await;
        World {
            _dir: dir,
            deployment,
            _sidecar: child,
            url,
        }
    }

    fn sidecar(&self) -> Sidecar {
        Sidecar::new(&self.url, TOKEN).expect("client")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_sdk_speaks_the_whole_sidecar_api() {
    let world = World::start().await;
    let sc = world.sidecar();
    let tenant = uuid::Uuid::now_v7().to_string();

    // Config and heartbeat.
    let config = sc.config().await.unwrap();
    assert_eq!(
        (config.plugin.as_str(), config.pool.as_str()),
        ("fraud-screen", "oms")
    );
    assert_eq!(config.deployment, world.deployment);
    assert_eq!(config.tenant, None);
    sc.heartbeat().await.unwrap();

    // State: typed values, absent keys, deletes; keys are percent-encoded.
    assert_eq!(sc.state_get::<Value>("nothing/here").await.unwrap(), None);
    sc.state_put("counts/a b", &json!({"a": [1, 2]}))
        .await
        .unwrap();
    let got: Option<Value> = sc.state_get("counts/a b").await.unwrap();
    assert_eq!(got, Some(json!({"a": [1, 2]})));
    let typed: Option<std::collections::BTreeMap<String, Vec<u8>>> =
        sc.state_get("counts/a b").await.unwrap();
    assert_eq!(typed.unwrap()["a"], vec![1, 2]);
    assert!(sc.state_delete("counts/a b").await.unwrap());
    assert!(!sc.state_delete("counts/a b").await.unwrap());

    // Subscribe (created, then existing), publish, poll, ack: nothing comes back after.
    assert!(
        sc.subscribe("d", "platform.oms.fraud.decision", Start::Earliest)
            .await
            .unwrap()
    );
    assert!(
        !sc.subscribe("d", "platform.oms.fraud.decision", Start::New)
            .await
            .unwrap()
    );
    let published = sc
        .publish("platform.oms.fraud.decision")
        .tenant(&tenant)
        .subject("order-1")
        .send(&json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(
        published.topic,
        format!(
            "deployment.{}.platform.oms.fraud.decision",
            world.deployment
        )
    );
    let got = sc.poll("d", 16, Duration::from_secs(20)).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.event.id, published.id);
    assert_eq!(m.event.tenant.as_deref(), Some(tenant.as_str()));
    assert_eq!(m.event.subject, "order-1");
    assert_eq!(m.event.data, json!({"n": 1}));
    assert_eq!(m.attempt, 1);
    let settled = sc.ack("d", &[m.delivery_id, 999_999]).await.unwrap();
    assert_eq!(settled.settled, 1);
    assert_eq!(settled.unknown, vec![999_999]);
    assert!(
        sc.poll("d", 16, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );

    // A nack brings it back, with the next attempt number.
    sc.publish("platform.oms.fraud.decision")
        .tenant(&tenant)
        .send(&json!({"n": 2}))
        .await
        .unwrap();
    let first = sc.poll("d", 1, Duration::from_secs(20)).await.unwrap();
    sc.nack(
        "d",
        &[first[0].delivery_id],
        Some(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    let again = sc.poll("d", 1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(again[0].event.id, first[0].event.id);
    assert_eq!(again[0].attempt, 2);
    sc.ack("d", &[again[0].delivery_id]).await.unwrap();

    // Unsubscribe: the subscription is gone.
    sc.unsubscribe("d").await.unwrap();
    let e = sc.poll("d", 1, Duration::ZERO).await.unwrap_err();
    assert_eq!((e.code(), e.status()), ("not_found", Some(404)), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_sdk_reports_problems_by_code() {
    let world = World::start().await;
    let sc = world.sidecar();
    let tenant = uuid::Uuid::now_v7().to_string();

    // Outside the ACL (an `oms` plugin publishing a data topic): 403 acl_denied.
    let e = sc
        .publish("platform.data.stock.snapshot")
        .tenant(&tenant)
        .send(&json!({"sku": "A-1"}))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.status()), ("acl_denied", Some(403)), "{e}");
    let Error::Problem {
        detail, problem, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(!detail.is_empty());
    assert_eq!(problem["code"], "acl_denied");

    // A plugin not bound to a tenant must name one.
    let e = sc
        .publish("platform.oms.fraud.decision")
        .send(&json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    assert_eq!(e.code(), "validation_failed", "{e}");

    // A subscription outside the ACL, and a bad name.
    let e = sc
        .subscribe("x", "platform.data.**", Start::New)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "acl_denied", "{e}");
    let e = sc
        .subscribe("Bad Name", "platform.oms.**", Start::New)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "validation_failed", "{e}");

    // A wrong token, and no sidecar at all.
    let e = Sidecar::new(&world.url, "wrong-token-0123456789")
        .unwrap()
        .heartbeat()
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.status()), ("unauthorized", Some(401)), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let e = Sidecar::new(&format!("http://{addr}"), TOKEN)
        .unwrap()
        .config()
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unreachable", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_acks_handled_messages_and_nacks_failed_ones_until_stopped() {
    let world = World::start().await;
    let sc = world.sidecar();
    let tenant = uuid::Uuid::now_v7().to_string();
    sc.subscribe("r", "platform.oms.fraud.decision", Start::Earliest)
        .await
        .unwrap();
    for n in 1..=3 {
        sc.publish("platform.oms.fraud.decision")
            .tenant(&tenant)
            .subject(&format!("k{n}"))
            .send(&json!({"n": n}))
            .await
            .unwrap();
    }
    // The handler fails message 2's first attempt; stops the loop once every message has
    // been handled successfully.
    let seen: Arc<Mutex<Vec<(i64, u32)>>> = Arc::default();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let handler = {
        let (seen, done_tx) = (seen.clone(), done_tx.clone());
        move |m: Delivery| {
            let (seen, done_tx) = (seen.clone(), done_tx.clone());
            async move {
                let n = m.event.data["n"].as_i64().unwrap();
                let mut seen = seen.lock().unwrap();
                seen.push((n, m.attempt));
                if n == 2 && m.attempt == 1 {
                    return Err(format!("message {n} fails its first attempt"));
                }
                // Four calls: messages 1 and 3, and message 2 twice.
                if seen.len() >= 4
                    && let Some(tx) = done_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
                Ok(())
            }
        }
    };
    let options = RunOptions {
        wait: Duration::from_millis(500),
        nack_delay: Some(Duration::from_millis(10)),
        ..RunOptions::default()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        run(&sc, "r", options, done_rx, handler),
    )
    .await
    .expect("the loop stopped")
    .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![(1, 1), (2, 1), (2, 2), (3, 1)]);
    // Everything was acked: nothing is delivered again.
    assert!(
        sc.poll("r", 16, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );

    // `run` ends with the error when the subscription does not exist.
    let e = run(
        &sc,
        "missing",
        RunOptions::default(),
        std::future::pending::<()>(),
        |_m: Delivery| async { Ok::<(), String>(()) },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "not_found", "{e}");
}
