//! The conformance suite and the embedded cases on SQLite, a fresh file per test.

use std::path::PathBuf;
use std::sync::Arc;

use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};

async fn open(path: PathBuf) -> Arc<dyn Bus> {
    let bus = EmbeddedBus::open(EmbeddedConfig::Sqlite { path })
        .await
        .unwrap_or_else(|e| panic!("open the embedded bus on sqlite: {e}"));
    Arc::new(bus)
}

pub async fn sqlite_bus() -> TestBus {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A subdirectory that does not exist yet: opening creates it, as for the store.
    let path = dir.path().join("data").join("meridian.db");
    let bus = open(path.clone()).await;
    TestBus {
        bus,
        deployment: unique_deployment(),
        reopen: Some(Box::new(move || Box::pin(open(path.clone())))),
        restart_broker: None,
        _guard: Box::new(dir),
    }
}

meridian_bus::bus_conformance!(sqlite_bus);

crate::embedded::embedded_cases!(sqlite_bus);

/// The bus shares its file with the store: another connection that writes the same file
/// (holding the write lock for a while each time, as the store's writer does) only delays
/// publishes and acks, and each side's tables are left to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_the_file_with_another_writer() {
    use std::time::Duration;

    use meridian_bus::{Message, SubscribeOptions, TopicPattern};
    use meridian_core::{Envelope, TenantId};

    let t = sqlite_bus().await;
    let dir = t
        ._guard
        .downcast_ref::<tempfile::TempDir>()
        .expect("a temp dir");
    let path = dir.path().join("data").join("meridian.db");
    let other = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS store_things (n INTEGER NOT NULL)")?;
        for n in 0..20 {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.execute("INSERT INTO store_things (n) VALUES (?1)", [n])?;
            std::thread::sleep(Duration::from_millis(20));
            conn.execute_batch("COMMIT")?;
        }
        conn.query_row("SELECT count(*) FROM store_things", [], |r| {
            r.get::<_, i64>(0)
        })
    });

    let topic = t.topic("shared.created");
    let mut sub = t
        .bus
        .subscribe(
            &TopicPattern::exact(&topic),
            SubscribeOptions::durable("sharer"),
        )
        .await
        .expect("subscribe");
    let mut sent = std::collections::HashSet::new();
    for n in 0..50 {
        let m = Message::new(
            topic.clone(),
            Envelope::new(
                "/meridian/test",
                "meridian.test.ping",
                TenantId::new(),
                "k",
                meridian_core::now(),
                serde_json::json!({ "n": n }),
            ),
        );
        sent.insert(m.id());
        t.bus
            .publish(m)
            .await
            .expect("publish while another writer works");
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < sent.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery in time")
            .expect("next");
        got.insert(d.message.id());
        d.ack().await.expect("ack while another writer works");
    }
    assert_eq!(got, sent);
    let rows = tokio::task::spawn_blocking(move || other.join())
        .await
        .expect("join")
        .expect("the other writer did not panic")
        .expect("the other writer's transactions all committed");
    assert_eq!(rows, 20);
}

/// `kill -9` while publishing and acking loses no published message and undoes no ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing() {
    crate::crash::be_the_child_if_asked().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("meridian.db");
    crate::crash::kill_9_loses_nothing(
        "sqlite::kill_9_loses_nothing",
        EmbeddedConfig::Sqlite { path },
    )
    .await;
}
