//! The conformance suite on SQLite (a fresh database file per test), and what only SQLite
//! has: migrations on reopen, several processes on one file, constraints that hold even
//! against hand-written SQL, and the busy timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_core::{EventSource, Quantity, TenantId};
use meridian_orders::{AllocationStrategy, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_store::sqlite::{SCHEMA_VERSION, SqliteConfig, SqliteStore};
use meridian_store::{Store, StoreError};
use tempfile::TempDir;

use crate::conformance::TestStore;

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(
        SqliteConfig {
            path: path.to_owned(),
            readers: 4,
        },
        EventSource::new("test").unwrap(),
    )
    .await
    .unwrap()
}

/// A fresh database in a directory that does not exist yet, so that `open` must create it.
async fn fresh() -> (TempDir, PathBuf, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("meridian.db");
    let store = Arc::new(open(&path).await);
    (dir, path, store)
}

pub async fn sqlite_store() -> TestStore {
    let (dir, _, store) = fresh().await;
    TestStore {
        store,
        _guard: Box::new(dir),
    }
}

use crate::conformance::stocked;

crate::conformance::conformance_suite!(sqlite_store);
crate::fulfillment::fulfillment_suite!(sqlite_store);
crate::holds::holds_suite!(sqlite_store);
crate::notify::notify_suite!(sqlite_store);

async fn sqlite_plugins() -> crate::plugins::TestPlugins {
    let (dir, _, store) = fresh().await;
    crate::plugins::TestPlugins {
        store,
        _guard: Box::new(dir),
    }
}

crate::plugins::plugin_suite!(sqlite_plugins);

// --- SQLite only ---

fn one_unit(t: TenantId) -> PlaceOrder {
    let line = OrderLineRequest {
        sku: "SKU-1".parse().unwrap(),
        quantity: Quantity::new(1).unwrap(),
    };
    PlaceOrder {
        tenant_id: t,
        request: OrderRequest::new(vec![line], None, None, AllocationStrategy::Priority).unwrap(),
        idempotency_key: None,
        request_hash: "one".into(),
    }
}

fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_acknowledged_writes_and_migrates_once() {
    let (_dir, path, store) = fresh().await;
    let t = stocked(&*store, 3).await;
    let order = store.place_order(one_unit(t)).await.unwrap();
    drop(store);

    let again = open(&path).await;
    assert_eq!(again.get_order(t, order.id).await.unwrap(), order);
    let levels = again.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap();
    assert_eq!((levels[0].on_hand, levels[0].reserved), (3, 1));

    let conn = raw(&path);
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Versions may skip a number (a migration still on another branch), never repeat.
    assert_eq!(versions, [1, 2, 4, 5, 6, 7, 8, 10]);
    assert_eq!(versions.last(), Some(&SCHEMA_VERSION));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Two stores on one file stand for two processes (a server and a CLI command): SQLite's
/// write lock and the busy timeout serialize them, and stock is still never oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_never_oversell() {
    let (_dir, path, first) = fresh().await;
    let second = Arc::new(open(&path).await);
    let t = stocked(&*first, 30).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store: Arc<dyn Store> = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { store.place_order(one_unit(t)).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::InsufficientStock(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 30);
    for store in [&first, &second] {
        let levels = store.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap();
        assert_eq!((levels[0].on_hand, levels[0].reserved), (30, 30));
        assert_eq!(store.reconcile(None).await.unwrap(), vec![]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_a_level_changed_behind_the_ledgers_back() {
    let (_dir, path, store) = fresh().await;
    let t = stocked(&*store, 10).await;
    raw(&path)
        .execute("UPDATE stock_levels SET on_hand = on_hand + 1", [])
        .unwrap();
    for scope in [Some(t), None] {
        let mismatches = store.reconcile(scope).await.unwrap();
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].tenant_id, t);
        assert_eq!(mismatches[0].sku.as_str(), "SKU-1");
        assert_eq!(
            (mismatches[0].level, mismatches[0].ledger),
            ((11, 0), (10, 0))
        );
    }
    assert_eq!(
        store.reconcile(Some(TenantId::new())).await.unwrap(),
        vec![]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_overselling_and_ledger_edits() {
    let (_dir, path, store) = fresh().await;
    let t = stocked(&*store, 2).await;
    store.place_order(one_unit(t)).await.unwrap();
    let conn = raw(&path);
    for sql in [
        "UPDATE stock_levels SET reserved = on_hand + 1",
        "UPDATE stock_levels SET on_hand = -1, reserved = 0",
        "UPDATE stock_ledger SET on_hand_delta = 100",
        "DELETE FROM stock_ledger",
    ] {
        let err = conn.execute(sql, []).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{sql}: {err}"
        );
    }
    assert_eq!(store.reconcile(None).await.unwrap(), vec![]);
}

/// A writer that holds the lock past the busy timeout makes writes `Unavailable`, not
/// `Internal`; once it lets go, writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_unavailable_then_recovers() {
    let (_dir, path, store) = fresh().await;
    let t = stocked(&*store, 5).await;
    let mut conn = raw(&path);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let err = store.create_tenant("blocked").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.place_order(one_unit(t)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // Reads go on while the lock is held (WAL).
    assert_eq!(store.reconcile(None).await.unwrap(), vec![]);
    tx.rollback().unwrap();

    store.create_tenant("unblocked").await.unwrap();
    store.place_order(one_unit(t)).await.unwrap();
}
