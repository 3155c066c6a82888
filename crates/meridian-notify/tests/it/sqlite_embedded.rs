//! The scenarios on the embedded default: SQLite with the embedded bus in the same file.

use std::sync::Arc;

use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::EventSource;
use meridian_store::StoreConfig;
use meridian_store::sqlite::SqliteConfig;

use crate::support::Stack;

/// The SQLite store and the embedded bus in one file of a fresh directory, with the
/// notification consumers and worker running under `config`.
pub(crate) async fn stack_with(
    config: meridian_notify::WorkerConfig,
) -> (Stack, tempfile::TempDir) {
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

crate::pipeline::scenarios!();
