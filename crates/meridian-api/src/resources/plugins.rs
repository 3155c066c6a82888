//! `/v1/plugins`: the deployment's plugin registry. Register a plugin from its manifest,
//! list, inspect and deregister plugins, approve or deny each requested grant, and read the
//! audit trail of every decision.
//!
//! Plugins are deployment-wide: every route here needs a `plugins:*` permission, which only
//! platform admins hold (docs/auth.md), whether or not the plugin is bound to a tenant.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use meridian_core::ErrorCode;
use meridian_plugin::{Manifest, ManifestError, Run};
use meridian_store::{
    GrantDirection, GrantState, NewPlugin, PluginAuditEntry, PluginGrant, PluginRecord, Subject,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::PathParams;
use crate::problem::{Problem, ProblemDetails};

/// Reports how each registered plugin's instance is doing (the instance manager).
pub trait PluginStatusSource: Send + Sync {
    /// `starting`, `running`, `unhealthy`, `crashlooping` or `stopped`; `None` when the
    /// plugin has no instance (not yet started, or not startable here).
    fn status(&self, plugin: Uuid) -> Option<&'static str>;
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantResponse {
    pub id: Uuid,
    /// `publish` or `subscribe`.
    #[schema(example = "publish")]
    pub direction: String,
    /// A topic pattern relative to the deployment.
    #[schema(example = "platform.data.stock.snapshot")]
    pub pattern: String,
    /// `pending` (allows nothing), `approved` or `denied` (a deny rule).
    #[schema(example = "pending")]
    pub state: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginResponse {
    pub id: Uuid,
    #[schema(example = "warehouse-sync")]
    pub name: String,
    #[schema(example = "1.2.0")]
    pub version: String,
    /// `dgm`, `oms`, `fulfillment`, `notify` or `analytics`.
    #[schema(example = "dgm")]
    pub pool: String,
    /// The tenant the plugin is bound to, if any.
    pub tenant_id: Option<Uuid>,
    pub registered_at: DateTime<Utc>,
    pub registered_by: String,
    pub grants: Vec<GrantResponse>,
    /// The instance's status: `starting`, `running`, `unhealthy`, `crashlooping` or
    /// `stopped`; absent when no instance manager runs it.
    #[schema(example = "running")]
    pub status: Option<String>,
    /// The manifest as registered (TOML).
    pub manifest: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// By name.
    pub items: Vec<PluginResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub id: Uuid,
    pub plugin_id: Uuid,
    pub plugin_name: String,
    pub grant_id: Option<Uuid>,
    /// `registered`, `approved`, `denied` or `deregistered`.
    #[schema(example = "approved")]
    pub action: String,
    /// The version registered, or the grant's direction and pattern.
    #[schema(example = "publish platform.data.stock.snapshot")]
    pub detail: String,
    /// Who did it: `user:{id}`, `api_key:{id}` or `cli:{os user}`.
    pub actor: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Oldest first.
    pub items: Vec<AuditEntryResponse>,
}

impl From<PluginGrant> for GrantResponse {
    fn from(g: PluginGrant) -> Self {
        Self {
            id: g.id,
            direction: g.direction.as_str().to_owned(),
            pattern: g.pattern,
            state: g.state.as_str().to_owned(),
            decided_at: g.decided_at,
            decided_by: g.decided_by,
        }
    }
}

impl From<PluginAuditEntry> for AuditEntryResponse {
    fn from(e: PluginAuditEntry) -> Self {
        Self {
            id: e.id,
            plugin_id: e.plugin_id,
            plugin_name: e.plugin_name,
            grant_id: e.grant_id,
            action: e.action.as_str().to_owned(),
            detail: e.detail,
            actor: e.actor,
            at: e.at,
        }
    }
}

fn response(state: &AppState, p: PluginRecord) -> PluginResponse {
    let status = state
        .plugin_status
        .as_ref()
        .and_then(|s| s.status(p.id))
        .map(str::to_owned);
    PluginResponse {
        id: p.id,
        name: p.name,
        version: p.version,
        pool: p.pool,
        tenant_id: p.tenant_id.map(|t| *t.as_uuid()),
        registered_at: p.registered_at,
        registered_by: p.registered_by,
        grants: p.grants.into_iter().map(Into::into).collect(),
        status,
        manifest: p.manifest,
    }
}

/// Who made a change, as the audit trail records it.
pub fn actor(ctx: &TenantContext) -> String {
    match ctx.principal.subject {
        Subject::User(u) => format!("user:{u}"),
        Subject::ApiKey(k) => format!("api_key:{k}"),
    }
}

/// A plugin named in the path: its id, or its name.
async fn resolve(state: &AppState, key: &str) -> Result<PluginRecord, Problem> {
    let found = match key.parse::<Uuid>() {
        Ok(id) => state.plugins.get_plugin(id).await,
        Err(_) => state.plugins.find_plugin(key).await,
    };
    found.map_err(|e| match e {
        meridian_store::StoreError::NotFound { .. } => Problem::not_found("plugin", key),
        e => e.into(),
    })
}

/// Parses a manifest given as TOML text, or as the same document in JSON, into the
/// validated manifest and its TOML text (what the registry keeps and the sidecar reads).
pub fn parse_manifest(json: bool, body: &[u8]) -> Result<(Manifest, String), Problem> {
    let text = if json {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            Problem::new(
                ErrorCode::MalformedRequest,
                format!("the body is not JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(Problem::new(
                ErrorCode::MalformedRequest,
                "the manifest must be a JSON object",
            ));
        }
        toml::to_string(&value).map_err(|e| {
            Problem::new(
                ErrorCode::MalformedRequest,
                format!("the manifest cannot be read as a plugin manifest: {e}"),
            )
        })?
    } else {
        std::str::from_utf8(body)
            .map_err(|_| {
                Problem::new(
                    ErrorCode::MalformedRequest,
                    "the manifest is not UTF-8 text",
                )
            })?
            .to_owned()
    };
    match Manifest::from_toml(&text) {
        Ok(m) => Ok((m, text)),
        Err(ManifestError::Syntax(e)) => Err(Problem::new(
            ErrorCode::MalformedRequest,
            format!("the manifest is not a valid plugin manifest: {e}"),
        )),
        Err(ManifestError::Invalid(errors)) => Err(Problem::validation(errors)),
    }
}

/// The registry's record of a validated manifest.
pub fn new_plugin(manifest: &Manifest, text: String, actor: String) -> NewPlugin {
    let grants = manifest
        .grants
        .publish
        .iter()
        .map(|p| (GrantDirection::Publish, p.clone()))
        .chain(
            manifest
                .grants
                .subscribe
                .iter()
                .map(|p| (GrantDirection::Subscribe, p.clone())),
        )
        .collect();
    NewPlugin {
        name: manifest.name.as_str().to_owned(),
        version: manifest.version.to_string(),
        pool: manifest.pool.as_str().to_owned(),
        tenant_id: manifest.tenant,
        manifest: text,
        grants,
        actor,
    }
}

/// Register a plugin from its manifest. Its requested grants start `pending`.
#[utoipa::path(
    post, path = "/v1/plugins", operation_id = "register_plugin", tag = "plugins",
    request_body(content = String, description = "The manifest: TOML (`application/toml`, the default) or the same document as JSON (`application/json`)", content_type = "application/toml"),
    responses(
        (status = 201, description = "Registered; every grant pending", body = PluginResponse),
        (status = 400, description = "Not a manifest (syntax, unknown fields)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "A plugin with this name is registered", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid values, every one listed by field", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    ctx: TenantContext,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PluginResponse>), Problem> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let (manifest, text) = parse_manifest(json, &body)?;
    if matches!(manifest.run, Run::Image { .. }) {
        tracing::info!(plugin = %manifest.name, "registered a container plugin; only local processes are started here");
    }
    let p = state
        .plugins
        .register_plugin(&new_plugin(&manifest, text, actor(&ctx)))
        .await?;
    tracing::info!(plugin = %p.name, plugin.id = %p.id, "plugin registered");
    Ok((StatusCode::CREATED, Json(response(&state, p))))
}

/// List the registered plugins, by name.
#[utoipa::path(
    get, path = "/v1/plugins", operation_id = "list_plugins", tag = "plugins",
    responses(
        (status = 200, description = "Every registered plugin", body = PluginList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    _ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<PluginList>, Problem> {
    let items = state.plugins.list_plugins().await?;
    Ok(Json(PluginList {
        items: items.into_iter().map(|p| response(&state, p)).collect(),
    }))
}

/// Get one plugin, with its grants and its instance's status.
#[utoipa::path(
    get, path = "/v1/plugins/{plugin}", operation_id = "get_plugin", tag = "plugins",
    params(("plugin" = String, Path, description = "The plugin's id or name")),
    responses(
        (status = 200, description = "The plugin", body = PluginResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    _ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Json<PluginResponse>, Problem> {
    let p = resolve(&state, &key).await?;
    Ok(Json(response(&state, p)))
}

/// Deregister a plugin: its instance is stopped and its grants removed; its audit trail
/// stays.
#[utoipa::path(
    delete, path = "/v1/plugins/{plugin}", operation_id = "deregister_plugin", tag = "plugins",
    params(("plugin" = String, Path, description = "The plugin's id or name")),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn deregister(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<StatusCode, Problem> {
    let p = resolve(&state, &key).await?;
    state.plugins.deregister_plugin(p.id, &actor(&ctx)).await?;
    tracing::info!(plugin = %p.name, plugin.id = %p.id, "plugin deregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn decide(
    ctx: TenantContext,
    state: AppState,
    key: String,
    grant: String,
    decision: GrantState,
) -> Result<Json<GrantResponse>, Problem> {
    let p = resolve(&state, &key).await?;
    let grant = grant
        .parse::<Uuid>()
        .ok()
        .filter(|g| p.grants.iter().any(|pg| pg.id == *g))
        .ok_or_else(|| Problem::not_found("grant", &grant))?;
    let g = state
        .plugins
        .decide_grant(p.id, grant, decision, &actor(&ctx))
        .await?;
    tracing::info!(
        plugin = %p.name, grant.id = %g.id, direction = %g.direction, pattern = %g.pattern,
        decision = %decision, "plugin grant decided"
    );
    Ok(Json(g.into()))
}

/// Approve one requested grant. Audited.
#[utoipa::path(
    post, path = "/v1/plugins/{plugin}/grants/{grant}/approve", operation_id = "approve_plugin_grant", tag = "plugins",
    params(
        ("plugin" = String, Path, description = "The plugin's id or name"),
        ("grant" = Uuid, Path, description = "The grant's id"),
    ),
    responses(
        (status = 200, description = "The grant, approved", body = GrantResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin or grant", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn approve(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams((key, grant)): PathParams<(String, String)>,
) -> Result<Json<GrantResponse>, Problem> {
    decide(ctx, state, key, grant, GrantState::Approved).await
}

/// Deny one requested grant (also revokes an approval): it becomes a deny rule. Audited.
#[utoipa::path(
    post, path = "/v1/plugins/{plugin}/grants/{grant}/deny", operation_id = "deny_plugin_grant", tag = "plugins",
    params(
        ("plugin" = String, Path, description = "The plugin's id or name"),
        ("grant" = Uuid, Path, description = "The grant's id"),
    ),
    responses(
        (status = 200, description = "The grant, denied", body = GrantResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin or grant", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn deny(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams((key, grant)): PathParams<(String, String)>,
) -> Result<Json<GrantResponse>, Problem> {
    decide(ctx, state, key, grant, GrantState::Denied).await
}

/// The audit trail of one plugin, oldest first.
#[utoipa::path(
    get, path = "/v1/plugins/{plugin}/audit", operation_id = "plugin_audit", tag = "plugins",
    params(("plugin" = String, Path, description = "The plugin's id or name")),
    responses(
        (status = 200, description = "Registrations and decisions, oldest first", body = AuditList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such plugin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn audit(
    _ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Json<AuditList>, Problem> {
    let p = resolve(&state, &key).await?;
    let items = state.plugins.plugin_audit(Some(p.id)).await?;
    Ok(Json(AuditList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// The whole registry's audit trail, deregistered plugins included, oldest first.
#[utoipa::path(
    get, path = "/v1/plugin-audit", operation_id = "all_plugin_audit", tag = "plugins",
    responses(
        (status = 200, description = "Registrations, decisions and deregistrations, oldest first", body = AuditList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn audit_all(
    _ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<AuditList>, Problem> {
    let items = state.plugins.plugin_audit(None).await?;
    Ok(Json(AuditList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}
