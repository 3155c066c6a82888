//! Operational endpoints, served without authentication: liveness, readiness, metrics and
//! the OpenAPI document.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use meridian_core::ErrorCode;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::problem::{Problem, ProblemDetails};
use crate::{ApiDoc, AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The store backend: `sqlite` or `postgres`.
    pub store: &'static str,
    /// The bus: `ok`, `unavailable` (orders still commit; their events wait in the
    /// outbox), or absent when no bus is wired.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "ok")]
    pub bus: Option<&'static str>,
    /// The bus backend, such as `embedded` or `nats`, when one is wired.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "embedded")]
    pub bus_backend: Option<&'static str>,
}

/// How long `/readyz` waits for the bus before calling it unavailable.
const BUS_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Liveness: the process is up and serving.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the store answers. The bus is reported but does not decide readiness: while
/// it is down orders still commit and the outbox drains when it is back.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "The store cannot be reached", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, Problem> {
    let bus = async {
        let bus = state.bus.as_ref()?;
        let ping = tokio::time::timeout(BUS_PING_TIMEOUT, bus.ping()).await;
        Some(match ping {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, bus = bus.name(), "bus is unavailable");
                "unavailable"
            }
            Err(_) => {
                tracing::warn!(bus = bus.name(), "bus did not answer the readiness ping");
                "unavailable"
            }
        })
    };
    let (store, bus) = tokio::join!(state.store.ping(), bus);
    match store {
        Ok(()) => Ok(Json(Readiness {
            status: "ready",
            store: state.store.backend(),
            bus,
            bus_backend: state.bus.as_ref().map(|b| b.name()),
        })),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            Err(Problem::new(
                ErrorCode::Unavailable,
                "the store cannot be reached",
            ))
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The document is the same for the life of the process: build it once.
static OPENAPI_JSON: LazyLock<Result<String, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()));

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn openapi() -> Result<Response, Problem> {
    match &*OPENAPI_JSON {
        Ok(json) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json.clone(),
        )
            .into_response()),
        Err(e) => Err(Problem::internal(format!(
            "cannot render the OpenAPI document: {e}"
        ))),
    }
}
