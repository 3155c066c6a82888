//! Read queries. Each takes a `&Connection` so that it runs on a pooled read connection or,
//! where a write needs it, inside the writer's transaction.
//!
//! Every query names its tenant: there is no way to read a tenant's rows without one, and a
//! row of another tenant looks exactly like a missing one.

use std::collections::BTreeMap;

use meridian_catalog::Product;
use meridian_core::{OrderId, Sku, TenantId, ValidationErrors, WarehouseId};
use meridian_inventory::{LedgerEntry, Mismatch, StockLevel, Warehouse};
use meridian_orders::{Order, OrderStatus};
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{
    self, ledger_columns, level_columns, order_columns, parsed, product_columns, tenant_columns,
    warehouse_columns,
};
use crate::{OutboxRecord, Page, PageRequest, StoreError, Tenant, decode_cursor, encode_cursor};

type Result<T> = std::result::Result<T, StoreError>;

/// The page size: the requested limit clamped to `1..=MAX_LIMIT`. Queries fetch one row
/// more than this to learn whether another page follows without a second query.
fn page_size(page: &PageRequest) -> usize {
    page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize
}

/// Cuts a fetch of `limit + 1` rows down to a page, with a cursor made from the last item.
pub(super) fn into_page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| encode_cursor(&key(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Decodes a cursor and parses the key inside it; anything unexpected is the client's
/// made-up cursor, a validation error.
fn cursor_key<T: std::str::FromStr>(page: &PageRequest) -> Result<Option<T>> {
    page.cursor
        .as_deref()
        .map(|c| decode_cursor(c)?.parse().map_err(|_| invalid_cursor()))
        .transpose()
}

fn invalid_cursor() -> StoreError {
    // The same message as `decode_cursor`'s: to a client a cursor is opaque.
    StoreError::Validation(ValidationErrors::single(
        "cursor",
        "is not a cursor this API returned",
    ))
}

pub(super) fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

// --- tenancy ---

pub(super) fn get_tenant(conn: &Connection, tenant: TenantId) -> Result<Tenant> {
    conn.prepare_cached(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants WHERE id = ?1"
    ))?
    .query_row(params![tenant.to_string()], rows::tenant)
    .optional()?
    .ok_or_else(|| StoreError::not_found("tenant", tenant))
}

// --- catalog ---

pub(super) fn find_product(
    conn: &Connection,
    tenant: TenantId,
    sku: &Sku,
) -> Result<Option<Product>> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products WHERE tenant_id = ?1 AND sku = ?2"
        ))?
        .query_row(params![tenant.to_string(), sku.as_str()], rows::product)
        .optional()?)
}

pub(super) fn get_product(conn: &Connection, tenant: TenantId, sku: &Sku) -> Result<Product> {
    find_product(conn, tenant, sku)?.ok_or_else(|| StoreError::not_found("product", sku))
}

pub(super) fn product_exists(conn: &Connection, tenant: TenantId, sku: &Sku) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM products WHERE tenant_id = ?1 AND sku = ?2")?
        .query_row(params![tenant.to_string(), sku.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn list_products(
    conn: &Connection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<Product>> {
    let limit = page_size(page);
    let after: Option<String> = cursor_key(page)?;
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        product_columns!(),
        " FROM products WHERE tenant_id = ?1 AND (?2 IS NULL OR sku > ?2) ORDER BY sku LIMIT ?3"
    ))?;
    let items = stmt
        .query_map(
            params![tenant.to_string(), after, limit as i64 + 1],
            rows::product,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(into_page(items, limit, |p| p.sku.to_string()))
}

// --- warehouses and stock ---

pub(super) fn list_warehouses(conn: &Connection, tenant: TenantId) -> Result<Vec<Warehouse>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        warehouse_columns!(),
        " FROM warehouses WHERE tenant_id = ?1 ORDER BY priority, code"
    ))?;
    let items = stmt
        .query_map(params![tenant.to_string()], rows::warehouse)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(items)
}

/// Every level of a tenant's (`?1`) SKU (`?2`), by warehouse priority then code.
pub(super) const LEVELS_OF: &str = concat!(
    "SELECT ",
    level_columns!(),
    " FROM stock_levels s JOIN warehouses w ON w.tenant_id = s.tenant_id AND w.id = s.warehouse_id \
      WHERE s.tenant_id = ?1 AND s.sku = ?2 ORDER BY w.priority, w.code"
);

/// Every level of `sku`, by warehouse priority then code.
pub(super) fn levels_of(conn: &Connection, tenant: TenantId, sku: &Sku) -> Result<Vec<StockLevel>> {
    let mut stmt = conn.prepare_cached(LEVELS_OF)?;
    let levels = stmt
        .query_map(params![tenant.to_string(), sku.as_str()], rows::level)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(levels)
}

/// One level, if the cell has one.
pub(super) fn level(
    conn: &Connection,
    tenant: TenantId,
    warehouse: WarehouseId,
    sku: &Sku,
) -> Result<Option<StockLevel>> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT ",
            level_columns!(),
            " FROM stock_levels s JOIN warehouses w ON w.tenant_id = s.tenant_id AND w.id = s.warehouse_id \
              WHERE s.tenant_id = ?1 AND s.warehouse_id = ?2 AND s.sku = ?3"
        ))?
        .query_row(
            params![tenant.to_string(), warehouse.to_string(), sku.as_str()],
            rows::level,
        )
        .optional()?)
}

pub(super) fn get_stock(conn: &Connection, tenant: TenantId, sku: &Sku) -> Result<Vec<StockLevel>> {
    if !product_exists(conn, tenant, sku)? {
        return Err(StoreError::not_found("product", sku));
    }
    levels_of(conn, tenant, sku)
}

pub(super) fn ledger(
    conn: &Connection,
    tenant: TenantId,
    sku: &Sku,
    page: &PageRequest,
) -> Result<Page<LedgerEntry>> {
    let limit = page_size(page);
    let after: Option<i64> = cursor_key(page)?;
    if !product_exists(conn, tenant, sku)? {
        return Err(StoreError::not_found("product", sku));
    }
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        ledger_columns!(),
        " FROM stock_ledger WHERE tenant_id = ?1 AND sku = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
    ))?;
    let rows = stmt
        .query_map(
            params![
                tenant.to_string(),
                sku.as_str(),
                after.unwrap_or(0),
                limit as i64 + 1
            ],
            rows::ledger_entry,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let page = into_page(rows, limit, |(_, seq)| seq.to_string());
    Ok(Page {
        items: page.items.into_iter().map(|(e, _)| e).collect(),
        next_cursor: page.next_cursor,
    })
}

type Cell = (TenantId, WarehouseId, Sku);

/// Levels against ledger sums, for one tenant or all. The caller runs this inside one read
/// transaction so that both sides come from the same snapshot.
pub(super) fn reconcile(conn: &Connection, tenant: Option<TenantId>) -> Result<Vec<Mismatch>> {
    let tenant = tenant.map(|t| t.to_string());
    let cell = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(Cell, (i64, i64))> {
        Ok((
            (parsed(r, 0)?, parsed(r, 1)?, parsed(r, 2)?),
            (r.get(3)?, r.get(4)?),
        ))
    };
    let levels: Vec<_> = conn
        .prepare_cached(
            "SELECT tenant_id, warehouse_id, sku, on_hand, reserved FROM stock_levels \
             WHERE ?1 IS NULL OR tenant_id = ?1",
        )?
        .query_map(params![tenant], cell)?
        .collect::<rusqlite::Result<_>>()?;
    let sums: BTreeMap<_, _> = conn
        .prepare_cached(
            "SELECT tenant_id, warehouse_id, sku, SUM(on_hand_delta), SUM(reserved_delta) \
             FROM stock_ledger WHERE ?1 IS NULL OR tenant_id = ?1 \
             GROUP BY tenant_id, warehouse_id, sku",
        )?
        .query_map(params![tenant], cell)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(meridian_inventory::reconcile(levels, sums))
}

// --- orders ---

pub(super) fn find_order(
    conn: &Connection,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<Order>> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE tenant_id = ?1 AND id = ?2"
        ))?
        .query_row(params![tenant.to_string(), id.to_string()], rows::order)
        .optional()?)
}

pub(super) fn get_order(conn: &Connection, tenant: TenantId, id: OrderId) -> Result<Order> {
    find_order(conn, tenant, id)?.ok_or_else(|| StoreError::not_found("order", id))
}

pub(super) fn list_orders(
    conn: &Connection,
    tenant: TenantId,
    status: Option<OrderStatus>,
    page: &PageRequest,
) -> Result<Page<Order>> {
    let limit = page_size(page);
    let before: Option<OrderId> = cursor_key(page)?;
    // Two statements rather than `?2 IS NULL OR status = ?2`, so that SQLite can use the
    // (tenant_id, status, id) index when a status is given.
    let tenant = tenant.to_string();
    let before = before.map(|id| id.to_string());
    let fetch = limit as i64 + 1;
    let items = match status {
        Some(status) => conn
            .prepare_cached(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE tenant_id = ?1 AND status = ?2 AND (?3 IS NULL OR id < ?3) \
                  ORDER BY id DESC LIMIT ?4"
            ))?
            .query_map(params![tenant, status.as_str(), before, fetch], rows::order)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        None => conn
            .prepare_cached(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2) \
                  ORDER BY id DESC LIMIT ?3"
            ))?
            .query_map(params![tenant, before, fetch], rows::order)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(into_page(items, limit, |o| o.id.to_string()))
}

// --- outbox ---

pub(super) fn outbox_after(conn: &Connection, after: i64, limit: u32) -> Result<Vec<OutboxRecord>> {
    let limit = limit.clamp(1, 10_000);
    let items = conn
        .prepare_cached(
            "SELECT seq, topic, envelope, sent_at FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, limit], rows::outbox_record)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(items)
}
