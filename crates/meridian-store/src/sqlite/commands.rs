//! Write operations other than order placement. Each runs on the writer thread in its own
//! `BEGIN IMMEDIATE` transaction and writes its outbox event (if it has one) in that same
//! transaction, so that an event is published if and only if its change committed.

use meridian_catalog::{NewProduct, Product, ProductPatch};
use meridian_core::{
    EventSource, OrderId, Sku, TenantId, Timestamp, ValidationErrors, WarehouseCode, WarehouseId,
};
use meridian_inventory::{LedgerEntry, Movement, StockLevel, Warehouse};
use meridian_orders::{Order, OrderAction};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::conn::immediate;
use super::error::{is_foreign_key_violation, is_unique_violation};
use super::queries;
use super::rows::{insert_ledger, insert_outbox, to_json, ts};
use crate::{StoreError, Tenant};

type Result<T> = std::result::Result<T, StoreError>;

/// The longest tenant or key name accepted.
const MAX_LABEL_LEN: usize = 200;

/// Checks a human-readable name: not blank, at most [`MAX_LABEL_LEN`] characters.
pub(super) fn check_label(field: &str, value: &str) -> Result<String> {
    let n = value.chars().count();
    let problem = if value.trim().is_empty() {
        "must not be blank".to_owned()
    } else if n > MAX_LABEL_LEN {
        format!("must be at most {MAX_LABEL_LEN} characters, got {n}")
    } else {
        return Ok(value.to_owned());
    };
    Err(StoreError::Validation(ValidationErrors::single(
        field, problem,
    )))
}

// --- tenancy ---

pub(super) fn create_tenant(conn: &mut Connection, name: &str) -> Result<Tenant> {
    let tenant = Tenant {
        id: TenantId::new(),
        name: check_label("name", name)?,
        plan: crate::DEFAULT_PLAN.to_owned(),
        created_at: meridian_core::now(),
    };
    immediate(conn, |tx| {
        tx.prepare_cached("INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)")?
            .execute(params![
                tenant.id.to_string(),
                tenant.name,
                ts(&tenant.created_at)
            ])?;
        Ok(())
    })?;
    Ok(tenant)
}

// --- catalog ---

/// Writes a `platform.data.product.*` event whose data is the product as it now is (or,
/// for a deletion, as it was).
fn write_product_event(
    tx: &Connection,
    events: &EventSource,
    event: &str,
    p: &Product,
    now: Timestamp,
) -> Result<()> {
    let data = serde_json::to_value(p).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize product event");
        StoreError::Internal("cannot serialize product event".into())
    })?;
    insert_outbox(
        tx,
        &events.event("data", event, p.tenant_id, p.sku.as_str(), data, now),
    )
}

pub(super) fn create_product(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    new: NewProduct,
) -> Result<Product> {
    let now = meridian_core::now();
    let product = Product {
        id: meridian_core::ProductId::new(),
        tenant_id: tenant,
        sku: new.sku,
        name: new.name,
        description: new.description,
        price: new.price,
        attributes: new.attributes,
        created_at: now,
        updated_at: now,
    };
    let attributes = to_json("product attributes", &product.attributes)?;
    immediate(conn, |tx| {
        let inserted = tx
            .prepare_cached(concat!(
                "INSERT INTO products (",
                super::rows::product_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                product.id.to_string(),
                tenant.to_string(),
                product.sku.as_str(),
                product.name,
                product.description,
                product.price.amount,
                product.price.currency.as_str(),
                attributes,
                ts(&now),
                ts(&now),
            ]);
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::already_exists("product", &product.sku));
            }
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::not_found("tenant", tenant));
            }
            Err(e) => return Err(e.into()),
        }
        write_product_event(tx, events, "product.created", &product, now)
    })?;
    Ok(product)
}

pub(super) fn update_product(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    sku: &Sku,
    patch: &ProductPatch,
) -> Result<Product> {
    immediate(conn, |tx| {
        let mut product = queries::get_product(tx, tenant, sku)?;
        if !patch.apply(&mut product) {
            // Nothing changed: no write, no event, and updated_at keeps its meaning.
            return Ok(product);
        }
        let now = meridian_core::now();
        product.updated_at = now;
        tx.prepare_cached(
            "UPDATE products SET name = ?1, description = ?2, price_amount = ?3, \
             price_currency = ?4, attributes = ?5, updated_at = ?6 \
             WHERE tenant_id = ?7 AND sku = ?8",
        )?
        .execute(params![
            product.name,
            product.description,
            product.price.amount,
            product.price.currency.as_str(),
            to_json("product attributes", &product.attributes)?,
            ts(&now),
            tenant.to_string(),
            sku.as_str(),
        ])?;
        write_product_event(tx, events, "product.updated", &product, now)?;
        Ok(product)
    })
}

pub(super) fn delete_product(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    sku: &Sku,
) -> Result<()> {
    immediate(conn, |tx| {
        let product = queries::get_product(tx, tenant, sku)?;
        tx.prepare_cached("DELETE FROM products WHERE tenant_id = ?1 AND sku = ?2")?
            .execute(params![tenant.to_string(), sku.as_str()])?;
        write_product_event(
            tx,
            events,
            "product.deleted",
            &product,
            meridian_core::now(),
        )
    })
}

// --- warehouses ---

pub(super) fn create_warehouse(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    new: meridian_inventory::NewWarehouse,
) -> Result<Warehouse> {
    let warehouse = Warehouse {
        id: WarehouseId::new(),
        tenant_id: tenant,
        code: new.code,
        name: new.name,
        priority: new.priority,
        created_at: meridian_core::now(),
    };
    immediate(conn, |tx| {
        let inserted = tx
            .prepare_cached(concat!(
                "INSERT INTO warehouses (",
                super::rows::warehouse_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?
            .execute(params![
                warehouse.id.to_string(),
                tenant.to_string(),
                warehouse.code.as_str(),
                warehouse.name,
                warehouse.priority,
                ts(&warehouse.created_at),
            ]);
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::already_exists("warehouse", &warehouse.code));
            }
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::not_found("tenant", tenant));
            }
            Err(e) => return Err(e.into()),
        }
        let data = serde_json::to_value(&warehouse).map_err(|e| {
            tracing::error!(error = %e, "cannot serialize warehouse event");
            StoreError::Internal("cannot serialize warehouse event".into())
        })?;
        insert_outbox(
            tx,
            &events.event(
                "data",
                "warehouse.created",
                tenant,
                warehouse.code.as_str(),
                data,
                warehouse.created_at,
            ),
        )
    })?;
    Ok(warehouse)
}

// --- stock ---

/// A manual stock change: a stock take or an adjustment.
#[derive(Clone, Copy, Debug)]
pub(super) enum StockOp {
    Set(i64),
    Adjust(i64),
}

/// Sets or adjusts one level, creating it at zero first if needed. A count that confirms
/// the level (a delta of zero) still writes its ledger row and event: that the stock was
/// counted is itself worth recording.
pub(super) fn change_stock(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    code: &WarehouseCode,
    sku: &Sku,
    op: StockOp,
    reason: &str,
) -> Result<StockLevel> {
    let reason = meridian_inventory::check_reason(reason)
        .map_err(|m| StoreError::Validation(ValidationErrors::single("reason", m)))?;
    immediate(conn, |tx| {
        change_stock_in(tx, events, tenant, code, sku, op, &reason)
    })
}

/// [`change_stock`] inside the caller's write transaction; `reason` is already checked.
pub(super) fn change_stock_in(
    tx: &Connection,
    events: &EventSource,
    tenant: TenantId,
    code: &WarehouseCode,
    sku: &Sku,
    op: StockOp,
    reason: &str,
) -> Result<StockLevel> {
    {
        let warehouse = tx
            .prepare_cached(
                "SELECT id, priority FROM warehouses WHERE tenant_id = ?1 AND code = ?2",
            )?
            .query_row(params![tenant.to_string(), code.as_str()], |r| {
                Ok((
                    super::rows::parsed::<WarehouseId>(r, 0)?,
                    r.get::<_, i32>(1)?,
                ))
            })
            .optional()?;
        let Some((warehouse_id, priority)) = warehouse else {
            return Err(StoreError::not_found("warehouse", code));
        };
        if !queries::product_exists(tx, tenant, sku)? {
            return Err(StoreError::not_found("product", sku));
        }
        let (on_hand, reserved) = queries::level(tx, tenant, warehouse_id, sku)?
            .map_or((0, 0), |l| (l.on_hand, l.reserved));
        let movement = match op {
            StockOp::Set(n) => Movement::set(on_hand, n),
            StockOp::Adjust(d) => Movement::adjust(d),
        };
        let (new_on_hand, new_reserved) = movement
            .apply(on_hand, reserved)
            .map_err(|e| StoreError::StockConflict(e.to_string()))?;
        let now = meridian_core::now();
        tx.prepare_cached(
            "INSERT INTO stock_levels (tenant_id, warehouse_id, sku, on_hand, reserved, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (tenant_id, warehouse_id, sku) \
             DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved, \
                           updated_at = excluded.updated_at",
        )?
        .execute(params![
            tenant.to_string(),
            warehouse_id.to_string(),
            sku.as_str(),
            new_on_hand,
            new_reserved,
            ts(&now),
        ])?;
        let level = StockLevel {
            warehouse_id,
            warehouse_code: code.clone(),
            priority,
            sku: sku.clone(),
            on_hand: new_on_hand,
            reserved: new_reserved,
        };
        insert_ledger(
            tx,
            &LedgerEntry {
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
            },
        )?;
        let data = json!({
            "warehouse": code,
            "sku": sku,
            "kind": movement.kind,
            "on_hand": new_on_hand,
            "reserved": new_reserved,
            "available": level.available(),
            "delta": movement.on_hand_delta,
            "reason": reason,
        });
        insert_outbox(
            tx,
            &events.event("data", "stock.changed", tenant, sku.as_str(), data, now),
        )?;
        Ok(level)
    }
}

// --- orders ---

/// Moves an order through `action`, releasing or committing its reservation.
pub(super) fn transition_order(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    id: OrderId,
    action: OrderAction,
) -> Result<Order> {
    immediate(conn, |tx| {
        let mut order = queries::get_order(tx, tenant, id)?;
        if action == OrderAction::Fulfill && order.status == meridian_orders::OrderStatus::Confirmed
        {
            super::holds::refuse_if_held(tx, tenant, id)?;
        }
        let mut levels: Vec<StockLevel> = Vec::new();
        for line in &order.lines {
            for a in &line.allocations {
                let seen = levels
                    .iter()
                    .any(|l| l.warehouse_id == a.warehouse_id && l.sku == line.sku);
                if !seen && let Some(level) = queries::level(tx, tenant, a.warehouse_id, &line.sku)?
                {
                    levels.push(level);
                }
            }
        }
        let now = meridian_core::now();
        let done = meridian_orders::transition(&mut order, action, &mut levels, events, now)
            .map_err(|e| StoreError::from_transition(id, e))?;
        for change in &done.stock {
            super::rows::apply_stock_delta(tx, change, &now)?;
        }
        for entry in &done.ledger {
            insert_ledger(tx, entry)?;
        }
        insert_outbox(tx, &done.event)?;
        tx.prepare_cached(
            "UPDATE orders SET status = ?1, lines = ?2, updated_at = ?3 \
             WHERE tenant_id = ?4 AND id = ?5",
        )?
        .execute(params![
            order.status.as_str(),
            to_json("order lines", &order.lines)?,
            ts(&order.updated_at),
            tenant.to_string(),
            id.to_string(),
        ])?;
        Ok(order)
    })
}
