//! `/v1/api-keys`: the caller's tenant's API keys. A key's token is shown once, when it is
//! created; only its hash is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use meridian_core::{ApiKeyId, ErrorCode, ValidationErrors};
use meridian_store::{ApiKey, CreatedApiKey, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::check_label;
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams};
use crate::problem::{Problem, ProblemDetails};

const MAX_KEY_NAME_LEN: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for: 1 to 100 characters.
    #[schema(example = "warehouse sync")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "admin")]
    pub role: String,
    pub created_at: DateTime<Utc>,
    /// Set once the key is revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    /// The bearer token. It is shown only in this response: store it now.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyResponse>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
    }
}

impl From<ApiKey> for ApiKeyResponse {
    fn from(k: ApiKey) -> Self {
        Self {
            id: *k.id.as_uuid(),
            name: k.name,
            role: role_name(k.role).to_owned(),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

impl From<CreatedApiKey> for CreatedApiKeyResponse {
    fn from(k: CreatedApiKey) -> Self {
        Self {
            id: *k.key.id.as_uuid(),
            name: k.key.name,
            role: role_name(k.key.role).to_owned(),
            created_at: k.key.created_at,
            token: k.token,
        }
    }
}

/// Create an API key for the caller's tenant.
#[utoipa::path(
    post, path = "/v1/api-keys", operation_id = "create_api_key", tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "The new key with its token, shown this once", body = CreatedApiKeyResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKeyResponse>), Problem> {
    let mut errors = ValidationErrors::new();
    check_label("name", &body.name, MAX_KEY_NAME_LEN, &mut errors);
    errors.into_result()?;
    let created = state
        .store
        .create_api_key(ctx.tenant_id, &body.name)
        .await?;
    tracing::info!(api_key.id = %created.key.id, "api key created");
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// List the tenant's API keys, including revoked ones; never their tokens.
#[utoipa::path(
    get, path = "/v1/api-keys", operation_id = "list_api_keys", tag = "api-keys",
    responses(
        (status = 200, description = "Every key of the tenant", body = ApiKeyList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<ApiKeyList>, Problem> {
    let keys = state.store.list_api_keys(ctx.tenant_id).await?;
    Ok(Json(ApiKeyList {
        items: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key. It stops authenticating at once.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", operation_id = "revoke_api_key", tag = "api-keys",
    params(("id" = Uuid, Path, description = "The key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, Problem> {
    let id = id
        .parse::<ApiKeyId>()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "api key not found"))?;
    state.store.revoke_api_key(ctx.tenant_id, id).await?;
    tracing::info!(api_key.id = %id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}
