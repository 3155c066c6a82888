//! The relay's side of the outbox (unsent rows, marking them sent), the inbox and the
//! order-events projection on SQLite.
//!
//! Writes run on the writer thread through its generic write path, each in its own
//! `BEGIN IMMEDIATE` transaction; reads run on the read pool.

use meridian_core::{Envelope, OrderId, TenantId};
use rusqlite::{Connection, OptionalExtension, params};

use super::conn::WriteTx;
use super::rows::{self, parsed, time, to_json, ts};
use crate::{OrderEvent, OutboxRecord, StoreError, order_id_of};

type Result<T> = std::result::Result<T, StoreError>;

/// The most rows one call hands the relay, whatever it asks for.
const MAX_UNSENT: u32 = 10_000;

pub(super) fn unsent(conn: &Connection, limit: u32) -> Result<Vec<OutboxRecord>> {
    let limit = limit.clamp(1, MAX_UNSENT);
    let items = conn
        .prepare_cached(
            "SELECT seq, topic, envelope, sent_at FROM outbox WHERE sent_at IS NULL \
             ORDER BY seq LIMIT ?1",
        )?
        .query_map(params![limit], rows::outbox_record)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(items)
}

/// Marks `seqs` sent in one transaction (one fsync for the whole batch).
pub(super) fn mark_sent(conn: &mut Connection, seqs: &[i64]) -> Result<()> {
    let tx = WriteTx::begin(conn)?;
    let now = ts(&meridian_core::now());
    {
        let mut stmt =
            tx.prepare_cached("UPDATE outbox SET sent_at = ?1 WHERE seq = ?2 AND sent_at IS NULL")?;
        for seq in seqs {
            stmt.execute(params![now, seq])?;
        }
    }
    tx.commit()
}

/// Inbox insert and projection append in one transaction; `false` for a duplicate.
pub(super) fn record_order_event(
    conn: &mut Connection,
    consumer: &str,
    event: &Envelope,
) -> Result<bool> {
    let order_id = order_id_of(event)?;
    let data = to_json("event data", &event.data)?;
    let tx = WriteTx::begin(conn)?;
    let now = ts(&meridian_core::now());
    let inserted = tx
        .prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![consumer, event.id.to_string(), now])?;
    if inserted == 0 {
        // Seen before: leave the transaction to roll back on drop; nothing was written.
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO order_events \
         (tenant_id, order_id, event_id, type, time, data, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (event_id) DO NOTHING",
    )?
    .execute(params![
        event.tenant.to_string(),
        order_id.to_string(),
        event.id.to_string(),
        event.ty,
        ts(&event.time),
        data,
        now,
    ])?;
    tx.commit()?;
    Ok(true)
}

/// Inbox inserts and projection appends for many events in one transaction (one fsync);
/// `false` for each event the inbox already held, including an earlier copy in `events`.
pub(super) fn record_order_events(
    conn: &mut Connection,
    consumer: &str,
    events: &[Envelope],
) -> Result<Vec<bool>> {
    // Everything that can refuse an event is checked before the transaction starts.
    let prepared = events
        .iter()
        .map(|e| Ok((order_id_of(e)?, to_json("event data", &e.data)?)))
        .collect::<Result<Vec<_>>>()?;
    let tx = WriteTx::begin(conn)?;
    let now = ts(&meridian_core::now());
    let mut recorded = Vec::with_capacity(events.len());
    {
        let mut inbox = tx.prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?;
        let mut project = tx.prepare_cached(
            "INSERT INTO order_events \
             (tenant_id, order_id, event_id, type, time, data, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (event_id) DO NOTHING",
        )?;
        for (event, (order_id, data)) in events.iter().zip(&prepared) {
            let event_id = event.id.to_string();
            let inserted = inbox.execute(params![consumer, event_id, now])? > 0;
            if inserted {
                project.execute(params![
                    event.tenant.to_string(),
                    order_id.to_string(),
                    event_id,
                    event.ty,
                    ts(&event.time),
                    data,
                    now,
                ])?;
            }
            recorded.push(inserted);
        }
    }
    if recorded.iter().any(|r| *r) {
        tx.commit()?;
    }
    Ok(recorded)
}

pub(super) fn unsent_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM outbox WHERE sent_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// One order's timeline, oldest first; `NotFound` unless the tenant has the order.
pub(super) fn order_events(
    conn: &Connection,
    tenant: TenantId,
    order: OrderId,
) -> Result<Vec<OrderEvent>> {
    let (tenant_s, order_s) = (tenant.to_string(), order.to_string());
    let exists = conn
        .prepare_cached("SELECT 1 FROM orders WHERE tenant_id = ?1 AND id = ?2")?
        .query_row(params![tenant_s, order_s], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::not_found("order", order));
    }
    let items = conn
        .prepare_cached(
            "SELECT event_id, order_id, type, time, data FROM order_events \
             WHERE tenant_id = ?1 AND order_id = ?2 ORDER BY time, seq",
        )?
        .query_map(params![tenant_s, order_s], |r| {
            Ok(OrderEvent {
                event_id: parsed(r, 0)?,
                order_id: parsed(r, 1)?,
                ty: r.get(2)?,
                time: time(r, 3)?,
                data: rows::json(r, 4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(items)
}
