//! Dead letters on PostgreSQL: one pooled statement per call.

use meridian_core::{EventId, TenantId, Topic};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{PgStore, bad_cursor, error, into_page, page_limit, rows};
use crate::{DeadLetterRecord, Page, PageRequest, Result, StoreError, decode_cursor};

const COLUMNS: &str = "id, tenant_id, original_topic, envelope, reason, attempts, consumer, \
                       failed_at, replayed_at";

fn record(row: &Row) -> Result<DeadLetterRecord> {
    let topic: String = rows::get(row, "original_topic")?;
    let Json(envelope) = rows::get(row, "envelope")?;
    let attempts: i32 = rows::get(row, "attempts")?;
    Ok(DeadLetterRecord {
        id: EventId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        original_topic: Topic::parse(&topic)
            .map_err(|e| StoreError::Internal(format!("stored topic: {e}")))?,
        envelope,
        reason: rows::get(row, "reason")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        consumer: rows::get(row, "consumer")?,
        failed_at: rows::get(row, "failed_at")?,
        replayed_at: rows::get(row, "replayed_at")?,
    })
}

pub(super) async fn record_dead_letter(store: &PgStore, dl: &DeadLetterRecord) -> Result<bool> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO dead_letters (id, tenant_id, original_topic, envelope, reason, \
             attempts, consumer, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO NOTHING",
        )
        .await
        .map_err(error::db)?;
    let attempts = i32::try_from(dl.attempts).unwrap_or(i32::MAX);
    let n = client
        .execute(
            &stmt,
            &[
                dl.id.as_uuid(),
                dl.tenant_id.as_uuid(),
                &dl.original_topic.as_str(),
                &Json(&dl.envelope),
                &dl.reason,
                &attempts,
                &dl.consumer,
                &dl.failed_at,
            ],
        )
        .await
        .map_err(error::db)?;
    Ok(n == 1)
}

pub(super) async fn list(
    store: &PgStore,
    tenant: Option<TenantId>,
    page: PageRequest,
) -> Result<Page<DeadLetterRecord>> {
    let limit = page_limit(&page);
    let before = match &page.cursor {
        Some(c) => Uuid::parse_str(&decode_cursor(c)?).map_err(|_| bad_cursor())?,
        None => Uuid::max(),
    };
    let tenant: Option<Uuid> = tenant.map(|t| *t.as_uuid());
    let fetch = limit as i64 + 1;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters \
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id < $2 ORDER BY id DESC LIMIT $3"
        ))
        .await
        .map_err(error::db)?;
    let items = client
        .query(&stmt, &[&tenant, &before, &fetch])
        .await
        .map_err(error::db)?
        .iter()
        .map(record)
        .collect::<Result<Vec<_>>>()?;
    Ok(into_page(items, limit, |d| d.id.to_string()))
}

pub(super) async fn get(
    store: &PgStore,
    tenant: Option<TenantId>,
    id: EventId,
) -> Result<DeadLetterRecord> {
    let tenant: Option<Uuid> = tenant.map(|t| *t.as_uuid());
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
        ))
        .await
        .map_err(error::db)?;
    let row = client
        .query_opt(&stmt, &[id.as_uuid(), &tenant])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("dead letter", id))?;
    record(&row)
}

pub(super) async fn mark_replayed(
    store: &PgStore,
    tenant: Option<TenantId>,
    id: EventId,
) -> Result<DeadLetterRecord> {
    let tenant: Option<Uuid> = tenant.map(|t| *t.as_uuid());
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE dead_letters SET replayed_at = now() \
             WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) RETURNING {COLUMNS}"
        ))
        .await
        .map_err(error::db)?;
    let row = client
        .query_opt(&stmt, &[id.as_uuid(), &tenant])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("dead letter", id))?;
    record(&row)
}
