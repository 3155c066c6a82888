//! Dead letters on SQLite: recorded and marked through the writer thread, read from the
//! read pool.

use meridian_core::{EventId, TenantId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::conn::immediate;
use super::rows::{json, opt_time, parsed, time, to_json, ts};
use crate::{DeadLetterRecord, Page, PageRequest, StoreError, decode_cursor, encode_cursor};

type Result<T> = std::result::Result<T, StoreError>;

const COLUMNS: &str = "id, tenant_id, original_topic, envelope, reason, attempts, consumer, \
                       failed_at, replayed_at";

fn record(r: &Row<'_>) -> rusqlite::Result<DeadLetterRecord> {
    let topic: String = r.get(2)?;
    Ok(DeadLetterRecord {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        original_topic: meridian_core::Topic::parse(&topic).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        envelope: json(r, 3)?,
        reason: r.get(4)?,
        attempts: r.get(5)?,
        consumer: r.get(6)?,
        failed_at: time(r, 7)?,
        replayed_at: opt_time(r, 8)?,
    })
}

pub(super) fn record_dead_letter(conn: &mut Connection, dl: &DeadLetterRecord) -> Result<bool> {
    let envelope = to_json("dead-letter envelope", &dl.envelope)?;
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "INSERT INTO dead_letters (id, tenant_id, original_topic, envelope, reason, \
                 attempts, consumer, failed_at, replayed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                dl.id.to_string(),
                dl.tenant_id.to_string(),
                dl.original_topic.as_str(),
                envelope,
                dl.reason,
                dl.attempts,
                dl.consumer,
                ts(&dl.failed_at),
            ])?;
        Ok(n == 1)
    })
}

pub(super) fn list(
    conn: &Connection,
    tenant: Option<TenantId>,
    page: &PageRequest,
) -> Result<Page<DeadLetterRecord>> {
    let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    let before = match &page.cursor {
        Some(c) => decode_cursor(c)?
            .parse::<EventId>()
            .map_err(|_| {
                StoreError::Validation(meridian_core::ValidationErrors::single(
                    "cursor",
                    "is not a cursor this API returned",
                ))
            })?
            .to_string(),
        // Above every UUID's text form.
        None => "g".to_owned(),
    };
    let mut items: Vec<DeadLetterRecord> = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters \
             WHERE (?1 IS NULL OR tenant_id = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?
        .query_map(
            params![tenant.map(|t| t.to_string()), before, limit as i64 + 1],
            record,
        )?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| encode_cursor(&last.id.to_string()))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

fn find(conn: &Connection, tenant: Option<TenantId>, id: EventId) -> Result<DeadLetterRecord> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
    ))?
    .query_row(
        params![id.to_string(), tenant.map(|t| t.to_string())],
        record,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("dead letter", id))
}

pub(super) fn get(
    conn: &Connection,
    tenant: Option<TenantId>,
    id: EventId,
) -> Result<DeadLetterRecord> {
    find(conn, tenant, id)
}

pub(super) fn mark_replayed(
    conn: &mut Connection,
    tenant: Option<TenantId>,
    id: EventId,
) -> Result<DeadLetterRecord> {
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE dead_letters SET replayed_at = ?1 \
                 WHERE id = ?2 AND (?3 IS NULL OR tenant_id = ?3)",
            )?
            .execute(params![
                ts(&meridian_core::now()),
                id.to_string(),
                tenant.map(|t| t.to_string())
            ])?;
        if n == 0 {
            return Err(StoreError::not_found("dead letter", id));
        }
        find(tx, tenant, id)
    })
}
