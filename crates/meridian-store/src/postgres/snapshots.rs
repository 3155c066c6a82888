//! Warehouse stock snapshots: a stock take behind the inbox, ignoring counts older than
//! the last one applied to the level.

use meridian_core::{Timestamp, WarehouseId};
use tokio_postgres::types::ToSql;

use super::inventory::{Change, change_stock_in};
use super::{PgStore, error, rows};
use crate::{Result, SnapshotOutcome, StockSnapshot, StoreError};

/// Inbox row, count-time check and stock take in one transaction. The inbox row and the
/// count time are committed for a stale snapshot too; any error rolls everything back.
pub(super) async fn apply(
    store: &PgStore,
    consumer: &str,
    s: &StockSnapshot,
) -> Result<SnapshotOutcome> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let (inbox, find_warehouse, mark, last) = futures::try_join!(
        tx.prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES ($1, $2, now()) \
             ON CONFLICT DO NOTHING"
        ),
        tx.prepare_cached("SELECT id FROM warehouses WHERE tenant_id = $1 AND code = $2"),
        // Replaced only by a count taken at the same time or later; the upsert locks the
        // row, so two snapshots of one level are decided one after the other.
        tx.prepare_cached(
            "INSERT INTO stock_snapshots \
             (tenant_id, warehouse_id, sku, counted_at, event_id, applied_at) \
             VALUES ($1, $2, $3, $4, $5, now()) \
             ON CONFLICT (tenant_id, warehouse_id, sku) DO UPDATE SET \
               counted_at = excluded.counted_at, event_id = excluded.event_id, \
               applied_at = excluded.applied_at \
             WHERE stock_snapshots.counted_at <= excluded.counted_at"
        ),
        tx.prepare_cached(
            "SELECT counted_at FROM stock_snapshots \
             WHERE tenant_id = $1 AND warehouse_id = $2 AND sku = $3"
        ),
    )
    .map_err(error::db)?;
    let inserted = tx
        .execute(&inbox, &[&consumer, s.event_id.as_uuid()])
        .await
        .map_err(error::db)?;
    if inserted == 0 {
        // Seen before: the transaction rolls back on drop; nothing was written.
        return Ok(SnapshotOutcome::Duplicate);
    }
    let (tenant, code, sku) = (s.tenant.as_uuid(), s.warehouse.as_str(), s.sku.as_str());
    let warehouse = tx
        .query_opt(&find_warehouse, &[tenant, &code])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("warehouse", &s.warehouse))?;
    let warehouse_id = WarehouseId::from_uuid(rows::get(&warehouse, "id")?);
    let params: [&(dyn ToSql + Sync); 5] = [
        tenant,
        warehouse_id.as_uuid(),
        &sku,
        &s.counted_at,
        s.event_id.as_uuid(),
    ];
    let newer = tx.execute(&mark, &params).await.map_err(error::db)?;
    if newer == 0 {
        let row = tx.query_one(&last, &params[..3]).await.map_err(error::db)?;
        let last_counted_at: Timestamp = rows::get(&row, "counted_at")?;
        tx.commit().await.map_err(error::db)?;
        return Ok(SnapshotOutcome::Stale { last_counted_at });
    }
    let level = change_stock_in(
        store,
        &tx,
        s.tenant,
        &s.warehouse,
        &s.sku,
        &s.reason(),
        Change::Set(s.on_hand),
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(SnapshotOutcome::Applied(level))
}
