//! `/v1/orders`: placing orders against live stock, and moving them through their states.
//!
//! Idempotency: with an `Idempotency-Key`, a retry of the same body (compared by the SHA-256
//! of its canonical JSON) answers `201` with the order the first request created, as it is
//! now; the same key with a different body is `422 idempotency_key_reused`. The store
//! settles racing requests with the same key, so exactly one order is created.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, OrderId, Quantity, Sku, ValidationErrors};
use meridian_orders::{
    Address, AllocationStrategy, Customer, Order, OrderAction, OrderLineRequest, OrderRequest,
    OrderStatus, PlaceOrder,
};
use meridian_store::{API_SOURCE, HoldChange, OrderHoldState, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::MoneyDto;
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{HashedJson, JsonBody, PathParams, QueryParams, idempotency_key};
use crate::problem::{Problem, ProblemDetails};

// ---- DTOs -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// 1 to 100 lines, each SKU at most once.
    pub lines: Vec<OrderLineInput>,
    #[serde(default)]
    pub customer: Option<CustomerDto>,
    #[serde(default)]
    pub shipping_address: Option<AddressDto>,
    /// `priority` (default), `most_stock` or `split`.
    #[serde(default)]
    #[schema(example = "priority")]
    pub allocation: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineInput {
    #[schema(example = "TSHIRT-RED-M")]
    pub sku: String,
    /// 1 to 1,000,000.
    #[schema(example = 2)]
    pub quantity: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerDto {
    #[schema(example = "ana@example.com")]
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    /// E.164, for SMS notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "+493012345678")]
    pub phone: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressDto {
    #[serde(default)]
    pub name: Option<String>,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, such as `DE`.
    #[schema(example = "DE")]
    pub country: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationDto {
    /// The warehouse code.
    pub warehouse: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineResponse {
    pub sku: String,
    /// The product's name when the order was placed.
    pub name: String,
    pub quantity: i64,
    /// The product's price when the order was placed.
    pub unit_price: MoneyDto,
    /// Where the units are reserved; more than one warehouse only with `split`.
    pub allocations: Vec<AllocationDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderResponse {
    pub id: Uuid,
    /// `pending`, `confirmed`, `fulfilled` or `canceled`.
    #[schema(example = "confirmed")]
    pub status: String,
    pub allocation: String,
    pub lines: Vec<OrderLineResponse>,
    pub customer: Option<CustomerDto>,
    pub shipping_address: Option<AddressDto>,
    pub total: MoneyDto,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why an order is held, who held it and when.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldDto {
    #[schema(example = "total amount 250000 is above 100000")]
    pub reason: String,
    /// The screening plugin that held it (such as `fraud-screen`), or `api` for an
    /// operator.
    #[schema(example = "fraud-screen")]
    pub source: String,
    pub held_at: DateTime<Utc>,
}

/// The last screening result recorded for an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScreeningDto {
    /// `hold` or `approve`.
    #[schema(example = "approve")]
    pub decision: String,
    pub reason: String,
    /// The screening plugin.
    #[schema(example = "fraud-screen")]
    pub source: String,
    pub screened_at: DateTime<Utc>,
}

/// An order with its hold and screening result.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderDetailResponse {
    #[serde(flatten)]
    pub order: OrderResponse,
    /// Present while the order is held: its shipments get no label and do not ship, and
    /// it cannot be fulfilled, until the hold is released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldDto>,
    /// The last screening result, present once a screening plugin has decided on the
    /// order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screening: Option<ScreeningDto>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Why the order is held: 1 to 500 characters.
    #[schema(example = "customer asked us to wait for a new address")]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderList {
    /// Newest first, each with its hold and screening result where it has one.
    pub items: Vec<OrderDetailResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEventResponse {
    /// The event's id (CloudEvents `id`).
    pub id: Uuid,
    /// The CloudEvents type, such as `meridian.oms.order.created`.
    #[serde(rename = "type")]
    #[schema(example = "meridian.oms.order.created")]
    pub ty: String,
    /// When the event happened.
    pub time: DateTime<Utc>,
    /// The event's data, as published.
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEventList {
    /// Oldest first.
    pub items: Vec<OrderEventResponse>,
}

// ---- conversions ------------------------------------------------------------------------

impl From<Customer> for CustomerDto {
    fn from(c: Customer) -> Self {
        Self {
            email: c.email,
            name: c.name,
            phone: c.phone,
        }
    }
}

impl From<CustomerDto> for Customer {
    fn from(c: CustomerDto) -> Self {
        Self {
            email: c.email,
            name: c.name,
            phone: c.phone,
        }
    }
}

impl From<Address> for AddressDto {
    fn from(a: Address) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

impl From<AddressDto> for Address {
    fn from(a: AddressDto) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

impl From<Order> for OrderResponse {
    fn from(o: Order) -> Self {
        Self {
            id: *o.id.as_uuid(),
            status: o.status.as_str().to_owned(),
            allocation: o.allocation.as_str().to_owned(),
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLineResponse {
                    sku: l.sku.to_string(),
                    name: l.name,
                    quantity: l.quantity,
                    unit_price: l.unit_price.into(),
                    allocations: l
                        .allocations
                        .into_iter()
                        .map(|a| AllocationDto {
                            warehouse: a.warehouse_code.to_string(),
                            quantity: a.quantity,
                        })
                        .collect(),
                })
                .collect(),
            customer: o.customer.map(Into::into),
            shipping_address: o.shipping_address.map(Into::into),
            total: o.total.into(),
            idempotency_key: o.idempotency_key,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

impl OrderDetailResponse {
    fn new(order: Order, state: OrderHoldState) -> Self {
        Self {
            order: order.into(),
            hold: state.hold.map(|h| HoldDto {
                reason: h.reason,
                source: h.source,
                held_at: h.held_at,
            }),
            screening: state.screening.map(|s| ScreeningDto {
                decision: s.decision.as_str().to_owned(),
                reason: s.reason,
                source: s.source,
                screened_at: s.screened_at,
            }),
        }
    }
}

impl TryFrom<CreateOrderRequest> for OrderRequest {
    type Error = ValidationErrors;

    /// Collects every problem: each line's SKU and quantity, the allocation strategy, and
    /// the rules of [`OrderRequest::new`] (empty, too many or duplicate lines, customer,
    /// address).
    fn try_from(r: CreateOrderRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let allocation = match r.allocation.as_deref() {
            None => Some(AllocationStrategy::default()),
            Some(s) => {
                let parsed = AllocationStrategy::parse(s);
                if parsed.is_none() {
                    errors.push("allocation", "must be one of priority, most_stock, split");
                }
                parsed
            }
        };
        let mut lines = Vec::with_capacity(r.lines.len());
        for (i, line) in r.lines.iter().enumerate() {
            let sku = errors.check(&format!("lines[{i}].sku"), line.sku.parse::<Sku>());
            let quantity = errors.check(
                &format!("lines[{i}].quantity"),
                Quantity::new(line.quantity),
            );
            if let (Some(sku), Some(quantity)) = (sku, quantity) {
                lines.push(OrderLineRequest { sku, quantity });
            }
        }
        let customer = r.customer.map(Customer::from);
        let address = r.shipping_address.map(Address::from);

        if lines.len() == r.lines.len() {
            // Every line parsed: the domain checks the whole request (with the default
            // strategy standing in for a bad one, which is already reported).
            let strategy = allocation.unwrap_or_default();
            match OrderRequest::new(lines, customer, address, strategy) {
                Ok(request) if errors.is_empty() => return Ok(request),
                Ok(_) => {}
                Err(domain) => errors.0.extend(domain.0),
            }
            return Err(errors);
        }
        // Some line is invalid, so `OrderRequest::new` cannot run; check the rest here so
        // that the client still hears about every problem at once.
        for (i, line) in r.lines.iter().enumerate() {
            if r.lines[..i].iter().any(|l| l.sku == line.sku) {
                errors.push(
                    format!("lines[{i}].sku"),
                    format!(
                        "sku {} appears more than once; put the whole quantity on one line",
                        line.sku
                    ),
                );
            }
        }
        if let Some(c) = &customer {
            c.check(&mut errors);
        }
        if let Some(a) = &address {
            a.check(&mut errors);
        }
        Err(errors)
    }
}

/// An order id from the path; one that is not a UUID names no order: 404.
fn order_id_from_path(s: &str) -> Result<OrderId, Problem> {
    s.parse::<OrderId>()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "order not found"))
}

/// The problem for a refused placement, with per-line field errors for unknown SKUs.
fn place_problem(err: StoreError, request: &OrderRequest) -> Problem {
    match &err {
        StoreError::UnknownSkus(skus) => {
            let lines = request.lines().iter().enumerate();
            let errors = lines
                .filter(|(_, l)| skus.contains(&l.sku))
                .map(|(i, l)| meridian_core::FieldError {
                    field: format!("lines[{i}].sku"),
                    message: format!("sku {} is not in the catalog", l.sku),
                })
                .collect::<Vec<_>>();
            Problem::from(err).with_errors(errors)
        }
        StoreError::InsufficientStock(_) => {
            crate::metrics::reservation_refused();
            Problem::from(err)
        }
        _ => Problem::from(err),
    }
}

// ---- handlers ---------------------------------------------------------------------------

/// Place an order: allocate and reserve stock, all lines or none.
#[utoipa::path(
    post, path = "/v1/orders", operation_id = "create_order", tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a retry with the same key and body returns the same order")),
    request_body = CreateOrderRequest,
    responses(
        (status = 201, description = "The confirmed order with its allocations (also the answer to a retry with the same Idempotency-Key and body)", body = OrderResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_sku`: a line names a SKU not in the catalog", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient_stock`, with `shortages`", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or `idempotency_key_reused`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: HashedJson<CreateOrderRequest>,
) -> Result<Response, Problem> {
    let mut errors = ValidationErrors::new();
    let key = idempotency_key(&headers, &mut errors);
    let request = match OrderRequest::try_from(body.value) {
        Ok(r) if errors.is_empty() => r,
        Ok(_) => return Err(errors.into()),
        Err(e) => {
            errors.0.extend(e.0);
            return Err(errors.into());
        }
    };
    let started = meridian_core::now();
    let cmd = PlaceOrder {
        tenant_id: ctx.tenant_id,
        request: request.clone(),
        idempotency_key: key,
        request_hash: body.hash,
    };
    let order = state
        .store
        .place_order(cmd)
        .await
        .map_err(|e| place_problem(e, &request))?;
    // A replay returns an order created before this request began; count only new ones.
    if order.created_at >= started {
        crate::metrics::order_created();
    }
    tracing::debug!(order.id = %order.id, "order placed");
    let location = HeaderValue::from_str(&format!("/v1/orders/{}", order.id)).ok();
    let mut response = (StatusCode::CREATED, Json(OrderResponse::from(order))).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Get an order, with its hold and screening result.
#[utoipa::path(
    get, path = "/v1/orders/{id}", operation_id = "get_order", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order, with `hold` (while it is held) and `screening` (the last screening result)", body = OrderDetailResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<OrderDetailResponse>, Problem> {
    let id = order_id_from_path(&id)?;
    let order = state.store.get_order(ctx.tenant_id, id).await?;
    let hold = state.store.holds().order_hold(ctx.tenant_id, id).await?;
    Ok(Json(OrderDetailResponse::new(order, hold)))
}

/// An order's timeline: the events the `order-events` projection has recorded for it,
/// oldest first. Events reach it through the outbox relay and the bus, so a just-placed
/// order's `created` event may take a moment to appear.
#[utoipa::path(
    get, path = "/v1/orders/{id}/events", operation_id = "list_order_events", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order's events, oldest first", body = OrderEventList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<OrderEventList>, Problem> {
    let id = order_id_from_path(&id)?;
    let events = state.store.order_events(ctx.tenant_id, id).await?;
    Ok(Json(OrderEventList {
        items: events
            .into_iter()
            .map(|e| OrderEventResponse {
                id: *e.event_id.as_uuid(),
                ty: e.ty,
                time: e.time,
                data: e.data,
            })
            .collect(),
    }))
}

/// List orders, newest first.
#[utoipa::path(
    get, path = "/v1/orders", operation_id = "list_orders", tag = "orders",
    params(
        ("status" = Option<String>, Query, description = "Only orders in this status: pending, confirmed, fulfilled or canceled"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of orders, each with `hold` while it is held and `screening` once screened", body = OrderList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `status`, `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<OrderList>, Problem> {
    let mut errors = ValidationErrors::new();
    query.check_names(&["status", "limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    let status = match query.get("status") {
        None => None,
        Some(s) => {
            let parsed = OrderStatus::parse(s);
            if parsed.is_none() {
                errors.push(
                    "status",
                    "must be one of pending, confirmed, fulfilled, canceled",
                );
            }
            parsed
        }
    };
    errors.into_result()?;
    let page = state.store.list_orders(ctx.tenant_id, status, page).await?;
    let ids = page.items.iter().map(|o| o.id).collect();
    let mut holds = state
        .store
        .holds()
        .order_hold_states(ctx.tenant_id, ids)
        .await?;
    Ok(Json(OrderList {
        items: page
            .items
            .into_iter()
            .map(|o| {
                let hold = holds.remove(&o.id).unwrap_or_default();
                OrderDetailResponse::new(o, hold)
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn transition(
    ctx: TenantContext,
    state: &AppState,
    id: &str,
    action: OrderAction,
) -> Result<Json<OrderResponse>, Problem> {
    let id = order_id_from_path(id)?;
    let order = state
        .store
        .transition_order(ctx.tenant_id, id, action)
        .await?;
    tracing::debug!(order.id = %order.id, action = action.as_str(), "order transitioned");
    Ok(Json(order.into()))
}

/// Cancel a confirmed order, releasing its reservations.
#[utoipa::path(
    post, path = "/v1/orders/{id}/cancel", operation_id = "cancel_order", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The canceled order", body = OrderResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the order is already fulfilled or canceled", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<OrderResponse>, Problem> {
    transition(ctx, &state, &id, OrderAction::Cancel).await
}

/// Fulfil a confirmed order: its reserved units leave stock (on-hand and reserved both drop).
#[utoipa::path(
    post, path = "/v1/orders/{id}/fulfill", operation_id = "fulfill_order", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The fulfilled order", body = OrderResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the order is not confirmed; `order_on_hold`: the order is held", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn fulfill(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<OrderResponse>, Problem> {
    transition(ctx, &state, &id, OrderAction::Fulfill).await
}

/// Hold an order by hand. A held order keeps its status and reserved stock, but its
/// shipments get no label and do not ship, and it cannot be fulfilled, until the hold is
/// released. Holding a held order keeps the first hold.
#[utoipa::path(
    post, path = "/v1/orders/{id}/hold", operation_id = "hold_order", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    request_body = HoldRequest,
    responses(
        (status = 200, description = "The order with its hold (`order.held` is published when it was not held before)", body = OrderDetailResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the order is canceled or fulfilled", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "`reason` is empty or longer than 500 characters", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn hold(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<HoldRequest>,
) -> Result<Json<OrderDetailResponse>, Problem> {
    let id = order_id_from_path(&id)?;
    let (change, hold) = state
        .store
        .holds()
        .hold_order(ctx.tenant_id, id, &body.reason, API_SOURCE)
        .await?;
    if change == HoldChange::Held {
        tracing::info!(order.id = %id, "order held by an operator");
    }
    let order = state.store.get_order(ctx.tenant_id, id).await?;
    Ok(Json(OrderDetailResponse::new(order, hold)))
}

/// Release an order's hold, whoever placed it (a screening plugin or an operator): its
/// shipments get their labels and may ship. Releasing an order that is not held changes
/// nothing.
#[utoipa::path(
    post, path = "/v1/orders/{id}/release", operation_id = "release_order", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order without a hold (`order.released` is published when it was held)", body = OrderDetailResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the order is canceled or fulfilled", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn release(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<OrderDetailResponse>, Problem> {
    let id = order_id_from_path(&id)?;
    let (change, hold) = state
        .store
        .holds()
        .release_order(ctx.tenant_id, id, API_SOURCE)
        .await?;
    if change == HoldChange::Released {
        tracing::info!(order.id = %id, "order hold released by an operator");
    }
    let order = state.store.get_order(ctx.tenant_id, id).await?;
    Ok(Json(OrderDetailResponse::new(order, hold)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(v: serde_json::Value) -> Result<OrderRequest, ValidationErrors> {
        OrderRequest::try_from(serde_json::from_value::<CreateOrderRequest>(v).unwrap())
    }

    fn fields(e: &ValidationErrors) -> Vec<&str> {
        e.0.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn valid_requests_convert() {
        let r = convert(serde_json::json!({
            "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
            "allocation": "split",
        }))
        .unwrap();
        assert_eq!(r.lines().len(), 2);
        assert_eq!(r.allocation, AllocationStrategy::Split);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = convert(serde_json::json!({
            "lines": [
                {"sku": "A", "quantity": 0},
                {"sku": "B", "quantity": -1},
                {"sku": "C", "quantity": 1_000_001},
                {"sku": "A", "quantity": 1},
                {"sku": "bad sku", "quantity": 1},
            ],
            "customer": {"email": "nope"},
            "allocation": "cheapest",
        }))
        .unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "allocation",
                "lines[0].quantity",
                "lines[1].quantity",
                "lines[2].quantity",
                "lines[4].sku",
                "lines[3].sku",
                "customer.email"
            ]
        );
    }

    #[test]
    fn domain_rules_apply_when_lines_parse() {
        let e = convert(serde_json::json!({"lines": []})).unwrap_err();
        assert_eq!(fields(&e), ["lines"]);
        let e = convert(serde_json::json!({
            "lines": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}],
            "allocation": "nope",
        }))
        .unwrap_err();
        assert_eq!(fields(&e), ["allocation", "lines[1].sku"]);
    }
}
