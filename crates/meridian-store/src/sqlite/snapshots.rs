//! Warehouse stock snapshots: a stock take behind the inbox, ignoring counts older than
//! the last one applied to the level.

use meridian_core::{EventSource, WarehouseId};
use rusqlite::{Connection, OptionalExtension, params};

use super::commands::{StockOp, change_stock_in};
use super::conn::WriteTx;
use super::rows::ts;
use crate::{Result, SnapshotOutcome, StockSnapshot, StoreError};

/// Inbox row, count-time check and stock take in one transaction. The inbox row and the
/// count time are committed for a stale snapshot too; any error rolls everything back.
pub(super) fn apply(
    conn: &mut Connection,
    events: &EventSource,
    consumer: &str,
    s: &StockSnapshot,
) -> Result<SnapshotOutcome> {
    let tx = WriteTx::begin(conn)?;
    let (tenant, event_id) = (s.tenant.to_string(), s.event_id.to_string());
    let now = ts(&meridian_core::now());
    let inserted = tx
        .prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![consumer, event_id, now])?;
    if inserted == 0 {
        // Seen before: roll back on drop; nothing was written.
        return Ok(SnapshotOutcome::Duplicate);
    }
    let warehouse: WarehouseId = tx
        .prepare_cached("SELECT id FROM warehouses WHERE tenant_id = ?1 AND code = ?2")?
        .query_row(params![tenant, s.warehouse.as_str()], |r| {
            super::rows::parsed::<WarehouseId>(r, 0)
        })
        .optional()?
        .ok_or_else(|| StoreError::not_found("warehouse", &s.warehouse))?;
    // Timestamps are stored fixed-width (RFC 3339, microseconds, `Z`), so they compare as
    // text. The row is replaced only by a count taken at the same time or later.
    let counted_at = ts(&s.counted_at);
    let newer = tx
        .prepare_cached(
            "INSERT INTO stock_snapshots \
             (tenant_id, warehouse_id, sku, counted_at, event_id, applied_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (tenant_id, warehouse_id, sku) DO UPDATE SET \
               counted_at = excluded.counted_at, event_id = excluded.event_id, \
               applied_at = excluded.applied_at \
             WHERE stock_snapshots.counted_at <= excluded.counted_at",
        )?
        .execute(params![
            tenant,
            warehouse.to_string(),
            s.sku.as_str(),
            counted_at,
            event_id,
            now
        ])?;
    if newer == 0 {
        let last: String = tx
            .prepare_cached(
                "SELECT counted_at FROM stock_snapshots \
                 WHERE tenant_id = ?1 AND warehouse_id = ?2 AND sku = ?3",
            )?
            .query_row(
                params![tenant, warehouse.to_string(), s.sku.as_str()],
                |r| r.get(0),
            )?;
        let last_counted_at = chrono::DateTime::parse_from_rfc3339(&last)
            .map_err(|e| StoreError::Internal(format!("stored counted_at {last:?}: {e}")))?
            .with_timezone(&chrono::Utc);
        tx.commit()?;
        return Ok(SnapshotOutcome::Stale { last_counted_at });
    }
    let level = change_stock_in(
        &tx,
        events,
        s.tenant,
        &s.warehouse,
        &s.sku,
        StockOp::Set(s.on_hand),
        &s.reason(),
    )?;
    tx.commit()?;
    Ok(SnapshotOutcome::Applied(level))
}
