use std::fmt;

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Clients branch on these; never rename one.
///
/// The HTTP status for each code is decided in exactly one place, `meridian-api`'s problem
/// module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON, has unknown fields or the wrong types.
    MalformedRequest,
    /// The body parsed but some field is out of range; see `errors`.
    ValidationFailed,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The request's media type is not `application/json`.
    UnsupportedMediaType,
    /// No credentials, or credentials that are not valid.
    Unauthorized,
    /// Valid credentials without the right to do this.
    Forbidden,
    /// No such resource for this tenant.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// A resource with this natural key (SKU, warehouse code) already exists.
    AlreadyExists,
    /// An order line names a SKU that is not in the catalog.
    UnknownSku,
    /// Not enough available stock to allocate an order.
    InsufficientStock,
    /// The order's state does not allow this action.
    InvalidTransition,
    /// An `Idempotency-Key` was reused with a different request body.
    IdempotencyKeyReused,
    /// A stock adjustment would take on-hand below what is reserved or below zero.
    StockConflict,
    /// The order is on hold (a fraud screen or an operator held it): its shipments get no
    /// label and cannot ship, and it cannot be fulfilled, until the hold is released.
    OrderOnHold,
    /// A dependency (the store) cannot be reached right now; retry later.
    Unavailable,
    /// The tenant (or client) sent more requests than its plan allows; retry after the
    /// `Retry-After` delay.
    RateLimited,
    /// The gateway's upstream service failed or answered with an invalid response.
    BadGateway,
    /// The gateway's upstream service did not answer in time.
    GatewayTimeout,
    /// Token endpoint (RFC 6749 `invalid_grant`): the password, refresh token or other
    /// grant is wrong, expired, revoked or was already used.
    InvalidGrant,
    /// Token endpoint (RFC 6749 `invalid_client`): the client credentials are wrong.
    InvalidClient,
    /// Token endpoint (RFC 6749 `unsupported_grant_type`).
    UnsupportedGrantType,
    /// Token endpoint (RFC 6749 `invalid_scope`): a requested scope is unknown or beyond
    /// the client's.
    InvalidScope,
    /// A bug or an unexpected failure; details are in the server log, never in the response.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::MalformedRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AlreadyExists,
        ErrorCode::UnknownSku,
        ErrorCode::InsufficientStock,
        ErrorCode::InvalidTransition,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::StockConflict,
        ErrorCode::OrderOnHold,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::BadGateway,
        ErrorCode::GatewayTimeout,
        ErrorCode::InvalidGrant,
        ErrorCode::InvalidClient,
        ErrorCode::UnsupportedGrantType,
        ErrorCode::InvalidScope,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::UnknownSku => "unknown_sku",
            ErrorCode::InsufficientStock => "insufficient_stock",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::StockConflict => "stock_conflict",
            ErrorCode::OrderOnHold => "order_on_hold",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::GatewayTimeout => "gateway_timeout",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field: a JSON pointer-ish path (`lines[2].quantity`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in one input, so a client can fix them all at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s): {}", .0.len(), summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records the error of `result` under `field` and returns its value, if any.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new();
        e.push(field, message);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_string() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
