//! SMS through an HTTP provider: one JSON `POST` per message to the provider's URL,
//! `{"to", "from", "body"}`, with a bearer token when one is configured. 2xx is sent; 5xx,
//! 429 and transport failures are retried like webhooks; any other status fails the
//! message.

use std::time::{Duration, Instant};

use crate::retry::{Outcome, parse_retry_after};

/// The SMS provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsConfig {
    /// Where messages are posted.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The sender id or number.
    pub from: String,
}

impl SmsConfig {
    /// Keeps the token out of logs.
    pub fn redacted(&self) -> String {
        format!("{} (from {})", self.url, self.from)
    }
}

/// The longest SMS body sent; longer ones are cut (providers split or refuse them).
pub const MAX_BODY: usize = 1600;

/// A phone number in E.164 form (`+` and 8 to 15 digits), from an order's
/// `customer.phone`.
pub fn phone_number(data: &serde_json::Value) -> Option<String> {
    let p: String = data
        .get("customer")?
        .get("phone")?
        .as_str()?
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = p.strip_prefix('+')?;
    (digits.len() >= 8 && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(p)
}

/// Sends one message.
pub async fn send(
    client: &reqwest::Client,
    config: &SmsConfig,
    to: &str,
    body: &str,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let body: String = body.chars().take(MAX_BODY).collect();
    let mut request = client
        .post(&config.url)
        .json(&serde_json::json!({"to": to, "from": config.from, "body": body}));
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let outcome = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            let _ = response.bytes().await;
            Outcome::from_status(status, retry_after)
        }
        Err(e) if e.is_timeout() => {
            Outcome::Transport("the SMS provider did not answer in time".into())
        }
        Err(e) if e.is_connect() => Outcome::Transport("cannot connect to the SMS provider".into()),
        Err(e) => Outcome::Transport(format!("the SMS request failed: {e}")),
    };
    (outcome, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_e164() {
        let p = |v: serde_json::Value| phone_number(&serde_json::json!({"customer": {"phone": v}}));
        assert_eq!(p("+49 (30) 123-4567".into()), Some("+49301234567".into()));
        assert_eq!(p("0301234567".into()), None);
        assert_eq!(p("+12".into()), None);
        assert_eq!(p("+1234567890123456".into()), None);
        assert_eq!(p(serde_json::json!(491234)), None);
        assert_eq!(phone_number(&serde_json::json!({})), None);
    }
}
