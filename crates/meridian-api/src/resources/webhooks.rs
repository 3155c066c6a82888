//! `/v1/webhooks`: the tenant's webhook endpoints, their delivery log and redelivery.
//!
//! An endpoint's signing secret is returned once, when the endpoint is created or its
//! secret rotated; after that no response carries it. Deliveries are signed per Standard
//! Webhooks (see docs/notifications.md).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, ValidationErrors};
use meridian_notify::{events, signing, webhook};
use meridian_store::notify::{
    DeliveryAttempt, NewWebhookEndpoint, Notification, NotificationId, WebhookEndpoint, WebhookId,
    WebhookPatch,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::{Problem, ProblemDetails};

/// The most filters one endpoint may have.
const MAX_EVENT_TYPES: usize = 20;
/// The longest description.
const MAX_DESCRIPTION: usize = 500;
/// How long the previous secret keeps signing after a rotation.
const ROTATION_GRACE: chrono::Duration = chrono::Duration::hours(24);

// ---- DTOs -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are posted: an absolute `http` or `https` URL.
    #[schema(example = "https://example.com/meridian/webhooks")]
    pub url: String,
    /// At most 500 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Which events to send: `*`, `order.*`, `shipment.*` or event types such as
    /// `order.created`. Default `["*"]`.
    #[serde(default)]
    #[schema(example = json!(["order.created", "shipment.*"]))]
    pub event_types: Option<Vec<String>>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A partial update: absent fields stay as they are. Enabling an endpoint that was
/// disabled automatically clears its `disabled_reason`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResponse {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why Meridian disabled the endpoint, if it did (it keeps failing).
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation still signs deliveries.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// The signing secret (`whsec_` + base64): only in the answer to a create or a
    /// rotation. Keep it; it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Oldest first.
    pub items: Vec<WebhookResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptResponse {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<String>,
    pub duration_ms: u32,
    pub succeeded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    /// The delivery's id: the `webhook-id` header of every attempt.
    pub id: Uuid,
    pub event_id: Uuid,
    #[schema(example = "order.created")]
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    #[schema(example = "succeeded")]
    pub status: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The body every attempt sends.
    pub payload: serde_json::Value,
    /// Every attempt, first first.
    pub attempts: Vec<AttemptResponse>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub items: Vec<DeliveryResponse>,
    pub next_cursor: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------

impl WebhookResponse {
    fn from_endpoint(e: WebhookEndpoint, show_secret: bool) -> Self {
        Self {
            id: *e.id.as_uuid(),
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            previous_secret_expires_at: e.previous_secret_expires_at,
            secret: show_secret.then_some(e.secret),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

impl From<DeliveryAttempt> for AttemptResponse {
    fn from(a: DeliveryAttempt) -> Self {
        Self {
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
            succeeded: a.succeeded,
        }
    }
}

fn delivery(n: Notification, attempts: Vec<DeliveryAttempt>) -> DeliveryResponse {
    DeliveryResponse {
        id: *n.id.as_uuid(),
        event_id: *n.event_id.as_uuid(),
        event_type: n.event_type,
        status: n.status.as_str().to_owned(),
        next_attempt_at: n.next_attempt_at,
        last_error: n.last_error,
        payload: serde_json::from_str(&n.payload).unwrap_or(serde_json::Value::Null),
        attempts: attempts.into_iter().map(Into::into).collect(),
        created_at: n.created_at,
        updated_at: n.updated_at,
    }
}

fn check_url(url: &str, errors: &mut ValidationErrors) -> Option<String> {
    match webhook::check_url(url) {
        Ok(()) => Some(url.to_owned()),
        Err(e) => {
            errors.push("url", e);
            None
        }
    }
}

/// Refuses a URL whose host is a loopback, private or link-local literal (or `localhost`)
/// unless the deployment allows private addresses. Names are checked again, on every
/// address they resolve to, each time a delivery connects.
fn refuse_private_address(state: &AppState, url: &str) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if let Ok(parsed) = meridian_http::Url::parse(url)
        && let Err(why) = state.config.webhook_address_guard.check_url(&parsed)
    {
        errors.push(
            "url",
            format!("must reach a public address: {why} (MERIDIAN_WEBHOOK_ALLOW_PRIVATE)"),
        );
    }
    errors.into_result()
}

fn check_description(d: &str, errors: &mut ValidationErrors) -> Option<String> {
    if d.chars().count() > MAX_DESCRIPTION {
        errors.push(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        );
        return None;
    }
    Some(d.to_owned())
}

fn check_event_types(types: Vec<String>, errors: &mut ValidationErrors) -> Option<Vec<String>> {
    if types.is_empty() || types.len() > MAX_EVENT_TYPES {
        errors.push(
            "event_types",
            format!("must list 1 to {MAX_EVENT_TYPES} event types"),
        );
        return None;
    }
    let mut ok = true;
    for (i, t) in types.iter().enumerate() {
        if let Err(e) = events::check_filter(t) {
            errors.push(format!("event_types[{i}]"), e);
            ok = false;
        }
    }
    let mut types = types;
    types.sort();
    types.dedup();
    ok.then_some(types)
}

impl TryFrom<CreateWebhookRequest> for NewWebhookEndpoint {
    type Error = ValidationErrors;

    fn try_from(r: CreateWebhookRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let url = check_url(&r.url, &mut errors);
        let description = check_description(r.description.as_deref().unwrap_or(""), &mut errors);
        let event_types = check_event_types(
            r.event_types.unwrap_or_else(|| vec!["*".to_owned()]),
            &mut errors,
        );
        match (url, description, event_types) {
            (Some(url), Some(description), Some(event_types)) if errors.is_empty() => {
                Ok(NewWebhookEndpoint {
                    url,
                    description,
                    event_types,
                    enabled: r.enabled.unwrap_or(true),
                    secret: signing::new_secret(),
                })
            }
            _ => Err(errors),
        }
    }
}

impl TryFrom<UpdateWebhookRequest> for WebhookPatch {
    type Error = ValidationErrors;

    fn try_from(r: UpdateWebhookRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let patch = WebhookPatch {
            url: r.url.and_then(|u| check_url(&u, &mut errors)),
            description: r
                .description
                .and_then(|d| check_description(&d, &mut errors)),
            event_types: r
                .event_types
                .and_then(|t| check_event_types(t, &mut errors)),
            enabled: r.enabled,
        };
        errors.into_result().map(|()| patch)
    }
}

/// An id from the path; one that is not a UUID names nothing: 404.
fn webhook_id(s: &str) -> Result<WebhookId, Problem> {
    s.parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "webhook not found"))
}

fn delivery_id(s: &str) -> Result<NotificationId, Problem> {
    s.parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "delivery not found"))
}

// ---- handlers ---------------------------------------------------------------------------

/// Register a webhook endpoint. The answer carries its signing secret, once.
#[utoipa::path(
    post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "The new endpoint, with its secret", body = WebhookResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Needs `notifications:manage`", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateWebhookRequest>,
) -> Result<Response, Problem> {
    let mut new = NewWebhookEndpoint::try_from(body)?;
    refuse_private_address(&state, &new.url)?;
    // Stored sealed; the response carries it in the clear, this once.
    let secret = std::mem::take(&mut new.secret);
    new.secret = state.auth.webhook_secrets().seal(ctx.tenant_id, &secret);
    let mut endpoint = state.store.create_webhook(ctx.tenant_id, new).await?;
    endpoint.secret = secret;
    let location = HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)).ok();
    let body = WebhookResponse::from_endpoint(endpoint, true);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List the tenant's webhook endpoints, oldest first.
#[utoipa::path(
    get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of endpoints", body = WebhookList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<WebhookList>, Problem> {
    let page = super::paging_only(&query)?;
    let page = state.store.list_webhooks(ctx.tenant_id, page).await?;
    Ok(Json(WebhookList {
        items: page
            .items
            .into_iter()
            .map(|e| WebhookResponse::from_endpoint(e, false))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get one webhook endpoint (without its secret).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<WebhookResponse>, Problem> {
    let e = state
        .store
        .get_webhook(ctx.tenant_id, webhook_id(&id)?)
        .await?;
    Ok(Json(WebhookResponse::from_endpoint(e, false)))
}

/// Change an endpoint's URL, description, filters or whether it is enabled.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", operation_id = "update_webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = UpdateWebhookRequest,
    responses(
        (status = 200, description = "The endpoint", body = WebhookResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<UpdateWebhookRequest>,
) -> Result<Json<WebhookResponse>, Problem> {
    let id = webhook_id(&id)?;
    let patch = WebhookPatch::try_from(body)?;
    if let Some(url) = &patch.url {
        refuse_private_address(&state, url)?;
    }
    let e = state.store.update_webhook(ctx.tenant_id, id, patch).await?;
    Ok(Json(WebhookResponse::from_endpoint(e, false)))
}

/// Delete an endpoint. Its pending deliveries fail; its delivery log goes with it from
/// this API.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, Problem> {
    state
        .store
        .delete_webhook(ctx.tenant_id, webhook_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate an endpoint's signing secret. The new secret is in the answer, once; the old one
/// goes on signing (deliveries carry both signatures) for 24 hours.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", operation_id = "rotate_webhook_secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint, with its new secret", body = WebhookResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_secret(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<WebhookResponse>, Problem> {
    let secret = signing::new_secret();
    let mut e = state
        .store
        .rotate_webhook_secret(
            ctx.tenant_id,
            webhook_id(&id)?,
            state.auth.webhook_secrets().seal(ctx.tenant_id, &secret),
            meridian_core::now() + ROTATION_GRACE,
        )
        .await?;
    // Stored sealed; the response carries the new one in the clear, this once.
    e.secret = secret;
    Ok(Json(WebhookResponse::from_endpoint(e, true)))
}

/// The endpoint's delivery log, newest first, each delivery with every attempt.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    query: QueryParams,
) -> Result<Json<DeliveryList>, Problem> {
    let id = webhook_id(&id)?;
    let page = super::paging_only(&query)?;
    // Another tenant's (or no) endpoint is 404, not an empty log.
    state.store.get_webhook(ctx.tenant_id, id).await?;
    let page = state
        .store
        .list_notifications(ctx.tenant_id, Some(id), page)
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for n in page.items {
        let attempts = state.store.delivery_attempts(ctx.tenant_id, n.id).await?;
        items.push(delivery(n, attempts));
    }
    Ok(Json(DeliveryList {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// Send a delivery again, now, whatever its status. The receiver sees the same
/// `webhook-id` and body as before.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", operation_id = "redeliver_webhook_delivery", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("delivery_id" = Uuid, Path, description = "The delivery's id"),
    ),
    responses(
        (status = 202, description = "Queued; the delivery, due now", body = DeliveryResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint or delivery", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn redeliver(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams((id, delivery)): PathParams<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryResponse>), Problem> {
    let (id, delivery_id) = (webhook_id(&id)?, delivery_id(&delivery)?);
    let n = state
        .store
        .get_notification(ctx.tenant_id, delivery_id)
        .await?;
    if n.webhook_id != Some(id) {
        return Err(Problem::new(ErrorCode::NotFound, "delivery not found"));
    }
    let n = state
        .store
        .redeliver_notification(ctx.tenant_id, delivery_id)
        .await?;
    let attempts = state
        .store
        .delivery_attempts(ctx.tenant_id, delivery_id)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(self::delivery(n, attempts))))
}
