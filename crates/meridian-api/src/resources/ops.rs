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
    /// Where shipping labels are kept, when this process serves them. Reported but not
    /// deciding readiness: while it is down label creation retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_store: Option<LabelStoreReadiness>,
    /// In split mode, the services this process runs, such as `catalog,inventory`; absent
    /// in the all-in-one mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "catalog,inventory")]
    pub services: Option<String>,
    /// The rate limits of a process that runs the gateway. A degraded limiter (Redis cannot
    /// be reached; each instance enforces its share locally) does not make the API unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitReadiness>,
    /// In split mode: each upstream the gateway forwards to, with its circuit state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamReadiness>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelStoreReadiness {
    /// `local` or `s3`.
    #[schema(example = "s3")]
    pub backend: &'static str,
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitReadiness {
    /// `off`, `local` or `redis`.
    #[schema(example = "redis")]
    pub policy: &'static str,
    /// True while Redis cannot be reached and a conservative per-instance limit decides.
    pub degraded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamReadiness {
    #[schema(example = "orders")]
    pub service: &'static str,
    #[schema(example = "http://127.0.0.1:9001/")]
    pub url: String,
    /// `closed` (healthy), `open` (failing; requests are refused at once) or `half_open`.
    #[schema(example = "closed")]
    pub circuit: &'static str,
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
pub async fn readyz(
    State(state): State<AppState>,
    labels: Option<axum::Extension<std::sync::Arc<dyn meridian_fulfillment_service::LabelStore>>>,
) -> Result<Json<Readiness>, Problem> {
    let label_store = async {
        let axum::Extension(labels) = labels?;
        let check = tokio::time::timeout(BUS_PING_TIMEOUT, labels.check()).await;
        let status = match check {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, label_store = labels.name(), "label store is unavailable");
                "unavailable"
            }
            Err(_) => {
                tracing::warn!(
                    label_store = labels.name(),
                    "label store did not answer the readiness check"
                );
                "unavailable"
            }
        };
        Some(LabelStoreReadiness {
            backend: labels.name(),
            status,
        })
    };
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
    let (store, bus, label_store) = tokio::join!(state.store.ping(), bus, label_store);
    let gateway = &state.config.gateway;
    let rate_limit = gateway
        .rate_limiter
        .as_ref()
        .filter(|_| {
            gateway
                .services
                .contains(meridian_gateway::Service::Gateway)
        })
        .map(|l| {
            let s = l.status();
            RateLimitReadiness {
                policy: s.policy,
                degraded: s.degraded,
            }
        });
    let upstreams = gateway
        .proxy
        .as_ref()
        .map(|p| {
            p.upstreams()
                .into_iter()
                .map(|(service, url, circuit)| UpstreamReadiness {
                    service: service.as_str(),
                    url,
                    circuit: circuit.as_str(),
                })
                .collect()
        })
        .unwrap_or_default();
    match store {
        Ok(()) => Ok(Json(Readiness {
            status: "ready",
            store: state.store.backend(),
            bus,
            bus_backend: state.bus.as_ref().map(|b| b.name()),
            label_store,
            services: (!gateway.services.is_all()).then(|| gateway.services.to_string()),
            rate_limit,
            upstreams,
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
