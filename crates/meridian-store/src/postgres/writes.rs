//! Set-based writes shared by the order writer and the pooled paths: each takes a prepared
//! statement from [`super::sql`] and a slice of rows, and writes them with one statement.
//!
//! They return the driver's error untranslated so that the order writer can tell a lost
//! connection (commit outcome unknown) from a statement that failed.

use meridian_core::{OutboxEvent, Timestamp};
use meridian_inventory::LedgerEntry;
use meridian_orders::{Order, StockChange};
use tokio_postgres::types::Json;
use tokio_postgres::{Error, Statement, Transaction};
use uuid::Uuid;

use super::rows;
use crate::StoreError;

/// Applies `changes` (net deltas on levels the caller has locked) and returns how many
/// levels were updated; the caller checks that every level existed.
pub(super) async fn update_stock(
    tx: &Transaction<'_>,
    stmt: &Statement,
    changes: &[StockChange],
    now: Timestamp,
) -> Result<u64, Error> {
    if changes.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<Uuid> = changes.iter().map(|c| *c.tenant_id.as_uuid()).collect();
    let warehouses: Vec<Uuid> = changes.iter().map(|c| *c.warehouse_id.as_uuid()).collect();
    let skus: Vec<&str> = changes.iter().map(|c| c.sku.as_str()).collect();
    let on_hand: Vec<i64> = changes.iter().map(|c| c.on_hand_delta).collect();
    let reserved: Vec<i64> = changes.iter().map(|c| c.reserved_delta).collect();
    tx.execute(
        stmt,
        &[&tenants, &warehouses, &skus, &on_hand, &reserved, &now],
    )
    .await
}

/// The error for an update that found fewer locked levels than it changed: a broken
/// invariant (levels are never deleted), so the transaction must not commit.
pub(super) fn missing_levels(expected: usize, updated: u64) -> StoreError {
    tracing::error!(expected, updated, "stock levels vanished under a lock");
    StoreError::Internal(format!(
        "expected to update {expected} stock levels, updated {updated}"
    ))
}

pub(super) async fn insert_ledger(
    tx: &Transaction<'_>,
    stmt: &Statement,
    entries: &[LedgerEntry],
) -> Result<u64, Error> {
    if entries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = entries.iter().map(|e| *e.id.as_uuid()).collect();
    let tenants: Vec<Uuid> = entries.iter().map(|e| *e.tenant_id.as_uuid()).collect();
    let warehouses: Vec<Uuid> = entries.iter().map(|e| *e.warehouse_id.as_uuid()).collect();
    let skus: Vec<&str> = entries.iter().map(|e| e.sku.as_str()).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let on_hand_delta: Vec<i64> = entries.iter().map(|e| e.on_hand_delta).collect();
    let reserved_delta: Vec<i64> = entries.iter().map(|e| e.reserved_delta).collect();
    let on_hand_after: Vec<i64> = entries.iter().map(|e| e.on_hand_after).collect();
    let reserved_after: Vec<i64> = entries.iter().map(|e| e.reserved_after).collect();
    let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    let orders: Vec<Option<Uuid>> = entries
        .iter()
        .map(|e| e.order_id.map(|o| *o.as_uuid()))
        .collect();
    let created: Vec<Timestamp> = entries.iter().map(|e| e.created_at).collect();
    tx.execute(
        stmt,
        &[
            &ids,
            &tenants,
            &warehouses,
            &skus,
            &kinds,
            &on_hand_delta,
            &reserved_delta,
            &on_hand_after,
            &reserved_after,
            &reasons,
            &orders,
            &created,
        ],
    )
    .await
}

pub(super) async fn insert_orders(
    tx: &Transaction<'_>,
    stmt: &Statement,
    orders: &[Order],
) -> Result<u64, Error> {
    if orders.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| *o.id.as_uuid()).collect();
    let tenants: Vec<Uuid> = orders.iter().map(|o| *o.tenant_id.as_uuid()).collect();
    let statuses: Vec<&str> = orders.iter().map(|o| o.status.as_str()).collect();
    let allocations: Vec<&str> = orders.iter().map(|o| o.allocation.as_str()).collect();
    let lines: Vec<Json<_>> = orders.iter().map(|o| Json(&o.lines)).collect();
    let customers: Vec<Option<Json<_>>> = orders
        .iter()
        .map(|o| o.customer.as_ref().map(Json))
        .collect();
    let addresses: Vec<Option<Json<_>>> = orders
        .iter()
        .map(|o| o.shipping_address.as_ref().map(Json))
        .collect();
    let totals: Vec<i64> = orders.iter().map(|o| o.total.amount).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.total.currency.as_str()).collect();
    let keys: Vec<Option<&str>> = orders
        .iter()
        .map(|o| o.idempotency_key.as_deref())
        .collect();
    let created: Vec<Timestamp> = orders.iter().map(|o| o.created_at).collect();
    let updated: Vec<Timestamp> = orders.iter().map(|o| o.updated_at).collect();
    tx.execute(
        stmt,
        &[
            &ids,
            &tenants,
            &statuses,
            &allocations,
            &lines,
            &customers,
            &addresses,
            &totals,
            &currencies,
            &keys,
            &created,
            &updated,
        ],
    )
    .await
}

/// Appends `events` to the outbox: takes the outbox lock, then inserts, pipelined in one
/// round trip. Call it last before `COMMIT` so the lock is held only for the commit.
pub(super) async fn append_outbox(
    tx: &Transaction<'_>,
    lock: &Statement,
    insert: &Statement,
    events: &[OutboxEvent],
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| *e.envelope.id.as_uuid()).collect();
    let tenants: Vec<Uuid> = events
        .iter()
        .map(|e| *e.envelope.tenant.as_uuid())
        .collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let subjects: Vec<&str> = events.iter().map(|e| e.envelope.subject.as_str()).collect();
    let envelopes: Vec<Json<_>> = events.iter().map(|e| Json(&e.envelope)).collect();
    let times: Vec<Timestamp> = events.iter().map(|e| e.envelope.time).collect();
    futures::try_join!(tx.execute(lock, &[]), async {
        tx.execute(
            insert,
            &[&ids, &tenants, &topics, &subjects, &envelopes, &times],
        )
        .await
    },)?;
    Ok(())
}

/// [`append_outbox`] for pooled connections, with their cached statements.
pub(super) async fn append_outbox_pooled(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[meridian_core::OutboxEvent],
) -> Result<(), StoreError> {
    let (lock, insert) = futures::try_join!(
        tx.prepare_cached(super::sql::OUTBOX_LOCK),
        tx.prepare_cached(super::sql::INSERT_OUTBOX)
    )
    .map_err(super::error::db)?;
    append_outbox(tx, &lock, &insert, events)
        .await
        .map_err(super::error::db)
}

/// Orders by id, for answering idempotent retries with the order they first created.
pub(super) async fn orders_by_id(
    tx: &Transaction<'_>,
    stmt: &Statement,
    ids: &[Uuid],
) -> Result<Vec<tokio_postgres::Row>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    tx.query(stmt, &[&ids]).await
}

/// Decodes rows of [`orders_by_id`].
pub(super) fn decode_orders(rows: &[tokio_postgres::Row]) -> Result<Vec<Order>, StoreError> {
    rows.iter().map(rows::order).collect()
}
