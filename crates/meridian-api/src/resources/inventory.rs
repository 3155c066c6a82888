//! `/v1/inventory`: stock levels per warehouse and SKU, and their ledger.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, ValidationErrors, WarehouseCode};
use meridian_inventory::{LedgerEntry, MAX_ON_HAND, StockLevel, check_reason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::products::sku_from_path;
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::{Problem, ProblemDetails};

const DEFAULT_SET_REASON: &str = "set via API";

// ---- DTOs -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStockRequest {
    /// The counted units, 0 to 1,000,000,000; not below what is reserved.
    #[schema(example = 120)]
    pub on_hand: i64,
    /// Why, for the ledger; default "set via API". At most 500 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStockRequest {
    /// Units to add (negative to remove); not zero.
    #[schema(example = -3)]
    pub delta: i64,
    /// Why, for the ledger: 1 to 500 characters.
    #[schema(example = "damaged in transit")]
    pub reason: String,
}

/// One warehouse's stock of one SKU.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockLevelResponse {
    /// The warehouse code.
    pub warehouse: String,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// `on_hand - reserved`: what new orders can take.
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LevelRow {
    /// The warehouse code.
    pub warehouse: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StockTotals {
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// A SKU's stock in every warehouse, and the sum.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockSummary {
    pub sku: String,
    /// By warehouse priority, then code.
    pub levels: Vec<LevelRow>,
    pub total: StockTotals,
}

/// One stock movement.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntryResponse {
    pub id: Uuid,
    pub warehouse_id: Uuid,
    /// The warehouse code.
    pub warehouse: Option<String>,
    pub sku: String,
    /// `set`, `adjust`, `reserve`, `release` or `commit`.
    pub kind: String,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub reason: String,
    pub order_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    /// Oldest first.
    pub items: Vec<LedgerEntryResponse>,
    pub next_cursor: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------

impl From<StockLevel> for StockLevelResponse {
    fn from(l: StockLevel) -> Self {
        Self {
            available: l.available(),
            warehouse: l.warehouse_code.to_string(),
            sku: l.sku.to_string(),
            on_hand: l.on_hand,
            reserved: l.reserved,
        }
    }
}

impl StockSummary {
    fn new(sku: String, levels: Vec<StockLevel>) -> Self {
        let mut total = StockTotals::default();
        let levels = levels
            .into_iter()
            .map(|l| {
                total.on_hand += l.on_hand;
                total.reserved += l.reserved;
                total.available += l.available();
                LevelRow {
                    available: l.available(),
                    warehouse: l.warehouse_code.to_string(),
                    on_hand: l.on_hand,
                    reserved: l.reserved,
                }
            })
            .collect();
        Self { sku, levels, total }
    }
}

impl LedgerEntryResponse {
    fn new(e: LedgerEntry, codes: &HashMap<Uuid, String>) -> Self {
        let warehouse_id = *e.warehouse_id.as_uuid();
        Self {
            id: *e.id.as_uuid(),
            warehouse: codes.get(&warehouse_id).cloned(),
            warehouse_id,
            sku: e.sku.to_string(),
            kind: e.kind.as_str().to_owned(),
            on_hand_delta: e.on_hand_delta,
            reserved_delta: e.reserved_delta,
            on_hand_after: e.on_hand_after,
            reserved_after: e.reserved_after,
            reason: e.reason,
            order_id: e.order_id.map(|id| *id.as_uuid()),
            created_at: e.created_at,
        }
    }
}

/// A validated `PUT` body: `(on_hand, reason)`.
fn set_request(r: SetStockRequest) -> Result<(i64, String), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if !(0..=MAX_ON_HAND).contains(&r.on_hand) {
        errors.push(
            "on_hand",
            format!("must be between 0 and {MAX_ON_HAND}, got {}", r.on_hand),
        );
    }
    let reason = match r.reason {
        Some(reason) => errors.check("reason", check_reason(&reason)),
        None => Some(DEFAULT_SET_REASON.to_owned()),
    };
    errors.into_result()?;
    Ok((r.on_hand, reason.unwrap_or_default()))
}

/// A validated adjustment: `(delta, reason)`.
fn adjust_request(r: AdjustStockRequest) -> Result<(i64, String), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if r.delta == 0 {
        errors.push("delta", "must not be zero");
    } else if r.delta.unsigned_abs() > MAX_ON_HAND.unsigned_abs() {
        errors.push(
            "delta",
            format!(
                "must be between -{MAX_ON_HAND} and {MAX_ON_HAND}, got {}",
                r.delta
            ),
        );
    }
    let reason = errors.check("reason", check_reason(&r.reason));
    errors.into_result()?;
    Ok((r.delta, reason.unwrap_or_default()))
}

fn warehouse_from_path(s: &str) -> Result<WarehouseCode, Problem> {
    s.parse::<WarehouseCode>()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "warehouse not found"))
}

// ---- handlers ---------------------------------------------------------------------------

/// Set a SKU's on-hand count in one warehouse (a stock take).
#[utoipa::path(
    put, path = "/v1/inventory/{warehouse_code}/{sku}", operation_id = "set_stock", tag = "inventory",
    params(
        ("warehouse_code" = String, Path, description = "The warehouse's code"),
        ("sku" = String, Path, description = "The product's SKU"),
    ),
    request_body = SetStockRequest,
    responses(
        (status = 200, description = "The level after the change", body = StockLevelResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such warehouse or product", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`stock_conflict`: below what is reserved", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn set(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams((warehouse, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SetStockRequest>,
) -> Result<Json<StockLevelResponse>, Problem> {
    set_level(ctx, &state, &warehouse, &sku, body).await
}

/// `PUT /v1/inventory/{warehouse_code}/ledger` is routed to the ledger path, whose template
/// is more specific; this serves it, so that a SKU named `ledger` can still be counted.
pub async fn set_sku_named_ledger(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(warehouse): PathParams<String>,
    JsonBody(body): JsonBody<SetStockRequest>,
) -> Result<Json<StockLevelResponse>, Problem> {
    set_level(ctx, &state, &warehouse, "ledger", body).await
}

async fn set_level(
    ctx: TenantContext,
    state: &AppState,
    warehouse: &str,
    sku: &str,
    body: SetStockRequest,
) -> Result<Json<StockLevelResponse>, Problem> {
    let warehouse = warehouse_from_path(warehouse)?;
    let sku = sku_from_path(sku)?;
    let (on_hand, reason) = set_request(body)?;
    let level = state
        .store
        .set_stock(ctx.tenant_id, &warehouse, &sku, on_hand, &reason)
        .await?;
    Ok(Json(level.into()))
}

/// Add to or remove from a SKU's on-hand count in one warehouse.
#[utoipa::path(
    post, path = "/v1/inventory/{warehouse_code}/{sku}/adjustments", operation_id = "adjust_stock", tag = "inventory",
    params(
        ("warehouse_code" = String, Path, description = "The warehouse's code"),
        ("sku" = String, Path, description = "The product's SKU"),
    ),
    request_body = AdjustStockRequest,
    responses(
        (status = 200, description = "The level after the change", body = StockLevelResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such warehouse or product", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`stock_conflict`: on-hand would go below zero or below what is reserved", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn adjust(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams((warehouse, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<AdjustStockRequest>,
) -> Result<Json<StockLevelResponse>, Problem> {
    let warehouse = warehouse_from_path(&warehouse)?;
    let sku = sku_from_path(&sku)?;
    let (delta, reason) = adjust_request(body)?;
    let level = state
        .store
        .adjust_stock(ctx.tenant_id, &warehouse, &sku, delta, &reason)
        .await?;
    Ok(Json(level.into()))
}

/// A SKU's stock in every warehouse.
#[utoipa::path(
    get, path = "/v1/inventory/{sku}", operation_id = "get_stock", tag = "inventory",
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "Levels and totals", body = StockSummary),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(sku): PathParams<String>,
) -> Result<Json<StockSummary>, Problem> {
    let sku = sku_from_path(&sku)?;
    let levels = state.store.get_stock(ctx.tenant_id, &sku).await?;
    Ok(Json(StockSummary::new(sku.to_string(), levels)))
}

/// A SKU's stock movements, oldest first.
#[utoipa::path(
    get, path = "/v1/inventory/{sku}/ledger", operation_id = "list_ledger", tag = "inventory",
    params(
        ("sku" = String, Path, description = "The product's SKU"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of ledger entries", body = LedgerPage),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn ledger(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(sku): PathParams<String>,
    query: QueryParams,
) -> Result<Json<LedgerPage>, Problem> {
    let sku = sku_from_path(&sku)?;
    let mut errors = ValidationErrors::new();
    query.check_names(&["limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    errors.into_result()?;
    let page = state.store.ledger(ctx.tenant_id, &sku, page).await?;
    // Ledger rows name warehouses by id; clients know them by code.
    let codes: HashMap<Uuid, String> = if page.items.is_empty() {
        HashMap::new()
    } else {
        state
            .store
            .list_warehouses(ctx.tenant_id)
            .await?
            .into_iter()
            .map(|w| (*w.id.as_uuid(), w.code.to_string()))
            .collect()
    };
    Ok(Json(LedgerPage {
        items: page
            .items
            .into_iter()
            .map(|e| LedgerEntryResponse::new(e, &codes))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bounds_and_default_reason() {
        let ok = set_request(SetStockRequest {
            on_hand: 0,
            reason: None,
        })
        .unwrap();
        assert_eq!(ok, (0, DEFAULT_SET_REASON.to_owned()));
        let e = set_request(SetStockRequest {
            on_hand: -1,
            reason: Some(" ".into()),
        })
        .unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(
            set_request(SetStockRequest {
                on_hand: MAX_ON_HAND + 1,
                reason: None
            })
            .is_err()
        );
    }

    #[test]
    fn adjustments_are_non_zero_and_bounded() {
        let adj = |delta| {
            adjust_request(AdjustStockRequest {
                delta,
                reason: "r".into(),
            })
        };
        assert!(adj(0).is_err());
        assert!(adj(i64::MIN).is_err());
        assert!(adj(MAX_ON_HAND + 1).is_err());
        assert_eq!(adj(-5).unwrap().0, -5);
    }
}
