//! Sending one signed webhook delivery over HTTP, and checking an endpoint's settings.

use std::time::{Duration, Instant};

use meridian_store::notify::{Notification, WebhookEndpoint};

use crate::retry::{Outcome, parse_retry_after};
use crate::secrets::SecretSealer;
use crate::signing;

/// The longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;

/// Checks an endpoint URL: absolute `http` or `https`, with a host, no credentials and no
/// fragment. Returns it as given.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    Ok(())
}

/// The HTTP client deliveries go out through: no redirects (a redirect is a refusal), a
/// per-request timeout, pooled connections, https trusting `outbound`'s roots, and unless
/// `guard` allows private addresses, every resolved address checked at connect time.
pub fn client(
    timeout: Duration,
    outbound: &meridian_http::Outbound,
    guard: meridian_http::AddressGuard,
) -> reqwest::Client {
    outbound
        .guarded_builder(guard)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Meridian-Webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(64)
        .build()
        .expect("the webhook HTTP client builds")
}

/// The client for providers the operator configured (the SMS provider): no address guard.
pub fn provider_client(timeout: Duration, outbound: &meridian_http::Outbound) -> reqwest::Client {
    outbound
        .builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Meridian-Notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the provider HTTP client builds")
}

/// The secrets that sign a delivery now: the current one, and the previous one while its
/// rotation grace period lasts, opened with `sealer` if they are sealed at rest.
pub fn signing_secrets(
    endpoint: &WebhookEndpoint,
    sealer: Option<&SecretSealer>,
    now: meridian_core::Timestamp,
) -> Result<Vec<String>, crate::secrets::SecretError> {
    let open = |stored: &str| crate::secrets::open(sealer, endpoint.tenant_id, stored);
    let mut secrets = vec![open(&endpoint.secret)?];
    if let (Some(prev), Some(until)) = (
        endpoint.previous_secret.as_deref(),
        endpoint.previous_secret_expires_at,
    ) && until > now
    {
        secrets.push(open(prev)?);
    }
    Ok(secrets)
}

/// Posts `notification`'s payload to `endpoint`, signed, and says how it went and how long
/// it took.
pub async fn deliver(
    client: &reqwest::Client,
    guard: meridian_http::AddressGuard,
    sealer: Option<&SecretSealer>,
    endpoint: &WebhookEndpoint,
    notification: &Notification,
) -> (Outcome, Duration) {
    // A literal address never reaches the client's resolver: checked here, at send time.
    match reqwest::Url::parse(&endpoint.url) {
        Ok(url) => {
            if let Err(why) = guard.check_url(&url) {
                return (
                    Outcome::Undeliverable(format!("the endpoint's address is refused: {why}")),
                    Duration::ZERO,
                );
            }
        }
        Err(e) => {
            return (
                Outcome::Undeliverable(format!("the endpoint URL is invalid: {e}")),
                Duration::ZERO,
            );
        }
    }
    let now = meridian_core::now();
    let id = notification.id.to_string();
    let timestamp = now.timestamp();
    let body = notification.payload.as_bytes();
    let secrets = match signing_secrets(endpoint, sealer, now) {
        Ok(s) => s,
        Err(e) => return (Outcome::Undeliverable(e.to_string()), Duration::ZERO),
    };
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let signature = match signing::signature_header(&secrets, &id, timestamp, body) {
        Ok(s) => s,
        Err(e) => {
            return (
                Outcome::Transport(format!("cannot sign: {e}")),
                Duration::ZERO,
            );
        }
    };
    let started = Instant::now();
    let result = client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(notification.payload.clone())
        .send()
        .await;
    let outcome = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            // Read (and drop) the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            Outcome::from_status(status, retry_after)
        }
        Err(e) if e.is_timeout() => {
            Outcome::Transport("the endpoint did not answer in time".into())
        }
        Err(e) if is_refused_address(&e) => Outcome::Undeliverable(
            "the endpoint's host resolves only to non-public addresses".into(),
        ),
        Err(e) if e.is_connect() => Outcome::Transport("cannot connect to the endpoint".into()),
        Err(e) => Outcome::Transport(format!("the request failed: {e}")),
    };
    (outcome, started.elapsed())
}

/// Whether the request failed because the address guard refused every address.
fn is_refused_address(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<meridian_http::guard::NotPublic>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://example.com/hooks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x?y=1").is_ok());
        for bad in [
            "ftp://example.com",
            "example.com/hook",
            "https://user:pw@example.com",
            "https://example.com/#frag",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }
}
