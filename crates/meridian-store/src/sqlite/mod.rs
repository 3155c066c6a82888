//! SQLite backend: the embedded default store.
//!
//! - **Durability.** WAL journal with `synchronous = FULL`: a commit is on disk before any
//!   caller hears `Ok`.
//! - **One writer.** A dedicated thread owns the only write connection (see [`writer`]);
//!   orders are placed in group-committed batches, every other write in its own
//!   `BEGIN IMMEDIATE` transaction. Another process writing the same file (say
//!   `meridian tenants create` next to a running server) is serialized by SQLite's lock and
//!   waited for under a 5 s busy timeout.
//! - **Checkpoints.** A checkpointer thread with its own connection copies the WAL back into
//!   the database file while the writer goes on writing (see [`checkpoint`]).
//! - **Readers.** A small pool of `query_only` connections used from `spawn_blocking`; WAL
//!   lets them read while the writer writes.
//! - **Schema.** Embedded, numbered migrations in `migrations/sqlite/`, applied by
//!   [`SqliteStore::open`] and recorded in `schema_migrations`.
//!
//! No lock is ever held across an `.await`: async code only sends jobs and awaits answers.

mod auth;
mod checkpoint;
mod commands;
mod conn;
mod dead_letters;
mod error;
mod fulfillment;
mod holds;
mod notify;
mod outbox;
mod plugins;
mod queries;
mod readers;
mod rows;
mod snapshots;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_catalog::{NewProduct, Product, ProductPatch};
use meridian_core::{
    ApiKeyId, Envelope, EventId, EventSource, OrderId, Sku, TenantId, Timestamp, UserId,
    WarehouseCode,
};
use meridian_inventory::{LedgerEntry, Mismatch, NewWarehouse, StockLevel, Warehouse};
use meridian_orders::{Order, OrderAction, OrderStatus, PlaceOrder};
use rusqlite::Connection;
use tokio::sync::Notify;

pub use conn::SCHEMA_VERSION;

use self::commands::StockOp;
use self::conn::Access;
use self::error::lost;
use self::readers::Readers;
use self::writer::Writer;
use crate::{
    ApiKey, CreatedApiKey, DeadLetterRecord, NewApiKey, NewRefreshToken, NewUser, OrderEvent,
    OutboxRecord, Page, PageRequest, Principal, RefreshOutcome, RelayLock, Result, Revocation,
    Role, Store, StoreError, StoredSigningKey, Tenant, User, UserLogin,
};

/// The SQLite relay lock: an exclusive lock on a file next to the database, released when
/// the file is closed (on drop, or by the kernel when the process dies).
#[derive(Debug)]
struct FileRelayLock {
    _file: std::fs::File,
    /// The store's: woken by its writer thread.
    outbox_signal: Arc<Notify>,
}

impl FileRelayLock {
    fn try_acquire(path: PathBuf, outbox_signal: Arc<Notify>) -> Result<Option<Self>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the relay lock file {}: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self {
                _file: file,
                outbox_signal,
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
                "cannot lock the relay lock file {}: {e}",
                path.display()
            ))),
        }
    }
}

#[async_trait]
impl RelayLock for FileRelayLock {
    async fn is_held(&self) -> bool {
        true
    }

    fn outbox_signal(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.outbox_signal))
    }
}

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    /// Read connections kept open for queries (at least one is opened).
    pub readers: usize,
}

impl SqliteConfig {
    /// The default number of read connections: enough to keep a small machine's cores busy.
    pub const DEFAULT_READERS: usize = 4;

    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readers: Self::DEFAULT_READERS,
        }
    }
}

/// The SQLite [`Store`]. Cheap to share behind an `Arc`; dropping the last handle lets the
/// writer thread finish its queue and close the database.
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
    events: EventSource,
    /// `<database>.relay.lock`: whoever holds an exclusive lock on it is the active relay.
    relay_lock_path: PathBuf,
    /// Woken by the writer thread after it commits outbox rows ([`RelayLock::outbox_signal`]).
    outbox_signal: Arc<Notify>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("deployment", &self.events.deployment())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `config.path`, applies pending
    /// migrations, opens the read pool and starts the writer thread.
    pub async fn open(config: SqliteConfig, events: EventSource) -> Result<Self> {
        let SqliteConfig { path, readers } = config;
        let readers = readers.max(1);
        let path_for_open = path.clone();
        let (write_conn, ckpt_conn, read_conns) = tokio::task::spawn_blocking(move || {
            let path = path_for_open;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot create the database directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let mut write_conn = conn::open(&path, Access::Write)?;
            conn::migrate(&mut write_conn)?;
            let ckpt_conn = conn::open(&path, Access::Checkpoint)?;
            let read_conns = (0..readers)
                .map(|_| conn::open(&path, Access::Read))
                .collect::<Result<Vec<Connection>>>()?;
            Ok::<_, StoreError>((write_conn, ckpt_conn, read_conns))
        })
        .await
        .map_err(|_| lost("opener"))??;
        tracing::info!(path = %path.display(), readers, "opened sqlite store");
        let mut relay_lock_path = path.clone().into_os_string();
        relay_lock_path.push(".relay.lock");
        let outbox_signal = Arc::new(Notify::new());
        Ok(Self {
            relay_lock_path: relay_lock_path.into(),
            writer: Writer::start(
                write_conn,
                ckpt_conn,
                events.clone(),
                Arc::clone(&outbox_signal),
            )?,
            outbox_signal,
            readers: Arc::new(Readers::new(path, read_conns)),
            events,
        })
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        self.readers.run(f).await
    }

    /// A read of several queries that must agree with each other: one deferred transaction
    /// is one WAL snapshot.
    async fn read_consistent<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.readers
            .run(move |conn| {
                let tx = conn.transaction()?;
                let r = f(&tx)?;
                tx.finish()?;
                Ok(r)
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn fulfillment(&self) -> &dyn crate::FulfillmentStore {
        self
    }

    fn holds(&self) -> &dyn crate::HoldStore {
        self
    }

    async fn ping(&self) -> Result<()> {
        if !self.writer.is_running() {
            return Err(StoreError::Unavailable(
                "the sqlite writer has stopped".into(),
            ));
        }
        self.read(|c| queries::ping(c)).await
    }

    // --- tenancy ---

    async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let name = name.to_owned();
        self.writer
            .write(move |c| commands::create_tenant(c, &name))
            .await
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        self.read(move |c| queries::get_tenant(c, tenant)).await
    }

    async fn set_tenant_plan(&self, tenant: TenantId, plan: &str) -> Result<Tenant> {
        let plan = plan.to_owned();
        self.writer
            .write(move |c| auth::set_tenant_plan(c, tenant, &plan))
            .await
    }

    async fn issue_api_key(&self, tenant: TenantId, key: NewApiKey) -> Result<CreatedApiKey> {
        self.writer
            .write(move |c| auth::issue_api_key(c, tenant, key))
            .await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKey>> {
        self.read(move |c| auth::list_api_keys(c, tenant)).await
    }

    async fn get_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<ApiKey> {
        self.read(move |c| auth::get_api_key(c, tenant, key)).await
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        let events = self.events.clone();
        self.writer
            .write(move |c| auth::revoke_api_key(c, &events, tenant, key))
            .await
    }

    async fn rotate_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<CreatedApiKey> {
        let events = self.events.clone();
        self.writer
            .write(move |c| auth::rotate_api_key(c, &events, tenant, key))
            .await
    }

    async fn touch_api_key(&self, key: ApiKeyId, at: Timestamp) -> Result<()> {
        self.writer
            .write(move |c| auth::touch_api_key(c, key, at))
            .await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        let token = token.to_owned();
        self.read(move |c| auth::authenticate(c, &token)).await
    }

    // --- users ---

    async fn create_user(&self, tenant: TenantId, user: NewUser) -> Result<User> {
        self.writer
            .write(move |c| auth::create_user(c, tenant, user))
            .await
    }

    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>> {
        self.read(move |c| auth::list_users(c, tenant)).await
    }

    async fn get_user(&self, tenant: TenantId, user: UserId) -> Result<User> {
        self.read(move |c| auth::get_user(c, tenant, user)).await
    }

    async fn set_user_role(&self, tenant: TenantId, user: UserId, role: Role) -> Result<User> {
        let events = self.events.clone();
        self.writer
            .write(move |c| auth::set_user_role(c, &events, tenant, user, role))
            .await
    }

    async fn disable_user(&self, tenant: TenantId, user: UserId) -> Result<User> {
        let events = self.events.clone();
        self.writer
            .write(move |c| auth::disable_user(c, &events, tenant, user))
            .await
    }

    async fn user_logins(&self, email: &str) -> Result<Vec<UserLogin>> {
        let email = email.to_owned();
        self.read(move |c| auth::user_logins(c, &email)).await
    }

    // --- refresh tokens ---

    async fn create_refresh_token(&self, token: NewRefreshToken) -> Result<()> {
        self.writer
            .write(move |c| auth::create_refresh_token(c, token))
            .await
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next: NewRefreshToken,
    ) -> Result<RefreshOutcome> {
        let hash = presented_hash.to_owned();
        self.writer
            .write(move |c| auth::rotate_refresh_token(c, &hash, next))
            .await
    }

    async fn revoke_refresh_token(&self, presented_hash: &str) -> Result<bool> {
        let hash = presented_hash.to_owned();
        self.writer
            .write(move |c| auth::revoke_refresh_token(c, &hash))
            .await
    }

    // --- signing keys ---

    async fn add_signing_key(
        &self,
        key: &StoredSigningKey,
        retire_current_at: Option<Timestamp>,
    ) -> Result<()> {
        let key = key.clone();
        self.writer
            .write(move |c| auth::add_signing_key(c, &key, retire_current_at))
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
        self.read(|c| auth::signing_keys(c)).await
    }

    // --- revocations ---

    async fn revoke_token(
        &self,
        tenant: TenantId,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<Revocation> {
        let (events, jti) = (self.events.clone(), jti.to_owned());
        self.writer
            .write(move |c| auth::revoke_token(c, &events, tenant, &jti, expires_at))
            .await
    }

    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>> {
        self.read(move |c| auth::revocations_after(c, after)).await
    }

    // --- catalog ---

    async fn create_product(&self, tenant: TenantId, product: NewProduct) -> Result<Product> {
        let events = self.events.clone();
        self.writer
            .write(move |c| commands::create_product(c, &events, tenant, product))
            .await
    }

    async fn get_product(&self, tenant: TenantId, sku: &Sku) -> Result<Product> {
        let sku = sku.clone();
        self.read(move |c| queries::get_product(c, tenant, &sku))
            .await
    }

    async fn list_products(&self, tenant: TenantId, page: PageRequest) -> Result<Page<Product>> {
        self.read(move |c| queries::list_products(c, tenant, &page))
            .await
    }

    async fn update_product(
        &self,
        tenant: TenantId,
        sku: &Sku,
        patch: ProductPatch,
    ) -> Result<Product> {
        let (events, sku) = (self.events.clone(), sku.clone());
        self.writer
            .write(move |c| commands::update_product(c, &events, tenant, &sku, &patch))
            .await
    }

    async fn delete_product(&self, tenant: TenantId, sku: &Sku) -> Result<()> {
        let (events, sku) = (self.events.clone(), sku.clone());
        self.writer
            .write(move |c| commands::delete_product(c, &events, tenant, &sku))
            .await
    }

    // --- warehouses ---

    async fn create_warehouse(
        &self,
        tenant: TenantId,
        warehouse: NewWarehouse,
    ) -> Result<Warehouse> {
        let events = self.events.clone();
        self.writer
            .write(move |c| commands::create_warehouse(c, &events, tenant, warehouse))
            .await
    }

    async fn list_warehouses(&self, tenant: TenantId) -> Result<Vec<Warehouse>> {
        self.read(move |c| queries::list_warehouses(c, tenant))
            .await
    }

    // --- inventory ---

    async fn set_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        on_hand: i64,
        reason: &str,
    ) -> Result<StockLevel> {
        self.change_stock(tenant, warehouse, sku, StockOp::Set(on_hand), reason)
            .await
    }

    async fn adjust_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        delta: i64,
        reason: &str,
    ) -> Result<StockLevel> {
        self.change_stock(tenant, warehouse, sku, StockOp::Adjust(delta), reason)
            .await
    }

    async fn get_stock(&self, tenant: TenantId, sku: &Sku) -> Result<Vec<StockLevel>> {
        let sku = sku.clone();
        self.read_consistent(move |c| queries::get_stock(c, tenant, &sku))
            .await
    }

    async fn ledger(
        &self,
        tenant: TenantId,
        sku: &Sku,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>> {
        let sku = sku.clone();
        self.read_consistent(move |c| queries::ledger(c, tenant, &sku, &page))
            .await
    }

    async fn reconcile(&self, tenant: Option<TenantId>) -> Result<Vec<Mismatch>> {
        self.read_consistent(move |c| queries::reconcile(c, tenant))
            .await
    }

    // --- orders ---

    async fn place_order(&self, order: PlaceOrder) -> Result<Order> {
        self.writer.place(order).await
    }

    async fn get_order(&self, tenant: TenantId, id: OrderId) -> Result<Order> {
        self.read(move |c| queries::get_order(c, tenant, id)).await
    }

    async fn list_orders(
        &self,
        tenant: TenantId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<Order>> {
        self.read(move |c| queries::list_orders(c, tenant, status, &page))
            .await
    }

    async fn transition_order(
        &self,
        tenant: TenantId,
        id: OrderId,
        action: OrderAction,
    ) -> Result<Order> {
        let events = self.events.clone();
        self.writer
            .write(move |c| commands::transition_order(c, &events, tenant, id, action))
            .await
    }

    // --- outbox ---

    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxRecord>> {
        self.read(move |c| queries::outbox_after(c, after, limit))
            .await
    }

    async fn outbox_unsent(&self, limit: u32) -> Result<Vec<OutboxRecord>> {
        self.read(move |c| outbox::unsent(c, limit)).await
    }

    async fn mark_outbox_sent(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        self.writer
            .write(move |c| outbox::mark_sent(c, &seqs))
            .await
    }

    async fn outbox_unsent_count(&self) -> Result<u64> {
        self.read(|c| outbox::unsent_count(c)).await
    }

    async fn try_lock_relay(&self) -> Result<Option<Box<dyn RelayLock>>> {
        let path = self.relay_lock_path.clone();
        let signal = Arc::clone(&self.outbox_signal);
        let lock = tokio::task::spawn_blocking(move || FileRelayLock::try_acquire(path, signal))
            .await
            .map_err(|_| lost("relay lock"))??;
        Ok(lock.map(|l| Box::new(l) as Box<dyn RelayLock>))
    }

    // --- inbox and projections ---

    async fn record_order_event(&self, consumer: &str, event: &Envelope) -> Result<bool> {
        let (consumer, event) = (consumer.to_owned(), event.clone());
        self.writer
            .write(move |c| outbox::record_order_event(c, &consumer, &event))
            .await
    }

    async fn apply_stock_snapshot(
        &self,
        consumer: &str,
        snapshot: &crate::StockSnapshot,
    ) -> Result<crate::SnapshotOutcome> {
        let events = self.events.clone();
        let (consumer, snapshot) = (consumer.to_owned(), snapshot.clone());
        self.writer
            .write(move |c| snapshots::apply(c, &events, &consumer, &snapshot))
            .await
    }

    async fn record_order_events(&self, consumer: &str, events: &[Envelope]) -> Result<Vec<bool>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (consumer, events) = (consumer.to_owned(), events.to_vec());
        self.writer
            .write(move |c| outbox::record_order_events(c, &consumer, &events))
            .await
    }

    async fn order_events(&self, tenant: TenantId, order: OrderId) -> Result<Vec<OrderEvent>> {
        self.read_consistent(move |c| outbox::order_events(c, tenant, order))
            .await
    }

    // --- dead letters ---

    async fn record_dead_letter(&self, dead_letter: &DeadLetterRecord) -> Result<bool> {
        let dead_letter = dead_letter.clone();
        self.writer
            .write(move |c| dead_letters::record_dead_letter(c, &dead_letter))
            .await
    }

    async fn list_dead_letters(
        &self,
        tenant: Option<TenantId>,
        page: PageRequest,
    ) -> Result<Page<DeadLetterRecord>> {
        self.read(move |c| dead_letters::list(c, tenant, &page))
            .await
    }

    async fn get_dead_letter(
        &self,
        tenant: Option<TenantId>,
        id: EventId,
    ) -> Result<DeadLetterRecord> {
        self.read(move |c| dead_letters::get(c, tenant, id)).await
    }

    async fn mark_dead_letter_replayed(
        &self,
        tenant: Option<TenantId>,
        id: EventId,
    ) -> Result<DeadLetterRecord> {
        self.writer
            .write(move |c| dead_letters::mark_replayed(c, tenant, id))
            .await
    }
}

impl SqliteStore {
    async fn change_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        op: StockOp,
        reason: &str,
    ) -> Result<StockLevel> {
        let events = self.events.clone();
        let (warehouse, sku, reason) = (warehouse.clone(), sku.clone(), reason.to_owned());
        self.writer
            .write(move |c| {
                commands::change_stock(c, &events, tenant, &warehouse, &sku, op, &reason)
            })
            .await
    }
}
