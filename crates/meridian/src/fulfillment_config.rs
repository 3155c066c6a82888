//! The fulfillment service's settings: `[fulfillment]` in `meridian.toml`, overridden by
//! `MERIDIAN_CARRIER_URL`, `MERIDIAN_CARRIER_TIMEOUT_MS`, `MERIDIAN_CARRIER_WEBHOOK_SECRET`,
//! `MERIDIAN_AWAIT_SCREENING` and the label store's `MERIDIAN_LABEL_STORE*` (with `AWS_*`
//! for S3; see
//! docs/fulfillment.md).

use std::path::PathBuf;
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
    await_screening: Option<bool>,
    label_store: Option<String>,
    label_store_endpoint: Option<String>,
    label_store_allow_http: Option<bool>,
}

/// The AWS settings the S3 label store reads from the environment (credentials, region,
/// and the other ways AWS hands out credentials: containers, web identity, instance
/// metadata).
const AWS_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
];

/// Where labels are kept (`MERIDIAN_LABEL_STORE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelStoreSetting {
    /// A directory; `None` is `{MERIDIAN_DATA_DIR}/objects`. Unset, or `file://DIR`.
    Local(Option<PathBuf>),
    /// `s3://bucket[/prefix]`.
    S3 {
        bucket: String,
        prefix: String,
        /// `MERIDIAN_LABEL_STORE_ENDPOINT`: an S3-compatible server, addressed path-style.
        endpoint: Option<String>,
        /// `MERIDIAN_LABEL_STORE_ALLOW_HTTP`: whether a plain-http endpoint is allowed.
        allow_http: bool,
        /// The `AWS_*` variables that are set.
        aws: AwsSettings,
    },
}

/// The `AWS_*` variables that are set, as lower-case keys (`aws_region`, ...). They carry
/// credentials, so `Debug` shows only the names.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsSettings(pub Vec<(String, String)>);

impl std::fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl LabelStoreSetting {
    fn load(file: &mut FulfillmentFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let url = env("MERIDIAN_LABEL_STORE")
            .or(file.label_store.take())
            .filter(|s| !s.trim().is_empty());
        let endpoint = env("MERIDIAN_LABEL_STORE_ENDPOINT")
            .or(file.label_store_endpoint.take())
            .filter(|s| !s.trim().is_empty());
        let allow_http = match env("MERIDIAN_LABEL_STORE_ALLOW_HTTP") {
            None => file.label_store_allow_http.unwrap_or(false),
            Some(v) => match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!("invalid MERIDIAN_LABEL_STORE_ALLOW_HTTP={v:?}: expected true or false"),
            },
        };
        let Some(url) = url else {
            if endpoint.is_some() {
                bail!(
                    "MERIDIAN_LABEL_STORE_ENDPOINT is set but MERIDIAN_LABEL_STORE is not an s3:// URL"
                );
            }
            return Ok(LabelStoreSetting::Local(None));
        };
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                bail!("invalid MERIDIAN_LABEL_STORE={url:?}: expected file://DIRECTORY");
            }
            if endpoint.is_some() {
                bail!(
                    "MERIDIAN_LABEL_STORE_ENDPOINT is set but MERIDIAN_LABEL_STORE is not an s3:// URL"
                );
            }
            return Ok(LabelStoreSetting::Local(Some(PathBuf::from(dir))));
        }
        if !url.starts_with("s3://") {
            bail!(
                "invalid MERIDIAN_LABEL_STORE={url:?}: expected s3://bucket[/prefix] or file://DIRECTORY"
            );
        }
        let (bucket, prefix) = meridian_fulfillment_service::parse_s3_url(&url)
            .map_err(|e| anyhow::anyhow!("invalid MERIDIAN_LABEL_STORE={url:?}: {e}"))?;
        if let Some(e) = &endpoint {
            let plain = e.starts_with("http://");
            let host = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                bail!("invalid MERIDIAN_LABEL_STORE_ENDPOINT={e:?}: expected an https:// URL");
            }
            if plain && !allow_http {
                bail!(
                    "MERIDIAN_LABEL_STORE_ENDPOINT={e:?} is plain http: set MERIDIAN_LABEL_STORE_ALLOW_HTTP=true to allow it"
                );
            }
        }
        let aws = AwsSettings(
            AWS_VARS
                .iter()
                .filter_map(|k| env(k).map(|v| (k.to_ascii_lowercase(), v)))
                .collect(),
        );
        Ok(LabelStoreSetting::S3 {
            bucket,
            prefix,
            endpoint,
            allow_http,
            aws,
        })
    }
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
    /// Labels wait for the order's first screening decision (`MERIDIAN_AWAIT_SCREENING`,
    /// off by default): for deployments that run a screening plugin such as
    /// `fraud-screen`.
    pub await_screening: bool,
    /// Where labels are kept.
    pub label_store: LabelStoreSetting,
}

impl FulfillmentSettings {
    pub fn load(
        mut file: FulfillmentFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FulfillmentSettings> {
        let label_store = LabelStoreSetting::load(&mut file, env)?;
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
        let await_screening = match env("MERIDIAN_AWAIT_SCREENING").as_deref().map(str::trim) {
            None => file.await_screening.unwrap_or(false),
            Some("true" | "1" | "on") => true,
            Some("false" | "0" | "off" | "") => false,
            Some(other) => {
                bail!("invalid MERIDIAN_AWAIT_SCREENING={other:?}: expected true or false")
            }
        };
        Ok(FulfillmentSettings {
            await_screening,
            label_store,
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

    #[test]
    fn awaiting_screening_is_off_unless_asked_for() {
        assert!(!load(&[]).unwrap().await_screening);
        assert!(
            load(&[("MERIDIAN_AWAIT_SCREENING", "true")])
                .unwrap()
                .await_screening
        );
        assert!(
            !load(&[("MERIDIAN_AWAIT_SCREENING", "off")])
                .unwrap()
                .await_screening
        );
        let e = load(&[("MERIDIAN_AWAIT_SCREENING", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("MERIDIAN_AWAIT_SCREENING"), "{e}");
    }

    #[test]
    fn the_label_store_is_chosen_by_url() {
        assert_eq!(
            load(&[]).unwrap().label_store,
            LabelStoreSetting::Local(None)
        );
        assert_eq!(
            load(&[("MERIDIAN_LABEL_STORE", "file:///var/labels")])
                .unwrap()
                .label_store,
            LabelStoreSetting::Local(Some("/var/labels".into()))
        );
        let s = load(&[
            ("MERIDIAN_LABEL_STORE", "s3://labels-eu/meridian/prod/"),
            ("MERIDIAN_LABEL_STORE_ENDPOINT", "http://127.0.0.1:9000"),
            ("MERIDIAN_LABEL_STORE_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_REGION", "eu-central-1"),
        ])
        .unwrap();
        assert!(
            !format!("{s:?}").contains("AKIA"),
            "credentials stay out of Debug"
        );
        assert_eq!(
            s.label_store,
            LabelStoreSetting::S3 {
                bucket: "labels-eu".into(),
                prefix: "meridian/prod".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                allow_http: true,
                aws: AwsSettings(vec![
                    ("aws_access_key_id".into(), "AKIA".into()),
                    ("aws_region".into(), "eu-central-1".into()),
                ]),
            }
        );
        for (vars, needle) in [
            (
                &[("MERIDIAN_LABEL_STORE", "gs://bucket")][..],
                "expected s3://",
            ),
            (&[("MERIDIAN_LABEL_STORE", "s3://Bad_Bucket")][..], "bucket"),
            (
                &[("MERIDIAN_LABEL_STORE", "s3://bucket/../x")][..],
                "prefix",
            ),
            (
                &[("MERIDIAN_LABEL_STORE", "file://")][..],
                "file://DIRECTORY",
            ),
            (
                &[
                    ("MERIDIAN_LABEL_STORE", "s3://bucket"),
                    ("MERIDIAN_LABEL_STORE_ENDPOINT", "http://127.0.0.1:9000"),
                ][..],
                "MERIDIAN_LABEL_STORE_ALLOW_HTTP",
            ),
            (
                &[("MERIDIAN_LABEL_STORE_ENDPOINT", "https://s3.example")][..],
                "not an s3:// URL",
            ),
            (
                &[
                    ("MERIDIAN_LABEL_STORE", "s3://bucket"),
                    ("MERIDIAN_LABEL_STORE_ALLOW_HTTP", "yes"),
                ][..],
                "MERIDIAN_LABEL_STORE_ALLOW_HTTP",
            ),
        ] {
            let e = load(vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }
}
