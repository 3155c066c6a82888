//! RFC 9457 problem details: the one error type handlers return and the one table that maps
//! an [`ErrorCode`] to an HTTP status.
//!
//! Every error the API sends is `application/problem+json` with a stable `code`. Store errors
//! are translated here; the causes of `internal` and `unavailable` errors are logged and never
//! sent to the client.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_core::{ErrorCode, FieldError, ValidationErrors};
use meridian_orders::Shortage;
use meridian_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::layers::current_request;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status of each error code. This is the only place that decides it.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
        ErrorCode::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        // Ordering another tenant's SKU must look exactly like ordering one that does not
        // exist, and tenant isolation answers 404 (DESIGN.md §4.4), so unknown SKUs are 404.
        ErrorCode::UnknownSku => StatusCode::NOT_FOUND,
        ErrorCode::InsufficientStock => StatusCode::CONFLICT,
        ErrorCode::InvalidTransition => StatusCode::CONFLICT,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::StockConflict => StatusCode::CONFLICT,
        ErrorCode::OrderOnHold => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorCode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        // RFC 6749 §5.2: token endpoint errors are 400, except a failed client
        // authentication, which is 401.
        ErrorCode::InvalidGrant => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
        ErrorCode::UnsupportedGrantType => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidScope => StatusCode::BAD_REQUEST,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A short, stable summary of a code; the `detail` says what happened this time.
fn title_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::MalformedRequest => "Malformed request",
        ErrorCode::ValidationFailed => "Validation failed",
        ErrorCode::PayloadTooLarge => "Payload too large",
        ErrorCode::UnsupportedMediaType => "Unsupported media type",
        ErrorCode::Unauthorized => "Unauthorized",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::NotFound => "Not found",
        ErrorCode::MethodNotAllowed => "Method not allowed",
        ErrorCode::AlreadyExists => "Already exists",
        ErrorCode::UnknownSku => "Unknown SKU",
        ErrorCode::InsufficientStock => "Insufficient stock",
        ErrorCode::InvalidTransition => "Invalid transition",
        ErrorCode::IdempotencyKeyReused => "Idempotency key reused",
        ErrorCode::StockConflict => "Stock conflict",
        ErrorCode::OrderOnHold => "Order on hold",
        ErrorCode::Unavailable => "Service unavailable",
        ErrorCode::RateLimited => "Too many requests",
        ErrorCode::BadGateway => "Bad gateway",
        ErrorCode::GatewayTimeout => "Gateway timeout",
        ErrorCode::InvalidGrant => "Invalid grant",
        ErrorCode::InvalidClient => "Invalid client",
        ErrorCode::UnsupportedGrantType => "Unsupported grant type",
        ErrorCode::InvalidScope => "Invalid scope",
        ErrorCode::Internal => "Internal error",
    }
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldErrorDto {
    /// Where the problem is, such as `lines[2].quantity` or `price.currency`.
    pub field: String,
    pub message: String,
}

/// A SKU that could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ShortageDto {
    pub sku: String,
    pub requested: i64,
    /// Available across all warehouses.
    pub available: i64,
    /// Available in the best single warehouse. With `priority` or `most_stock` allocation a
    /// line must fit in one warehouse; `split` may still succeed when `available` suffices.
    pub max_in_one_warehouse: i64,
}

impl From<&Shortage> for ShortageDto {
    fn from(s: &Shortage) -> Self {
        Self {
            sku: s.sku.to_string(),
            requested: s.requested,
            available: s.available,
            max_in_one_warehouse: s.max_in_one_warehouse,
        }
    }
}

/// The body of every error response (RFC 9457), with Meridian's extension members.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem: `urn:meridian:problem:{code}`.
    #[serde(rename = "type")]
    pub r#type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong this time, for a human.
    pub detail: String,
    /// The stable, machine-readable error code; clients branch on this.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// Every invalid field, so that a client can fix them all at once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<FieldErrorDto>,
    /// The request path this problem occurred on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub instance: Option<String>,
    /// The request's `x-request-id`, to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    /// For `insufficient_stock`: each SKU that is short.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shortages: Option<Vec<ShortageDto>>,
    /// On the token and revocation endpoints: the RFC 6749 §5.2 error code
    /// (`invalid_grant`, `invalid_client`, ...), for OAuth client libraries.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "invalid_grant")]
    pub error: Option<String>,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct Problem(Box<Inner>);

// Boxed: handlers return `Result<_, Problem>` everywhere, and the happy path should not pay
// for moving a large error variant around.
#[derive(Debug)]
struct Inner {
    code: ErrorCode,
    detail: String,
    errors: Vec<FieldErrorDto>,
    shortages: Option<Vec<ShortageDto>>,
    oauth_error: Option<&'static str>,
    headers: HeaderMap,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            shortages: None,
            oauth_error: None,
            headers: HeaderMap::new(),
        }))
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.0.code)
    }

    /// `422 validation_failed` listing every invalid field.
    pub fn validation(errors: ValidationErrors) -> Self {
        let detail = match errors.0.len() {
            1 => "the request has 1 invalid field; see `errors`".to_owned(),
            n => format!("the request has {n} invalid fields; see `errors`"),
        };
        Self::new(ErrorCode::ValidationFailed, detail).with_errors(errors.0)
    }

    pub fn not_found(what: &str, key: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} {key} not found"))
    }

    /// A failure whose cause must not reach the client: logs `cause` and answers with a
    /// generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "an unexpected error occurred; it has been logged",
        )
    }

    pub fn with_errors(mut self, errors: impl IntoIterator<Item = FieldError>) -> Self {
        self.0
            .errors
            .extend(errors.into_iter().map(|e| FieldErrorDto {
                field: e.field,
                message: e.message,
            }));
        self
    }

    /// Adds the RFC 6749 §5.2 `error` member (token and revocation endpoints).
    pub fn with_oauth_error(mut self, error: &'static str) -> Self {
        self.0.oauth_error = Some(error);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    pub fn errors(&self) -> &[FieldErrorDto] {
        &self.0.errors
    }

    fn into_details(self) -> (ProblemDetails, HeaderMap) {
        let status = self.status();
        let request = current_request();
        let Inner {
            code,
            detail,
            errors,
            shortages,
            oauth_error,
            headers,
        } = *self.0;
        let details = ProblemDetails {
            r#type: format!("urn:meridian:problem:{}", code.as_str()),
            title: title_of(code).to_owned(),
            status: status.as_u16(),
            detail,
            code: code.as_str().to_owned(),
            errors,
            instance: request.as_ref().and_then(|r| r.instance.clone()),
            request_id: request.map(|r| r.id),
            shortages,
            error: oauth_error.map(str::to_owned),
        };
        (details, headers)
    }
}

impl From<ValidationErrors> for Problem {
    fn from(errors: ValidationErrors) -> Self {
        Problem::validation(errors)
    }
}

impl From<StoreError> for Problem {
    fn from(err: StoreError) -> Self {
        let code = err.code();
        match err {
            StoreError::Validation(errors) => Problem::validation(errors),
            StoreError::InsufficientStock(ref shortages) => {
                let dtos = shortages.iter().map(ShortageDto::from).collect();
                let mut p = Problem::new(code, err.to_string());
                p.0.shortages = Some(dtos);
                p
            }
            StoreError::Unavailable(ref cause) => {
                tracing::error!(error = %cause, "store unavailable");
                Problem::new(
                    code,
                    "the service cannot reach its store right now; retry later",
                )
            }
            StoreError::Internal(ref cause) => Problem::internal(cause),
            StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::UnknownSkus(_)
            | StoreError::InvalidTransition { .. }
            | StoreError::IllegalTransition(_)
            | StoreError::IdempotencyKeyReused(_)
            | StoreError::StockConflict(_)
            | StoreError::OrderOnHold(_) => Problem::new(code, err.to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let (details, headers) = self.into_details();
        let body = match serde_json::to_vec(&details) {
            Ok(body) => body,
            // Serializing strings and integers cannot fail; keep a body anyway.
            Err(_) => br#"{"type":"urn:meridian:problem:internal","title":"Internal error","status":500,"detail":"an unexpected error occurred","code":"internal"}"#.to_vec(),
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response();
        response.headers_mut().extend(headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_4xx_or_5xx_status() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
        }
    }

    #[test]
    fn internal_store_errors_do_not_leak_their_cause() {
        for err in [
            StoreError::Internal("disk /var/secret exploded".into()),
            StoreError::Unavailable("connection to 10.0.0.7 refused".into()),
        ] {
            let p = Problem::from(err);
            assert!(p.status().is_server_error());
            assert!(!p.detail().contains("secret"));
            assert!(!p.detail().contains("10.0.0.7"));
        }
    }

    #[test]
    fn store_validation_errors_keep_their_fields() {
        let p = Problem::from(StoreError::Validation(ValidationErrors::single(
            "cursor", "bad",
        )));
        assert_eq!(p.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.errors()[0].field, "cursor");
    }
}
