//! Authentication and authorization: who is calling, for which tenant, and whether they
//! may do what the route does.
//!
//! 1. [`Credential::from_headers`] parses `Authorization: Bearer <token>`: an API key
//!    (`mk_...`) or a JWT (three dot-separated segments).
//! 2. The [`authenticate`] middleware, on every `/v1` route but the token endpoints,
//!    verifies it with the [`AuthService`] (a JWT locally, against the key set and the
//!    revocation set; an API key through a short cache in front of the store), checks the
//!    route's [`Permission`] from [`required_permission`] (`403 forbidden` if the role or
//!    the scopes lack it), and puts the [`Principal`] into the request's extensions, where
//!    the layers inside it (rate limits) and the handlers find it.
//! 3. [`TenantContext`] is the extractor handlers take. It carries the tenant every store
//!    call is scoped by, so a handler cannot forget it (DESIGN.md §4.4).

mod service;

pub use service::{AuthConfig, AuthService, IssuedTokens, Rejection, refresh_token_hash};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_auth::Permission;
use meridian_core::{ErrorCode, TenantId};
use meridian_store::Principal;

use crate::AppState;
use crate::problem::Problem;

/// A credential presented with a request, before it is verified.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A Meridian API key: `mk_<id>_<secret>`.
    ApiKey(String),
    /// A JWT access token from `/v1/auth/token`.
    Jwt(String),
}

// Never print a secret, even in debug output.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("ApiKey(..)"),
            Credential::Jwt(_) => f.write_str("Jwt(..)"),
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
                "this endpoint needs `Authorization: Bearer <access token or API key>`",
                r#"Bearer realm="meridian""#,
            ),
            AuthFailure::Malformed(why) => {
                (why, r#"Bearer realm="meridian", error="invalid_request""#)
            }
            AuthFailure::Rejected => (
                "the credential is unknown, expired, invalid or revoked",
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
        } else if token.split('.').count() == 3 && token.len() <= 8192 {
            Ok(Credential::Jwt(token.to_owned()))
        } else {
            Err(AuthFailure::Malformed(
                "the bearer token is neither a Meridian API key nor a JWT",
            ))
        }
    }

    fn token(&self) -> &str {
        match self {
            Credential::ApiKey(t) | Credential::Jwt(t) => t,
        }
    }
}

/// The principal a credential stands for. A store that cannot answer is a
/// `503 unavailable`, not a `401`: the key may well be valid.
pub async fn verify(service: &AuthService, credential: &Credential) -> Result<Principal, Problem> {
    match service.authenticate(credential.token()).await {
        Ok(p) => Ok(p),
        Err(Rejection::Store(e)) => Err(Problem::from(e)),
        Err(why) => {
            tracing::info!(reason = %why, "credential refused");
            Err(AuthFailure::Rejected.into())
        }
    }
}

/// The permission each `/v1` route needs, by method and route template. A route missing
/// here is refused to everyone (`403`): access is granted by listing, never by omission.
pub fn required_permission(method: &Method, route: &str) -> Option<Permission> {
    use Permission::*;
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let p = match (route, write) {
        ("/v1/products" | "/v1/products/{sku}", false) => CatalogRead,
        ("/v1/products" | "/v1/products/{sku}", true) => CatalogWrite,
        ("/v1/warehouses", false) => InventoryRead,
        ("/v1/warehouses", true) => InventoryWrite,
        (r, false) if r.starts_with("/v1/inventory/") => InventoryRead,
        (r, true) if r.starts_with("/v1/inventory/") => InventoryWrite,
        ("/v1/orders" | "/v1/orders/{id}" | "/v1/orders/{id}/events", false) => OrdersRead,
        (
            "/v1/orders"
            | "/v1/orders/{id}/cancel"
            | "/v1/orders/{id}/fulfill"
            | "/v1/orders/{id}/hold"
            | "/v1/orders/{id}/release",
            true,
        ) => OrdersWrite,
        (
            "/v1/shipments"
            | "/v1/shipments/{id}"
            | "/v1/shipments/{id}/label"
            | "/v1/shipments/{id}/label-url",
            false,
        ) => ShipmentsRead,
        ("/v1/shipments/{id}/tracking", true) => ShipmentsWrite,
        ("/v1/dead-letters" | "/v1/dead-letters/{id}", false) => DeadLettersRead,
        ("/v1/dead-letters/{id}/replay", true) => DeadLettersReplay,
        ("/v1/api-keys", false) => ApiKeysRead,
        ("/v1/api-keys" | "/v1/api-keys/{id}" | "/v1/api-keys/{id}/rotate", true) => ApiKeysManage,
        ("/v1/users" | "/v1/users/{id}", false) => UsersRead,
        ("/v1/users" | "/v1/users/{id}", true) => UsersManage,
        (
            "/v1/webhooks"
            | "/v1/webhooks/{id}"
            | "/v1/webhooks/{id}/deliveries"
            | "/v1/notifications"
            | "/v1/templates"
            | "/v1/templates/{id}",
            false,
        ) => NotificationsRead,
        ("/v1/templates/preview", true) => NotificationsRead,
        ("/v1/templates" | "/v1/templates/{id}", true) => NotificationsManage,
        (
            "/v1/webhooks"
            | "/v1/webhooks/{id}"
            | "/v1/webhooks/{id}/rotate-secret"
            | "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            true,
        ) => NotificationsManage,
        ("/v1/auth/signing-keys/rotate", true) => SigningKeysRotate,
        (r, false) if r == "/v1/plugin-audit" || r.starts_with("/v1/plugins") => PluginsRead,
        (r, true) if r.starts_with("/v1/plugins") => PluginsManage,
        _ => return None,
    };
    Some(p)
}

/// Middleware for every authenticated route: verifies the bearer credential, checks the
/// route's permission and stores the [`Principal`] in the request extensions.
/// Unauthenticated is `401`, not permitted `403`.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match Credential::from_headers(request.headers()) {
        Ok(c) => match verify(&state.auth, &c).await {
            Ok(p) => p,
            Err(problem) => return problem.into_response(),
        },
        Err(f) => return Problem::from(f).into_response(),
    };
    tracing::Span::current().record("tenant.id", tracing::field::display(principal.tenant_id));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or_default();
    let permitted = required_permission(request.method(), route).is_some_and(|p| principal.can(p));
    if !permitted {
        return Problem::new(
            ErrorCode::Forbidden,
            format!(
                "a {} credential{} may not {} {route}",
                principal.role,
                if principal.scopes == meridian_auth::Scopes::ALL {
                    ""
                } else {
                    " with these scopes"
                },
                request.method()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The authenticated caller of a `/v1` request. Take it as the first argument of every
/// tenant-scoped handler and pass `tenant_id` to the store.
#[derive(Clone, Debug)]
pub struct TenantContext {
    pub tenant_id: TenantId,
    pub principal: Principal,
}

impl FromRequestParts<AppState> for TenantContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Problem> {
        // Only `authenticate` puts a principal here, after the route's permission check. A
        // handler mounted outside it is a wiring error: refuse rather than authenticate
        // without the permission check (default deny).
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                Problem::internal("a tenant-scoped route is not behind the authentication layer")
            })?;
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
            &["Bearer eyJhbGciOi.x"],
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
    fn jwts_are_recognized_by_shape() {
        assert_eq!(
            Credential::from_headers(&headers(&["Bearer aaa.bbb.ccc"])),
            Ok(Credential::Jwt("aaa.bbb.ccc".into()))
        );
    }

    #[test]
    fn every_route_template_names_a_permission() {
        for (m, r) in [
            (Method::GET, "/v1/products"),
            (Method::DELETE, "/v1/products/{sku}"),
            (Method::PUT, "/v1/inventory/{warehouse_code}/{sku}"),
            (Method::POST, "/v1/orders/{id}/cancel"),
            (Method::POST, "/v1/orders/{id}/hold"),
            (Method::POST, "/v1/orders/{id}/release"),
            (Method::POST, "/v1/dead-letters/{id}/replay"),
            (Method::GET, "/v1/shipments/{id}/label"),
            (Method::POST, "/v1/shipments/{id}/tracking"),
            (Method::POST, "/v1/api-keys/{id}/rotate"),
            (Method::PATCH, "/v1/users/{id}"),
            (Method::GET, "/v1/webhooks/{id}/deliveries"),
            (
                Method::POST,
                "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            ),
        ] {
            assert!(required_permission(&m, r).is_some(), "{m} {r}");
        }
        assert_eq!(required_permission(&Method::GET, "/v1/unknown"), None);
        assert_eq!(
            required_permission(&Method::POST, "/v1/dead-letters"),
            None,
            "no such write route"
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = Credential::ApiKey("mk_secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
