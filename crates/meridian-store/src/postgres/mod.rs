//! PostgreSQL backend (feature `postgres`).
//!
//! [`PgStore`] keeps two kinds of connection:
//!
//! - a [`deadpool_postgres`] pool for reads and for the low-volume writes (tenants, keys,
//!   catalog, warehouses, stock counts, order transitions), each write in its own
//!   transaction;
//! - one dedicated connection owned by the order writer (`writer.rs`), which places orders
//!   with group commit: it drains every queued order into one transaction, locks the stock
//!   rows the batch touches, runs [`meridian_orders::plan_batch`] and writes the result with
//!   a handful of set-based statements. A caller is answered only after `COMMIT` returns.
//!
//! Locking discipline (DESIGN.md §4.1): stock rows are always locked with `FOR UPDATE` in
//! `(tenant_id, warehouse_id, sku)` order; idempotency keys are serialized with
//! transaction-scoped advisory locks taken in sorted order before any row lock; the outbox
//! lock ([`OUTBOX_LOCK_KEY`]) is taken last, just before commit. No transaction waits on
//! anything outside the database while it holds a lock.
//!
//! Driver errors are translated at this seam (`error.rs`); their text goes to the log only.
//!
//! Tenant isolation is enforced by every query's `tenant_id` predicate. Row-level security
//! is not enabled yet: it only binds roles that neither own the tables nor are superusers,
//! which needs a separate application role in the deployment.

mod catalog;
mod dead_letters;
mod error;
mod fulfillment;
mod holds;
mod inventory;
mod migrate;
mod notify;
mod orders;
mod plugins;
mod relay;
mod rows;
mod snapshots;
mod sql;
mod tenancy;
mod writer;
mod writes;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use meridian_catalog::{NewProduct, Product, ProductPatch};
use meridian_core::{
    ApiKeyId, Envelope, EventId, EventSource, OrderId, Sku, TenantId, Timestamp, UserId,
    ValidationErrors, WarehouseCode,
};
use meridian_inventory::{LedgerEntry, Mismatch, NewWarehouse, StockLevel, Warehouse};
use meridian_orders::{Order, OrderAction, OrderStatus, PlaceOrder};
use tokio_postgres::NoTls;

use crate::{
    ApiKey, CreatedApiKey, DeadLetterRecord, NewApiKey, NewRefreshToken, NewUser, OrderEvent,
    OutboxRecord, Page, PageRequest, Principal, RefreshOutcome, Result, Revocation, Role, Store,
    StoreError, StoredSigningKey, Tenant, User, UserLogin,
};

/// The transaction-scoped advisory lock every writer holds from its outbox append until it
/// commits, so that `outbox.seq` is allocated in commit order. Anything else that appends
/// to the outbox (a tool, a migration) must take it too.
pub const OUTBOX_LOCK_KEY: i64 = 7_250_291_605_842_166_801;

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// The schema to use (created if missing); `None` uses the server's default search path.
    pub schema: Option<String>,
    /// Pooled connections for reads and single-row writes; the order writer has its own.
    pub pool_size: usize,
}

impl PgConfig {
    /// The default pool size: enough to keep a couple of cores busy with reads while the
    /// order writer uses its own connection.
    pub const DEFAULT_POOL_SIZE: usize = 8;

    /// A configuration for `url` with the server's default schema and the default pool.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: Self::DEFAULT_POOL_SIZE,
        }
    }

    /// The driver configuration: the URL plus Meridian's session settings.
    fn driver_config(&self, application_name: &str) -> Result<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config = self.url.parse().map_err(|e| {
            StoreError::Validation(ValidationErrors::single(
                "postgres.url",
                format!("is not a PostgreSQL connection URL: {e}"),
            ))
        })?;
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
            // Set per connection at startup, so every pooled connection and the writer see
            // the same schema without an extra round trip.
            let options = match pg.get_options() {
                Some(existing) if !existing.trim().is_empty() => {
                    format!("{existing} -c search_path={schema}")
                }
                _ => format!("-c search_path={schema}"),
            };
            pg.options(options);
        }
        if pg.get_connect_timeout().is_none() {
            // Without a timeout an unreachable host blocks a request for the OS default
            // (minutes); fail fast and let the caller see `Unavailable`.
            pg.connect_timeout(Duration::from_secs(5));
        }
        if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            // The driver's default (two hours) leaves a half-open connection to a vanished
            // server undetected for that long; probe after 30 s of silence instead.
            pg.keepalives_idle(Duration::from_secs(30));
        }
        if pg.get_application_name().is_none() {
            pg.application_name(application_name);
        }
        Ok(pg)
    }
}

/// Schema names go into `CREATE SCHEMA` and the startup options unquoted, so they are held
/// to plain lower-case identifiers.
fn check_schema_name(schema: &str) -> Result<()> {
    let mut bytes = schema.bytes();
    let ok = schema.len() <= 63
        && matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Validation(ValidationErrors::single(
            "postgres.schema",
            "must be 1 to 63 of a-z, 0-9 and '_', not starting with a digit",
        )))
    }
}

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: Pool,
    events: EventSource,
    writer: writer::OrderWriter,
    /// For the relay lock's own connection (see [`relay::try_lock_relay`]).
    relay_lock_config: tokio_postgres::Config,
    relay_standby: relay::StandbySession,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .field("deployment", &self.events.deployment())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates the schema if configured, brings it up to date and starts the
    /// order writer. Safe to call from several processes at once: migrations run under an
    /// advisory lock.
    ///
    /// Must be called inside a Tokio runtime; the writer task and the pool's connections
    /// live on it.
    pub async fn open(config: PgConfig, events: EventSource) -> Result<Self, StoreError> {
        let pool_config = config.driver_config("meridian")?;
        migrate::run(&pool_config, config.schema.as_deref()).await?;

        let manager = Manager::from_config(
            pool_config,
            NoTls,
            ManagerConfig {
                // `Fast` only checks that the connection is open; a broken one fails its
                // next query, which is translated to `Unavailable`.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the postgres pool: {e}")))?;

        let writer = writer::OrderWriter::start(
            config.driver_config("meridian-order-writer")?,
            events.clone(),
        )
        .await?;
        tracing::info!(
            schema = config.schema.as_deref().unwrap_or("(default)"),
            pool_size = config.pool_size.max(1),
            "postgres store open"
        );
        Ok(Self {
            pool,
            events,
            writer,
            relay_lock_config: config.driver_config("meridian-relay-lock")?,
            relay_standby: Default::default(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(error::pool)
    }

    /// `columns` of the row of `table` with this tenant and id; `NotFound` (`what`, `id`)
    /// when the tenant has none, so another tenant's id reads as missing.
    async fn row_by_id(
        &self,
        table: &str,
        columns: &str,
        tenant: TenantId,
        id: &uuid::Uuid,
        what: &'static str,
    ) -> Result<tokio_postgres::Row> {
        let client = self.client().await?;
        select_by_id(&client, table, columns, tenant, id, what, "").await
    }
}

/// `columns` of the row of `table` with this tenant and id, read on `client` (a pooled
/// connection, or a transaction with `lock` = `"FOR UPDATE"` or `"FOR SHARE"`); `NotFound`
/// (`what`, `id`) when the tenant has none, so another tenant's id reads as missing.
async fn select_by_id(
    client: &impl deadpool_postgres::GenericClient,
    table: &str,
    columns: &str,
    tenant: TenantId,
    id: &uuid::Uuid,
    what: &'static str,
    lock: &str,
) -> Result<tokio_postgres::Row> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {columns} FROM {table} WHERE tenant_id = $1 AND id = $2 {lock}"
        ))
        .await
        .map_err(error::db)?;
    client
        .query_opt(&stmt, &[tenant.as_uuid(), id])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found(what, id))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn fulfillment(&self) -> &dyn crate::FulfillmentStore {
        self
    }

    fn holds(&self) -> &dyn crate::HoldStore {
        self
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(error::db)?;
        Ok(())
    }

    async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        tenancy::create_tenant(self, name).await
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        tenancy::get_tenant(self, tenant).await
    }

    async fn set_tenant_plan(&self, tenant: TenantId, plan: &str) -> Result<Tenant> {
        tenancy::set_tenant_plan(self, tenant, plan).await
    }

    async fn issue_api_key(&self, tenant: TenantId, key: NewApiKey) -> Result<CreatedApiKey> {
        tenancy::issue_api_key(self, tenant, key).await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKey>> {
        tenancy::list_api_keys(self, tenant).await
    }

    async fn get_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<ApiKey> {
        tenancy::get_api_key(self, tenant, key).await
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        tenancy::revoke_api_key(self, tenant, key).await
    }

    async fn rotate_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<CreatedApiKey> {
        tenancy::rotate_api_key(self, tenant, key).await
    }

    async fn touch_api_key(&self, key: ApiKeyId, at: Timestamp) -> Result<()> {
        tenancy::touch_api_key(self, key, at).await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        tenancy::authenticate(self, token).await
    }

    async fn create_user(&self, tenant: TenantId, user: NewUser) -> Result<User> {
        tenancy::create_user(self, tenant, user).await
    }

    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>> {
        tenancy::list_users(self, tenant).await
    }

    async fn get_user(&self, tenant: TenantId, user: UserId) -> Result<User> {
        tenancy::get_user(self, tenant, user).await
    }

    async fn set_user_role(&self, tenant: TenantId, user: UserId, role: Role) -> Result<User> {
        tenancy::set_user_role(self, tenant, user, role).await
    }

    async fn disable_user(&self, tenant: TenantId, user: UserId) -> Result<User> {
        tenancy::disable_user(self, tenant, user).await
    }

    async fn user_logins(&self, email: &str) -> Result<Vec<UserLogin>> {
        tenancy::user_logins(self, email).await
    }

    async fn create_refresh_token(&self, token: NewRefreshToken) -> Result<()> {
        tenancy::create_refresh_token(self, token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next: NewRefreshToken,
    ) -> Result<RefreshOutcome> {
        tenancy::rotate_refresh_token(self, presented_hash, next).await
    }

    async fn revoke_refresh_token(&self, presented_hash: &str) -> Result<bool> {
        tenancy::revoke_refresh_token(self, presented_hash).await
    }

    async fn add_signing_key(
        &self,
        key: &StoredSigningKey,
        retire_current_at: Option<Timestamp>,
    ) -> Result<()> {
        tenancy::add_signing_key(self, key, retire_current_at).await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
        tenancy::signing_keys(self).await
    }

    async fn revoke_token(
        &self,
        tenant: TenantId,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<Revocation> {
        tenancy::revoke_token(self, tenant, jti, expires_at).await
    }

    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>> {
        tenancy::revocations_after(self, after).await
    }

    async fn create_product(&self, tenant: TenantId, product: NewProduct) -> Result<Product> {
        catalog::create(self, tenant, product).await
    }

    async fn get_product(&self, tenant: TenantId, sku: &Sku) -> Result<Product> {
        catalog::get(self, tenant, sku).await
    }

    async fn list_products(&self, tenant: TenantId, page: PageRequest) -> Result<Page<Product>> {
        catalog::list(self, tenant, page).await
    }

    async fn update_product(
        &self,
        tenant: TenantId,
        sku: &Sku,
        patch: ProductPatch,
    ) -> Result<Product> {
        catalog::update(self, tenant, sku, patch).await
    }

    async fn delete_product(&self, tenant: TenantId, sku: &Sku) -> Result<()> {
        catalog::delete(self, tenant, sku).await
    }

    async fn create_warehouse(
        &self,
        tenant: TenantId,
        warehouse: NewWarehouse,
    ) -> Result<Warehouse> {
        inventory::create_warehouse(self, tenant, warehouse).await
    }

    async fn list_warehouses(&self, tenant: TenantId) -> Result<Vec<Warehouse>> {
        inventory::list_warehouses(self, tenant).await
    }

    async fn set_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        on_hand: i64,
        reason: &str,
    ) -> Result<StockLevel> {
        inventory::change_stock(
            self,
            tenant,
            warehouse,
            sku,
            reason,
            inventory::Change::Set(on_hand),
        )
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
        inventory::change_stock(
            self,
            tenant,
            warehouse,
            sku,
            reason,
            inventory::Change::Adjust(delta),
        )
        .await
    }

    async fn get_stock(&self, tenant: TenantId, sku: &Sku) -> Result<Vec<StockLevel>> {
        inventory::get_stock(self, tenant, sku).await
    }

    async fn ledger(
        &self,
        tenant: TenantId,
        sku: &Sku,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>> {
        inventory::ledger(self, tenant, sku, page).await
    }

    async fn reconcile(&self, tenant: Option<TenantId>) -> Result<Vec<Mismatch>> {
        inventory::reconcile(self, tenant).await
    }

    async fn place_order(&self, order: PlaceOrder) -> Result<Order> {
        self.writer.place(order).await
    }

    async fn get_order(&self, tenant: TenantId, id: OrderId) -> Result<Order> {
        orders::get(self, tenant, id).await
    }

    async fn list_orders(
        &self,
        tenant: TenantId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<Order>> {
        orders::list(self, tenant, status, page).await
    }

    async fn transition_order(
        &self,
        tenant: TenantId,
        id: OrderId,
        action: OrderAction,
    ) -> Result<Order> {
        orders::transition(self, tenant, id, action).await
    }

    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxRecord>> {
        orders::outbox_after(self, after, limit).await
    }

    async fn outbox_unsent(&self, limit: u32) -> Result<Vec<OutboxRecord>> {
        relay::unsent(self, limit).await
    }

    async fn mark_outbox_sent(&self, seqs: &[i64]) -> Result<()> {
        relay::mark_sent(self, seqs).await
    }

    async fn record_order_event(&self, consumer: &str, event: &Envelope) -> Result<bool> {
        relay::record_order_event(self, consumer, event).await
    }

    async fn record_order_events(&self, consumer: &str, events: &[Envelope]) -> Result<Vec<bool>> {
        relay::record_order_events(self, consumer, events).await
    }

    async fn apply_stock_snapshot(
        &self,
        consumer: &str,
        snapshot: &crate::StockSnapshot,
    ) -> Result<crate::SnapshotOutcome> {
        snapshots::apply(self, consumer, snapshot).await
    }

    async fn outbox_unsent_count(&self) -> Result<u64> {
        relay::unsent_count(self).await
    }

    async fn try_lock_relay(&self) -> Result<Option<Box<dyn crate::RelayLock>>> {
        relay::try_lock_relay(&self.relay_lock_config, &self.relay_standby).await
    }

    async fn order_events(&self, tenant: TenantId, order: OrderId) -> Result<Vec<OrderEvent>> {
        relay::order_events(self, tenant, order).await
    }

    async fn record_dead_letter(&self, dead_letter: &DeadLetterRecord) -> Result<bool> {
        dead_letters::record_dead_letter(self, dead_letter).await
    }

    async fn list_dead_letters(
        &self,
        tenant: Option<TenantId>,
        page: PageRequest,
    ) -> Result<Page<DeadLetterRecord>> {
        dead_letters::list(self, tenant, page).await
    }

    async fn get_dead_letter(
        &self,
        tenant: Option<TenantId>,
        id: EventId,
    ) -> Result<DeadLetterRecord> {
        dead_letters::get(self, tenant, id).await
    }

    async fn mark_dead_letter_replayed(
        &self,
        tenant: Option<TenantId>,
        id: EventId,
    ) -> Result<DeadLetterRecord> {
        dead_letters::mark_replayed(self, tenant, id).await
    }
}

/// Clamps a requested page size to `1..=PageRequest::MAX_LIMIT`.
fn page_limit(page: &PageRequest) -> usize {
    page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize
}

/// The error for a cursor that decodes but does not hold the key this listing sorts by.
fn bad_cursor() -> StoreError {
    StoreError::Validation(ValidationErrors::single(
        "cursor",
        "is not a cursor this API returned",
    ))
}

/// Splits the extra row fetched past `limit` off `items` and makes the next cursor from
/// the last item kept.
fn into_page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| crate::encode_cursor(&key(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["mt_0123abcd", "_x", "meridian"] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "Upper", "a-b", "a b", "a;drop", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_path_is_appended_to_existing_options() {
        let mut c = PgConfig::new("postgres://u@localhost/db?options=-c%20work_mem%3D4MB");
        c.schema = Some("mt_1".into());
        let pg = c.driver_config("t").unwrap();
        assert_eq!(
            pg.get_options(),
            Some("-c work_mem=4MB -c search_path=mt_1")
        );
        assert_eq!(pg.get_application_name(), Some("t"));
        assert!(PgConfig::new("not a url").driver_config("t").is_err());
    }

    #[test]
    fn pages_carry_a_cursor_only_when_more_rows_exist() {
        let p = into_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next_cursor, Some(crate::encode_cursor("2")));
        let p = into_page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(p.next_cursor, None);
    }
}
