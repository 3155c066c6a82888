//! `/v1/api-keys`: the caller's tenant's API keys. A key's token is shown once, when it is
//! created or rotated; only its hash is stored. A key has a role (at most its creator's),
//! scopes that narrow the role, an optional expiry and a last-used time.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use meridian_core::{ApiKeyId, ErrorCode, ValidationErrors};
use meridian_store::{ApiKey, CreatedApiKey, NewApiKey, Role, Scopes};
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
    /// The key's role; at most the caller's. Defaults to the caller's role.
    #[schema(example = "member")]
    pub role: Option<String>,
    /// Scope names (see docs/auth.md), or `["*"]` for every scope the role has (the
    /// default).
    #[schema(example = json!(["orders:read", "orders:write"]))]
    pub scopes: Option<Vec<String>>,
    /// When the key stops working; must be in the future. Never, if absent.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "admin")]
    pub role: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key last authenticated a request (updated about once a minute at most).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set once the key is revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The bearer token. It is shown only in this response: store it now.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyResponse>,
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

fn scope_names(s: Scopes) -> Vec<String> {
    if s == Scopes::ALL {
        vec!["*".to_owned()]
    } else {
        s.names().into_iter().map(str::to_owned).collect()
    }
}

impl From<ApiKey> for ApiKeyResponse {
    fn from(k: ApiKey) -> Self {
        Self {
            id: *k.id.as_uuid(),
            name: k.name,
            role: role_name(k.role).to_owned(),
            scopes: scope_names(k.scopes),
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
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
            scopes: scope_names(k.key.scopes),
            created_at: k.key.created_at,
            expires_at: k.key.expires_at,
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
        (status = 403, description = "The caller may not manage keys, or not give this role", body = ProblemDetails, content_type = "application/problem+json"),
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
    let caller = ctx.principal.role;
    let role = match &body.role {
        None => Some(caller),
        Some(r) => errors.check("role", r.parse::<Role>()),
    };
    let scopes = match &body.scopes {
        None => Some(Scopes::ALL),
        Some(names) => errors.check(
            "scopes",
            Scopes::from_names(names.iter().map(String::as_str)),
        ),
    };
    if let Some(e) = body.expires_at
        && e <= meridian_core::now()
    {
        errors.push("expires_at", "must be in the future");
    }
    errors.into_result()?;
    let (role, scopes) = (role.unwrap_or(caller), scopes.unwrap_or(Scopes::NONE));
    if !caller.can_assign(role) {
        return Err(Problem::new(
            ErrorCode::Forbidden,
            format!("a {caller} cannot create a key with role {role}"),
        ));
    }
    let created = state
        .store
        .issue_api_key(
            ctx.tenant_id,
            NewApiKey {
                name: body.name,
                role,
                scopes,
                expires_at: body.expires_at,
            },
        )
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
    let id = parse_id(&id)?;
    let key = state.store.get_api_key(ctx.tenant_id, id).await?;
    check_manageable(&ctx, &key)?;
    state.store.revoke_api_key(ctx.tenant_id, id).await?;
    // This instance applies it now; the others through the bus or their next poll.
    state.auth.sync_revocations().await?;
    tracing::info!(api_key.id = %id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn parse_id(id: &str) -> Result<ApiKeyId, Problem> {
    id.parse::<ApiKeyId>()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "api key not found"))
}

/// A caller manages only keys whose role it could have given.
fn check_manageable(ctx: &TenantContext, key: &ApiKey) -> Result<(), Problem> {
    if ctx.principal.role.can_assign(key.role) {
        Ok(())
    } else {
        Err(Problem::new(
            ErrorCode::Forbidden,
            format!("a {} cannot manage a {} key", ctx.principal.role, key.role),
        ))
    }
}

/// Rotate an API key: a new secret, shown once, for the same key id, role and scopes. The
/// old secret stops working at once, on every instance.
#[utoipa::path(
    post, path = "/v1/api-keys/{id}/rotate", operation_id = "rotate_api_key", tag = "api-keys",
    params(("id" = Uuid, Path, description = "The key id")),
    responses(
        (status = 200, description = "The key with its new token, shown this once", body = CreatedApiKeyResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not manage this key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such live key", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn rotate(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<CreatedApiKeyResponse>, Problem> {
    let id = parse_id(&id)?;
    let key = state.store.get_api_key(ctx.tenant_id, id).await?;
    check_manageable(&ctx, &key)?;
    let rotated = state.store.rotate_api_key(ctx.tenant_id, id).await?;
    state.auth.sync_revocations().await?;
    tracing::info!(api_key.id = %id, "api key rotated");
    Ok(Json(rotated.into()))
}
