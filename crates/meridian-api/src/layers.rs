//! Cross-cutting request handling: request ids, the request span, metrics, the timeout, the
//! panic catcher and the 404/405 fallbacks.

use std::any::Any;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header::HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_core::ErrorCode;
use tower_http::catch_panic::ResponseForPanic;
use tracing::Instrument;

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
    span.record("http.response.status_code", status.as_u16());
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    if status.is_server_error() {
        tracing::error!(parent: &span, "request failed");
    } else {
        tracing::debug!(parent: &span, "request finished");
    }
    crate::metrics::record_request(method, route, status.as_u16(), elapsed);

    if let Some(v) = header_value {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
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
