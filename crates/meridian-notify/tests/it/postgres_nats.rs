//! The scenarios on PostgreSQL (a schema of its own per test) with NATS JetStream (a
//! deployment of its own per test, so streams and consumers are the test's own).
//! Both services must be up: the tests fail, never skip, without them.

use std::sync::Arc;

use meridian_bus_nats::NatsBus;
use meridian_core::EventSource;
use meridian_store::StoreConfig;
use meridian_store::postgres::PgConfig;

use crate::pipeline;
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

async fn stack() -> (Stack, Schema) {
    stack_with(crate::support::fast_retries()).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_placed_arrives_signed() {
    let (stack, _schema) = stack().await;
    pipeline::order_placed_arrives_signed(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_200_is_retried_and_arrives_once() {
    let (stack, _schema) = stack().await;
    pipeline::a_500_then_200_is_retried_and_arrives_once(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_event_gives_one_delivery() {
    let (stack, _schema) = stack().await;
    pipeline::a_duplicated_event_gives_one_delivery(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_fails_over_to_the_secondary_provider() {
    let mut guard = None;
    pipeline::email_fails_over_to_the_secondary_provider(async |config| {
        let (stack, schema) = stack_with(config).await;
        guard = Some(schema);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_through_the_http_provider() {
    let mut guard = None;
    pipeline::sms_goes_through_the_http_provider(async |config| {
        let (stack, schema) = stack_with(config).await;
        guard = Some(schema);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_disabled_and_the_tenant_told() {
    let mut guard = None;
    pipeline::a_failing_endpoint_is_disabled_and_the_tenant_told(async |config| {
        let (stack, schema) = stack_with(config).await;
        guard = Some(schema);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_waits_without_spending_attempts() {
    let mut guard = None;
    pipeline::a_tenant_over_its_rate_waits_without_spending_attempts(async |config| {
        let (stack, schema) = stack_with(config).await;
        guard = Some(schema);
        stack
    })
    .await;
    drop(guard);
}
