//! The relay's side of the outbox (unsent rows, marking them sent), the inbox and the
//! order-events projection on PostgreSQL. Each write is one pooled transaction.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use meridian_core::{Envelope, OrderId, TenantId, Timestamp, Topic};
use tokio::sync::Notify;
use tokio_postgres::types::Json;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use uuid::Uuid;

use super::{PgStore, error, rows};
use crate::{OrderEvent, OutboxRecord, RelayLock, Result, StoreError, order_id_of};

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

/// Many events in one transaction: one set-based inbox insert, whose `RETURNING` tells
/// which events are new, then one set-based projection append in slice order.
pub(super) async fn record_order_events(
    store: &PgStore,
    consumer: &str,
    events: &[Envelope],
) -> Result<Vec<bool>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let order_ids = events
        .iter()
        .map(|e| order_id_of(e).map(|id| *id.as_uuid()))
        .collect::<Result<Vec<Uuid>>>()?;
    let event_ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let (inbox, project) = futures::try_join!(
        // ON CONFLICT DO NOTHING also drops a second copy within the same statement.
        tx.prepare_cached(
            "INSERT INTO inbox (consumer, event_id) SELECT $1, u.id \
             FROM unnest($2::uuid[]) AS u(id) ON CONFLICT DO NOTHING RETURNING event_id",
        ),
        tx.prepare_cached(
            "INSERT INTO order_events (tenant_id, order_id, event_id, type, time, data) \
             SELECT tenant_id, order_id, event_id, type, time, data \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], \
                 $5::timestamptz[], $6::jsonb[]) WITH ORDINALITY \
                 AS u(tenant_id, order_id, event_id, type, time, data, ord) \
             ORDER BY ord ON CONFLICT (event_id) DO NOTHING",
        ),
    )
    .map_err(error::db)?;
    let mut new: HashSet<Uuid> = tx
        .query(&inbox, &[&consumer, &event_ids])
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| rows::get::<Uuid>(row, "event_id"))
        .collect::<Result<_>>()?;
    // The first copy of a new event is the one recorded; later copies are duplicates.
    let recorded: Vec<bool> = event_ids.iter().map(|id| new.remove(id)).collect();
    if !recorded.iter().any(|r| *r) {
        // Every event was seen before; dropping the transaction rolls it back.
        return Ok(recorded);
    }
    let mut tenants = Vec::new();
    let mut orders = Vec::new();
    let mut ids = Vec::new();
    let mut types: Vec<&str> = Vec::new();
    let mut times: Vec<Timestamp> = Vec::new();
    let mut data = Vec::new();
    for (i, event) in events.iter().enumerate().filter(|(i, _)| recorded[*i]) {
        tenants.push(*event.tenant.as_uuid());
        orders.push(order_ids[i]);
        ids.push(event_ids[i]);
        types.push(&event.ty);
        times.push(event.time);
        data.push(Json(&event.data));
    }
    tx.execute(&project, &[&tenants, &orders, &ids, &types, &times, &data])
        .await
        .map_err(error::db)?;
    tx.commit().await.map_err(error::db)?;
    Ok(recorded)
}

pub(super) async fn unsent_count(store: &PgStore) -> Result<u64> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .await
        .map_err(error::db)?;
    let row = client.query_one(&stmt, &[]).await.map_err(error::db)?;
    let n: i64 = rows::get(&row, "count")?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// The advisory lock of the active relay, keyed by the schema so that relays of different
/// databases or schemas on one server do not exclude each other.
const TRY_RELAY_LOCK: &str = "SELECT pg_try_advisory_lock(\
    hashtextextended('meridian.outbox_relay.' || current_schema(), 0)) AS locked, \
    current_schema() AS schema";

/// How long [`PgRelayLock::is_held`] waits for its connection to answer.
const LOCK_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The relay lock's session while this store waits for the lock: kept between attempts
/// so that a standby relay asks again on one connection instead of opening a new one every
/// second.
pub(super) type StandbySession = tokio::sync::Mutex<Option<PgRelayLock>>;

/// Takes the session-level relay lock on a connection of its own (the standby session, or
/// a new one when there is none or it has closed). The lock lives exactly as long as that
/// session: dropping the lock closes the connection, and a relay process that dies takes
/// the session (and the lock) with it.
pub(super) async fn try_lock_relay(
    config: &tokio_postgres::Config,
    standby: &StandbySession,
) -> Result<Option<Box<dyn RelayLock>>> {
    let mut standby = standby.lock().await;
    let session = match standby.take() {
        Some(s) if !s.client.is_closed() => s,
        _ => PgRelayLock::connect(config).await?,
    };
    let row = session
        .client
        .query_one(TRY_RELAY_LOCK, &[])
        .await
        .map_err(error::db)?;
    let locked: bool = rows::get(&row, "locked")?;
    if !locked {
        *standby = Some(session);
        return Ok(None);
    }
    // The active relay's session listens for committed outbox rows (migration 0011); the
    // schema is set before `LISTEN`, so no notification is judged without it.
    let _ = session.schema.set(rows::get(&row, "schema")?);
    session
        .client
        .batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}"))
        .await
        .map_err(error::db)?;
    Ok(Some(Box::new(session)))
}

/// The channel of migration 0011's trigger; its payload is the outbox table's schema.
const OUTBOX_CHANNEL: &str = "meridian_outbox";

#[derive(Debug)]
pub(super) struct PgRelayLock {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    /// The session's `current_schema()`, once it holds the lock.
    schema: Arc<OnceLock<String>>,
    /// Woken by the connection's task for each notification of this schema.
    signal: Arc<Notify>,
}

impl PgRelayLock {
    /// Opens the session. Its task drives the connection and turns the notifications of
    /// [`OUTBOX_CHANNEL`] for this session's schema into wake-ups.
    async fn connect(config: &tokio_postgres::Config) -> Result<Self> {
        let (client, mut connection) = config.connect(NoTls).await.map_err(error::db)?;
        let schema = Arc::new(OnceLock::<String>::new());
        let signal = Arc::new(Notify::new());
        let task = tokio::spawn({
            let schema = Arc::clone(&schema);
            let signal = Arc::clone(&signal);
            async move {
                let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(n))
                            if n.channel() == OUTBOX_CHANNEL
                                && schema.get().is_some_and(|s| s == n.payload()) =>
                        {
                            signal.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the relay lock's connection ended");
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            client,
            task,
            schema,
            signal,
        })
    }
}

impl Drop for PgRelayLock {
    fn drop(&mut self) {
        // Closing the session releases the lock at once.
        self.task.abort();
    }
}

#[async_trait]
impl RelayLock for PgRelayLock {
    async fn is_held(&self) -> bool {
        if self.client.is_closed() {
            return false;
        }
        matches!(
            tokio::time::timeout(LOCK_PING_TIMEOUT, self.client.simple_query("SELECT 1")).await,
            Ok(Ok(_))
        )
    }

    fn outbox_signal(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.signal))
    }
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
