//! The scenarios on the embedded default: SQLite with the embedded bus in the same file.

use std::sync::Arc;

use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::EventSource;
use meridian_store::StoreConfig;
use meridian_store::sqlite::SqliteConfig;

use crate::pipeline;
use crate::support::Stack;

async fn stack() -> (Stack, tempfile::TempDir) {
    stack_with(crate::support::fast_retries()).await
}

async fn stack_with(config: meridian_notify::WorkerConfig) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.db");
    let deployment = "notifytest";
    let store = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(&path)),
        EventSource::new(deployment).unwrap(),
    )
    .await
    .unwrap();
    let bus = Arc::new(
        EmbeddedBus::open(EmbeddedConfig::Sqlite { path })
            .await
            .unwrap(),
    );
    (Stack::start_with(store, bus, deployment, config).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_placed_arrives_signed() {
    let (stack, _dir) = stack().await;
    pipeline::order_placed_arrives_signed(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_200_is_retried_and_arrives_once() {
    let (stack, _dir) = stack().await;
    pipeline::a_500_then_200_is_retried_and_arrives_once(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_event_gives_one_delivery() {
    let (stack, _dir) = stack().await;
    pipeline::a_duplicated_event_gives_one_delivery(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_fails_over_to_the_secondary_provider() {
    let mut guard = None;
    pipeline::email_fails_over_to_the_secondary_provider(async |config| {
        let (stack, dir) = stack_with(config).await;
        guard = Some(dir);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_through_the_http_provider() {
    let mut guard = None;
    pipeline::sms_goes_through_the_http_provider(async |config| {
        let (stack, dir) = stack_with(config).await;
        guard = Some(dir);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_disabled_and_the_tenant_told() {
    let mut guard = None;
    pipeline::a_failing_endpoint_is_disabled_and_the_tenant_told(async |config| {
        let (stack, dir) = stack_with(config).await;
        guard = Some(dir);
        stack
    })
    .await;
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_waits_without_spending_attempts() {
    let mut guard = None;
    pipeline::a_tenant_over_its_rate_waits_without_spending_attempts(async |config| {
        let (stack, dir) = stack_with(config).await;
        guard = Some(dir);
        stack
    })
    .await;
    drop(guard);
}
