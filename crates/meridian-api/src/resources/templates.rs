//! `/v1/templates`: the tenant's notification templates (minijinja), one per event type and
//! channel, and a preview. A template is checked when it is saved (rendered against a
//! sample event): a broken one is a 422 then, never a failure when a message is sent.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meridian_core::{ErrorCode, ValidationErrors};
use meridian_notify::{events, templates};
use meridian_store::notify::{Channel, NewTemplate, Template, TemplateId, TemplatePatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::nullable;
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams};
use crate::problem::{Problem, ProblemDetails};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// An event type, such as `order.created`.
    #[schema(example = "order.created")]
    pub event_type: String,
    /// `email` or `sms`.
    #[schema(example = "email")]
    pub channel: String,
    /// The subject line (email only, required there).
    #[serde(default)]
    #[schema(example = "Order {{ data.id }} received")]
    pub subject: Option<String>,
    /// The message; sees `event` (`type`, `event_id`, `timestamp`) and `data`.
    #[schema(example = "Thanks, {{ data.customer.name }}: we have your order.")]
    pub body: String,
}

/// A partial update: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTemplateRequest {
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub subject: Option<Option<String>>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[schema(example = "order.created")]
    pub event_type: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub body: String,
    /// The event data to render with; a sample order or shipment if absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateResponse {
    pub id: Uuid,
    pub event_type: String,
    pub channel: String,
    pub subject: Option<String>,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    /// By event type, then channel.
    pub items: Vec<TemplateResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    pub subject: Option<String>,
    pub body: String,
}

impl From<Template> for TemplateResponse {
    fn from(t: Template) -> Self {
        Self {
            id: *t.id.as_uuid(),
            event_type: t.event_type,
            channel: t.channel.as_str().to_owned(),
            subject: t.subject,
            body: t.body,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

fn check_event_type(ty: &str, errors: &mut ValidationErrors) -> bool {
    if events::EVENT_TYPES.contains(&ty) {
        return true;
    }
    errors.push(
        "event_type",
        format!("must be one of {}", events::EVENT_TYPES.join(", ")),
    );
    false
}

/// Renders the template against a sample event (or `data`); each problem under its field.
fn check_template(
    event_type: &str,
    subject: Option<&str>,
    body: &str,
    data: Option<&serde_json::Value>,
    errors: &mut ValidationErrors,
) -> Option<templates::Rendered> {
    let rendered = match data {
        Some(data) => {
            let ctx = templates::context(
                event_type,
                &meridian_core::EventId::new().to_string(),
                &meridian_core::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                data,
            );
            templates::render(subject, body, &ctx)
        }
        None => templates::check(event_type, subject, body),
    };
    match rendered {
        Ok(r) => Some(r),
        Err(problems) => {
            for p in problems {
                errors.push(p.field, p.message);
            }
            None
        }
    }
}

fn check_subject(channel: Channel, subject: Option<&str>, errors: &mut ValidationErrors) {
    match (channel, subject) {
        (Channel::Email, None) => errors.push("subject", "is required for email"),
        (Channel::Sms, Some(_)) => errors.push("subject", "SMS has no subject"),
        _ => {}
    }
}

fn template_id(s: &str) -> Result<TemplateId, Problem> {
    s.parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "template not found"))
}

/// Create a template for an event type and channel.
#[utoipa::path(
    post, path = "/v1/templates", operation_id = "create_template", tag = "templates",
    request_body = CreateTemplateRequest,
    responses(
        (status = 201, description = "The new template", body = TemplateResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`already_exists`: the event type and channel have a template", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or a template that does not render", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(r): JsonBody<CreateTemplateRequest>,
) -> Result<Response, Problem> {
    let mut errors = ValidationErrors::new();
    let channel = match Channel::parse(&r.channel) {
        Some(c @ (Channel::Email | Channel::Sms)) => Some(c),
        _ => {
            errors.push("channel", "must be email or sms");
            None
        }
    };
    let typed = check_event_type(&r.event_type, &mut errors);
    if let Some(channel) = channel {
        check_subject(channel, r.subject.as_deref(), &mut errors);
    }
    if typed {
        check_template(
            &r.event_type,
            r.subject.as_deref(),
            &r.body,
            None,
            &mut errors,
        );
    }
    errors.into_result()?;
    let channel = channel.expect("checked above");
    let t = state
        .store
        .create_template(
            ctx.tenant_id,
            NewTemplate {
                event_type: r.event_type,
                channel,
                subject: r.subject,
                body: r.body,
            },
        )
        .await?;
    let location = HeaderValue::from_str(&format!("/v1/templates/{}", t.id)).ok();
    let mut response = (StatusCode::CREATED, Json(TemplateResponse::from(t))).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List the tenant's templates.
#[utoipa::path(
    get, path = "/v1/templates", operation_id = "list_templates", tag = "templates",
    responses(
        (status = 200, description = "Every template of the tenant", body = TemplateList),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<TemplateList>, Problem> {
    let items = state.store.list_templates(ctx.tenant_id).await?;
    Ok(Json(TemplateList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Get one template.
#[utoipa::path(
    get, path = "/v1/templates/{id}", operation_id = "get_template", tag = "templates",
    params(("id" = Uuid, Path, description = "The template's id")),
    responses(
        (status = 200, description = "The template", body = TemplateResponse),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such template", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<TemplateResponse>, Problem> {
    let t = state
        .store
        .get_template(ctx.tenant_id, template_id(&id)?)
        .await?;
    Ok(Json(t.into()))
}

/// Change a template's subject or body; the result is checked as on create.
#[utoipa::path(
    patch, path = "/v1/templates/{id}", operation_id = "update_template", tag = "templates",
    params(("id" = Uuid, Path, description = "The template's id")),
    request_body = UpdateTemplateRequest,
    responses(
        (status = 200, description = "The template", body = TemplateResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such template", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "A template that does not render", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(r): JsonBody<UpdateTemplateRequest>,
) -> Result<Json<TemplateResponse>, Problem> {
    let id = template_id(&id)?;
    let current = state.store.get_template(ctx.tenant_id, id).await?;
    let subject = match &r.subject {
        None => current.subject.clone(),
        Some(s) => s.clone(),
    };
    let body = r.body.clone().unwrap_or_else(|| current.body.clone());
    let mut errors = ValidationErrors::new();
    check_subject(current.channel, subject.as_deref(), &mut errors);
    check_template(
        &current.event_type,
        subject.as_deref(),
        &body,
        None,
        &mut errors,
    );
    errors.into_result()?;
    let t = state
        .store
        .update_template(
            ctx.tenant_id,
            id,
            TemplatePatch {
                subject: r.subject,
                body: r.body,
            },
        )
        .await?;
    Ok(Json(t.into()))
}

/// Delete a template.
#[utoipa::path(
    delete, path = "/v1/templates/{id}", operation_id = "delete_template", tag = "templates",
    params(("id" = Uuid, Path, description = "The template's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such template", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, Problem> {
    state
        .store
        .delete_template(ctx.tenant_id, template_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Render a template without saving it, against `data` or a sample event.
#[utoipa::path(
    post, path = "/v1/templates/preview", operation_id = "preview_template", tag = "templates",
    request_body = PreviewRequest,
    responses(
        (status = 200, description = "What the template renders", body = PreviewResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "A template that does not render", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn preview(
    _ctx: TenantContext,
    JsonBody(r): JsonBody<PreviewRequest>,
) -> Result<Json<PreviewResponse>, Problem> {
    let mut errors = ValidationErrors::new();
    let rendered = if check_event_type(&r.event_type, &mut errors) {
        check_template(
            &r.event_type,
            r.subject.as_deref(),
            &r.body,
            r.data.as_ref(),
            &mut errors,
        )
    } else {
        None
    };
    errors.into_result()?;
    let rendered = rendered.expect("checked above");
    Ok(Json(PreviewResponse {
        subject: rendered.subject,
        body: rendered.body,
    }))
}
