//! The conformance suite and the embedded cases on PostgreSQL: a fresh schema per test,
//! dropped afterwards, in the database at `MERIDIAN_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). A server that cannot be reached fails every
//! test here; nothing is skipped.

use std::sync::Arc;

use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn server_url() -> String {
    std::env::var("MERIDIAN_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema of its own for one test, dropped when the test ends, pass or fail.
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Self {
        Self {
            name: format!("bt_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    fn config(&self) -> EmbeddedConfig {
        EmbeddedConfig::Postgres {
            url: server_url(),
            schema: Some(self.name.clone()),
            pool_size: 2,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop cannot await: run the DROP on a thread of its own with a small runtime.
        let (url, name) = (server_url(), self.name.clone());
        let dropped = meridian_bus::conformance::finish_on_own_thread(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        });
        if !matches!(dropped, Some(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

async fn open(config: EmbeddedConfig) -> Arc<dyn Bus> {
    let bus = EmbeddedBus::open(config).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} is required (set MERIDIAN_TEST_DATABASE_URL): {e}",
            server_url()
        )
    });
    Arc::new(bus)
}

pub async fn postgres_bus() -> TestBus {
    let schema = Schema::new();
    let config = schema.config();
    let bus = open(config.clone()).await;
    TestBus {
        bus,
        deployment: unique_deployment(),
        reopen: Some(Box::new(move || Box::pin(open(config.clone())))),
        restart_broker: None,
        _guard: Box::new(schema),
    }
}

meridian_bus::bus_conformance!(postgres_bus);

crate::embedded::embedded_cases!(postgres_bus);

/// `kill -9` while publishing and acking loses no published message and undoes no ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing() {
    crate::crash::be_the_child_if_asked().await;
    let schema = Schema::new();
    crate::crash::kill_9_loses_nothing("postgres::kill_9_loses_nothing", schema.config()).await;
}
