//! Warehouses, stock counts, the ledger and reconciliation.
//!
//! A stock count change locks its one level row (`FOR UPDATE`), checks the movement with
//! [`meridian_inventory::Movement`], then writes the level, a ledger row and a
//! `platform.data.stock.changed` event in the same transaction.

use std::collections::BTreeMap;

use meridian_core::{Sku, TenantId, WarehouseCode, WarehouseId};
use meridian_inventory::{LedgerEntry, Mismatch, Movement, NewWarehouse, StockLevel, Warehouse};
use meridian_orders::StockChange;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{PgStore, bad_cursor, error, into_page, page_limit, rows, sql, writes};
use crate::{Page, PageRequest, Result, StoreError, decode_cursor};

pub(super) async fn create_warehouse(
    store: &PgStore,
    tenant: TenantId,
    new: NewWarehouse,
) -> Result<Warehouse> {
    let now = meridian_core::now();
    let warehouse = Warehouse {
        id: WarehouseId::new(),
        tenant_id: tenant,
        code: new.code,
        name: new.name,
        priority: new.priority,
        created_at: now,
    };
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO warehouses ({}) VALUES ($1, $2, $3, $4, $5, $6)",
            sql::WAREHOUSE_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let inserted = tx
        .execute(
            &stmt,
            &[
                warehouse.id.as_uuid(),
                tenant.as_uuid(),
                &warehouse.code.as_str(),
                &warehouse.name,
                &warehouse.priority,
                &warehouse.created_at,
            ],
        )
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if error::is_unique_violation(&e) => {
            return Err(StoreError::already_exists("warehouse", &warehouse.code));
        }
        Err(e) if error::is_foreign_key_violation(&e) => {
            return Err(StoreError::not_found("tenant", tenant));
        }
        Err(e) => return Err(error::db(e)),
    }
    let data = serde_json::to_value(&warehouse).unwrap_or(serde_json::Value::Null);
    let event = store.events.event(
        "data",
        "warehouse.created",
        tenant,
        warehouse.code.as_str(),
        data,
        now,
    );
    writes::append_outbox_pooled(&tx, &[event]).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(warehouse)
}

pub(super) async fn list_warehouses(store: &PgStore, tenant: TenantId) -> Result<Vec<Warehouse>> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {} FROM warehouses WHERE tenant_id = $1 ORDER BY priority, code",
            sql::WAREHOUSE_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    client
        .query(&stmt, &[tenant.as_uuid()])
        .await
        .map_err(error::db)?
        .iter()
        .map(rows::warehouse)
        .collect()
}

/// A change to one level's on-hand count.
#[derive(Clone, Copy, Debug)]
pub(super) enum Change {
    /// Set on-hand to this count.
    Set(i64),
    /// Add this (possibly negative) delta to on-hand.
    Adjust(i64),
}

/// Whether the tenant's catalog has the SKU, as column `found`.
const PRODUCT_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM products WHERE tenant_id = $1 AND sku = $2) AS found";

pub(super) async fn change_stock(
    store: &PgStore,
    tenant: TenantId,
    code: &WarehouseCode,
    sku: &Sku,
    reason: &str,
    change: Change,
) -> Result<StockLevel> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let level = change_stock_in(store, &tx, tenant, code, sku, reason, change).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(level)
}

/// [`change_stock`] inside the caller's transaction, which it leaves open.
pub(super) async fn change_stock_in(
    store: &PgStore,
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: TenantId,
    code: &WarehouseCode,
    sku: &Sku,
    reason: &str,
    change: Change,
) -> Result<StockLevel> {
    let (find_warehouse, product_exists, ensure_level, lock_level) = futures::try_join!(
        tx.prepare_cached("SELECT id, priority FROM warehouses WHERE tenant_id = $1 AND code = $2"),
        tx.prepare_cached(PRODUCT_EXISTS),
        tx.prepare_cached(
            "INSERT INTO stock_levels (tenant_id, warehouse_id, sku, on_hand, reserved, \
             updated_at) VALUES ($1, $2, $3, 0, 0, $4) ON CONFLICT DO NOTHING"
        ),
        tx.prepare_cached(
            "SELECT on_hand, reserved FROM stock_levels \
             WHERE tenant_id = $1 AND warehouse_id = $2 AND sku = $3 FOR UPDATE"
        ),
    )
    .map_err(error::db)?;

    // Parameters live in locals: `try_join!` holds the futures past the statement.
    let (tenant_id, sku_str, code_str) = (tenant.as_uuid(), sku.as_str(), code.as_str());
    let warehouse_params: [&(dyn ToSql + Sync); 2] = [tenant_id, &code_str];
    let product_params: [&(dyn ToSql + Sync); 2] = [tenant_id, &sku_str];
    let (warehouse, product) = futures::try_join!(
        tx.query_opt(&find_warehouse, &warehouse_params),
        tx.query_one(&product_exists, &product_params),
    )
    .map_err(error::db)?;
    let warehouse = warehouse.ok_or_else(|| StoreError::not_found("warehouse", code))?;
    if !rows::get::<bool>(&product, "found")? {
        return Err(StoreError::not_found("product", sku));
    }
    let warehouse_id = WarehouseId::from_uuid(rows::get(&warehouse, "id")?);
    let priority: i32 = rows::get(&warehouse, "priority")?;

    // Create the level at zero if it is new, then lock it; both in one round trip. A
    // concurrent creator makes our insert wait and then do nothing.
    let now = meridian_core::now();
    let ensure_params: [&(dyn ToSql + Sync); 4] =
        [tenant_id, warehouse_id.as_uuid(), &sku_str, &now];
    let (_, level) = futures::try_join!(
        tx.execute(&ensure_level, &ensure_params),
        tx.query_one(&lock_level, &ensure_params[..3]),
    )
    .map_err(error::db)?;
    let on_hand: i64 = rows::get(&level, "on_hand")?;
    let reserved: i64 = rows::get(&level, "reserved")?;

    let movement = match change {
        Change::Set(count) => Movement::set(on_hand, count),
        Change::Adjust(delta) => Movement::adjust(delta),
    };
    let (new_on_hand, new_reserved) = movement
        .apply(on_hand, reserved)
        .map_err(|e| StoreError::StockConflict(e.to_string()))?;

    let level = StockLevel {
        warehouse_id,
        warehouse_code: code.clone(),
        priority,
        sku: sku.clone(),
        on_hand: new_on_hand,
        reserved: new_reserved,
    };
    let entry = LedgerEntry {
        id: meridian_core::LedgerEntryId::new(),
        tenant_id: tenant,
        warehouse_id,
        sku: sku.clone(),
        kind: movement.kind,
        on_hand_delta: movement.on_hand_delta,
        reserved_delta: movement.reserved_delta,
        on_hand_after: new_on_hand,
        reserved_after: new_reserved,
        reason: reason.to_owned(),
        order_id: None,
        created_at: now,
    };
    let event = store.events.event(
        "data",
        "stock.changed",
        tenant,
        sku.as_str(),
        serde_json::json!({
            "warehouse": code,
            "sku": sku,
            "on_hand": new_on_hand,
            "reserved": new_reserved,
            "available": level.available(),
            "delta": movement.on_hand_delta,
            "reason": reason,
        }),
        now,
    );
    let change = StockChange {
        tenant_id: tenant,
        warehouse_id,
        sku: sku.clone(),
        on_hand_delta: movement.on_hand_delta,
        reserved_delta: movement.reserved_delta,
    };
    let (update, ledger) = futures::try_join!(
        tx.prepare_cached(sql::UPDATE_STOCK),
        tx.prepare_cached(sql::INSERT_LEDGER),
    )
    .map_err(error::db)?;
    let (updated, _) = futures::try_join!(
        writes::update_stock(tx, &update, std::slice::from_ref(&change), now),
        writes::insert_ledger(tx, &ledger, std::slice::from_ref(&entry)),
    )
    .map_err(error::db)?;
    if updated != 1 {
        return Err(writes::missing_levels(1, updated));
    }
    writes::append_outbox_pooled(tx, &[event]).await?;
    Ok(level)
}

pub(super) async fn get_stock(
    store: &PgStore,
    tenant: TenantId,
    sku: &Sku,
) -> Result<Vec<StockLevel>> {
    let client = store.client().await?;
    let (exists, levels) = futures::try_join!(
        client.prepare_cached(PRODUCT_EXISTS),
        client.prepare_cached(
            "SELECT s.warehouse_id, w.code, w.priority, s.sku, s.on_hand, s.reserved \
             FROM stock_levels s JOIN warehouses w ON w.id = s.warehouse_id \
             WHERE s.tenant_id = $1 AND s.sku = $2 \
             ORDER BY w.priority, w.code"
        ),
    )
    .map_err(error::db)?;
    let sku_str = sku.as_str();
    let params: [&(dyn ToSql + Sync); 2] = [tenant.as_uuid(), &sku_str];
    let (exists, levels) = futures::try_join!(
        client.query_one(&exists, &params),
        client.query(&levels, &params),
    )
    .map_err(error::db)?;
    if !rows::get::<bool>(&exists, "found")? {
        return Err(StoreError::not_found("product", sku));
    }
    levels.iter().map(rows::stock_level).collect()
}

pub(super) async fn ledger(
    store: &PgStore,
    tenant: TenantId,
    sku: &Sku,
    page: PageRequest,
) -> Result<Page<LedgerEntry>> {
    let limit = page_limit(&page);
    let after: i64 = match &page.cursor {
        Some(c) => decode_cursor(c)?.parse().map_err(|_| bad_cursor())?,
        None => 0,
    };
    let client = store.client().await?;
    let (exists, entries) = futures::try_join!(client.prepare_cached(PRODUCT_EXISTS), async {
        client
            .prepare_cached(&format!(
                "SELECT {} FROM stock_ledger \
                     WHERE tenant_id = $1 AND sku = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                sql::LEDGER_COLUMNS
            ))
            .await
    },)
    .map_err(error::db)?;
    let (tenant_id, sku_str, fetch) = (tenant.as_uuid(), sku.as_str(), limit as i64 + 1);
    let params: [&(dyn ToSql + Sync); 4] = [tenant_id, &sku_str, &after, &fetch];
    let (exists, rows) = futures::try_join!(
        client.query_one(&exists, &params[..2]),
        client.query(&entries, &params),
    )
    .map_err(error::db)?;
    if !rows::get::<bool>(&exists, "found")? {
        return Err(StoreError::not_found("product", sku));
    }
    let entries = rows
        .iter()
        .map(|row| Ok((rows::get::<i64>(row, "seq")?, rows::ledger_entry(row)?)))
        .collect::<Result<Vec<_>>>()?;
    // The cursor is the last row's `seq`, which a ledger entry itself does not carry.
    let page = into_page(entries, limit, |(seq, _)| seq.to_string());
    Ok(Page {
        items: page.items.into_iter().map(|(_, entry)| entry).collect(),
        next_cursor: page.next_cursor,
    })
}

pub(super) async fn reconcile(store: &PgStore, tenant: Option<TenantId>) -> Result<Vec<Mismatch>> {
    let mut client = store.client().await?;
    // One snapshot for both reads, so a change committing in between cannot show up as a
    // mismatch.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(error::db)?;
    let (levels, sums) = futures::try_join!(
        tx.prepare_cached(
            "SELECT tenant_id, warehouse_id, sku, on_hand, reserved FROM stock_levels \
             WHERE $1::uuid IS NULL OR tenant_id = $1"
        ),
        tx.prepare_cached(
            "SELECT tenant_id, warehouse_id, sku, \
                    sum(on_hand_delta)::int8 AS on_hand, sum(reserved_delta)::int8 AS reserved \
             FROM stock_ledger WHERE $1::uuid IS NULL OR tenant_id = $1 \
             GROUP BY tenant_id, warehouse_id, sku"
        ),
    )
    .map_err(error::db)?;
    let tenant: Option<Uuid> = tenant.map(Uuid::from);
    let params: [&(dyn ToSql + Sync); 1] = [&tenant];
    let (levels, sums) = futures::try_join!(tx.query(&levels, &params), tx.query(&sums, &params))
        .map_err(error::db)?;
    tx.commit().await.map_err(error::db)?;
    let decode = |rows: &[tokio_postgres::Row]| -> Result<BTreeMap<_, _>> {
        rows.iter()
            .map(|r| {
                Ok((
                    (
                        TenantId::from_uuid(rows::get(r, "tenant_id")?),
                        WarehouseId::from_uuid(rows::get(r, "warehouse_id")?),
                        rows::parse::<Sku>(r, "sku")?,
                    ),
                    (
                        rows::get::<i64>(r, "on_hand")?,
                        rows::get::<i64>(r, "reserved")?,
                    ),
                ))
            })
            .collect()
    };
    Ok(meridian_inventory::reconcile(
        decode(&levels)?,
        decode(&sums)?,
    ))
}
