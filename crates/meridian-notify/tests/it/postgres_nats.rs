//! The scenarios on PostgreSQL (a schema of its own per test) with NATS JetStream (a
//! deployment of its own per test, so streams and consumers are the test's own).
//! Both services must be up: the tests fail, never skip, without them.

use std::sync::Arc;

use meridian_bus_nats::NatsBus;
use meridian_core::EventSource;
use meridian_store::StoreConfig;
use meridian_store::postgres::PgConfig;

use crate::support::Stack;

fn database_url() -> String {
    std::env::var("MERIDIAN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn nats_url() -> String {
    std::env::var("MERIDIAN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Drops the test's schema when the test ends, pass or fail.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (database_url(), self.0.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                    drop(client);
                    let _ = driver.await;
                }
            })
        })
        .join();
    }
}

async fn stack_with(config: meridian_notify::WorkerConfig) -> (Stack, Schema) {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let schema = Schema(format!("nt_{unique}"));
    // Time-ordered UUIDs share their leading digits: the random tail keeps names apart.
    let deployment = format!("nt{}", &unique[20..]);
    let store = meridian_store::open(
        StoreConfig::Postgres(PgConfig {
            url: database_url(),
            schema: Some(schema.0.clone()),
            pool_size: 4,
        }),
        EventSource::new(&deployment).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL is required (MERIDIAN_TEST_DATABASE_URL): {e}"));
    let bus = Arc::new(
        NatsBus::connect(&nats_url())
            .await
            .unwrap_or_else(|e| panic!("NATS is required (MERIDIAN_TEST_NATS_URL): {e}")),
    );
    (
        Stack::start_with(store, bus, &deployment, config).await,
        schema,
    )
}

crate::pipeline::scenarios!();
