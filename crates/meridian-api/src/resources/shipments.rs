//! `/v1/shipments`: the parcels of confirmed orders (the fulfillment service), their labels,
//! and the tracking updates that move them along.
//!
//! Shipments are created by the fulfillment service from order events, one per warehouse
//! allocation; this resource reads them and takes tracking updates. The label is served
//! from the label store, which the binary puts in the request extensions
//! (`Extension<Arc<dyn LabelStore>>`); a process without one answers `503`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, OrderId, ShipmentId, ValidationErrors};
use meridian_fulfillment::{Shipment, ShipmentStatus};
use meridian_fulfillment_service::LabelStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::orders::AddressDto;
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::{Problem, ProblemDetails};

// ---- DTOs -------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct ShipmentItemDto {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShipmentResponse {
    pub id: Uuid,
    pub order_id: Uuid,
    /// The warehouse code it ships from.
    #[schema(example = "BER-1")]
    pub warehouse: String,
    /// `pending`, `label_created`, `shipped`, `delivered`, `exception` or `canceled`.
    #[schema(example = "label_created")]
    pub status: String,
    #[schema(example = "manual")]
    pub carrier: String,
    pub tracking_number: Option<String>,
    /// Where the label can be downloaded, once it exists.
    #[schema(example = "/v1/shipments/0190f1d2-7c3a-7b7e-9f00-000000000000/label")]
    pub label_url: Option<String>,
    pub items: Vec<ShipmentItemDto>,
    pub ship_to: Option<AddressDto>,
    /// The carrier's last remark, such as an exception's reason.
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShipmentList {
    /// Newest first.
    pub items: Vec<ShipmentResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackingUpdate {
    /// `shipped`, `delivered` or `exception`.
    #[schema(example = "shipped")]
    pub status: String,
    /// The carrier's remark, up to 500 characters.
    #[serde(default)]
    pub detail: Option<String>,
}

impl From<Shipment> for ShipmentResponse {
    fn from(s: Shipment) -> Self {
        Self {
            id: *s.id.as_uuid(),
            order_id: *s.order_id.as_uuid(),
            warehouse: s.warehouse_code.to_string(),
            status: s.status.as_str().to_owned(),
            carrier: s.carrier,
            tracking_number: s.tracking_number,
            label_url: s
                .label_key
                .is_some()
                .then(|| format!("/v1/shipments/{}/label", s.id)),
            items: s
                .items
                .into_iter()
                .map(|i| ShipmentItemDto {
                    sku: i.sku.to_string(),
                    name: i.name,
                    quantity: i.quantity,
                })
                .collect(),
            ship_to: s.ship_to.map(Into::into),
            detail: s.detail,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A shipment id from the path; one that is not a UUID names no shipment: 404.
fn shipment_id(s: &str) -> Result<ShipmentId, Problem> {
    s.parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "shipment not found"))
}

const MAX_DETAIL: usize = 500;

// ---- handlers ---------------------------------------------------------------------------

/// List shipments, newest first; with `order_id`, one order's.
#[utoipa::path(
    get, path = "/v1/shipments", operation_id = "list_shipments", tag = "shipments",
    params(
        ("order_id" = Option<Uuid>, Query, description = "Only this order's shipments"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of shipments", body = ShipmentList),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `order_id`, `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<ShipmentList>, Problem> {
    let mut errors = ValidationErrors::new();
    query.check_names(&["order_id", "limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    let order = query.get("order_id").and_then(|s| {
        let parsed = s.parse::<OrderId>();
        errors.check(
            "order_id",
            parsed.map_err(|_| "must be an order id (a UUID)"),
        )
    });
    errors.into_result()?;
    let page = state
        .store
        .fulfillment()
        .list_shipments(ctx.tenant_id, order, page)
        .await?;
    Ok(Json(ShipmentList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a shipment.
#[utoipa::path(
    get, path = "/v1/shipments/{id}", operation_id = "get_shipment", tag = "shipments",
    params(("id" = Uuid, Path, description = "The shipment id")),
    responses(
        (status = 200, description = "The shipment", body = ShipmentResponse),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such shipment", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<ShipmentResponse>, Problem> {
    let id = shipment_id(&id)?;
    let s = state
        .store
        .fulfillment()
        .get_shipment(ctx.tenant_id, id)
        .await?;
    Ok(Json(s.into()))
}

/// Download a shipment's label (a PDF).
#[utoipa::path(
    get, path = "/v1/shipments/{id}/label", operation_id = "get_shipment_label", tag = "shipments",
    params(("id" = Uuid, Path, description = "The shipment id")),
    responses(
        (status = 200, description = "The label", content_type = "application/pdf", body = Vec<u8>),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such shipment, or its label is not made yet", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The label store cannot be reached", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn label(
    ctx: TenantContext,
    State(state): State<AppState>,
    labels: Option<Extension<Arc<dyn LabelStore>>>,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let id = shipment_id(&id)?;
    let s = state
        .store
        .fulfillment()
        .get_shipment(ctx.tenant_id, id)
        .await?;
    serve_label(s, labels).await
}

/// The label of `s` as a PDF response.
async fn serve_label(
    s: Shipment,
    labels: Option<Extension<Arc<dyn LabelStore>>>,
) -> Result<Response, Problem> {
    let id = s.id;
    let not_yet = || Problem::new(ErrorCode::NotFound, "the shipment has no label yet");
    let key = s.label_key.ok_or_else(not_yet)?;
    let Some(Extension(labels)) = labels else {
        return Err(Problem::new(
            ErrorCode::Unavailable,
            "labels are not served by this process",
        ));
    };
    let pdf = labels.get(&key).await.map_err(|e| {
        tracing::error!(shipment.id = %id, error = %e, "cannot read a label");
        Problem::new(
            ErrorCode::Unavailable,
            "the label store cannot be reached right now; retry later",
        )
    })?;
    let pdf = pdf.ok_or_else(|| {
        tracing::error!(shipment.id = %id, key, "a recorded label is missing from the label store");
        Problem::internal("a recorded label is missing")
    })?;
    let disposition = HeaderValue::from_str(&format!("inline; filename=\"label-{id}.pdf\""))
        .map_err(Problem::internal)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pdf"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        pdf,
    )
        .into_response())
}

/// Record a carrier's tracking update: `shipped`, `delivered` or `exception`. Repeating the
/// current status changes nothing. When every shipment of the order has shipped, the order
/// becomes fulfilled (shortly after, through the bus).
#[utoipa::path(
    post, path = "/v1/shipments/{id}/tracking", operation_id = "track_shipment", tag = "shipments",
    params(("id" = Uuid, Path, description = "The shipment id")),
    request_body = TrackingUpdate,
    responses(
        (status = 200, description = "The shipment after the update", body = ShipmentResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such shipment", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the shipment cannot move to that status; `order_on_hold`: its order is held, so it cannot ship", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `status` or `detail`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn tracking(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(update): JsonBody<TrackingUpdate>,
) -> Result<Json<ShipmentResponse>, Problem> {
    let id = shipment_id(&id)?;
    let mut errors = ValidationErrors::new();
    let status = tracking_status(&update.status, &mut errors);
    if let Some(d) = &update.detail {
        super::check_label("detail", d, MAX_DETAIL, &mut errors);
    }
    errors.into_result()?;
    let Some(status) = status else {
        return Err(Problem::internal("a checked status is missing"));
    };
    let s = state
        .store
        .fulfillment()
        .update_shipment_status(ctx.tenant_id, id, status, update.detail)
        .await?;
    tracing::debug!(shipment.id = %id, status = status.as_str(), "tracking update recorded");
    Ok(Json(s.into()))
}

/// A carrier's tracking update, as its signed webhook sends it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CarrierTrackingEvent {
    /// The tracking number the carrier gave the shipment.
    #[schema(example = "1Z999AA10123456784")]
    pub tracking_number: String,
    /// `shipped`, `delivered` or `exception`.
    #[schema(example = "delivered")]
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Receive a carrier's signed tracking webhook. No bearer credential: the request is
/// authenticated by its Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`, HMAC-SHA256 with the carrier's configured secret), and a timestamp
/// more than five minutes off is refused. The shipment is found by its carrier and tracking
/// number, in whichever tenant it is.
#[utoipa::path(
    post, path = "/v1/carrier-webhooks/tracking", operation_id = "carrier_tracking_webhook",
    tag = "shipments", security(()),
    params(
        ("webhook-id" = String, Header, description = "The message id"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of {id}.{timestamp}.{body}>`, several separated by spaces"),
    ),
    request_body = CarrierTrackingEvent,
    responses(
        (status = 200, description = "The shipment after the update", body = ShipmentResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing, stale or wrong signature", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No shipment has this tracking number", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Carrier webhooks are not configured", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn carrier_webhook(
    State(state): State<AppState>,
    webhook: Option<Extension<CarrierWebhook>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ShipmentResponse>, Problem> {
    let Some(Extension(webhook)) = webhook else {
        return Err(Problem::new(
            ErrorCode::Unavailable,
            "carrier webhooks are not configured (MERIDIAN_CARRIER_WEBHOOK_SECRET)",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    webhook
        .secret
        .verify(
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            Utc::now().timestamp(),
        )
        .map_err(|e| Problem::new(ErrorCode::Unauthorized, e.to_string()))?;
    let event: CarrierTrackingEvent = serde_json::from_slice(&body)
        .map_err(|e| Problem::new(ErrorCode::MalformedRequest, format!("invalid JSON: {e}")))?;
    let mut errors = ValidationErrors::new();
    let status = tracking_status(&event.status, &mut errors);
    if let Some(d) = &event.detail {
        super::check_label("detail", d, MAX_DETAIL, &mut errors);
    }
    errors.into_result()?;
    let status = status.ok_or_else(|| Problem::internal("a checked status is missing"))?;
    let fulfillment = state.store.fulfillment();
    let s = fulfillment
        .shipment_by_tracking(&webhook.carrier, &event.tracking_number)
        .await
        .map_err(|_| Problem::new(ErrorCode::NotFound, "no shipment has this tracking number"))?;
    let s = fulfillment
        .update_shipment_status(s.tenant_id, s.id, status, event.detail)
        .await?;
    tracing::debug!(shipment.id = %s.id, status = status.as_str(), "carrier webhook recorded");
    Ok(Json(s.into()))
}

/// The carrier whose signed webhooks are accepted, and its secret. The binary puts it in
/// the request extensions when `MERIDIAN_CARRIER_WEBHOOK_SECRET` is set.
#[derive(Clone, Debug)]
pub struct CarrierWebhook {
    pub carrier: String,
    pub secret: meridian_fulfillment_service::WebhookSecret,
}

/// A tracking update's status: shipped, delivered or exception.
fn tracking_status(s: &str, errors: &mut ValidationErrors) -> Option<ShipmentStatus> {
    match ShipmentStatus::parse(s) {
        Some(
            s @ (ShipmentStatus::Shipped | ShipmentStatus::Delivered | ShipmentStatus::Exception),
        ) => Some(s),
        _ => {
            errors.push("status", "must be one of shipped, delivered, exception");
            None
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelUrlResponse {
    /// Path and query of the link, relative to the API's base URL; it needs no credential.
    #[schema(example = "/v1/labels/0190…?tenant=0190…&expires=1700000900&signature=…")]
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// The default life of a pre-signed label URL.
const DEFAULT_LABEL_URL_SECONDS: i64 = 900;

/// Make a pre-signed URL for a shipment's label: anyone holding it can download the label,
/// without a credential, until it expires (`expires_in` seconds, 1 to 604800, default 900).
#[utoipa::path(
    get, path = "/v1/shipments/{id}/label-url", operation_id = "presign_shipment_label", tag = "shipments",
    params(
        ("id" = Uuid, Path, description = "The shipment id"),
        ("expires_in" = Option<i64>, Query, description = "Seconds the link lives: 1 to 604800, default 900"),
    ),
    responses(
        (status = 200, description = "The link and when it expires", body = LabelUrlResponse),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such shipment, or its label is not made yet", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `expires_in`", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Pre-signed links are not configured", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn label_url(
    ctx: TenantContext,
    State(state): State<AppState>,
    signer: Option<Extension<meridian_fulfillment_service::LabelUrlSigner>>,
    PathParams(id): PathParams<String>,
    query: QueryParams,
) -> Result<Json<LabelUrlResponse>, Problem> {
    let id = shipment_id(&id)?;
    let mut errors = ValidationErrors::new();
    query.check_names(&["expires_in"], &mut errors);
    let max = meridian_fulfillment_service::MAX_EXPIRY_SECONDS;
    let expires_in = match query.get("expires_in") {
        None => DEFAULT_LABEL_URL_SECONDS,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                errors.push("expires_in", format!("must be 1 to {max} seconds"));
                0
            }
        },
    };
    errors.into_result()?;
    let s = state
        .store
        .fulfillment()
        .get_shipment(ctx.tenant_id, id)
        .await?;
    if s.label_key.is_none() {
        return Err(Problem::new(
            ErrorCode::NotFound,
            "the shipment has no label yet",
        ));
    }
    let Some(Extension(signer)) = signer else {
        return Err(Problem::new(
            ErrorCode::Unavailable,
            "pre-signed label links are not available on this process",
        ));
    };
    let expires = Utc::now().timestamp() + expires_in;
    Ok(Json(LabelUrlResponse {
        url: signer.url(ctx.tenant_id, id, expires),
        expires_at: DateTime::from_timestamp(expires, 0).unwrap_or_else(Utc::now),
    }))
}

/// Download a label through a pre-signed URL (from `GET /v1/shipments/{id}/label-url`). No
/// credential: the signature is the authorization. An altered or expired link is `403`.
#[utoipa::path(
    get, path = "/v1/labels/{id}", operation_id = "get_presigned_label", tag = "shipments",
    security(()),
    params(
        ("id" = Uuid, Path, description = "The shipment id"),
        ("tenant" = Uuid, Query, description = "As in the link"),
        ("expires" = i64, Query, description = "As in the link"),
        ("signature" = String, Query, description = "As in the link"),
    ),
    responses(
        (status = 200, description = "The label", content_type = "application/pdf", body = Vec<u8>),
        (status = 403, description = "The link is altered or expired", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Labels are not served by this process", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn presigned_label(
    State(state): State<AppState>,
    signer: Option<Extension<meridian_fulfillment_service::LabelUrlSigner>>,
    labels: Option<Extension<Arc<dyn LabelStore>>>,
    PathParams(id): PathParams<String>,
    query: QueryParams,
) -> Result<Response, Problem> {
    let refused = || Problem::new(ErrorCode::Forbidden, "the link is invalid or has expired");
    let Some(Extension(signer)) = signer else {
        return Err(Problem::new(
            ErrorCode::Unavailable,
            "pre-signed label links are not available on this process",
        ));
    };
    let id: ShipmentId = id.parse().map_err(|_| refused())?;
    let tenant: meridian_core::TenantId = query
        .get("tenant")
        .and_then(|t| t.parse().ok())
        .ok_or_else(refused)?;
    let expires: i64 = query
        .get("expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(refused)?;
    let signature = query.get("signature").ok_or_else(refused)?;
    if !signer.verify(tenant, id, expires, signature, Utc::now().timestamp()) {
        return Err(refused());
    }
    let s = state
        .store
        .fulfillment()
        .get_shipment(tenant, id)
        .await
        .map_err(|_| refused())?;
    serve_label(s, labels).await
}
