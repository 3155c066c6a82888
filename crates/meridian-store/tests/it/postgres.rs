//! The conformance suite on PostgreSQL (a fresh schema per test, dropped afterwards), and
//! what only PostgreSQL has: migrations racing from several processes, a writer whose
//! connection is killed under it, and outbox appends that wait for earlier commits.
//!
//! The server is `MERIDIAN_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). A server that cannot be reached fails every
//! test here; nothing is skipped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_core::{EventSource, Quantity, TenantId};
use meridian_orders::{AllocationStrategy, Customer, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_store::postgres::{PgConfig, PgStore};
use meridian_store::{Store, StoreError};

use crate::conformance::TestStore;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn server_url() -> String {
    std::env::var("MERIDIAN_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema of its own for one test. The URL names the schema as the application name too,
/// so a test can find its own sessions in `pg_stat_activity`.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new() -> Self {
        let name = format!("mt_{}", uuid::Uuid::now_v7().simple());
        let base = server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{base}{sep}application_name={name}"),
            name,
        }
    }

    fn config(&self) -> PgConfig {
        PgConfig {
            url: self.url.clone(),
            schema: Some(self.name.clone()),
            pool_size: 4,
        }
    }

    async fn open(&self) -> PgStore {
        PgStore::open(self.config(), EventSource::new("test").unwrap())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is required (set MERIDIAN_TEST_DATABASE_URL): {e}",
                    server_url()
                )
            })
    }

    /// Polls until `n` of the store's sessions wait for a lock, while `pending()` holds.
    /// Returns `false` as soon as `pending()` fails; panics if they are not waiting in 10 s.
    async fn until_sessions_wait(&self, n: i64, pending: impl Fn() -> bool) -> bool {
        let admin = self.admin().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if !pending() {
                return false;
            }
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(DISTINCT l.pid) FROM pg_locks l \
                     JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE NOT l.granted AND a.application_name = $1",
                    &[&self.name],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == n {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} sessions never queued for a lock ({waiting} did)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A plain connection to the server, for looking behind the store's back.
    async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

/// Drops the schema when the test ends, pass or fail. Drop cannot await, so the drop runs
/// on a thread of its own with a small runtime; a failure is reported, not fatal.
impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (server_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                let driver = tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(std::io::Error::other)?;
                drop(client);
                let _ = driver.await;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

pub async fn postgres_store() -> TestStore {
    let schema = Schema::new();
    let store = schema.open().await;
    TestStore {
        store: Arc::new(store),
        _guard: Box::new(schema),
    }
}

use crate::conformance::stocked;

crate::conformance::conformance_suite!(postgres_store);
crate::fulfillment::fulfillment_suite!(postgres_store);
crate::holds::holds_suite!(postgres_store);
crate::notify::notify_suite!(postgres_store);

async fn postgres_plugins() -> crate::plugins::TestPlugins {
    let schema = Schema::new();
    let store = schema.open().await;
    crate::plugins::TestPlugins {
        store: Arc::new(store),
        _guard: Box::new(schema),
    }
}

crate::plugins::plugin_suite!(postgres_plugins);

// --- PostgreSQL only ---

fn one_unit(t: TenantId, key: Option<String>) -> PlaceOrder {
    PlaceOrder {
        tenant_id: t,
        request: OrderRequest::new(
            vec![OrderLineRequest {
                sku: "SKU-1".parse().unwrap(),
                quantity: Quantity::new(1).unwrap(),
            }],
            None,
            None,
            AllocationStrategy::Priority,
        )
        .unwrap(),
        idempotency_key: key,
        request_hash: "one unit of SKU-1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_migrate_once() {
    let schema = Schema::new();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let config = schema.config();
            tokio::spawn(
                async move { PgStore::open(config, EventSource::new("test").unwrap()).await },
            )
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every concurrent open succeeds"));
    }
    // Reopening an up-to-date schema is a no-op.
    stores.push(schema.open().await);

    let admin = schema.admin().await;
    let versions: Vec<i64> = admin
        .query(
            &format!(
                "SELECT version FROM {}.schema_migrations ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        [1, 2, 4, 5, 6, 7, 8, 10, 11],
        "each migration applied exactly once"
    );

    // Every instance sees the same data.
    let t = stores[0].create_tenant("shared").await.unwrap();
    for s in &stores {
        assert_eq!(s.get_tenant(t.id).await.unwrap(), t);
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_at_open() {
    let config = PgConfig {
        // Port 1 on localhost refuses connections at once.
        url: "postgres://postgres@127.0.0.1:1/test".into(),
        schema: Some("mt_unreachable".into()),
        pool_size: 1,
    };
    let err = PgStore::open(config, EventSource::new("test").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let mut bad = PgConfig::new(server_url());
    bad.schema = Some("Robert'); DROP TABLE students;--".into());
    let err = PgStore::open(bad, EventSource::new("test").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Validation(_)), "{err:?}");
}

/// Kills every session of the store (the order writer's and the pool's) mid-life. Orders
/// placed afterwards succeed once the store has reconnected; a call that lands on a dead
/// connection fails with `Unavailable`, never with a half-written order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_reconnects_after_its_connection_is_killed() {
    let schema = Schema::new();
    let store = schema.open().await;
    let t = stocked(&store, 100).await;
    let before = store.place_order(one_unit(t, None)).await.unwrap();

    let admin = schema.admin().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&schema.name],
        )
        .await
        .unwrap();
    assert!(
        killed.len() >= 2,
        "the writer and at least one pooled session"
    );

    let mut placed = vec![before.id];
    let mut unavailable = 0;
    for i in 0..20 {
        match store.place_order(one_unit(t, Some(format!("k{i}")))).await {
            Ok(order) => placed.push(order.id),
            Err(StoreError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert!(
        unavailable <= 1,
        "only the first call may meet the dead connection"
    );
    assert_eq!(placed.len(), 21 - unavailable);

    // Reads recover too (a pooled connection found dead is replaced), and what was
    // acknowledged is exactly what is stored.
    let mut listed = None;
    for _ in 0..5 {
        match store
            .list_orders(t, None, meridian_store::PageRequest::first(100))
            .await
        {
            Ok(page) => {
                listed = Some(page.items);
                break;
            }
            Err(StoreError::Unavailable(_)) => continue,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    let listed: BTreeSet<_> = listed
        .expect("reads recover")
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(listed, placed.iter().copied().collect());
    let level = &store.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap()[0];
    assert_eq!(level.reserved, placed.len() as i64);
    assert_eq!(store.reconcile(Some(t)).await.unwrap(), vec![]);
}

/// Outbox `seq` is allocated in commit order: a write that wants to append while another
/// transaction holds the outbox lock (here the test's, standing in for another instance
/// mid-commit) waits for it, so its row gets the larger `seq` *and* commits later. A relay
/// reading `seq > last seen` therefore never passes over a row that becomes visible late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_appends_wait_for_earlier_commits() {
    let schema = Schema::new();
    let store: Arc<dyn Store> = Arc::new(schema.open().await);
    let t = stocked(&*store, 10).await;
    let before = store.outbox_after(0, 100).await.unwrap().len();

    let mut admin = schema.admin().await;
    let tx = admin.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&meridian_store::postgres::OUTBOX_LOCK_KEY],
    )
    .await
    .unwrap();

    let write = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .adjust_stock(t, &"W1".parse().unwrap(), &"SKU-1".parse().unwrap(), 1, "r")
                .await
        })
    };
    let order = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.place_order(one_unit(t, None)).await })
    };
    // Both must end up waiting (never completing while the lock is held): the stock write on
    // the outbox lock, the order on the stock row the stock write holds, or on the outbox
    // lock if it got the row first.
    let waiting = schema
        .until_sessions_wait(2, || !write.is_finished() && !order.is_finished())
        .await;
    assert!(
        waiting,
        "a write completed without waiting for the outbox lock"
    );
    tx.commit().await.unwrap();
    write.await.unwrap().unwrap();
    order.await.unwrap().unwrap();
    let rows = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(rows.len(), before + 2);
    assert_eq!(store.reconcile(Some(t)).await.unwrap(), vec![]);
}

/// One order the database refuses (a NUL in the customer's name: PostgreSQL text cannot
/// hold U+0000) gets a validation error of its own; the orders that shared its batch are
/// placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_order_does_not_fail_its_batch() {
    let schema = Schema::new();
    let store = schema.open().await;
    let t = stocked(&store, 100).await;

    // Hold the stock row so that the writer's first batch waits on it and the next orders
    // queue up behind it, to be placed together as one batch.
    let mut admin = schema.admin().await;
    let lock = admin.transaction().await.unwrap();
    lock.execute(
        &format!("SELECT 1 FROM {}.stock_levels FOR UPDATE", schema.name),
        &[],
    )
    .await
    .unwrap();
    let mut first = store.place_order(one_unit(t, None));
    assert!(futures::poll!(first.as_mut()).is_pending());
    assert!(schema.until_sessions_wait(1, || true).await);

    let mut batch: Vec<_> = (0..10)
        .map(|i| {
            let mut cmd = one_unit(t, None);
            let name = if i == 4 { "Ana\0" } else { "Ana" };
            cmd.request = OrderRequest::new(
                cmd.request.lines().to_vec(),
                Some(Customer {
                    email: "ana@example.com".into(),
                    name: Some(name.into()),
                    phone: None,
                }),
                None,
                AllocationStrategy::Priority,
            )
            .unwrap();
            store.place_order(cmd)
        })
        .collect();
    for order in &mut batch {
        // One poll hands the order to the writer's queue.
        assert!(futures::poll!(order.as_mut()).is_pending());
    }
    lock.rollback().await.unwrap();
    first.await.unwrap();

    let results = futures::future::join_all(batch).await;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (4, Err(StoreError::Validation(_))) => {}
            (4, other) => panic!("the NUL order must be refused: {other:?}"),
            (_, Ok(order)) => assert_eq!(
                order.customer.as_ref().unwrap().name.as_deref(),
                Some("Ana")
            ),
            (_, Err(e)) => panic!("order {i} failed with its batch: {e:?}"),
        }
    }
    let level = &store.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap()[0];
    assert_eq!(level.reserved, 10);
    assert_eq!(store.reconcile(Some(t)).await.unwrap(), vec![]);
}

/// 2000 orders at once for 1500 units: each is answered (the timeout only guards against a
/// stalled writer), exactly 1500 win, and they were committed in shared transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_orders_is_placed_in_batches() {
    let schema = Schema::new();
    let store: Arc<dyn Store> = Arc::new(schema.open().await);
    let t = stocked(&*store, 1_500).await;
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .place_order(one_unit(t, (i % 2 == 0).then(|| format!("burst-{i}"))))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every order is answered")
            .unwrap()
        {
            Ok(_) => ok += 1,
            Err(StoreError::InsufficientStock(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(ok, 1_500);
    let level = &store.get_stock(t, &"SKU-1".parse().unwrap()).await.unwrap()[0];
    assert_eq!((level.on_hand, level.reserved), (1_500, 1_500));

    // Far fewer transactions than orders: the writer grouped them.
    let admin = schema.admin().await;
    let orders_per_created_at: i64 = admin
        .query_one(
            &format!(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM {}.orders GROUP BY created_at) b",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        orders_per_created_at > 1,
        "a batch shares one timestamp; expected batches of more than one order"
    );
    assert_eq!(store.reconcile(Some(t)).await.unwrap(), vec![]);
}

/// Two stores on one schema, as two server processes would be: one takes the relay lock,
/// the other cannot until the first one's lock connection is killed (as when its process
/// dies), and then can; the first one sees that it lost the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_lock_passes_on_when_its_connection_dies() {
    let schema = Schema::new();
    let first = schema.open().await;
    let second = schema.open().await;
    let held = first.try_lock_relay().await.unwrap().expect("a free lock");
    assert!(held.is_held().await);
    assert!(second.try_lock_relay().await.unwrap().is_none());
    // Another schema's relay is not excluded.
    let elsewhere = Schema::new();
    let other = elsewhere.open().await;
    assert!(other.try_lock_relay().await.unwrap().is_some());

    let admin = schema.admin().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "one session holds the relay lock");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(lock) = second.try_lock_relay().await.unwrap() {
            break lock;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(taken.is_held().await);
    assert!(
        !held.is_held().await,
        "the first relay knows it lost the lock"
    );
}

/// The relay's wake-ups come from its own schema's commits, whichever process made them,
/// and not from another schema's on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_is_woken_by_its_schema_s_commits_only() {
    let schema = Schema::new();
    let relay_side = schema.open().await;
    let writer_side = schema.open().await;
    let elsewhere = Schema::new();
    let other = elsewhere.open().await;
    let lock = relay_side
        .try_lock_relay()
        .await
        .unwrap()
        .expect("a free lock");
    let signal = lock.outbox_signal().expect("PostgreSQL signals");

    // Another schema's outbox row (`warehouse.created`): no wake-up.
    add_warehouse(&other, "elsewhere").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), signal.notified())
            .await
            .is_err(),
        "woken by another schema's commit"
    );

    // This schema's, written through another store (as by another process): woken.
    add_warehouse(&writer_side, "here").await;
    tokio::time::timeout(Duration::from_secs(10), signal.notified())
        .await
        .expect("no wake-up within 10 s of this schema's commit");
}

/// A new tenant with one warehouse: one `warehouse.created` outbox row.
async fn add_warehouse(store: &PgStore, tenant: &str) {
    let t = store.create_tenant(tenant).await.unwrap().id;
    let warehouse = meridian_inventory::NewWarehouse {
        code: "W1".parse().unwrap(),
        name: "W1".into(),
        priority: 1,
    };
    store.create_warehouse(t, warehouse).await.unwrap();
}
