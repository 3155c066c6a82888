//! Extractors whose rejections are problem+json: JSON bodies, path parameters, query
//! parameters and the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use meridian_core::{ErrorCode, ValidationErrors};
use meridian_store::PageRequest;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::problem::Problem;

/// A JSON request body. Wrong or missing `Content-Type` is `415`, a body over the limit is
/// `413`, and JSON that does not fit `T` (syntax, types, unknown fields) is `400` with
/// serde's message and the path of the offending field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let bytes = read_json_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// A JSON body together with the digest that tells a retry from a different request: the
/// hex SHA-256 of its canonical form (object keys sorted, no insignificant whitespace), so
/// that key order and formatting do not matter.
#[derive(Debug)]
pub struct HashedJson<T> {
    pub value: T,
    pub hash: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for HashedJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let bytes = read_json_body(req, state).await?;
        // Parse into `T` first: it is strict (duplicate keys, unknown fields) and its errors
        // name the field.
        let value = parse(&bytes)?;
        let hash = canonical_hash(&bytes)?;
        Ok(HashedJson { value, hash })
    }
}

fn canonical_hash(bytes: &[u8]) -> Result<String, Problem> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::new(ErrorCode::MalformedRequest, format!("invalid JSON: {e}")))?;
    // A no-op unless serde_json's `preserve_order` is on somewhere in the build; either way
    // the canonical form does not depend on it.
    v.sort_all_objects();
    let canonical = serde_json::to_vec(&v).map_err(Problem::internal)?;
    Ok(hex(&Sha256::digest(&canonical)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, subtype)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

async fn read_json_body(req: Request, state: &AppState) -> Result<Bytes, Problem> {
    if !is_json(req.headers()) {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON with `Content-Type: application/json`",
        ));
    }
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than the limit of {} bytes",
                    state.config.body_limit_bytes
                ),
            )
        } else {
            Problem::new(
                ErrorCode::MalformedRequest,
                format!("the request body could not be read: {rejection}"),
            )
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Problem::new(
                ErrorCode::MalformedRequest,
                format!("invalid JSON: {inner}"),
            )
        } else {
            Problem::new(
                ErrorCode::MalformedRequest,
                format!("invalid JSON at `{path}`: {inner}"),
            )
            .with_errors([meridian_core::FieldError {
                field: path,
                message: inner.to_string(),
            }])
        }
    })?;
    de.end()
        .map_err(|e| Problem::new(ErrorCode::MalformedRequest, format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Path parameters. A path that cannot be decoded names no resource, so it is `404`, like
/// any unknown id.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T> FromRequestParts<AppState> for PathParams<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParams(v)),
            Err(e) if e.status().is_server_error() => Err(Problem::internal(e)),
            Err(_) => Err(Problem::new(
                ErrorCode::NotFound,
                "no resource at this path",
            )),
        }
    }
}

/// Query parameters as name/value pairs, read by the handler with [`QueryParams::take`].
/// Unknown or repeated parameters are validation errors, so a typo (`?stauts=`) is not
/// silently ignored.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl FromRequestParts<AppState> for QueryParams {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                Problem::from(ValidationErrors::single(
                    "query",
                    format!("cannot be decoded: {e}"),
                ))
            })?;
        Ok(QueryParams { pairs })
    }
}

impl QueryParams {
    /// Checks that only `allowed` parameters appear, each at most once.
    pub fn check_names(&self, allowed: &[&str], errors: &mut ValidationErrors) {
        for (i, (name, _)) in self.pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                errors.push(
                    name.clone(),
                    format!(
                        "is not a query parameter of this endpoint; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            } else if self.pairs[..i].iter().any(|(n, _)| n == name) {
                errors.push(name.clone(), "must be given at most once");
            }
        }
    }

    /// The value of `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `limit` (1 to 200, default 50) and `cursor`.
    pub fn page(&self, errors: &mut ValidationErrors) -> PageRequest {
        let limit = match self.get("limit") {
            None => PageRequest::DEFAULT_LIMIT,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=PageRequest::MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(
                        "limit",
                        format!("must be an integer from 1 to {}", PageRequest::MAX_LIMIT),
                    );
                    PageRequest::DEFAULT_LIMIT
                }
            },
        };
        PageRequest {
            limit,
            cursor: self.get("cursor").map(str::to_owned),
        }
    }
}

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap, errors: &mut ValidationErrors) -> Option<String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let value = values.next()?;
    if values.next().is_some() {
        errors.push(IDEMPOTENCY_KEY, "must be sent at most once");
        return None;
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN {
        errors.push(
            IDEMPOTENCY_KEY,
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
        );
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_graphic) {
        errors.push(
            IDEMPOTENCY_KEY,
            "may contain only visible ASCII characters (no spaces)",
        );
        return None;
    }
    // Checked above: every byte is visible ASCII.
    value.to_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types() {
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonx", false),
            ("+json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_json(&h), ok, "{ct}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn canonical_hash_ignores_key_order_and_whitespace() {
        let a = canonical_hash(br#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b = canonical_hash(br#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        let c = canonical_hash(br#"{"a":{"x":null,"y":[2,1]},"b":1}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        let check = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
            let mut e = ValidationErrors::new();
            (idempotency_key(&h, &mut e), e.is_empty())
        };
        assert_eq!(check(b"order-123"), (Some("order-123".into()), true));
        assert!(check(&[b'k'; 255]).1);
        assert_eq!(check(&[b'k'; 256]), (None, false));
        assert_eq!(check(b""), (None, false));
        assert_eq!(check(b"has space"), (None, false));
        assert_eq!(check(b"caf\xc3\xa9"), (None, false));
        let mut e = ValidationErrors::new();
        assert_eq!(idempotency_key(&HeaderMap::new(), &mut e), None);
        assert!(e.is_empty());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        lines: Vec<Line>,
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse::<Body>(br#"{"lines":[{"quantity":1},{"quantity":"2"}]}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::MalformedRequest);
        assert!(e.detail().contains("lines[1].quantity"), "{}", e.detail());
        let e = parse::<Body>(br#"{"lines":[],"extra":1}"#).unwrap_err();
        assert!(
            e.detail().contains("unknown field `extra`"),
            "{}",
            e.detail()
        );
        let e = parse::<Body>(br#"{"lines":[]} trailing"#).unwrap_err();
        assert!(e.detail().contains("trailing"), "{}", e.detail());
        assert!(parse::<Body>(b"{").is_err());
    }
}
