use async_trait::async_trait;
use meridian_catalog::{NewProduct, Product, ProductPatch};
use meridian_core::{
    ApiKeyId, Envelope, EventId, OrderId, Sku, TenantId, Timestamp, Topic, UserId, WarehouseCode,
};
use meridian_inventory::{LedgerEntry, Mismatch, NewWarehouse, StockLevel, Warehouse};
use meridian_orders::{Order, OrderAction, OrderStatus, PlaceOrder};
use serde::{Deserialize, Serialize};

use crate::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// The tenant's plan (`standard` unless set): the gateway's rate limits read it.
    pub plan: String,
    pub created_at: Timestamp,
}

/// A warehouse's count of one SKU, as a stock snapshot event carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockSnapshot {
    /// The event's id: the inbox key.
    pub event_id: EventId,
    /// The event's tenant: the only tenant whose stock it may change.
    pub tenant: TenantId,
    pub warehouse: WarehouseCode,
    pub sku: Sku,
    pub on_hand: i64,
    /// When the count was taken.
    pub counted_at: Timestamp,
}

impl StockSnapshot {
    /// The ledger reason of the stock take it makes.
    pub fn reason(&self) -> String {
        format!(
            "warehouse stock snapshot counted at {} (event {})",
            self.counted_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.event_id
        )
    }
}

/// What applying a stock snapshot did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The level now holds the count.
    Applied(StockLevel),
    /// The event was applied before (a redelivery): nothing changed.
    Duplicate,
    /// A snapshot counted later was applied already: nothing changed.
    Stale { last_counted_at: Timestamp },
}

/// The plan a tenant starts on.
pub const DEFAULT_PLAN: &str = "standard";

pub use meridian_auth::{Permission, Revocation, RevocationKind, Role, Scopes, StoredSigningKey};

/// How long a subject revocation (of a user or an API key) is kept: longer than any access
/// token lives (the auth configuration refuses longer access-token lifetimes), so every
/// token it revokes has expired by the time it is forgotten.
pub const SUBJECT_REVOCATION_HORIZON: chrono::Duration = chrono::Duration::hours(24);

/// An API key as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    /// What the key may do, within its role.
    pub scopes: Scopes,
    pub created_at: Timestamp,
    /// After this the key authenticates nothing.
    pub expires_at: Option<Timestamp>,
    /// When the key last authenticated a request (recorded at most about once a minute).
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// What to create an API key with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
    pub expires_at: Option<Timestamp>,
}

/// A key just created: the only time its token is available.
#[derive(Clone, Debug)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub token: String,
}

/// Who a credential belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    ApiKey(ApiKeyId),
    User(UserId),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::ApiKey(k) => write!(f, "{k}"),
            Subject::User(u) => write!(f, "{u}"),
        }
    }
}

/// Who is calling: the result of authenticating a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub subject: Subject,
    pub role: Role,
    /// The credential's scopes (every scope for a user's token).
    pub scopes: Scopes,
    /// The tenant's plan.
    pub plan: String,
}

impl Principal {
    /// Whether the principal may do `permission`: its role allows it and its scopes
    /// include it.
    pub fn can(&self, permission: Permission) -> bool {
        self.scopes.contains(permission) && meridian_auth::permits(self.role, permission)
    }
}

/// A person who logs in to a tenant. Never carries the password hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    /// Lowercase; unique within the tenant.
    pub email: String,
    pub role: Role,
    pub created_at: Timestamp,
    /// Set when the user is deleted: they can no longer log in and their tokens are revoked.
    pub disabled_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    pub email: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
}

/// An enabled user with the hash to check a password against.
#[derive(Clone, Debug)]
pub struct UserLogin {
    pub user: User,
    pub password_hash: String,
    pub plan: String,
}

/// A refresh token to record: only the hash of the token is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRefreshToken {
    pub token_hash: String,
    /// Every token of one login shares a family; reusing a spent one revokes the family.
    pub family_id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub expires_at: Timestamp,
}

/// What presenting a refresh token did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// It was current: it is now spent and the replacement is recorded.
    Rotated(RefreshedUser),
    /// Unknown, expired, revoked, or its user is disabled.
    Invalid,
    /// It had already been spent: someone replayed it, so its whole family is now revoked.
    Reused,
}

/// The user a rotated refresh token belongs to, with the tenant's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshedUser {
    pub user: User,
    pub plan: String,
}

/// Cursor pagination: at most `limit` items after the opaque `cursor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;

    pub fn first(limit: u32) -> Self {
        Self {
            limit,
            cursor: None,
        }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first(Self::DEFAULT_LIMIT)
    }
}

/// One page; `next_cursor` is `None` on the last page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A row of the outbox, in commit order (`seq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub seq: i64,
    pub topic: Topic,
    pub envelope: Envelope,
    pub sent_at: Option<Timestamp>,
}

/// One event of an order's timeline, as the `order-events` projection recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The event's id (the envelope's `id`).
    pub event_id: meridian_core::EventId,
    pub order_id: OrderId,
    /// The CloudEvents type, such as `meridian.oms.order.created`.
    pub ty: String,
    /// When the event happened (the envelope's `time`).
    pub time: Timestamp,
    /// The event's data, as published.
    pub data: serde_json::Value,
}

/// A message a consumer gave up on after its last attempt (DESIGN.md §5), kept for an
/// operator to list, inspect and replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The dead-letter envelope's id (the message published on `<topic>.dlq`).
    pub id: meridian_core::EventId,
    pub tenant_id: TenantId,
    /// Where the original message was published; a replay publishes it there again.
    pub original_topic: Topic,
    /// The original message's envelope, as delivered.
    pub envelope: Envelope,
    /// The handler's reason for the last failure.
    pub reason: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
    /// The consumer that gave up.
    pub consumer: String,
    pub failed_at: Timestamp,
    /// When an operator last replayed it, if ever.
    pub replayed_at: Option<Timestamp>,
}

/// The lock held by a database's one active outbox relay (see [`Store::try_lock_relay`]).
/// Dropping it releases the lock.
#[async_trait]
pub trait RelayLock: Send + Sync + std::fmt::Debug {
    /// Whether the lock is still held. A file lock is held until dropped; an advisory lock
    /// is lost with its connection, and a relay that lost it must stop publishing and try
    /// to take it again.
    async fn is_held(&self) -> bool;

    /// Woken (`notify_one`) after outbox rows commit, so that an idle relay publishes them
    /// at once instead of at its next poll. A wake-up may be spurious, and one commit may
    /// wake it once for many rows; rows committed while nobody waits leave one permit, so
    /// none is missed between rounds. SQLite: by this process's writer thread (the only
    /// writer of the database). PostgreSQL: by `LISTEN`/`NOTIFY` on the lock's session, so
    /// commits by every process on the database wake it. `None`: the relay only polls.
    fn outbox_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// The store contract. Every method that takes a [`TenantId`] sees only that tenant's rows:
/// another tenant's SKU, warehouse or order is `NotFound`, exactly as if it did not exist.
///
/// Every state change writes its outbox event in the same transaction as the change, and a
/// method returns `Ok` only once that transaction is durable.
///
/// Extends [`NotifyStore`](crate::NotifyStore), the notification service's tables, so that
/// one store handle serves both.
#[async_trait]
pub trait Store: crate::NotifyStore + Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The shipments of the fulfillment service, in the same database.
    fn fulfillment(&self) -> &dyn crate::FulfillmentStore;

    /// Order holds and screening results, in the same database.
    fn holds(&self) -> &dyn crate::HoldStore;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<()>;

    // --- tenancy ---
    async fn create_tenant(&self, name: &str) -> Result<Tenant>;
    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant>;
    /// Sets the tenant's plan (a lowercase label).
    async fn set_tenant_plan(&self, tenant: TenantId, plan: &str) -> Result<Tenant>;
    /// Creates an admin key with every scope; the token is returned here and never again.
    async fn create_api_key(&self, tenant: TenantId, name: &str) -> Result<CreatedApiKey> {
        self.issue_api_key(
            tenant,
            NewApiKey {
                name: name.to_owned(),
                role: Role::Admin,
                scopes: Scopes::ALL,
                expires_at: None,
            },
        )
        .await
    }
    /// Creates a key with the given role, scopes and expiry; the token is returned here and
    /// never again.
    async fn issue_api_key(&self, tenant: TenantId, key: NewApiKey) -> Result<CreatedApiKey>;
    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKey>>;
    async fn get_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<ApiKey>;
    /// Revokes the key and records an `api_key` revocation (with its outbox event) in the
    /// same transaction. Revoking twice is not an error.
    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()>;
    /// Gives a live key a new secret; the old secret stops working at once (an
    /// `api_key_secret` revocation is recorded in the same transaction). `NotFound` for a
    /// revoked key.
    async fn rotate_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<CreatedApiKey>;
    /// Records that the key was used at `at` (callers rate-limit this).
    async fn touch_api_key(&self, key: ApiKeyId, at: Timestamp) -> Result<()>;
    /// The principal for a presented token, or `None` if the token is unknown, malformed,
    /// expired or revoked.
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>>;

    // --- users ---
    /// `AlreadyExists` if the tenant has a user with this email (compared lowercase).
    async fn create_user(&self, tenant: TenantId, user: NewUser) -> Result<User>;
    /// The tenant's users, disabled ones included, oldest first.
    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>>;
    async fn get_user(&self, tenant: TenantId, user: UserId) -> Result<User>;
    /// Changes the role and revokes the user's tokens (they carry the old role).
    async fn set_user_role(&self, tenant: TenantId, user: UserId, role: Role) -> Result<User>;
    /// Disables the user, revokes their refresh tokens and records a `user` revocation, in
    /// one transaction. Idempotent.
    async fn disable_user(&self, tenant: TenantId, user: UserId) -> Result<User>;
    /// The enabled users with this email, in any tenant (the password grant's lookup).
    async fn user_logins(&self, email: &str) -> Result<Vec<UserLogin>>;

    // --- refresh tokens ---
    async fn create_refresh_token(&self, token: NewRefreshToken) -> Result<()>;
    /// Spends the token with this hash and records `next` in its family, atomically. A
    /// token spent before revokes its whole family.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next: NewRefreshToken,
    ) -> Result<RefreshOutcome>;
    /// Revokes the family of the token with this hash; `false` if there is no such token.
    async fn revoke_refresh_token(&self, presented_hash: &str) -> Result<bool>;

    // --- signing keys ---
    /// Stores a new signing key. With `retire_current_at`, every key still signing is
    /// retired at that time (not later than its own retirement).
    async fn add_signing_key(
        &self,
        key: &StoredSigningKey,
        retire_current_at: Option<Timestamp>,
    ) -> Result<()>;
    /// Keys not yet expired, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>>;

    // --- revocations ---
    /// Revokes one access token by `jti` until it expires; with its outbox event.
    async fn revoke_token(
        &self,
        tenant: TenantId,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<Revocation>;
    /// Unexpired revocations with `seq > after`, in seq order.
    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>>;

    // --- catalog ---
    /// `AlreadyExists` if the tenant has the SKU. Emits `platform.data.product.created`.
    async fn create_product(&self, tenant: TenantId, product: NewProduct) -> Result<Product>;
    async fn get_product(&self, tenant: TenantId, sku: &Sku) -> Result<Product>;
    /// Products by ascending SKU.
    async fn list_products(&self, tenant: TenantId, page: PageRequest) -> Result<Page<Product>>;
    /// Emits `platform.data.product.updated` when something changed.
    async fn update_product(
        &self,
        tenant: TenantId,
        sku: &Sku,
        patch: ProductPatch,
    ) -> Result<Product>;
    /// Emits `platform.data.product.deleted`. Stock levels and ledger rows stay for audit;
    /// new orders for the SKU get `UnknownSkus`.
    async fn delete_product(&self, tenant: TenantId, sku: &Sku) -> Result<()>;

    // --- warehouses ---
    /// `AlreadyExists` if the tenant has the code. Emits `platform.data.warehouse.created`.
    async fn create_warehouse(
        &self,
        tenant: TenantId,
        warehouse: NewWarehouse,
    ) -> Result<Warehouse>;
    /// Warehouses by ascending priority, then code.
    async fn list_warehouses(&self, tenant: TenantId) -> Result<Vec<Warehouse>>;

    // --- inventory ---
    /// Sets on-hand to an absolute count, creating the level if needed. `StockConflict` if
    /// the count is below what is reserved. `NotFound` for an unknown warehouse or SKU.
    /// Writes a ledger row and emits `platform.data.stock.changed`.
    async fn set_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        on_hand: i64,
        reason: &str,
    ) -> Result<StockLevel>;
    /// Adds `delta` (which may be negative) to on-hand. `StockConflict` if on-hand would go
    /// below zero or below what is reserved. Ledger row and event as for `set_stock`.
    async fn adjust_stock(
        &self,
        tenant: TenantId,
        warehouse: &WarehouseCode,
        sku: &Sku,
        delta: i64,
        reason: &str,
    ) -> Result<StockLevel>;
    /// Every level of a known SKU, by warehouse priority then code (empty if none yet).
    /// `NotFound` if the SKU is not in the catalog.
    async fn get_stock(&self, tenant: TenantId, sku: &Sku) -> Result<Vec<StockLevel>>;
    /// Ledger rows of a SKU, oldest first. `NotFound` if the SKU is not in the catalog.
    async fn ledger(
        &self,
        tenant: TenantId,
        sku: &Sku,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>>;
    /// Levels that disagree with the sum of their ledger rows (for one tenant, or all).
    async fn reconcile(&self, tenant: Option<TenantId>) -> Result<Vec<Mismatch>>;

    // --- orders ---
    /// Places an order: allocates and reserves stock, writes the order, its ledger rows, its
    /// idempotency key and its `platform.oms.order.created` event in one durable transaction.
    /// A retry with the same key and body returns the first order.
    async fn place_order(&self, order: PlaceOrder) -> Result<Order>;
    async fn get_order(&self, tenant: TenantId, id: OrderId) -> Result<Order>;
    /// Orders newest first, optionally with one status.
    async fn list_orders(
        &self,
        tenant: TenantId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<Order>>;
    /// Cancel releases the reservation; fulfil commits it. `InvalidTransition` when the
    /// state machine forbids the action; `OrderOnHold` when fulfilling a held order.
    async fn transition_order(
        &self,
        tenant: TenantId,
        id: OrderId,
        action: OrderAction,
    ) -> Result<Order>;

    // --- outbox ---
    /// Outbox rows with `seq > after`, oldest first.
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxRecord>>;
    /// At most `limit` outbox rows not yet marked sent, oldest (lowest `seq`) first: the
    /// relay's work queue.
    async fn outbox_unsent(&self, limit: u32) -> Result<Vec<OutboxRecord>>;
    /// Marks these outbox rows sent (now). Unknown or already-sent seqs are ignored, so a
    /// relay that repeats itself after a crash changes nothing.
    async fn mark_outbox_sent(&self, seqs: &[i64]) -> Result<()>;
    /// How many outbox rows are not yet marked sent: the relay's backlog.
    async fn outbox_unsent_count(&self) -> Result<u64>;
    /// Tries to become this database's one active outbox relay: `Some` with the lock if no
    /// other relay (in this process or another) holds it, `None` at once if one does. The
    /// lock is released when the returned value is dropped, or when the process holding it
    /// dies. SQLite: an exclusive lock on the file `<database>.relay.lock` next to the
    /// database. PostgreSQL: a session-level advisory lock (keyed by the schema) held on a
    /// connection of its own.
    async fn try_lock_relay(&self) -> Result<Option<Box<dyn RelayLock>>>;

    // --- inbox and the order-events projection ---
    /// Records `event` in the order-events projection for `consumer`, idempotently: in one
    /// transaction, inserts `(consumer, event.id)` into the inbox and appends the event to
    /// the projection. Returns `false`, and writes nothing, if the inbox already holds the
    /// pair (a redelivery).
    async fn record_order_event(&self, consumer: &str, event: &Envelope) -> Result<bool>;
    /// As [`Store::record_order_event`] for many events in ONE transaction: returns, for each
    /// event in order, whether it was recorded now (`false` for one the inbox already held,
    /// including an earlier copy in the same slice). Events are appended to the projection
    /// in slice order, so a consumer that passes them in delivery order keeps each order's
    /// events in order. Fails as a whole (and writes nothing) if any event is not an order
    /// event or the store fails.
    async fn record_order_events(&self, consumer: &str, events: &[Envelope]) -> Result<Vec<bool>>;
    /// The recorded events of one order, oldest first. `NotFound` if the tenant has no such
    /// order (including another tenant's order).
    async fn order_events(&self, tenant: TenantId, order: OrderId) -> Result<Vec<OrderEvent>>;

    // --- warehouse stock snapshots ---
    /// Applies a warehouse's stock count as a stock take (as `set_stock` does: the level,
    /// a `set` ledger row and `platform.data.stock.changed`, with the same rule that the
    /// count may not go below what is reserved), behind the inbox row `(consumer, event id)`
    /// in the same transaction, so a redelivered snapshot is applied once. A snapshot
    /// counted before the last one applied to the same level changes nothing but the inbox
    /// (`Stale`). Errors write nothing: `NotFound` for an unknown warehouse or SKU,
    /// `StockConflict` for a count below the reserved units.
    async fn apply_stock_snapshot(
        &self,
        consumer: &str,
        snapshot: &StockSnapshot,
    ) -> Result<SnapshotOutcome>;

    // --- dead letters ---
    // `tenant: None` is the operator's view across tenants (the CLI); the API always
    // passes the caller's tenant, and another tenant's dead letter is `NotFound`.
    /// Records a dead letter. Idempotent by id: returns `false` if it is already recorded
    /// (a consumer loop that retries its dead-letter step).
    async fn record_dead_letter(&self, dead_letter: &DeadLetterRecord) -> Result<bool>;
    /// Dead letters, newest first.
    async fn list_dead_letters(
        &self,
        tenant: Option<TenantId>,
        page: PageRequest,
    ) -> Result<Page<DeadLetterRecord>>;
    async fn get_dead_letter(
        &self,
        tenant: Option<TenantId>,
        id: meridian_core::EventId,
    ) -> Result<DeadLetterRecord>;
    /// Sets `replayed_at` to now and returns the updated record.
    async fn mark_dead_letter_replayed(
        &self,
        tenant: Option<TenantId>,
        id: meridian_core::EventId,
    ) -> Result<DeadLetterRecord>;
}
