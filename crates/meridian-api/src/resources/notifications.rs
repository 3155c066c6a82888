//! `/v1/notifications`: the tenant's notification log, every channel, newest first.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use meridian_core::ValidationErrors;
use meridian_store::notify::Notification;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::QueryParams;
use crate::problem::{Problem, ProblemDetails};

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationResponse {
    pub id: Uuid,
    pub event_id: Uuid,
    #[schema(example = "order.created")]
    pub event_type: String,
    /// `webhook`, `email` or `sms`.
    #[schema(example = "webhook")]
    pub channel: String,
    /// The endpoint id (webhook), address (email) or number (SMS).
    pub recipient: String,
    /// `pending`, `succeeded` or `failed`.
    #[schema(example = "succeeded")]
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationList {
    /// Newest first.
    pub items: Vec<NotificationResponse>,
    pub next_cursor: Option<String>,
}

impl From<Notification> for NotificationResponse {
    fn from(n: Notification) -> Self {
        Self {
            id: *n.id.as_uuid(),
            event_id: *n.event_id.as_uuid(),
            event_type: n.event_type,
            channel: n.channel.as_str().to_owned(),
            recipient: n.recipient,
            status: n.status.as_str().to_owned(),
            attempts: n.attempts,
            next_attempt_at: n.next_attempt_at,
            last_error: n.last_error,
            created_at: n.created_at,
            updated_at: n.updated_at,
        }
    }
}

/// The notification log: every notification made for the tenant, newest first.
#[utoipa::path(
    get, path = "/v1/notifications", operation_id = "list_notifications", tag = "webhooks",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of notifications", body = NotificationList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<NotificationList>, Problem> {
    let mut errors = ValidationErrors::new();
    query.check_names(&["limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    errors.into_result()?;
    let page = state
        .store
        .list_notifications(ctx.tenant_id, None, page)
        .await?;
    Ok(Json(NotificationList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}
