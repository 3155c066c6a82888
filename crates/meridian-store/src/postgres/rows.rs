//! Row → domain conversions. A row that does not decode means the database holds something
//! Meridian never wrote (or a schema/code mismatch): that is `Internal`, logged with the
//! column, never a panic.

use std::fmt::Display;
use std::str::FromStr;

use meridian_catalog::{Attributes, Product};
use meridian_core::{ApiKeyId, LedgerEntryId, Money, OrderId, ProductId, TenantId, WarehouseId};
use meridian_inventory::{LedgerEntry, MovementKind, StockLevel, Warehouse};
use meridian_orders::{Address, AllocationStrategy, Customer, Order, OrderLine, OrderStatus};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Json};
use uuid::Uuid;

use crate::{ApiKey, Role, StoreError, Tenant};

type Result<T> = std::result::Result<T, StoreError>;

fn corrupt(column: &str, why: impl Display) -> StoreError {
    tracing::error!(column, error = %why, "postgres row does not decode");
    StoreError::Internal(format!("stored column {column} does not decode"))
}

/// A column of `row`, decoded.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, column: &str) -> Result<T> {
    row.try_get(column).map_err(|e| corrupt(column, e))
}

/// A text column parsed into a domain type.
pub(super) fn parse<T>(row: &Row, column: &str) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    let s: &str = get(row, column)?;
    s.parse().map_err(|e| corrupt(column, e))
}

fn json<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<T> {
    let Json(v) = get::<Json<T>>(row, column)?;
    Ok(v)
}

fn json_opt<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<Option<T>> {
    Ok(get::<Option<Json<T>>>(row, column)?.map(|Json(v)| v))
}

fn uuid(row: &Row, column: &str) -> Result<Uuid> {
    get(row, column)
}

pub(super) fn tenant(row: &Row) -> Result<Tenant> {
    Ok(Tenant {
        id: TenantId::from_uuid(uuid(row, "id")?),
        name: get(row, "name")?,
        plan: get(row, "plan")?,
        created_at: get(row, "created_at")?,
    })
}

pub(super) fn role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| corrupt("role", format!("unknown role {s:?}")))
}

pub(super) fn role_str(role: Role) -> &'static str {
    role.as_str()
}

pub(super) fn scopes(s: &str) -> Result<crate::Scopes> {
    crate::Scopes::parse(s).map_err(|e| corrupt("scopes", e))
}

/// Scopes as stored: space-separated names, `*` for every scope.
pub(super) fn scopes_str(s: crate::Scopes) -> String {
    if s == crate::Scopes::ALL {
        "*".to_owned()
    } else {
        s.to_claim()
    }
}

pub(super) fn api_key(row: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId::from_uuid(uuid(row, "id")?),
        tenant_id: TenantId::from_uuid(uuid(row, "tenant_id")?),
        name: get(row, "name")?,
        role: role(get(row, "role")?)?,
        scopes: scopes(get(row, "scopes")?)?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        last_used_at: get(row, "last_used_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

pub(super) fn product(row: &Row) -> Result<Product> {
    Ok(Product {
        id: ProductId::from_uuid(uuid(row, "id")?),
        tenant_id: TenantId::from_uuid(uuid(row, "tenant_id")?),
        sku: parse(row, "sku")?,
        name: get(row, "name")?,
        description: get(row, "description")?,
        price: Money::new(get(row, "price_amount")?, parse(row, "price_currency")?),
        attributes: json::<Attributes>(row, "attributes")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

pub(super) fn warehouse(row: &Row) -> Result<Warehouse> {
    Ok(Warehouse {
        id: WarehouseId::from_uuid(uuid(row, "id")?),
        tenant_id: TenantId::from_uuid(uuid(row, "tenant_id")?),
        code: parse(row, "code")?,
        name: get(row, "name")?,
        priority: get(row, "priority")?,
        created_at: get(row, "created_at")?,
    })
}

/// A level joined with its warehouse: columns `warehouse_id, code, priority, sku, on_hand,
/// reserved`.
pub(super) fn stock_level(row: &Row) -> Result<StockLevel> {
    Ok(StockLevel {
        warehouse_id: WarehouseId::from_uuid(uuid(row, "warehouse_id")?),
        warehouse_code: parse(row, "code")?,
        priority: get(row, "priority")?,
        sku: parse(row, "sku")?,
        on_hand: get(row, "on_hand")?,
        reserved: get(row, "reserved")?,
    })
}

pub(super) fn ledger_entry(row: &Row) -> Result<LedgerEntry> {
    let kind: &str = get(row, "kind")?;
    Ok(LedgerEntry {
        id: LedgerEntryId::from_uuid(uuid(row, "id")?),
        tenant_id: TenantId::from_uuid(uuid(row, "tenant_id")?),
        warehouse_id: WarehouseId::from_uuid(uuid(row, "warehouse_id")?),
        sku: parse(row, "sku")?,
        kind: MovementKind::parse(kind)
            .ok_or_else(|| corrupt("kind", format!("unknown movement {kind:?}")))?,
        on_hand_delta: get(row, "on_hand_delta")?,
        reserved_delta: get(row, "reserved_delta")?,
        on_hand_after: get(row, "on_hand_after")?,
        reserved_after: get(row, "reserved_after")?,
        reason: get(row, "reason")?,
        order_id: get::<Option<Uuid>>(row, "order_id")?.map(OrderId::from_uuid),
        created_at: get(row, "created_at")?,
    })
}

pub(super) fn order(row: &Row) -> Result<Order> {
    let status: &str = get(row, "status")?;
    let allocation: &str = get(row, "allocation")?;
    Ok(Order {
        id: OrderId::from_uuid(uuid(row, "id")?),
        tenant_id: TenantId::from_uuid(uuid(row, "tenant_id")?),
        status: OrderStatus::parse(status)
            .ok_or_else(|| corrupt("status", format!("unknown status {status:?}")))?,
        allocation: AllocationStrategy::parse(allocation)
            .ok_or_else(|| corrupt("allocation", format!("unknown strategy {allocation:?}")))?,
        lines: json::<Vec<OrderLine>>(row, "lines")?,
        customer: json_opt::<Customer>(row, "customer")?,
        shipping_address: json_opt::<Address>(row, "shipping_address")?,
        total: Money::new(get(row, "total_amount")?, parse(row, "currency")?),
        idempotency_key: get(row, "idempotency_key")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}
