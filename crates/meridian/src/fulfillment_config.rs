//! The fulfillment service's settings: `[fulfillment]` in `meridian.toml`, overridden by
//! `MERIDIAN_CARRIER_URL`, `MERIDIAN_CARRIER_TIMEOUT_MS` and
//! `MERIDIAN_CARRIER_WEBHOOK_SECRET` (see docs/fulfillment.md).

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

/// `[fulfillment]` in `meridian.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FulfillmentFile {
    carrier_url: Option<String>,
    carrier_timeout_ms: Option<u64>,
    carrier_webhook_secret: Option<String>,
}

/// The validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FulfillmentSettings {
    /// The HTTP carrier's base URL. When set, new shipments go to the `http` carrier;
    /// otherwise to the built-in `manual` one.
    pub carrier_url: Option<String>,
    /// The limit on one carrier call.
    pub carrier_timeout: Duration,
    /// The secret of the HTTP carrier's signed tracking webhooks
    /// (`POST /v1/carrier-webhooks/tracking`); without it the route answers 503.
    pub carrier_webhook_secret: Option<String>,
}

impl FulfillmentSettings {
    pub fn load(
        file: FulfillmentFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FulfillmentSettings> {
        let carrier_url = env("MERIDIAN_CARRIER_URL")
            .or(file.carrier_url)
            .filter(|s| !s.trim().is_empty());
        if let Some(url) = &carrier_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                bail!("invalid MERIDIAN_CARRIER_URL={url:?}: expected http://host[:port][/path]");
            }
        }
        let timeout_ms = match env("MERIDIAN_CARRIER_TIMEOUT_MS") {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                anyhow::anyhow!("invalid MERIDIAN_CARRIER_TIMEOUT_MS={v:?}: expected milliseconds")
            })?,
            None => file.carrier_timeout_ms.unwrap_or(10_000),
        };
        if !(1..=120_000).contains(&timeout_ms) {
            bail!("invalid MERIDIAN_CARRIER_TIMEOUT_MS={timeout_ms}: expected 1 to 120000");
        }
        let carrier_webhook_secret = env("MERIDIAN_CARRIER_WEBHOOK_SECRET")
            .or(file.carrier_webhook_secret)
            .filter(|s| !s.trim().is_empty());
        if carrier_webhook_secret
            .as_ref()
            .is_some_and(|s| s.len() < 16)
        {
            bail!("invalid MERIDIAN_CARRIER_WEBHOOK_SECRET: use at least 16 characters");
        }
        Ok(FulfillmentSettings {
            carrier_webhook_secret,
            carrier_url,
            carrier_timeout: Duration::from_millis(timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<FulfillmentSettings> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        FulfillmentSettings::load(FulfillmentFile::default(), &|k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_to_the_manual_carrier() {
        let s = load(&[]).unwrap();
        assert_eq!(s.carrier_url, None);
        assert_eq!(s.carrier_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_http_carrier_is_checked() {
        let s = load(&[
            ("MERIDIAN_CARRIER_URL", "http://carrier:8080"),
            ("MERIDIAN_CARRIER_TIMEOUT_MS", "2500"),
        ])
        .unwrap();
        assert_eq!(s.carrier_url.as_deref(), Some("http://carrier:8080"));
        assert_eq!(s.carrier_timeout, Duration::from_millis(2500));
        for bad in ["carrier:8080", "ftp://x", "http://"] {
            let e = load(&[("MERIDIAN_CARRIER_URL", bad)]).unwrap_err();
            assert!(e.to_string().contains("MERIDIAN_CARRIER_URL"), "{e}");
        }
        let e = load(&[("MERIDIAN_CARRIER_WEBHOOK_SECRET", "short")]).unwrap_err();
        assert!(
            e.to_string().contains("MERIDIAN_CARRIER_WEBHOOK_SECRET"),
            "{e}"
        );
        let e = load(&[("MERIDIAN_CARRIER_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(e.to_string().contains("MERIDIAN_CARRIER_TIMEOUT_MS"), "{e}");
    }
}
