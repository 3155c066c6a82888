//! The relay's side of the outbox (unsent rows, marking them sent), the inbox and the
//! order-events projection on PostgreSQL. Each write is one pooled transaction.

use meridian_core::{Envelope, OrderId, TenantId, Topic};
use tokio_postgres::types::Json;

use super::{PgStore, error, rows};
use crate::{OrderEvent, OutboxRecord, Result, StoreError, order_id_of};

/// The most rows one call hands the relay, whatever it asks for.
const MAX_UNSENT: u32 = 10_000;

pub(super) async fn unsent(store: &PgStore, limit: u32) -> Result<Vec<OutboxRecord>> {
    let limit = i64::from(limit.clamp(1, MAX_UNSENT));
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, topic, envelope, sent_at FROM outbox WHERE sent_at IS NULL \
             ORDER BY seq LIMIT $1",
        )
        .await
        .map_err(error::db)?;
    client
        .query(&stmt, &[&limit])
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            let topic: String = rows::get(row, "topic")?;
            let Json(envelope) = rows::get(row, "envelope")?;
            Ok(OutboxRecord {
                seq: rows::get(row, "seq")?,
                topic: Topic::parse(&topic)
                    .map_err(|e| StoreError::Internal(format!("stored topic: {e}")))?,
                envelope,
                sent_at: rows::get(row, "sent_at")?,
            })
        })
        .collect()
}

pub(super) async fn mark_sent(store: &PgStore, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1) AND sent_at IS NULL")
        .await
        .map_err(error::db)?;
    client.execute(&stmt, &[&seqs]).await.map_err(error::db)?;
    Ok(())
}

pub(super) async fn record_order_event(
    store: &PgStore,
    consumer: &str,
    event: &Envelope,
) -> Result<bool> {
    let order_id = order_id_of(event)?;
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let (inbox, project) = futures::try_join!(
        tx.prepare_cached(
            "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        ),
        tx.prepare_cached(
            "INSERT INTO order_events (tenant_id, order_id, event_id, type, time, data) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        ),
    )
    .map_err(error::db)?;
    let inserted = tx
        .execute(&inbox, &[&consumer, event.id.as_uuid()])
        .await
        .map_err(error::db)?;
    if inserted == 0 {
        // Seen before; dropping the transaction rolls it back (it wrote nothing).
        return Ok(false);
    }
    tx.execute(
        &project,
        &[
            event.tenant.as_uuid(),
            order_id.as_uuid(),
            event.id.as_uuid(),
            &event.ty,
            &event.time,
            &Json(&event.data),
        ],
    )
    .await
    .map_err(error::db)?;
    tx.commit().await.map_err(error::db)?;
    Ok(true)
}

pub(super) async fn order_events(
    store: &PgStore,
    tenant: TenantId,
    order: OrderId,
) -> Result<Vec<OrderEvent>> {
    let mut client = store.client().await?;
    // One snapshot for the existence check and the listing.
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(error::db)?;
    let (exists, list) = futures::try_join!(
        tx.prepare_cached("SELECT 1 FROM orders WHERE tenant_id = $1 AND id = $2"),
        tx.prepare_cached(
            "SELECT event_id, order_id, type, time, data FROM order_events \
             WHERE tenant_id = $1 AND order_id = $2 ORDER BY time, seq",
        ),
    )
    .map_err(error::db)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [tenant.as_uuid(), order.as_uuid()];
    if tx
        .query_opt(&exists, &params)
        .await
        .map_err(error::db)?
        .is_none()
    {
        return Err(StoreError::not_found("order", order));
    }
    let events = tx
        .query(&list, &params)
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            let Json(data) = rows::get(row, "data")?;
            Ok(OrderEvent {
                event_id: meridian_core::EventId::from_uuid(rows::get(row, "event_id")?),
                order_id: OrderId::from_uuid(rows::get(row, "order_id")?),
                ty: rows::get(row, "type")?,
                time: rows::get(row, "time")?,
                data,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tx.commit().await.map_err(error::db)?;
    Ok(events)
}
