//! The OAuth 2.0 token endpoint (RFC 6749), token revocation (RFC 7009), the JWKS and the
//! OpenID discovery document.
//!
//! Grants: `client_credentials` (an API key's id and secret, by `client_secret_post` or
//! `client_secret_basic`), `password` (a user's email and password; first-party UI login)
//! and `refresh_token` (rotating: every use returns a new refresh token, and presenting a
//! spent one revokes its whole family). Errors are problem+json with a stable `code` and the
//! RFC 6749 `error` member.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use meridian_auth::{Scopes, password};
use meridian_core::{ApiKeyId, ErrorCode, TenantId};
use meridian_store::{RefreshOutcome, Subject};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{AuthService, IssuedTokens, TenantContext, refresh_token_hash};
use crate::problem::{Problem, ProblemDetails};

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// An EdDSA-signed JWT.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// For the password and refresh grants: the next refresh token, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

fn oauth(code: ErrorCode, error: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(code, detail).with_oauth_error(error)
}

fn invalid_request(detail: impl Into<String>) -> Problem {
    oauth(ErrorCode::MalformedRequest, "invalid_request", detail)
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, Problem> {
    fn decode(s: &str) -> Option<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = s.get(i + 1..i + 3)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    let body = std::str::from_utf8(body).map_err(|_| invalid_request("the form is not UTF-8"))?;
    let mut params = HashMap::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (decode(k), decode(v)) else {
            return Err(invalid_request("the form has a malformed percent-escape"));
        };
        // RFC 6749 §3.2: parameters must not be repeated.
        if params.insert(k.clone(), v).is_some() {
            return Err(invalid_request(format!("the parameter {k:?} is repeated")));
        }
    }
    Ok(params)
}

/// The request's parameters, from a form (RFC 6749) or a JSON object of strings.
fn parameters(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        parse_form(body)
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice::<HashMap<String, String>>(body)
            .map_err(|e| invalid_request(format!("the body is not a JSON object of strings: {e}")))
    } else {
        Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            "send application/x-www-form-urlencoded (or application/json)",
        )
        .with_oauth_error("invalid_request"))
    }
}

/// The client's address, for the per-IP login throttle.
fn client_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> String {
    connect.map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn respond(tokens: IssuedTokens) -> Response {
    no_store(
        Json(TokenResponse {
            access_token: tokens.access_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            scope: tokens.scope,
            refresh_token: tokens.refresh_token,
        })
        .into_response(),
    )
}

fn requested_scopes(params: &HashMap<String, String>, allowed: Scopes) -> Result<Scopes, Problem> {
    match params.get("scope") {
        None => Ok(allowed),
        Some(s) => {
            let requested =
                Scopes::parse(s).map_err(|e| oauth(ErrorCode::InvalidScope, "invalid_scope", e))?;
            if requested.intersect(allowed) != requested {
                return Err(oauth(
                    ErrorCode::InvalidScope,
                    "invalid_scope",
                    "a requested scope is beyond what the client may have",
                ));
            }
            Ok(requested)
        }
    }
}

/// Issue tokens (OAuth 2.0 token endpoint).
///
/// `grant_type=client_credentials` with `client_id` (the API key's id) and `client_secret`
/// (the whole API key, or its secret part), in the form or by HTTP Basic;
/// `grant_type=password` with `username` (email), `password` and, when the email belongs to
/// users of several tenants, `tenant_id`; `grant_type=refresh_token` with `refresh_token`.
#[utoipa::path(
    post, path = "/v1/auth/token", operation_id = "issue_token", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", content = String,
        description = "RFC 6749 token request parameters (JSON object of strings also accepted)"),
    responses(
        (status = 200, description = "Tokens", body = TokenResponse),
        (status = 400, description = "invalid_request, invalid_grant, unsupported_grant_type, invalid_scope", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "invalid_client", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this account or address", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let params = parameters(&headers, &body)?;
    let auth = state.auth.as_ref();
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => client_credentials(auth, &headers, &params).await,
        Some("password") => {
            password_grant(auth, &params, client_ip(connect.as_ref().map(|c| &c.0))).await
        }
        Some("refresh_token") => refresh_grant(auth, &params).await,
        Some(other) => Err(oauth(
            ErrorCode::UnsupportedGrantType,
            "unsupported_grant_type",
            format!(
                "grant type {other:?} is not supported; use client_credentials, password or refresh_token"
            ),
        )),
        None => Err(invalid_request("grant_type is required")),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

async fn client_credentials(
    auth: &AuthService,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Response, Problem> {
    let (id, secret) = match (
        basic_credentials(headers),
        params.get("client_id"),
        params.get("client_secret"),
    ) {
        (Some(basic), None, None) => basic,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => {
            return Err(oauth(
                ErrorCode::InvalidClient,
                "invalid_client",
                "authenticate the client with client_id and client_secret, in the form or by \
                 HTTP Basic (one way only)",
            ));
        }
    };
    let bad_client = || {
        oauth(
            ErrorCode::InvalidClient,
            "invalid_client",
            "the client id or secret is wrong, or the key is expired or revoked",
        )
    };
    let key_id: ApiKeyId = id.parse().map_err(|_| bad_client())?;
    let token = if secret.starts_with("mk_") {
        secret
    } else {
        format!("mk_{}_{}", key_id.as_uuid().simple(), secret)
    };
    let principal = auth
        .store()
        .authenticate(&token)
        .await?
        .filter(|p| p.subject == Subject::ApiKey(key_id))
        .ok_or_else(bad_client)?;
    let scopes = requested_scopes(params, principal.scopes)?;
    let issued = auth.issue_access_token(
        principal.tenant_id,
        principal.subject,
        principal.role,
        scopes,
        &principal.plan,
    )?;
    tracing::info!(api_key.id = %key_id, tenant.id = %principal.tenant_id, "access token issued to an api key");
    Ok(respond(issued))
}

async fn password_grant(
    auth: &AuthService,
    params: &HashMap<String, String>,
    ip: String,
) -> Result<Response, Problem> {
    let (Some(email), Some(password)) = (params.get("username"), params.get("password")) else {
        return Err(invalid_request("username and password are required"));
    };
    let tenant: Option<TenantId> = match params.get("tenant_id") {
        Some(t) => Some(
            t.parse()
                .map_err(|_| invalid_request("tenant_id is not a tenant id"))?,
        ),
        None => None,
    };
    let account = format!(
        "{}|{}",
        email.trim().to_lowercase(),
        tenant.map(|t| t.to_string()).unwrap_or_default()
    );
    let now = Instant::now();
    for (throttle, key) in [(&auth.account_throttle, &account), (&auth.ip_throttle, &ip)] {
        if let Err(retry) = throttle.check(key, now) {
            let secs = retry.as_secs().max(1);
            return Err(Problem::new(
                ErrorCode::RateLimited,
                format!("too many failed logins; retry in {secs} s"),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(secs)));
        }
    }
    let candidates: Vec<_> = auth
        .store()
        .user_logins(email)
        .await?
        .into_iter()
        .filter(|l| tenant.is_none_or(|t| l.user.tenant_id == t))
        .collect();
    // The password is checked before anything is said about the email, so a caller who
    // does not know it learns nothing (not even that the email exists in several tenants),
    // and an unknown email costs the same hash as a known one.
    let presented = password.clone();
    let mut matching = tokio::task::spawn_blocking(move || {
        if candidates.is_empty() {
            password::verify_dummy(&presented);
        }
        candidates
            .into_iter()
            .filter(|l| password::verify(&presented, &l.password_hash))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(Problem::internal)?;
    if matching.len() > 1 {
        return Err(invalid_request(
            "this email and password belong to users of several tenants; pass tenant_id",
        ));
    }
    let Some(login) = matching.pop() else {
        auth.account_throttle.fail(&account, now);
        auth.ip_throttle.fail(&ip, now);
        return Err(oauth(
            ErrorCode::InvalidGrant,
            "invalid_grant",
            "the email or password is wrong",
        ));
    };
    auth.account_throttle.clear(&account);
    let user = login.user;
    let scopes = requested_scopes(params, Scopes::ALL)?;
    let mut issued = auth.issue_access_token(
        user.tenant_id,
        Subject::User(user.id),
        user.role,
        scopes,
        &login.plan,
    )?;
    let (refresh, record) = auth.new_refresh_token(user.tenant_id, user.id, None);
    auth.store().create_refresh_token(record).await?;
    issued.refresh_token = Some(refresh);
    tracing::info!(user.id = %user.id, tenant.id = %user.tenant_id, "user logged in");
    Ok(respond(issued))
}

async fn refresh_grant(
    auth: &AuthService,
    params: &HashMap<String, String>,
) -> Result<Response, Problem> {
    let Some(presented) = params.get("refresh_token") else {
        return Err(invalid_request("refresh_token is required"));
    };
    // Tenant and user are taken from the stored token; these placeholders are replaced.
    let (next, record) =
        auth.new_refresh_token(TenantId::new(), meridian_core::UserId::new(), None);
    match auth
        .store()
        .rotate_refresh_token(&refresh_token_hash(presented), record)
        .await?
    {
        RefreshOutcome::Rotated(r) => {
            let scopes = requested_scopes(params, Scopes::ALL)?;
            let mut issued = auth.issue_access_token(
                r.user.tenant_id,
                Subject::User(r.user.id),
                r.user.role,
                scopes,
                &r.plan,
            )?;
            issued.refresh_token = Some(next);
            Ok(respond(issued))
        }
        RefreshOutcome::Reused => {
            tracing::warn!("a spent refresh token was presented; its family is revoked");
            Err(oauth(
                ErrorCode::InvalidGrant,
                "invalid_grant",
                "the refresh token was already used; every token of this session is revoked",
            ))
        }
        RefreshOutcome::Invalid => Err(oauth(
            ErrorCode::InvalidGrant,
            "invalid_grant",
            "the refresh token is unknown, expired or revoked",
        )),
    }
}

/// Revoke a token (RFC 7009): a refresh token (its whole family) or an access token (by
/// its `jti`, on every instance at once). Unknown tokens are answered 200 as well.
#[utoipa::path(
    post, path = "/v1/auth/revoke", operation_id = "revoke_token", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", content = String,
        description = "`token` and optionally `token_type_hint`"),
    responses(
        (status = 200, description = "Revoked, or not a token of ours"),
        (status = 400, description = "No token", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let params = parameters(&headers, &body)?;
    let Some(token) = params.get("token") else {
        return Err(invalid_request("token is required"));
    };
    let auth = state.auth.as_ref();
    if token.starts_with("mr_") {
        auth.store()
            .revoke_refresh_token(&refresh_token_hash(token))
            .await?;
    } else if let Some(claims) = auth.claims_for_revocation(token) {
        auth.revoke_access_token(&claims).await?;
        tracing::info!(jti = %claims.jti, "access token revoked");
    }
    Ok(no_store(StatusCode::OK.into_response()))
}

/// The public keys that verify Meridian access tokens (RFC 7517), current and recently
/// retired.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", operation_id = "jwks", tag = "auth",
    responses((status = 200, description = "The JSON Web Key Set", body = Object))
)]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut r = Json(state.auth.jwks().as_ref().clone()).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

/// OpenID Connect discovery (the subset an OAuth 2.0 client and a JWT verifier need).
#[utoipa::path(
    get, path = "/.well-known/openid-configuration", operation_id = "openid_configuration", tag = "auth",
    responses((status = 200, description = "The discovery document", body = Object))
)]
pub async fn openid_configuration(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let issuer = state.auth.config().issuer.trim_end_matches('/').to_owned();
    let base = if issuer.starts_with("http://") || issuer.starts_with("https://") {
        issuer.clone()
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        format!("http://{host}")
    };
    Json(serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/auth/token"),
        "revocation_endpoint": format!("{base}/v1/auth/revoke"),
        "grant_types_supported": ["client_credentials", "password", "refresh_token"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
        "scopes_supported": Scopes::ALL.names(),
    }))
}

/// Rotate the JWT signing keys now (platform admins). The previous keys stay published
/// until the tokens they signed have expired.
#[utoipa::path(
    post, path = "/v1/auth/signing-keys/rotate", operation_id = "rotate_signing_keys", tag = "auth",
    responses(
        (status = 200, description = "The new key id", body = Object),
        (status = 401, description = "Missing or invalid credential", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not a platform admin", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_signing_keys(
    _ctx: TenantContext,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, Problem> {
    let kid = state.auth.rotate_now().await.map_err(Problem::internal)?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_per_the_spec() {
        let p = parse_form(b"grant_type=password&username=a%40b.c&password=x+y%2Bz").unwrap();
        assert_eq!(p["grant_type"], "password");
        assert_eq!(p["username"], "a@b.c");
        assert_eq!(p["password"], "x y+z");
        assert!(parse_form(b"a=1&a=2").is_err());
        assert!(parse_form(b"a=%zz").is_err());
        assert!(parse_form(b"a=%4").is_err());
    }
}
