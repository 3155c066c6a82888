//! Reading orders, order transitions and the outbox. Placing orders is the writer's job
//! ([`super::writer`]).

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::{OrderId, Sku, TenantId, Topic, WarehouseId};
use meridian_orders::{Order, OrderAction, OrderStatus, StockChange};
use uuid::Uuid;

use super::{PgStore, bad_cursor, error, into_page, page_limit, rows, sql, writes};
use crate::{OutboxRecord, Page, PageRequest, Result, StoreError, decode_cursor};

pub(super) async fn get(store: &PgStore, tenant: TenantId, id: OrderId) -> Result<Order> {
    let row = store
        .row_by_id("orders", sql::ORDER_COLUMNS, tenant, id.as_uuid(), "order")
        .await?;
    rows::order(&row)
}

pub(super) async fn list(
    store: &PgStore,
    tenant: TenantId,
    status: Option<OrderStatus>,
    page: PageRequest,
) -> Result<Page<Order>> {
    let limit = page_limit(&page);
    // Newest first by id (UUIDv7); the first page starts below the largest UUID.
    let before = match &page.cursor {
        Some(c) => Uuid::parse_str(&decode_cursor(c)?).map_err(|_| bad_cursor())?,
        None => Uuid::max(),
    };
    let fetch = limit as i64 + 1;
    let client = store.client().await?;
    // Two statements rather than `status = $2 OR $2 IS NULL`, so each gets a plan that uses
    // its index.
    let rows = match status {
        Some(status) => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {} FROM orders WHERE tenant_id = $1 AND status = $2 AND id < $3 \
                     ORDER BY id DESC LIMIT $4",
                    sql::ORDER_COLUMNS
                ))
                .await
                .map_err(error::db)?;
            client
                .query(
                    &stmt,
                    &[tenant.as_uuid(), &status.as_str(), &before, &fetch],
                )
                .await
        }
        None => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {} FROM orders WHERE tenant_id = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3",
                    sql::ORDER_COLUMNS
                ))
                .await
                .map_err(error::db)?;
            client
                .query(&stmt, &[tenant.as_uuid(), &before, &fetch])
                .await
        }
    }
    .map_err(error::db)?;
    let items = rows.iter().map(rows::order).collect::<Result<Vec<_>>>()?;
    Ok(into_page(items, limit, |o| o.id.to_string()))
}

/// One transaction: lock the order, lock its allocated levels in the global order, run the
/// state machine, then write the levels, ledger rows, the order and its event.
pub(super) async fn transition(
    store: &PgStore,
    tenant: TenantId,
    id: OrderId,
    action: OrderAction,
) -> Result<Order> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let (select, lock_cells, update_order) = futures::try_join!(
        async {
            tx.prepare_cached(&format!(
                "SELECT {} FROM orders WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                sql::ORDER_COLUMNS
            ))
            .await
        },
        tx.prepare_cached(sql::LOCK_CELLS),
        tx.prepare_cached("UPDATE orders SET status = $2, updated_at = $3 WHERE id = $1"),
    )
    .map_err(error::db)?;
    let row = tx
        .query_opt(&select, &[tenant.as_uuid(), id.as_uuid()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("order", id))?;
    let mut order = rows::order(&row)?;
    if action == OrderAction::Fulfill && order.status == OrderStatus::Confirmed {
        // The row is locked: a hold cannot land between this check and the commit.
        super::holds::refuse_if_held(&tx, tenant, id).await?;
    }

    // The cells the order holds stock in. Locked even when the action turns out to be
    // illegal: the state machine decides, and an extra short lock costs nothing.
    let cells: BTreeSet<(WarehouseId, &Sku)> = order
        .lines
        .iter()
        .flat_map(|l| l.allocations.iter().map(move |a| (a.warehouse_id, &l.sku)))
        .collect();
    let mut levels = if cells.is_empty() {
        Vec::new()
    } else {
        let warehouses: Vec<Uuid> = cells.iter().map(|(w, _)| *w.as_uuid()).collect();
        let skus: Vec<&str> = cells.iter().map(|(_, s)| s.as_str()).collect();
        tx.query(&lock_cells, &[tenant.as_uuid(), &warehouses, &skus])
            .await
            .map_err(error::db)?
            .iter()
            .map(rows::stock_level)
            .collect::<Result<Vec<_>>>()?
    };

    let now = meridian_core::now();
    let done = meridian_orders::transition(&mut order, action, &mut levels, &store.events, now)
        .map_err(|e| {
            let e = StoreError::from_transition(id, e);
            if matches!(e, StoreError::Internal(_)) {
                tracing::error!(order.id = %id, tenant.id = %tenant, error = %e, "order stock is inconsistent");
            }
            e
        })?;

    // One net change per level, sorted like the locks (the domain emits one per allocation).
    let mut net: BTreeMap<(WarehouseId, Sku), (i64, i64)> = BTreeMap::new();
    for c in &done.stock {
        let d = net.entry((c.warehouse_id, c.sku.clone())).or_default();
        d.0 += c.on_hand_delta;
        d.1 += c.reserved_delta;
    }
    let changes: Vec<StockChange> = net
        .into_iter()
        .map(
            |((warehouse_id, sku), (on_hand_delta, reserved_delta))| StockChange {
                tenant_id: tenant,
                warehouse_id,
                sku,
                on_hand_delta,
                reserved_delta,
            },
        )
        .collect();

    let (update_stock, insert_ledger) = futures::try_join!(
        tx.prepare_cached(sql::UPDATE_STOCK),
        tx.prepare_cached(sql::INSERT_LEDGER),
    )
    .map_err(error::db)?;
    let (updated, _, _) = futures::try_join!(
        writes::update_stock(&tx, &update_stock, &changes, now),
        writes::insert_ledger(&tx, &insert_ledger, &done.ledger),
        async {
            tx.execute(
                &update_order,
                &[
                    order.id.as_uuid(),
                    &order.status.as_str(),
                    &order.updated_at,
                ],
            )
            .await
        },
    )
    .map_err(error::db)?;
    if updated != changes.len() as u64 {
        return Err(writes::missing_levels(changes.len(), updated));
    }
    writes::append_outbox_pooled(&tx, std::slice::from_ref(&done.event)).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(order)
}

/// The outbox rows after `after`, oldest first, across tenants (the relay's view).
pub(super) async fn outbox_after(
    store: &PgStore,
    after: i64,
    limit: u32,
) -> Result<Vec<OutboxRecord>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Bounded so one call cannot pull an unbounded backlog into memory.
    let limit = i64::from(limit.min(10_000));
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, topic, envelope, sent_at FROM outbox WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .await
        .map_err(error::db)?;
    client
        .query(&stmt, &[&after, &limit])
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            let topic: String = rows::get(row, "topic")?;
            let tokio_postgres::types::Json(envelope) = rows::get(row, "envelope")?;
            Ok(OutboxRecord {
                seq: rows::get(row, "seq")?,
                topic: serde_json::from_value::<Topic>(serde_json::Value::String(topic))
                    .map_err(|e| StoreError::Internal(format!("stored topic: {e}")))?,
                envelope,
                sent_at: rows::get(row, "sent_at")?,
            })
        })
        .collect()
}
