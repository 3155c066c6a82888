//! The reverse proxy to split-mode services: one pooled keep-alive HTTP/1 client, per-upstream
//! timeouts and circuit breaker, retries for idempotent requests only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::routing::Service;

pub const UPSTREAM_REQUESTS_TOTAL: &str = "meridian_gateway_upstream_requests_total";
pub const UPSTREAM_DURATION_SECONDS: &str = "meridian_gateway_upstream_duration_seconds";
pub const BREAKER_STATE: &str = "meridian_gateway_breaker_state";

#[derive(Clone, Copy, Debug)]
pub struct ProxyConfig {
    /// Longest wait for a TCP connection to an upstream.
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response headers, per attempt.
    pub request_timeout: Duration,
    /// Extra attempts for idempotent requests after a connection failure or a timeout.
    pub retries: u32,
    pub breaker: BreakerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            retries: 1,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no upstream is configured for the {0} service")]
    NoUpstream(Service),
    #[error("the {0} service is failing; its circuit is open")]
    CircuitOpen(Service),
    #[error("the {0} service did not answer within {1:?}")]
    Timeout(Service, Duration),
    #[error("the {0} service cannot be reached: {1}")]
    Unreachable(Service, String),
}

struct Upstream {
    service: Service,
    base: Uri,
    breaker: Breaker,
}

/// Forwards requests to the services this process does not run.
pub struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    upstreams: BTreeMap<Service, Upstream>,
    config: ProxyConfig,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Whether repeating the request cannot do twice what it did once: safe and idempotent
/// methods, and POSTs carrying an `Idempotency-Key` (the server deduplicates them).
pub fn is_retryable(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || (*method == Method::POST && headers.contains_key("idempotency-key"))
}

impl Proxy {
    pub fn new(upstreams: BTreeMap<Service, Uri>, config: ProxyConfig) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let upstreams = upstreams
            .into_iter()
            .map(|(service, base)| {
                metrics::gauge!(BREAKER_STATE, "upstream" => service.as_str()).set(0.0);
                let upstream = Upstream {
                    service,
                    base,
                    breaker: Breaker::new(config.breaker),
                };
                (service, upstream)
            })
            .collect();
        Proxy {
            client,
            upstreams,
            config,
        }
    }

    pub fn has_upstream(&self, service: Service) -> bool {
        self.upstreams.contains_key(&service)
    }

    /// Each upstream's address and circuit state, for `/readyz`.
    pub fn upstreams(&self) -> Vec<(Service, String, BreakerState)> {
        self.upstreams
            .values()
            .map(|u| (u.service, u.base.to_string(), u.breaker.state()))
            .collect()
    }

    /// Sends the request to `service`'s upstream and returns its response (body streamed).
    pub async fn forward(
        &self,
        service: Service,
        mut parts: http::request::Parts,
        body: Bytes,
        client_ip: Option<IpAddr>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let upstream = self
            .upstreams
            .get(&service)
            .ok_or(ProxyError::NoUpstream(service))?;
        let name = service.as_str();
        let retryable = is_retryable(&parts.method, &parts.headers);
        let attempts = if retryable {
            1 + self.config.retries
        } else {
            1
        };

        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        if let Some(ip) = client_ip {
            let forwarded = match parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                parts.headers.insert("x-forwarded-for", v);
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = format!(
            "http://{}{path}",
            upstream
                .base
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
        )
        .parse()
        .map_err(|e: http::uri::InvalidUri| ProxyError::Unreachable(service, e.to_string()))?;

        let mut last_error = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            if !upstream.breaker.try_acquire() {
                metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => name, "outcome" => "circuit_open").increment(1);
                return Err(last_error.unwrap_or(ProxyError::CircuitOpen(service)));
            }
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = parts.headers.clone();
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(self.config.request_timeout, self.client.request(request))
                    .await;
            metrics::histogram!(UPSTREAM_DURATION_SECONDS, "upstream" => name)
                .record(started.elapsed().as_secs_f64());
            let error = match outcome {
                Ok(Ok(mut response)) => {
                    upstream.breaker.on_success();
                    self.publish_state(upstream);
                    metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => name, "outcome" => "ok").increment(1);
                    strip_hop_by_hop(response.headers_mut());
                    return Ok(response);
                }
                Ok(Err(e)) => {
                    metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => name, "outcome" => "error").increment(1);
                    ProxyError::Unreachable(service, error_chain(&e))
                }
                Err(_) => {
                    metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => name, "outcome" => "timeout").increment(1);
                    ProxyError::Timeout(service, self.config.request_timeout)
                }
            };
            tracing::warn!(upstream = name, attempt, error = %error, "upstream request failed");
            upstream.breaker.on_failure();
            self.publish_state(upstream);
            last_error = Some(error);
        }
        Err(last_error.unwrap_or(ProxyError::CircuitOpen(service)))
    }

    fn publish_state(&self, upstream: &Upstream) {
        metrics::gauge!(BREAKER_STATE, "upstream" => upstream.service.as_str())
            .set(upstream.breaker.state().gauge());
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_are_retryable() {
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", HeaderValue::from_static("k1"));
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_retryable(&m, &none), "{m}");
        }
        assert!(!is_retryable(&Method::POST, &none));
        assert!(is_retryable(&Method::POST, &keyed));
        assert!(!is_retryable(&Method::PATCH, &keyed));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get(header::AUTHORIZATION).is_some() && h.get("x-request-id").is_some());
    }
}
