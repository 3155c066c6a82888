//! The sidecar's HTTP API. `/healthz`, `/readyz` and `/metrics` are open (probes and
//! scrapers on the same host); everything under `/v1` needs the instance's bearer token.
//! Errors are `application/problem+json` with a stable `code`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_bus::{BusError, Message, TopicPattern};
use meridian_core::{Envelope, TenantId, Topic, valid_segment};
use meridian_plugin::{AclDenied, Direction};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{MAX_VALUE_BYTES, SavedSubscription, check_key};
use crate::subs::envelope;
use crate::{Sidecar, metrics};

/// The longest a long-poll waits for its first message.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most deliveries one poll returns.
const MAX_BATCH: usize = 256;
/// The largest request body.
const BODY_LIMIT: usize = MAX_VALUE_BYTES + 64 * 1024;

/// An error answered as problem+json.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        )
    }

    fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "sidecar request failed");
        metrics::error("internal");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred",
        )
    }

    fn bus(e: BusError) -> Problem {
        match e {
            BusError::PayloadTooLarge { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            BusError::InvalidTopic(t) => Problem::invalid(t),
            BusError::Unavailable(_) | BusError::Closed => {
                metrics::error("bus_unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the bus cannot be reached; retry later",
                )
            }
            other => Problem::internal(other),
        }
    }
}

impl From<AclDenied> for Problem {
    fn from(e: AclDenied) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, AclDenied::CODE, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({
            "type": format!("urn:meridian:problem:{}", self.code),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

type Shared = State<Arc<Sidecar>>;

pub fn router(sidecar: Arc<Sidecar>) -> Router {
    let v1 = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/subscriptions", post(subscribe))
        .route(
            "/v1/subscriptions/{name}",
            axum::routing::delete(unsubscribe),
        )
        .route("/v1/subscriptions/{name}/messages", get(poll))
        .route("/v1/subscriptions/{name}/ack", post(ack))
        .route("/v1/subscriptions/{name}/nack", post(nack))
        .route(
            "/v1/state/{key}",
            get(state_get).put(state_put).delete(state_delete),
        )
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/config", get(config))
        .route_layer(middleware::from_fn_with_state(
            sidecar.clone(),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(v1)
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sidecar)
}

/// Compares in time independent of where the strings differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(State(s): Shared, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same_token(token.as_bytes(), s.config.token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            metrics::error("unauthorized");
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "present the sidecar's token as `Authorization: Bearer {token}`",
            )
            .into_response()
        }
    }
}

/// A JSON body; its rejection is problem+json.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state)
            .await
            .map_err(|e| Problem::new(e.status(), "malformed_request", e.body_text()))?;
        Ok(Body(v))
    }
}

/// Audits and counts a refusal.
fn refused(s: &Sidecar, e: AclDenied) -> Problem {
    metrics::counter_acl(e.direction, e.reason.label());
    tracing::warn!(
        target: "meridian::audit",
        event = "plugin.acl_denied",
        plugin = %s.config.manifest.name,
        direction = e.direction.as_str(),
        target_topic = %e.target,
        reason = e.reason.label(),
        "ACL denied"
    );
    e.into()
}

/// A topic as the plugin writes it: relative to the deployment (`platform.data.x.y`) or in
/// full.
fn full_name(s: &Sidecar, name: &str) -> String {
    if name.starts_with("deployment.") {
        name.to_owned()
    } else {
        format!("deployment.{}.{name}", s.config.acl.deployment())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    data: Value,
    /// The ordering key (aggregate id); the plugin's name when absent.
    #[serde(default)]
    subject: Option<String>,
    /// The CloudEvents type; `meridian.{domain}.{event}` from the topic when absent.
    #[serde(default, rename = "type")]
    ty: Option<String>,
    /// Required for a plugin not bound to a tenant; a bound one may only name its own.
    #[serde(default)]
    tenant: Option<TenantId>,
    #[serde(default)]
    traceparent: Option<String>,
}

async fn publish(State(s): Shared, Body(req): Body<PublishRequest>) -> Result<Response, Problem> {
    let topic = Topic::parse(&full_name(&s, &req.topic)).map_err(Problem::invalid)?;
    let tenant = match s.config.acl.publish_tenant(req.tenant) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(Problem::invalid(
                "tenant is required: this plugin is not bound to a tenant",
            ));
        }
        Err(reason) => {
            return Err(refused(
                &s,
                AclDenied {
                    direction: Direction::Publish,
                    target: topic.to_string(),
                    reason,
                },
            ));
        }
    };
    s.config
        .acl
        .check_publish(&topic, tenant)
        .map_err(|e| refused(&s, e))?;
    let ty = req.ty.unwrap_or_else(|| {
        let rest = topic.as_str().splitn(4, '.').nth(3).unwrap_or_default();
        format!("meridian.{rest}")
    });
    if ty.is_empty() || ty.len() > 255 {
        return Err(Problem::invalid("type must be 1 to 255 characters"));
    }
    if req.traceparent.as_ref().is_some_and(|t| t.len() > 128) {
        return Err(Problem::invalid("traceparent is at most 128 characters"));
    }
    let subject = req
        .subject
        .unwrap_or_else(|| s.config.manifest.name.to_string());
    if subject.is_empty() || subject.len() > 255 {
        return Err(Problem::invalid("subject must be 1 to 255 characters"));
    }
    let mut env = Envelope::new(
        s.source.clone(),
        ty,
        tenant,
        subject,
        meridian_core::now(),
        req.data,
    );
    env.traceparent = req.traceparent;
    let id = env.id;
    let label = topic.to_string();
    let started = Instant::now();
    s.bus
        .publish(Message::new(topic.clone(), env))
        .await
        .map_err(Problem::bus)?;
    ::metrics::histogram!(metrics::PUBLISH_DURATION_SECONDS, "topic" => label.clone())
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(metrics::PUBLISHED_TOTAL, "topic" => label).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "topic": topic})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    /// The subscription's name: `[a-z0-9_-]`, 1 to 63; the same name resumes where it left.
    name: String,
    /// A topic pattern, relative to the deployment or in full.
    pattern: String,
    /// `new` (the default) or `earliest`, for a subscription seen for the first time.
    #[serde(default)]
    start: Option<String>,
}

async fn subscribe(
    State(s): Shared,
    Body(req): Body<SubscribeRequest>,
) -> Result<Response, Problem> {
    if !valid_segment(&req.name) || req.name.len() > 63 {
        return Err(Problem::invalid(
            "name must be 1 to 63 of a-z, 0-9, '_' and '-'",
        ));
    }
    let from_earliest = match req.start.as_deref() {
        None | Some("new") => false,
        Some("earliest") => true,
        Some(other) => {
            return Err(Problem::invalid(format!(
                "start {other:?} must be `new` or `earliest`"
            )));
        }
    };
    let full = full_name(&s, &req.pattern);
    let pattern = TopicPattern::parse(&full).map_err(|e| Problem::invalid(e.to_string()))?;
    if let Err(e) = s.config.acl.subscription(&pattern) {
        return Err(refused(&s, e));
    }
    if let Some(existing) = s.subs.get(&req.name) {
        if existing.pattern != pattern.as_str() {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!(
                    "subscription {} exists with the pattern {}; delete it first",
                    req.name, existing.pattern
                ),
            ));
        }
        return Ok((
            StatusCode::OK,
            Json(json!({"name": req.name, "pattern": existing.pattern})),
        )
            .into_response());
    }
    let saved = SavedSubscription {
        name: req.name.clone(),
        pattern: pattern.to_string(),
        from_earliest,
    };
    s.state
        .save_subscription(&saved)
        .await
        .map_err(Problem::internal)?;
    s.open_subscription(&saved).map_err(|e| refused(&s, e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": saved.name, "pattern": saved.pattern})),
    )
        .into_response())
}

async fn unsubscribe(State(s): Shared, Path(name): Path<String>) -> Result<StatusCode, Problem> {
    if !s.subs.close(&name) {
        return Err(Problem::not_found(format!("no subscription {name:?}")));
    }
    s.state
        .delete_subscription(&name)
        .await
        .map_err(Problem::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollQuery {
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn poll(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Json<Value>, Problem> {
    let sub = s
        .subs
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no subscription {name:?}")))?;
    let max = q.max.unwrap_or(16);
    if !(1..=MAX_BATCH).contains(&max) {
        return Err(Problem::invalid(format!("max must be 1 to {MAX_BATCH}")));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(10_000)).min(MAX_WAIT);
    let handed = s.subs.poll(&sub, max, wait).await;
    let messages: Vec<Value> = handed
        .iter()
        .map(|h| {
            json!({
                "delivery_id": h.id,
                "attempt": h.delivery_attempt,
                "topic": h.message.topic,
                "event": envelope(&h.message),
            })
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRequest {
    delivery_ids: Vec<u64>,
    /// For a nack: wait this long before redelivering (default 1 s, at most 1 hour).
    #[serde(default)]
    delay_ms: Option<u64>,
}

async fn ack(
    State(s): Shared,
    Path(name): Path<String>,
    Body(req): Body<SettleRequest>,
) -> Result<Json<Value>, Problem> {
    settle(&s, &name, req, false).await
}

async fn nack(
    State(s): Shared,
    Path(name): Path<String>,
    Body(req): Body<SettleRequest>,
) -> Result<Json<Value>, Problem> {
    settle(&s, &name, req, true).await
}

async fn settle(
    s: &Sidecar,
    name: &str,
    req: SettleRequest,
    nack: bool,
) -> Result<Json<Value>, Problem> {
    let sub = s
        .subs
        .get(name)
        .ok_or_else(|| Problem::not_found(format!("no subscription {name:?}")))?;
    if req.delay_ms.is_some() && !nack {
        return Err(Problem::invalid("delay_ms goes with a nack"));
    }
    let delay = nack.then(|| Duration::from_millis(req.delay_ms.unwrap_or(1000).min(3_600_000)));
    let unknown = s.subs.settle(&sub, &req.delivery_ids, delay).await;
    Ok(Json(json!({
        "settled": req.delivery_ids.len() - unknown.len(),
        "unknown": unknown,
    })))
}

fn key_of(key: &str) -> Result<(), Problem> {
    check_key(key).map_err(Problem::invalid)
}

async fn state_get(State(s): Shared, Path(key): Path<String>) -> Result<Json<Value>, Problem> {
    key_of(&key)?;
    match s.state.get(&key).await.map_err(Problem::internal)? {
        Some(v) => Ok(Json(json!({"key": key, "value": v}))),
        None => Err(Problem::not_found(format!("no state under {key:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutState {
    value: Value,
}

async fn state_put(
    State(s): Shared,
    Path(key): Path<String>,
    Body(req): Body<PutState>,
) -> Result<StatusCode, Problem> {
    key_of(&key)?;
    if req.value.to_string().len() > MAX_VALUE_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a state value is at most {MAX_VALUE_BYTES} bytes of JSON"),
        ));
    }
    s.state
        .put(&key, &req.value)
        .await
        .map_err(Problem::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn state_delete(State(s): Shared, Path(key): Path<String>) -> Result<StatusCode, Problem> {
    key_of(&key)?;
    if s.state.delete(&key).await.map_err(Problem::internal)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no state under {key:?}")))
    }
}

async fn heartbeat(State(s): Shared) -> StatusCode {
    s.heartbeat();
    StatusCode::NO_CONTENT
}

async fn config(State(s): Shared) -> Json<Value> {
    Json(json!({
        "plugin": s.config.manifest.name,
        "version": s.config.manifest.version.to_string(),
        "pool": s.config.manifest.pool,
        "deployment": s.config.acl.deployment(),
        "tenant": s.config.acl.tenant(),
        "config": s.config.plugin_config,
    }))
}

async fn healthz(State(s): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "heartbeat_age_seconds": s.heartbeat_age(),
    }))
}

/// How long `/readyz` waits for the bus.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

async fn bus_up(s: &Sidecar) -> bool {
    let up = matches!(
        tokio::time::timeout(PING_TIMEOUT, s.bus.ping()).await,
        Ok(Ok(()))
    );
    ::metrics::gauge!(metrics::BUS_UP).set(if up { 1.0 } else { 0.0 });
    up
}

async fn readyz(State(s): Shared) -> Response {
    let up = bus_up(&s).await;
    let body = Json(json!({
        "status": if up { "ready" } else { "unavailable" },
        "bus": if up { "ok" } else { "unavailable" },
        "heartbeat_age_seconds": s.heartbeat_age(),
    }));
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn render_metrics(State(s): Shared) -> Response {
    ::metrics::gauge!(metrics::HEARTBEAT_AGE_SECONDS).set(s.heartbeat_age());
    ::metrics::gauge!(metrics::UPTIME_SECONDS).set(s.started.elapsed().as_secs_f64());
    s.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
        .into_response()
}
