//! Labels on S3-compatible storage (cargo feature `s3`): `s3://bucket/prefix`, through the
//! `object_store` S3 client on the `ring` crypto provider.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::labels::{LabelStore, LabelStoreError, check_key, parse_s3_url};

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3LabelStoreConfig {
    pub bucket: String,
    /// Prepended to every key, without slashes at either end; may be empty.
    pub prefix: String,
    /// An S3-compatible server's base URL (`MERIDIAN_LABEL_STORE_ENDPOINT`). Requests to
    /// it are path-style (`{endpoint}/{bucket}/{key}`). `None` is AWS itself.
    pub endpoint: Option<String>,
    /// Whether plain `http://` endpoints are allowed (`MERIDIAN_LABEL_STORE_ALLOW_HTTP`).
    pub allow_http: bool,
    /// `AWS_*` settings as `object_store` names them without the prefix, lower case
    /// (`region`, `access_key_id`, `secret_access_key`, `session_token`, ...).
    pub aws: Vec<(String, String)>,
    /// Trust for https endpoints (the system roots plus `MERIDIAN_HTTP_CA_FILE`).
    pub outbound: meridian_http::Outbound,
    /// The limit on one request to the bucket.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3LabelStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The AWS settings carry credentials: only their names are shown.
        let aws: Vec<&str> = self.aws.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("S3LabelStoreConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("aws", &aws)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl S3LabelStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix/path` with defaults for the rest.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (bucket, prefix) = parse_s3_url(url).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Self {
            bucket,
            prefix,
            endpoint: None,
            allow_http: false,
            aws: Vec::new(),
            outbound: meridian_http::Outbound::system(),
            timeout: Duration::from_secs(30),
        })
    }
}

/// Labels as objects in one bucket under a prefix. `put` is a single PUT, which S3 applies
/// whole; the bucket's own durability applies.
#[derive(Debug)]
pub struct S3LabelStore {
    inner: Arc<dyn ObjectStore>,
    config: S3LabelStoreConfig,
}

impl S3LabelStore {
    /// Builds the client; does not contact the bucket (see [`LabelStore::check`]).
    pub fn new(config: S3LabelStoreConfig) -> Result<Self, LabelStoreError> {
        meridian_http::install_crypto_provider();
        let mut builder = AmazonS3Builder::new();
        for (key, value) in &config.aws {
            match key.parse::<AmazonS3ConfigKey>() {
                Ok(k) => builder = builder.with_config(k, value),
                Err(_) => {
                    tracing::debug!(key, "ignoring an AWS setting the S3 client does not know")
                }
            }
        }
        let mut options = ClientOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .with_allow_http(config.allow_http);
        if let Some(pem) = config.outbound.ca_pem() {
            let certs = object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| LabelStoreError::Unavailable(format!("bad CA file: {e}")))?;
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        builder = builder
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_client_options(options)
            // The label consumer owns retries (with dead letters and replay); the client
            // only rides out a brief hiccup.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let inner = builder.build().map_err(|e| {
            LabelStoreError::Unavailable(format!(
                "cannot set up the S3 client for bucket {}: {e}",
                config.bucket
            ))
        })?;
        Ok(Self {
            inner: Arc::new(inner),
            config,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    fn path(&self, key: &str) -> Result<Path, LabelStoreError> {
        check_key(key)?;
        Ok(if self.config.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.config.prefix))
        })
    }

    fn unavailable(&self, what: &str, key: &str, e: object_store::Error) -> LabelStoreError {
        tracing::error!(error = %e, bucket = %self.config.bucket, key, "S3 {what} failed");
        LabelStoreError::Unavailable(format!(
            "cannot {what} {key} in S3 bucket {}: {}",
            self.config.bucket,
            short(&e)
        ))
    }
}

/// The first line of an `object_store` error, which can be long (request URLs, XML).
fn short(e: &object_store::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

#[async_trait]
impl LabelStore for S3LabelStore {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LabelStoreError> {
        let path = self.path(key)?;
        self.inner
            .put(&path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable("write", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LabelStoreError> {
        let path = self.path(key)?;
        match self.inner.get(&path).await {
            Ok(found) => found
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| self.unavailable("read", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable("read", key, e)),
        }
    }

    /// Lists the prefix: fails for a missing bucket, refused credentials or an endpoint
    /// that does not answer.
    async fn check(&self) -> Result<(), LabelStoreError> {
        let prefix =
            (!self.config.prefix.is_empty()).then(|| Path::from(self.config.prefix.as_str()));
        self.inner
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(error = %e, bucket = %self.config.bucket, "S3 label store check failed");
                LabelStoreError::Unavailable(format!(
                    "cannot list S3 bucket {}{}: {}",
                    self.config.bucket,
                    self.config
                        .endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default(),
                    short(&e)
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let c = S3LabelStoreConfig::from_url("s3://labels").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("labels", ""));
        let c = S3LabelStoreConfig::from_url("s3://my-bucket.eu/meridian/prod/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket.eu", "meridian/prod")
        );
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://b_ad",
            "s3://-bucket",
            "s3://bucket/../x",
            "s3://bucket/a b",
            "file://x",
            "bucket",
        ] {
            assert!(S3LabelStoreConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
