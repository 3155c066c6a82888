//! Authentication: who is calling, and for which tenant.
//!
//! Three steps, kept apart so that JWTs (a later issue) slot in without touching handlers:
//! 1. [`Credential::from_headers`] parses `Authorization: Bearer <token>` into a credential
//!    kind. Today there is one kind, the API key (`mk_...`); a JWT variant will be recognized
//!    by its shape (three dot-separated segments).
//! 2. [`Authenticator`] verifies a credential and returns the store's [`Principal`]; a JWT
//!    arm will verify the signature locally instead of asking the store.
//! 3. [`TenantContext`] is the extractor handlers take. It carries the tenant every store
//!    call is scoped by, so a handler cannot forget it (DESIGN.md §4.4).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use meridian_core::{ErrorCode, TenantId};
use meridian_store::{Principal, Store};

use crate::AppState;
use crate::problem::Problem;

/// A credential presented with a request, before it is verified.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A Meridian API key: `mk_<id>_<secret>`.
    ApiKey(String),
}

// Never print a secret, even in debug output.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("ApiKey(..)"),
        }
    }
}

/// Why a request is not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>` with a token we recognize.
    Malformed(&'static str),
    /// A well-formed token that is unknown or revoked.
    Rejected,
}

impl From<AuthFailure> for Problem {
    fn from(f: AuthFailure) -> Self {
        // RFC 6750 §3: no error attribute when no credentials were sent.
        let (detail, challenge) = match f {
            AuthFailure::Missing => (
                "this endpoint needs `Authorization: Bearer <api key>`",
                r#"Bearer realm="meridian""#,
            ),
            AuthFailure::Malformed(why) => {
                (why, r#"Bearer realm="meridian", error="invalid_request""#)
            }
            AuthFailure::Rejected => (
                "the API key is unknown or has been revoked",
                r#"Bearer realm="meridian", error="invalid_token""#,
            ),
        };
        Problem::new(ErrorCode::Unauthorized, detail).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )
    }
}

impl Credential {
    /// Reads the credential from `Authorization: Bearer <token>` (the scheme is
    /// case-insensitive, RFC 9110 §11.1).
    pub fn from_headers(headers: &HeaderMap) -> Result<Credential, AuthFailure> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed(
                "send exactly one Authorization header",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| AuthFailure::Malformed("the Authorization header is not ASCII"))?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed(
            "the Authorization header must be `Bearer <token>`",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::Malformed(
                "the Authorization scheme must be Bearer",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthFailure::Malformed("the bearer token is empty"));
        }
        if token.starts_with("mk_") {
            Ok(Credential::ApiKey(token.to_owned()))
        } else {
            Err(AuthFailure::Malformed(
                "the bearer token is not a Meridian API key",
            ))
        }
    }
}

/// Verifies credentials.
pub struct Authenticator<'a> {
    store: &'a dyn Store,
}

impl<'a> Authenticator<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    /// The principal a credential stands for. A store that cannot answer is a
    /// `503 unavailable`, not a `401`: the key may well be valid.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Principal, Problem> {
        match credential {
            Credential::ApiKey(token) => self
                .store
                .authenticate(token)
                .await?
                .ok_or_else(|| AuthFailure::Rejected.into()),
        }
    }
}

/// The authenticated caller of a `/v1` request. Take it as the first argument of every
/// tenant-scoped handler and pass `tenant_id` to the store.
#[derive(Clone, Copy, Debug)]
pub struct TenantContext {
    pub tenant_id: TenantId,
    pub principal: Principal,
}

impl FromRequestParts<AppState> for TenantContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let credential = Credential::from_headers(&parts.headers)?;
        let principal = Authenticator::new(state.store.as_ref())
            .authenticate(&credential)
            .await?;
        tracing::Span::current().record("tenant.id", tracing::field::display(principal.tenant_id));
        Ok(TenantContext {
            tenant_id: principal.tenant_id,
            principal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_api_keys_are_recognized() {
        assert_eq!(
            Credential::from_headers(&headers(&["Bearer mk_abc"])),
            Ok(Credential::ApiKey("mk_abc".into()))
        );
        assert_eq!(
            Credential::from_headers(&headers(&["bearer mk_abc"])),
            Ok(Credential::ApiKey("mk_abc".into()))
        );
    }

    #[test]
    fn everything_else_is_refused() {
        assert_eq!(
            Credential::from_headers(&HeaderMap::new()),
            Err(AuthFailure::Missing)
        );
        for bad in [
            &["Basic dXNlcjpwYXNz"][..],
            &["Bearer"],
            &["Bearer  "],
            &["Bearer eyJhbGciOi.x.y"],
            &["mk_abc"],
            &["Bearer mk_a", "Bearer mk_b"],
        ] {
            assert!(
                matches!(
                    Credential::from_headers(&headers(bad)),
                    Err(AuthFailure::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = Credential::ApiKey("mk_secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
