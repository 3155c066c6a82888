//! `/v1/dead-letters`: messages a consumer gave up on after its last attempt, for the
//! caller's tenant: list, inspect, replay.
//!
//! A replay publishes the original message, with its original event id, to its original
//! topic, and marks the dead letter replayed. Consumers deduplicate by event id, so the
//! ones that handled the message before ignore the replay. On NATS the stream drops a
//! re-publish of an event id within its duplicate window (30 s after the original publish),
//! so a replay inside that window has no effect; replay after it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, EventId};
use meridian_relay::ReplayError;
use meridian_store::DeadLetterRecord;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{PathParams, QueryParams};
use crate::problem::{Problem, ProblemDetails};

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterResponse {
    /// The dead letter's id (the id of its message on `<topic>.dlq`).
    pub id: Uuid,
    /// Where the original message was published; a replay publishes it there again.
    #[schema(example = "deployment.local.platform.oms.order.created")]
    pub original_topic: String,
    /// The original CloudEvents envelope, as delivered.
    pub envelope: serde_json::Value,
    /// Why the last attempt failed.
    pub reason: String,
    /// Deliveries made before giving up.
    #[schema(example = 3)]
    pub attempts: u32,
    /// The consumer that gave up.
    #[schema(example = "order-events")]
    pub consumer: String,
    pub failed_at: DateTime<Utc>,
    /// When it was last replayed, if ever.
    pub replayed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Newest first.
    pub items: Vec<DeadLetterResponse>,
    pub next_cursor: Option<String>,
}

impl From<DeadLetterRecord> for DeadLetterResponse {
    fn from(d: DeadLetterRecord) -> Self {
        Self {
            id: *d.id.as_uuid(),
            original_topic: d.original_topic.as_str().to_owned(),
            envelope: serde_json::to_value(&d.envelope).unwrap_or(serde_json::Value::Null),
            reason: d.reason,
            attempts: d.attempts,
            consumer: d.consumer,
            failed_at: d.failed_at,
            replayed_at: d.replayed_at,
        }
    }
}

/// A dead-letter id from the path; one that is not a UUID names none: 404.
fn id_from_path(s: &str) -> Result<EventId, Problem> {
    s.parse::<EventId>()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "dead letter not found"))
}

/// List the tenant's dead letters, newest first.
#[utoipa::path(
    get, path = "/v1/dead-letters", operation_id = "list_dead_letters", tag = "dead-letters",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of dead letters", body = DeadLetterList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<DeadLetterList>, Problem> {
    let page = super::paging_only(&query)?;
    let page = state
        .store
        .list_dead_letters(Some(ctx.tenant_id), page)
        .await?;
    Ok(Json(DeadLetterList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get one dead letter.
#[utoipa::path(
    get, path = "/v1/dead-letters/{id}", operation_id = "get_dead_letter", tag = "dead-letters",
    params(("id" = Uuid, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<DeadLetterResponse>, Problem> {
    let id = id_from_path(&id)?;
    let d = state.store.get_dead_letter(Some(ctx.tenant_id), id).await?;
    Ok(Json(d.into()))
}

/// Replay a dead letter: publish its original message to its original topic again.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/replay", operation_id = "replay_dead_letter", tag = "dead-letters",
    params(("id" = Uuid, Path, description = "The dead letter's id")),
    responses(
        (status = 202, description = "Republished; the dead letter, with `replayed_at` set", body = DeadLetterResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The bus cannot be reached; nothing was republished", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<(StatusCode, Json<DeadLetterResponse>), Problem> {
    let id = id_from_path(&id)?;
    let Some(bus) = state.bus.as_ref() else {
        // Another tenant's (or no) dead letter is 404 whether or not a bus is wired.
        state.store.get_dead_letter(Some(ctx.tenant_id), id).await?;
        return Err(Problem::new(
            ErrorCode::Unavailable,
            "no bus is configured to replay to",
        ));
    };
    match meridian_relay::replay_dead_letter(
        state.store.as_ref(),
        bus.as_ref(),
        Some(ctx.tenant_id),
        id,
    )
    .await
    {
        Ok(d) => Ok((StatusCode::ACCEPTED, Json(d.into()))),
        Err(ReplayError::Store(e)) => Err(e.into()),
        Err(ReplayError::Bus(e)) => {
            tracing::warn!(dead_letter.id = %id, error = %e, "replay could not publish");
            Err(Problem::new(
                ErrorCode::Unavailable,
                "the bus cannot be reached; try again later",
            ))
        }
    }
}
