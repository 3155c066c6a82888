//! Cross-cutting request handling: request ids, the request span, the JSON access log,
//! metrics, the timeout, the panic catcher, the 404/405 fallbacks, and the gateway's layers:
//! CORS, per-tenant rate limits and the dispatch of requests for services this process does
//! not run to their upstream.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header, header::HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_core::{ErrorCode, TenantId};
use meridian_gateway::{Proxy, ProxyError, RateLimiter, RouteClass, Service, Services, Subject};
use tower_http::catch_panic::ResponseForPanic;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::AppState;
use crate::problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Client-supplied request ids longer than this, or with characters other than visible
/// ASCII, are replaced: they end up in logs and responses.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Paths longer than this are not echoed back in problem `instance`s.
const MAX_INSTANCE_LEN: usize = 1024;

/// What a problem response needs to know about the request it answers.
#[derive(Clone, Debug)]
pub(crate) struct RequestInfo {
    pub id: String,
    pub instance: Option<String>,
}

tokio::task_local! {
    // A task-local rather than an argument, so that every problem — from a handler, an
    // extractor rejection or the panic catcher — can carry the request id without each
    // call site passing it along.
    static REQUEST: RequestInfo;
}

/// The request being served, if called while one is.
pub(crate) fn current_request() -> Option<RequestInfo> {
    REQUEST.try_with(Clone::clone).ok()
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// A bounded label for the method: a client can send any token as a method.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The outermost layer: gives the request an id and a span, records the metrics and echoes
/// `x-request-id`.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    // The route template, never the raw path, keeps the metrics' cardinality bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let id = request_id(&req);
    let header_value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &header_value {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let path = req.uri().path();
    let info = RequestInfo {
        id: id.clone(),
        instance: (path.len() <= MAX_INSTANCE_LEN).then(|| path.to_owned()),
    };

    let span = tracing::info_span!(
        "http.request",
        http.request.method = method,
        http.route = %route,
        request_id = %id,
        tenant.id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut response = REQUEST
        .scope(info, next.run(req))
        .instrument(span.clone())
        .await;

    let status = response.status();
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.record("http.response.status_code", status.as_u16());
    span.record("latency_ms", latency_ms);
    // The access log: one event per request, with every field at the top level so that a
    // JSON log line (MERIDIAN_LOG_FORMAT=json) is self-contained.
    let tenant = response.extensions().get::<TenantTag>().map(|t| t.0);
    let bytes = axum::body::HttpBody::size_hint(response.body()).exact();
    macro_rules! access {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                target: "meridian::access",
                method,
                route = %route,
                status = status.as_u16(),
                latency_ms,
                tenant = tenant.map(tracing::field::display),
                request_id = %id,
                bytes,
                $msg
            )
        };
    }
    if status.is_server_error() {
        access!(error, "request failed");
    } else {
        access!(info, "request");
    }
    crate::metrics::record_request(method, route, status.as_u16(), elapsed);

    if let Some(v) = header_value {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The gateway's part of the API configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The services this process runs; all of them in the all-in-one mode.
    pub services: Services,
    /// Per-tenant rate limits; `None` (or policy `off`) limits nothing. Applied only by a
    /// process that runs the gateway service.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Where the services this process does not run are (split mode).
    pub proxy: Option<Arc<Proxy>>,
    /// Origins allowed by CORS: empty for none, `*` for any.
    pub cors_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            services: Services::all(),
            rate_limiter: None,
            proxy: None,
            cors_origins: Vec::new(),
        }
    }
}

/// The tenant a response was produced for, for the access log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TenantTag(pub TenantId);

/// The plan a principal's tenant is on; an unknown plan is limited as the default one.
fn plan_of(principal: &meridian_store::Principal) -> &str {
    if principal.plan.is_empty() {
        meridian_gateway::Plans::DEFAULT
    } else {
        &principal.plan
    }
}

fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Per-tenant rate limiting. Runs inside authentication, so the principal is in the request:
/// authenticated requests are counted per (tenant, route class) with the tenant's plan; the
/// token endpoint per client IP. Other requests without a principal are left to the
/// authentication layer's refusal. Every limited response carries `RateLimit-Policy` and
/// `RateLimit`; a refusal is `429 rate_limited` with `Retry-After`. The response is tagged
/// with the tenant for the access log.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tenant = req
        .extensions()
        .get::<meridian_store::Principal>()
        .map(|p| p.tenant_id);
    with_tenant(limit(&state, req, next).await, tenant)
}

async fn limit(state: &AppState, req: Request, next: Next) -> Response {
    let gateway = &state.config.gateway;
    let Some(limiter) = gateway
        .rate_limiter
        .as_ref()
        .filter(|_| gateway.services.contains(Service::Gateway))
    else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !(path.starts_with("/v1/") || meridian_gateway::plan::is_token_endpoint(path)) {
        return next.run(req).await;
    }
    let class = RouteClass::of(req.method(), path);
    // Owned copies: the request moves on to the next layer.
    let principal = req
        .extensions()
        .get::<meridian_store::Principal>()
        .map(|p| (p.tenant_id.to_string(), plan_of(p).to_owned()));
    let (subject, plan) = match (class, &principal, client_ip(&req)) {
        (RouteClass::Auth, _, Some(ip)) => (Subject::Client(ip), meridian_gateway::Plans::DEFAULT),
        (RouteClass::Read | RouteClass::Write, Some((key, plan)), _) => {
            (Subject::Tenant(key), plan.as_str())
        }
        _ => return next.run(req).await,
    };
    let Some(verdict) = limiter.check(subject, plan, class).await else {
        return next.run(req).await;
    };
    if !verdict.allowed() {
        let mut problem = Problem::new(
            ErrorCode::RateLimited,
            format!(
                "too many {class} requests for this plan; retry in {} s",
                verdict.retry_after_secs()
            ),
        );
        for (name, value) in verdict.headers() {
            problem = problem.with_header(name, value);
        }
        return problem.into_response();
    }
    let mut response = next.run(req).await;
    response.headers_mut().extend(verdict.headers());
    response
}

fn with_tenant(mut response: Response, tenant: Option<TenantId>) -> Response {
    if let Some(t) = tenant {
        response.extensions_mut().insert(TenantTag(t));
    }
    response
}

/// Sends requests for services this process does not run to their upstream (split mode);
/// everything else goes on to the local handlers.
pub async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let gateway = &state.config.gateway;
    let Some(service) = Service::of_path(req.uri().path()) else {
        return next.run(req).await;
    };
    if gateway.services.contains(service) {
        return next.run(req).await;
    }
    let Some(proxy) = gateway.proxy.as_ref().filter(|p| p.has_upstream(service)) else {
        return Problem::new(
            ErrorCode::NotFound,
            format!("this process does not serve the {service} service"),
        )
        .into_response();
    };
    let ip = client_ip(&req);
    let tenant = req
        .extensions()
        .get::<meridian_store::Principal>()
        .map(|p| p.tenant_id);
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, state.config.body_limit_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than {} bytes or was cut off",
                    state.config.body_limit_bytes
                ),
            )
            .into_response();
        }
    };
    match proxy.forward(service, parts, body, ip).await {
        Ok(response) => with_tenant(response.map(axum::body::Body::new), tenant),
        Err(e) => {
            tracing::warn!(error = %e, upstream = service.as_str(), "cannot forward the request");
            let problem = match e {
                ProxyError::NoUpstream(_) => Problem::new(
                    ErrorCode::NotFound,
                    format!("this process does not serve the {service} service"),
                ),
                ProxyError::CircuitOpen(_) => Problem::new(
                    ErrorCode::Unavailable,
                    format!("the {service} service is failing; retry later"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
                ProxyError::Timeout(..) => Problem::new(
                    ErrorCode::GatewayTimeout,
                    format!("the {service} service did not answer in time"),
                ),
                ProxyError::Unreachable(..) => Problem::new(
                    ErrorCode::BadGateway,
                    format!("the {service} service cannot be reached; retry later"),
                ),
            };
            with_tenant(problem.into_response(), tenant)
        }
    }
}

/// CORS for the configured origins; `None` when none are configured.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                REQUEST_ID,
            ])
            .expose_headers([
                REQUEST_ID,
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
                header::RETRY_AFTER,
                header::LOCATION,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Answers `503 unavailable` when the rest of the stack takes longer than the configured
/// request timeout.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        // The work may still complete (an order placed, say): a client that retries with
        // the same Idempotency-Key gets that result rather than a second one.
        Err(_) => Problem::new(
            ErrorCode::Unavailable,
            format!("the request did not complete within {limit:?}; retry later"),
        )
        .into_response(),
    }
}

/// The fallback for paths no route matches.
pub async fn not_found() -> Problem {
    Problem::new(ErrorCode::NotFound, "no resource at this path")
}

/// The fallback for a known path with a method it does not support; axum adds `Allow`.
pub async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        format!("this resource does not support {}", method_label(&method)),
    )
}

/// Turns a panic into a `500 internal` problem. A panic is a bug: its message goes to the
/// log, never to the client.
#[derive(Clone, Copy, Debug)]
pub struct PanicToProblem;

impl ResponseForPanic for PanicToProblem {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(&mut self, err: Box<dyn Any + Send + 'static>) -> Response {
        let message = err
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
        Problem::internal(format!("handler panicked: {message}")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_problem_without_its_message() {
        let response = PanicToProblem.response_for_panic(Box::new("secret detail"));
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers()["content-type"],
            crate::problem::PROBLEM_JSON
        );
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "internal");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }

    #[tokio::test]
    async fn slow_requests_time_out_as_unavailable_problems() {
        use axum::Router;
        use axum::routing::get;
        use tower::ServiceExt;

        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "done"
                }),
            )
            .route("/fast", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_millis(20),
                timeout,
            ));
        let call = |uri: &'static str| {
            app.clone().oneshot(
                axum::http::Request::builder()
                    .uri(uri)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        };
        let slow = call("/slow").await.unwrap();
        assert_eq!(slow.status(), 503);
        let body = http_body_util::BodyExt::collect(slow.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "unavailable");
        assert_eq!(call("/fast").await.unwrap().status(), 200);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&m), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
