//! `/v1/warehouses`: where the tenant keeps stock.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use meridian_core::{ValidationErrors, WarehouseCode};
use meridian_inventory::{NewWarehouse, Warehouse, check_warehouse_name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::JsonBody;
use crate::problem::{Problem, ProblemDetails};

/// Priorities run from 0 (allocated from first) to this.
const MAX_PRIORITY: i64 = 1_000_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWarehouseRequest {
    /// 1 to 64 of `[A-Za-z0-9._-]`, unique in the tenant.
    #[schema(example = "BER-1")]
    pub code: String,
    /// 1 to 200 characters.
    #[schema(example = "Berlin")]
    pub name: String,
    /// 0 to 1,000,000, default 0. Lower is allocated from first.
    #[serde(default)]
    pub priority: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WarehouseResponse {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WarehouseList {
    /// By ascending priority, then code.
    pub items: Vec<WarehouseResponse>,
}

impl From<Warehouse> for WarehouseResponse {
    fn from(w: Warehouse) -> Self {
        Self {
            id: *w.id.as_uuid(),
            code: w.code.to_string(),
            name: w.name,
            priority: w.priority,
            created_at: w.created_at,
        }
    }
}

impl TryFrom<CreateWarehouseRequest> for NewWarehouse {
    type Error = ValidationErrors;

    fn try_from(r: CreateWarehouseRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let code = errors.check("code", r.code.parse::<WarehouseCode>());
        let name = errors.check("name", check_warehouse_name(&r.name));
        let priority = match r.priority.unwrap_or(0) {
            p @ 0..=MAX_PRIORITY => i32::try_from(p).ok(),
            p => {
                errors.push(
                    "priority",
                    format!("must be between 0 and {MAX_PRIORITY}, got {p}"),
                );
                None
            }
        };
        match (code, name, priority) {
            (Some(code), Some(name), Some(priority)) => Ok(NewWarehouse {
                code,
                name,
                priority,
            }),
            _ => Err(errors),
        }
    }
}

/// Create a warehouse.
#[utoipa::path(
    post, path = "/v1/warehouses", operation_id = "create_warehouse", tag = "warehouses",
    request_body = CreateWarehouseRequest,
    responses(
        (status = 201, description = "The new warehouse", body = WarehouseResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`already_exists`: the code is taken", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateWarehouseRequest>,
) -> Result<(StatusCode, Json<WarehouseResponse>), Problem> {
    let new = NewWarehouse::try_from(body)?;
    let warehouse = state.store.create_warehouse(ctx.tenant_id, new).await?;
    Ok((StatusCode::CREATED, Json(warehouse.into())))
}

/// List the tenant's warehouses.
#[utoipa::path(
    get, path = "/v1/warehouses", operation_id = "list_warehouses", tag = "warehouses",
    responses(
        (status = 200, description = "Every warehouse", body = WarehouseList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<WarehouseList>, Problem> {
    let warehouses = state.store.list_warehouses(ctx.tenant_id).await?;
    Ok(Json(WarehouseList {
        items: warehouses.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_defaults_to_zero_and_is_bounded() {
        let w = |v| {
            NewWarehouse::try_from(serde_json::from_value::<CreateWarehouseRequest>(v).unwrap())
        };
        assert_eq!(
            w(serde_json::json!({"code": "A", "name": "A"}))
                .unwrap()
                .priority,
            0
        );
        let e = w(serde_json::json!({"code": "a b", "name": "", "priority": -1})).unwrap_err();
        assert_eq!(e.0.len(), 3);
    }
}
