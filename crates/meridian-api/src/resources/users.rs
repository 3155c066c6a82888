//! `/v1/users`: the people who log in to the caller's tenant. A caller gives and changes
//! only roles at or below its own; deleting a user disables them and revokes every token
//! they hold, on every instance.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use meridian_auth::password;
use meridian_core::{ErrorCode, UserId, ValidationErrors};
use meridian_store::{NewUser, Role, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams};
use crate::problem::{Problem, ProblemDetails};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// owner, admin, member or viewer (at most the caller's role).
    #[schema(example = "member")]
    pub role: String,
    /// At least 12 characters. If absent, one is generated and returned once.
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(example = "viewer")]
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub email: String,
    #[schema(example = "member")]
    pub role: String,
    pub created_at: DateTime<Utc>,
    /// Set once the user is deleted; a disabled user cannot log in.
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUserResponse {
    #[serde(flatten)]
    pub user: UserResponse,
    /// The generated password, when none was given: shown only in this response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserResponse>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: *u.id.as_uuid(),
            email: u.email,
            role: u.role.to_string(),
            created_at: u.created_at,
            disabled_at: u.disabled_at,
        }
    }
}

fn parse_id(id: &str) -> Result<UserId, Problem> {
    id.parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "user not found"))
}

fn check_assignable(ctx: &TenantContext, role: Role) -> Result<(), Problem> {
    let caller = ctx.principal.role;
    if caller.can_assign(role) {
        Ok(())
    } else {
        Err(Problem::new(
            ErrorCode::Forbidden,
            format!("a {caller} cannot give or change the role {role}"),
        ))
    }
}

/// Create a user in the caller's tenant.
#[utoipa::path(
    post, path = "/v1/users", operation_id = "create_user", tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "The user (and a generated password, shown once)", body = CreatedUserResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not manage users or give this role", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "The tenant has a user with this email", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateUserRequest>,
) -> Result<(StatusCode, Json<CreatedUserResponse>), Problem> {
    let mut errors = ValidationErrors::new();
    let role = errors.check("role", body.role.parse::<Role>());
    errors.check(
        "email",
        meridian_store::normalize_email(&body.email).map_err(|_| "must be an email address"),
    );
    if let Some(p) = &body.password {
        errors.check("password", password::check(p));
    }
    errors.into_result()?;
    let role = role.unwrap_or(Role::Viewer);
    check_assignable(&ctx, role)?;
    let generated = body.password.is_none().then(password::generate);
    let plain = body
        .password
        .or_else(|| generated.clone())
        .unwrap_or_default();
    let hash = tokio::task::spawn_blocking(move || password::hash(&plain))
        .await
        .map_err(Problem::internal)?;
    let user = state
        .store
        .create_user(
            ctx.tenant_id,
            NewUser {
                email: body.email,
                password_hash: hash,
                role,
            },
        )
        .await?;
    tracing::info!(user.id = %user.id, "user created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedUserResponse {
            user: user.into(),
            password: generated,
        }),
    ))
}

/// List the tenant's users, disabled ones included.
#[utoipa::path(
    get, path = "/v1/users", operation_id = "list_users", tag = "users",
    responses(
        (status = 200, description = "Every user of the tenant", body = UserList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not see users", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<UserList>, Problem> {
    let users = state.store.list_users(ctx.tenant_id).await?;
    Ok(Json(UserList {
        items: users.into_iter().map(Into::into).collect(),
    }))
}

/// Get one user.
#[utoipa::path(
    get, path = "/v1/users/{id}", operation_id = "get_user", tag = "users",
    params(("id" = Uuid, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 404, description = "No such user", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<UserResponse>, Problem> {
    let user = state.store.get_user(ctx.tenant_id, parse_id(&id)?).await?;
    Ok(Json(user.into()))
}

/// Change a user's role. Their current tokens are revoked (they carry the old role).
#[utoipa::path(
    patch, path = "/v1/users/{id}", operation_id = "update_user", tag = "users",
    params(("id" = Uuid, Path, description = "The user id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 403, description = "The caller may not give this role or change this user", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<UpdateUserRequest>,
) -> Result<Json<UserResponse>, Problem> {
    let id = parse_id(&id)?;
    let mut errors = ValidationErrors::new();
    let role = errors.check("role", body.role.parse::<Role>());
    errors.into_result()?;
    let role = role.unwrap_or(Role::Viewer);
    let current = state.store.get_user(ctx.tenant_id, id).await?;
    check_assignable(&ctx, current.role)?;
    check_assignable(&ctx, role)?;
    let user = state.store.set_user_role(ctx.tenant_id, id, role).await?;
    state.auth.sync_revocations().await?;
    tracing::info!(user.id = %id, role = %role, "user role changed");
    Ok(Json(user.into()))
}

/// Delete a user: they are disabled (kept for audit) and every token they hold is revoked
/// at once, on every instance.
#[utoipa::path(
    delete, path = "/v1/users/{id}", operation_id = "delete_user", tag = "users",
    params(("id" = Uuid, Path, description = "The user id")),
    responses(
        (status = 204, description = "Disabled and revoked"),
        (status = 403, description = "The caller may not change this user", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_id(&id)?;
    let current = state.store.get_user(ctx.tenant_id, id).await?;
    check_assignable(&ctx, current.role)?;
    state.store.disable_user(ctx.tenant_id, id).await?;
    state.auth.sync_revocations().await?;
    tracing::info!(user.id = %id, "user disabled");
    Ok(StatusCode::NO_CONTENT)
}
