//! Conversions between SQLite rows and domain types, and the inserts shared by the order
//! writer and the other write paths.
//!
//! Column lists live in macros so that each `SELECT` and its row mapper cannot drift apart
//! while the SQL stays a `&'static str` (a key for the prepared-statement cache).

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use meridian_catalog::Product;
use meridian_core::{Money, OutboxEvent, Timestamp};
use meridian_inventory::{LedgerEntry, MovementKind, StockLevel, Warehouse};
use meridian_orders::{AllocationStrategy, Order, OrderStatus};
use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};
use serde::de::DeserializeOwned;

use crate::{ApiKey, OutboxRecord, Role, StoreError, Tenant};

/// Timestamps are stored as RFC 3339 UTC with exactly six fractional digits, so that text
/// order is time order.
pub(super) fn ts(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serializes a domain value for a JSON column.
pub(super) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| {
        tracing::error!(error = %e, what, "cannot serialize for sqlite");
        StoreError::Internal(format!("cannot serialize {what}"))
    })
}

fn bad_column(i: usize, msg: impl Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, Type::Text, msg.to_string().into())
}

/// A text column parsed with `FromStr` (ids, SKUs, codes, currencies).
pub(super) fn parsed<T>(row: &Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    let s: String = row.get(i)?;
    s.parse()
        .map_err(|e| bad_column(i, format_args!("{s:?}: {e}")))
}

pub(super) fn opt_parsed<T>(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>>
where
    T: FromStr,
    T::Err: Display,
{
    let s: Option<String> = row.get(i)?;
    s.map(|s| {
        s.parse()
            .map_err(|e| bad_column(i, format_args!("{s:?}: {e}")))
    })
    .transpose()
}

pub(super) fn time(row: &Row<'_>, i: usize) -> rusqlite::Result<Timestamp> {
    let s: String = row.get(i)?;
    parse_time(i, &s)
}

pub(super) fn opt_time(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| parse_time(i, &s)).transpose()
}

fn parse_time(i: usize, s: &str) -> rusqlite::Result<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_column(i, format_args!("{s:?}: {e}")))
}

pub(super) fn json<T: DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = row.get(i)?;
    serde_json::from_str(&s).map_err(|e| bad_column(i, e))
}

pub(super) fn opt_json<T: DeserializeOwned>(
    row: &Row<'_>,
    i: usize,
) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| bad_column(i, e)))
        .transpose()
}

fn keyword<T>(
    row: &Row<'_>,
    i: usize,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = row.get(i)?;
    parse(&s).ok_or_else(|| bad_column(i, format_args!("unknown value {s:?}")))
}

macro_rules! tenant_columns {
    () => {
        "id, name, created_at, plan"
    };
}
pub(super) use tenant_columns;

pub(super) fn tenant(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: parsed(row, 0)?,
        name: row.get(1)?,
        created_at: time(row, 2)?,
        plan: row.get(3)?,
    })
}

macro_rules! api_key_columns {
    () => {
        "id, tenant_id, name, role, created_at, revoked_at, scopes, expires_at, last_used_at"
    };
}
pub(super) use api_key_columns;

pub(super) fn role(s: &str) -> Option<Role> {
    Role::parse(s)
}

pub(super) fn role_str(r: Role) -> &'static str {
    r.as_str()
}

/// Scopes as stored: space-separated names, `*` for every scope.
pub(super) fn scopes_str(s: crate::Scopes) -> String {
    if s == crate::Scopes::ALL {
        "*".to_owned()
    } else {
        s.to_claim()
    }
}

pub(super) fn api_key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        name: row.get(2)?,
        role: keyword(row, 3, role)?,
        created_at: time(row, 4)?,
        revoked_at: opt_time(row, 5)?,
        scopes: keyword(row, 6, |s| crate::Scopes::parse(s).ok())?,
        expires_at: opt_time(row, 7)?,
        last_used_at: opt_time(row, 8)?,
    })
}

macro_rules! product_columns {
    () => {
        "id, tenant_id, sku, name, description, price_amount, price_currency, attributes, \
         created_at, updated_at"
    };
}
pub(super) use product_columns;

pub(super) fn product(row: &Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        sku: parsed(row, 2)?,
        name: row.get(3)?,
        description: row.get(4)?,
        price: Money::new(row.get(5)?, parsed(row, 6)?),
        attributes: json(row, 7)?,
        created_at: time(row, 8)?,
        updated_at: time(row, 9)?,
    })
}

macro_rules! warehouse_columns {
    () => {
        "id, tenant_id, code, name, priority, created_at"
    };
}
pub(super) use warehouse_columns;

pub(super) fn warehouse(row: &Row<'_>) -> rusqlite::Result<Warehouse> {
    Ok(Warehouse {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        code: parsed(row, 2)?,
        name: row.get(3)?,
        priority: row.get(4)?,
        created_at: time(row, 5)?,
    })
}

/// Columns of `stock_levels s JOIN warehouses w`.
macro_rules! level_columns {
    () => {
        "s.warehouse_id, w.code, w.priority, s.sku, s.on_hand, s.reserved"
    };
}
pub(super) use level_columns;

pub(super) fn level(row: &Row<'_>) -> rusqlite::Result<StockLevel> {
    Ok(StockLevel {
        warehouse_id: parsed(row, 0)?,
        warehouse_code: parsed(row, 1)?,
        priority: row.get(2)?,
        sku: parsed(row, 3)?,
        on_hand: row.get(4)?,
        reserved: row.get(5)?,
    })
}

/// Ledger columns; `seq` comes last, for the pagination cursor.
macro_rules! ledger_columns {
    () => {
        "id, tenant_id, warehouse_id, sku, kind, on_hand_delta, reserved_delta, on_hand_after, \
         reserved_after, reason, order_id, created_at, seq"
    };
}
pub(super) use ledger_columns;

pub(super) fn ledger_entry(row: &Row<'_>) -> rusqlite::Result<(LedgerEntry, i64)> {
    let entry = LedgerEntry {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        warehouse_id: parsed(row, 2)?,
        sku: parsed(row, 3)?,
        kind: keyword(row, 4, MovementKind::parse)?,
        on_hand_delta: row.get(5)?,
        reserved_delta: row.get(6)?,
        on_hand_after: row.get(7)?,
        reserved_after: row.get(8)?,
        reason: row.get(9)?,
        order_id: opt_parsed(row, 10)?,
        created_at: time(row, 11)?,
    };
    Ok((entry, row.get(12)?))
}

macro_rules! order_columns {
    () => {
        "id, tenant_id, status, allocation, lines, customer, shipping_address, total_amount, \
         currency, idempotency_key, created_at, updated_at"
    };
}
pub(super) use order_columns;

pub(super) fn order(row: &Row<'_>) -> rusqlite::Result<Order> {
    Ok(Order {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        status: keyword(row, 2, OrderStatus::parse)?,
        allocation: keyword(row, 3, AllocationStrategy::parse)?,
        lines: json(row, 4)?,
        customer: opt_json(row, 5)?,
        shipping_address: opt_json(row, 6)?,
        total: Money::new(row.get(7)?, parsed(row, 8)?),
        idempotency_key: row.get(9)?,
        created_at: time(row, 10)?,
        updated_at: time(row, 11)?,
    })
}

pub(super) fn outbox_record(row: &Row<'_>) -> rusqlite::Result<OutboxRecord> {
    let topic: String = row.get(1)?;
    Ok(OutboxRecord {
        seq: row.get(0)?,
        // `Topic` has no string constructor besides its serde form; the stored text was
        // written from a `Topic`, so this cannot fail unless the row was edited by hand.
        topic: serde_json::from_value(serde_json::Value::String(topic))
            .map_err(|e| bad_column(1, e))?,
        envelope: json(row, 2)?,
        sent_at: opt_time(row, 3)?,
    })
}

// --- inserts shared by every write path ---

pub(super) fn insert_order(conn: &Connection, order: &Order) -> Result<(), StoreError> {
    let lines = to_json("order lines", &order.lines)?;
    let customer = order
        .customer
        .as_ref()
        .map(|c| to_json("customer", c))
        .transpose()?;
    let address = order
        .shipping_address
        .as_ref()
        .map(|a| to_json("shipping address", a))
        .transpose()?;
    conn.prepare_cached(concat!(
        "INSERT INTO orders (",
        order_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?
    .execute(params![
        order.id.to_string(),
        order.tenant_id.to_string(),
        order.status.as_str(),
        order.allocation.as_str(),
        lines,
        customer,
        address,
        order.total.amount,
        order.total.currency.as_str(),
        order.idempotency_key,
        ts(&order.created_at),
        ts(&order.updated_at),
    ])?;
    Ok(())
}

pub(super) fn insert_ledger(conn: &Connection, e: &LedgerEntry) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO stock_ledger (id, tenant_id, warehouse_id, sku, kind, on_hand_delta, \
         reserved_delta, on_hand_after, reserved_after, reason, order_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        e.id.to_string(),
        e.tenant_id.to_string(),
        e.warehouse_id.to_string(),
        e.sku.as_str(),
        e.kind.as_str(),
        e.on_hand_delta,
        e.reserved_delta,
        e.on_hand_after,
        e.reserved_after,
        e.reason,
        e.order_id.map(|id| id.to_string()),
        ts(&e.created_at),
    ])?;
    Ok(())
}

thread_local! {
    /// Set when this thread inserted an outbox row since the writer last looked (see
    /// [`take_outbox_written`]); only the writer thread inserts them.
    static OUTBOX_WRITTEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread inserted an outbox row since the last call, and forgets it. The
/// writer asks after each job's transaction has ended, to wake the relay.
pub(super) fn take_outbox_written() -> bool {
    OUTBOX_WRITTEN.replace(false)
}

pub(super) fn insert_outbox(conn: &Connection, event: &OutboxEvent) -> Result<(), StoreError> {
    OUTBOX_WRITTEN.set(true);
    let envelope = to_json("event envelope", &event.envelope)?;
    conn.prepare_cached(
        "INSERT INTO outbox (id, tenant_id, topic, aggregate_id, envelope, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        event.envelope.id.to_string(),
        event.envelope.tenant.to_string(),
        event.topic.as_str(),
        event.envelope.subject,
        envelope,
        ts(&event.envelope.time),
    ])?;
    Ok(())
}

/// Applies deltas to an existing level. The `CHECK` constraint refuses any result with
/// `reserved > on_hand`, so even a planner bug cannot oversell.
pub(super) fn apply_stock_delta(
    conn: &Connection,
    change: &meridian_orders::StockChange,
    now: &Timestamp,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE stock_levels SET on_hand = on_hand + ?1, reserved = reserved + ?2, \
             updated_at = ?3 WHERE tenant_id = ?4 AND warehouse_id = ?5 AND sku = ?6",
        )?
        .execute(params![
            change.on_hand_delta,
            change.reserved_delta,
            ts(now),
            change.tenant_id.to_string(),
            change.warehouse_id.to_string(),
            change.sku.as_str(),
        ])?;
    if n != 1 {
        tracing::error!(
            tenant.id = %change.tenant_id,
            warehouse.id = %change.warehouse_id,
            sku = %change.sku,
            "stock level to update is missing"
        );
        return Err(StoreError::Internal(format!(
            "stock level for {} vanished during the transaction",
            change.sku
        )));
    }
    Ok(())
}
