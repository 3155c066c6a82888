//! The Rust SDK for Meridian plugins.
//!
//! A plugin talks to the platform only through its sidecar, a small HTTP server on
//! `127.0.0.1` started next to it by the instance manager, which passes the sidecar's
//! address and the per-instance token in the environment (`MERIDIAN_SIDECAR_URL`,
//! `MERIDIAN_SIDECAR_TOKEN`). [`Sidecar`] is an async client of that API (docs/plugins.md
//! §6) and [`run`] the usual poll → handle → ack loop. The crate depends on no Meridian
//! crate, so a plugin can be built from it alone.
//!
//! ```no_run
//! use meridian_plugin_sdk::{Delivery, RunOptions, Sidecar, Start, run};
//!
//! # async fn plugin() -> Result<(), meridian_plugin_sdk::Error> {
//! let sidecar = Sidecar::from_env()?;
//! sidecar
//!     .subscribe("orders", "platform.oms.order.created", Start::Earliest)
//!     .await?;
//! let handler = |message: Delivery| {
//!     let sidecar = sidecar.clone();
//!     async move {
//!         let event = &message.event;
//!         sidecar
//!             .publish("platform.oms.fraud.decision")
//!             .tenant(event.tenant.as_deref().unwrap_or_default())
//!             .send(&serde_json::json!({"order_id": event.data["id"]}))
//!             .await
//!             .map(|_| ())
//!     }
//! };
//! run(&sidecar, "orders", RunOptions::default(), tokio::signal::ctrl_c(), handler).await
//! # }
//! ```
//!
//! Every error answer of the sidecar (`application/problem+json`) is an
//! [`Error::Problem`] carrying its stable `code` (`acl_denied`, `not_found`, ...).

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The variable holding the sidecar's base URL.
pub const URL_VAR: &str = "MERIDIAN_SIDECAR_URL";
/// The variable holding the per-instance bearer token.
pub const TOKEN_VAR: &str = "MERIDIAN_SIDECAR_TOKEN";

/// What went wrong talking to the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sidecar answered with an error (`application/problem+json`).
    #[error("{status} {code}: {detail}")]
    Problem {
        /// The HTTP status.
        status: u16,
        /// The problem's stable code, e.g. `acl_denied`, `not_found`, `validation_failed`,
        /// `unauthorized`, `unavailable` (`http_{status}` if the answer had none).
        code: String,
        /// The human-readable explanation.
        detail: String,
        /// The whole problem document (`Value::Null` if the body was not JSON).
        problem: Value,
    },
    /// No answer came: the sidecar is not listening, or the connection broke.
    #[error("cannot reach the sidecar: {0}")]
    Unreachable(String),
    /// The client could not be set up (a missing or invalid URL or token).
    #[error("invalid sidecar client settings: {0}")]
    Config(String),
    /// The sidecar answered with something this SDK cannot read.
    #[error("unexpected answer from the sidecar: {0}")]
    BadResponse(String),
}

impl Error {
    /// A stable code for every error: the problem's `code`, or `unreachable`,
    /// `invalid_config`, `bad_response`.
    pub fn code(&self) -> &str {
        match self {
            Error::Problem { code, .. } => code,
            Error::Unreachable(_) => "unreachable",
            Error::Config(_) => "invalid_config",
            Error::BadResponse(_) => "bad_response",
        }
    }

    /// The HTTP status of a problem answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether asking again later cannot help: the token is wrong or the subscription (or
    /// route) does not exist.
    fn is_fatal(&self) -> bool {
        matches!(self.code(), "unauthorized" | "not_found" | "invalid_config")
    }

    /// Reads an error answer's body as a problem document.
    fn from_answer(status: StatusCode, body: &[u8]) -> Error {
        let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let code = problem["code"]
            .as_str()
            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
        let detail = problem["detail"].as_str().map_or_else(
            || status.canonical_reason().unwrap_or("error").to_owned(),
            str::to_owned,
        );
        Error::Problem {
            status: status.as_u16(),
            code,
            detail,
            problem,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// Only messages published after it is created (the default).
    #[default]
    New,
    /// Every message the bus still holds.
    Earliest,
}

impl Start {
    fn as_str(self) -> &'static str {
        match self {
            Start::New => "new",
            Start::Earliest => "earliest",
        }
    }
}

/// An event as the sidecar hands it over: the CloudEvents envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event id (a UUID): make handlers idempotent by it.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// RFC 3339.
    pub time: String,
    /// The ordering key (aggregate id).
    #[serde(default)]
    pub subject: String,
    /// The tenant the event belongs to.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub data: Value,
    /// The envelope's other attributes (`specversion`, `datacontenttype`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Settle it with [`Sidecar::ack`] or [`Sidecar::nack`].
    pub delivery_id: u64,
    /// 1 for the first delivery, more for redeliveries.
    pub attempt: u32,
    /// The full topic (`deployment.{id}.platform...`).
    pub topic: String,
    pub event: Event,
}

/// The answer to a publish: the event's id and its full topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub id: String,
    pub topic: String,
}

/// The answer to an ack or nack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// Deliveries settled.
    pub settled: u64,
    /// Delivery ids the sidecar did not know (settled already, or expired).
    #[serde(default)]
    pub unknown: Vec<u64>,
}

/// The plugin's identity and configuration, as `GET /v1/config` answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginConfig {
    pub plugin: String,
    pub version: String,
    pub pool: String,
    pub deployment: String,
    /// The tenant the plugin is bound to, if any.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The plugin's own configuration, checked against the manifest's `config_schema`.
    #[serde(default)]
    pub config: Value,
}

/// A client of the plugin's sidecar. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Sidecar {
    base: Url,
    token: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Sidecar")
            .field("url", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// How long a request may take by default (a long poll adds its own wait to it).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A client of the sidecar at `url` (e.g. `http://127.0.0.1:40117`) with `token`.
    pub fn new(url: &str, token: &str) -> Result<Sidecar> {
        if url.is_empty() {
            return Err(Error::Config(format!(
                "the sidecar URL is empty ({URL_VAR})"
            )));
        }
        if token.is_empty() {
            return Err(Error::Config(format!(
                "the sidecar token is empty ({TOKEN_VAR})"
            )));
        }
        let base = Url::parse(url)
            .map_err(|e| Error::Config(format!("the sidecar URL {url:?} is not a URL: {e}")))?;
        if base.scheme() != "http" || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "the sidecar URL {url:?} must be http://host:port"
            )));
        }
        // The sidecar is plain HTTP; this only keeps reqwest from refusing to build a
        // client where it was compiled with TLS and no provider. Another provider already
        // installed by the plugin stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Sidecar {
            base,
            token: token.to_owned(),
            http,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// A client from `MERIDIAN_SIDECAR_URL` and `MERIDIAN_SIDECAR_TOKEN`.
    pub fn from_env() -> Result<Sidecar> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Sidecar::new(&var(URL_VAR), &var(TOKEN_VAR))
    }

    /// The same client with another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Sidecar {
        self.timeout = timeout;
        self
    }

    /// The sidecar's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + the path segments, each percent-encoded.
    fn url_of(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Sends one request; `Ok((status, body))` for any answer below 400, and for 404 when
    /// `not_found_ok`.
    async fn request(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        extra_wait: Duration,
        not_found_ok: bool,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header("accept", "application/json")
            .timeout(self.timeout + extra_wait);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        if status.is_client_error() || status.is_server_error() {
            if status == StatusCode::NOT_FOUND && not_found_ok {
                return Ok((status, bytes.to_vec()));
            }
            return Err(Error::from_answer(status, &bytes));
        }
        Ok((status, bytes.to_vec()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<T> {
        let (_, bytes) = self
            .request(method, self.url_of(segments), body, Duration::ZERO, false)
            .await?;
        decode(&bytes)
    }

    /// Starts a publish on `topic` (relative to the deployment, e.g.
    /// `platform.data.stock.snapshot`, or in full); finish it with [`Publish::send`].
    pub fn publish<'a>(&'a self, topic: &'a str) -> Publish<'a> {
        Publish {
            sidecar: self,
            topic,
            tenant: None,
            subject: None,
            ty: None,
            traceparent: None,
        }
    }

    /// Creates (or reopens) the durable subscription `name` on `pattern`. `true` when it
    /// was created, `false` when it existed with the same pattern; `start` matters only
    /// the first time.
    pub async fn subscribe(&self, name: &str, pattern: &str, start: Start) -> Result<bool> {
        let body = json!({"name": name, "pattern": pattern, "start": start.as_str()});
        let (status, _) = self
            .request(
                Method::POST,
                self.url_of(&["v1", "subscriptions"]),
                Some(&body),
                Duration::ZERO,
                false,
            )
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// Stops the subscription `name` and forgets it.
    pub async fn unsubscribe(&self, name: &str) -> Result<()> {
        self.request(
            Method::DELETE,
            self.url_of(&["v1", "subscriptions", name]),
            None,
            Duration::ZERO,
            false,
        )
        .await?;
        Ok(())
    }

    /// Long-polls `name`: up to `max` (1 to 256) messages, as soon as one is ready, or
    /// none after `wait` (at most 30 s).
    pub async fn poll(&self, name: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        #[derive(Deserialize)]
        struct Messages {
            messages: Vec<Delivery>,
        }
        let mut url = self.url_of(&["v1", "subscriptions", name, "messages"]);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        url.query_pairs_mut()
            .append_pair("max", &max.to_string())
            .append_pair("wait_ms", &wait_ms.to_string());
        let (_, bytes) = self.request(Method::GET, url, None, wait, false).await?;
        Ok(decode::<Messages>(&bytes)?.messages)
    }

    /// Acknowledges deliveries: they are never delivered to `name` again.
    pub async fn ack(&self, name: &str, delivery_ids: &[u64]) -> Result<Settled> {
        let body = json!({"delivery_ids": delivery_ids});
        self.call(
            Method::POST,
            &["v1", "subscriptions", name, "ack"],
            Some(&body),
        )
        .await
    }

    /// Asks for a redelivery of `delivery_ids` after `delay` (the sidecar's default, 1 s,
    /// when `None`).
    pub async fn nack(
        &self,
        name: &str,
        delivery_ids: &[u64],
        delay: Option<Duration>,
    ) -> Result<Settled> {
        let mut body = json!({"delivery_ids": delivery_ids});
        if let Some(delay) = delay {
            body["delay_ms"] = json!(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        self.call(
            Method::POST,
            &["v1", "subscriptions", name, "nack"],
            Some(&body),
        )
        .await
    }

    /// The value stored under `key`, or `None`.
    pub async fn state_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        #[derive(Deserialize)]
        struct Entry<T> {
            value: T,
        }
        let (status, bytes) = self
            .request(
                Method::GET,
                self.url_of(&["v1", "state", key]),
                None,
                Duration::ZERO,
                true,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(decode::<Entry<T>>(&bytes)?.value))
    }

    /// Stores `value` (any JSON up to 1 MiB) under `key`; durable once this returns.
    pub async fn state_put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        let value = serde_json::to_value(value)
            .map_err(|e| Error::Config(format!("the value for {key:?} is not JSON: {e}")))?;
        self.request(
            Method::PUT,
            self.url_of(&["v1", "state", key]),
            Some(&json!({ "value": value })),
            Duration::ZERO,
            false,
        )
        .await?;
        Ok(())
    }

    /// Deletes `key`; `false` when it did not exist.
    pub async fn state_delete(&self, key: &str) -> Result<bool> {
        let (status, _) = self
            .request(
                Method::DELETE,
                self.url_of(&["v1", "state", key]),
                None,
                Duration::ZERO,
                true,
            )
            .await?;
        Ok(status != StatusCode::NOT_FOUND)
    }

    /// Tells the sidecar the plugin is alive (its age shows in `/healthz` and `/metrics`).
    pub async fn heartbeat(&self) -> Result<()> {
        self.request(
            Method::POST,
            self.url_of(&["v1", "heartbeat"]),
            None,
            Duration::ZERO,
            false,
        )
        .await?;
        Ok(())
    }

    /// The plugin's name, version, pool, deployment, tenant and configuration.
    pub async fn config(&self) -> Result<PluginConfig> {
        self.call(Method::GET, &["v1", "config"], None).await
    }
}

/// A publish being built: [`Sidecar::publish`], then the optional attributes, then
/// [`Publish::send`].
#[derive(Debug)]
#[must_use = "nothing is published until `send`"]
pub struct Publish<'a> {
    sidecar: &'a Sidecar,
    topic: &'a str,
    tenant: Option<&'a str>,
    subject: Option<&'a str>,
    ty: Option<&'a str>,
    traceparent: Option<&'a str>,
}

impl<'a> Publish<'a> {
    /// The event's tenant: required for a plugin not bound to a tenant.
    pub fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The ordering key (aggregate id); the plugin's name by default.
    pub fn subject(mut self, subject: &'a str) -> Self {
        self.subject = Some(subject);
        self
    }

    /// The CloudEvents type; `meridian.{domain}.{event}` from the topic by default.
    pub fn event_type(mut self, ty: &'a str) -> Self {
        self.ty = Some(ty);
        self
    }

    /// A W3C trace context to carry along.
    pub fn traceparent(mut self, traceparent: &'a str) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// Publishes `data`; returns once the bus has accepted the event. An
    /// [`Error::Problem`] with code `acl_denied` (403) means the topic or tenant lies
    /// outside the plugin's ACL, and nothing reached the bus.
    pub async fn send<T: Serialize + ?Sized>(self, data: &T) -> Result<Published> {
        let data = serde_json::to_value(data)
            .map_err(|e| Error::Config(format!("the event data is not JSON: {e}")))?;
        let mut body = json!({"topic": self.topic, "data": data});
        for (key, value) in [
            ("tenant", self.tenant),
            ("subject", self.subject),
            ("type", self.ty),
            ("traceparent", self.traceparent),
        ] {
            if let Some(value) = value {
                body[key] = json!(value);
            }
        }
        self.sidecar
            .call(Method::POST, &["v1", "publish"], Some(&body))
            .await
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadResponse(e.to_string()))
}

/// An error with its sources, which carry reqwest's real cause (connection refused, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How [`run`] polls and heartbeats.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// A heartbeat at start and at least this often (default 10 s).
    pub heartbeat: Duration,
    /// The most messages one poll asks for (default 16).
    pub max: usize,
    /// How long one poll waits for a message (default 5 s; capped at `heartbeat`).
    pub wait: Duration,
    /// The redelivery delay after a failed handler (the sidecar's 1 s by default).
    pub nack_delay: Option<Duration>,
    /// The pause after the sidecar could not be reached (default 1 s).
    pub retry_pause: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            heartbeat: Duration::from_secs(10),
            max: 16,
            wait: Duration::from_secs(5),
            nack_delay: None,
            retry_pause: Duration::from_secs(1),
        }
    }
}

/// Runs the poll → handle → ack loop on `subscription` until `stop` resolves (then `Ok`).
///
/// `handler` is called once per message, in delivery order. When it returns `Ok` the
/// message is acked; on `Err` it is nacked (redelivered after `nack_delay`) and the error
/// is logged. Delivery is at least once, so handlers should be idempotent by
/// `message.event.id`. A heartbeat is sent at start and every `heartbeat`. While the
/// sidecar cannot be reached, or answers with a transient error, the loop pauses and tries
/// again; `unauthorized` and `not_found` (no such subscription) end it with the error. A
/// batch in hand is finished and settled before `stop` is honoured.
pub async fn run<F, Fut, E>(
    sidecar: &Sidecar,
    subscription: &str,
    options: RunOptions,
    stop: impl Future,
    mut handler: F,
) -> Result<()>
where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    tokio::pin!(stop);
    let mut last_beat: Option<Instant> = None;
    let wait = options.wait.min(options.heartbeat);
    loop {
        let step = async {
            if last_beat.is_none_or(|t| t.elapsed() >= options.heartbeat) {
                sidecar.heartbeat().await?;
                last_beat = Some(Instant::now());
            }
            sidecar.poll(subscription, options.max, wait).await
        };
        let polled = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            polled = step => polled,
        };
        let error = match polled {
            Ok(batch) => {
                match handle_batch(sidecar, subscription, &options, batch, &mut handler).await {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if error.is_fatal() {
            return Err(error);
        }
        tracing::warn!(error = %error, subscription, "sidecar request failed; retrying");
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep(options.retry_pause) => {}
        }
    }
}

async fn handle_batch<F, Fut, E>(
    sidecar: &Sidecar,
    subscription: &str,
    options: &RunOptions,
    batch: Vec<Delivery>,
    handler: &mut F,
) -> Result<()>
where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    for message in batch {
        let id = message.delivery_id;
        let event_id = message.event.id.clone();
        match handler(message).await {
            Ok(()) => {
                sidecar.ack(subscription, &[id]).await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, event.id = %event_id, subscription, "handler failed; the message will be redelivered");
                sidecar
                    .nack(subscription, &[id], options.nack_delay)
                    .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_need_an_http_url_and_a_token() {
        for (url, token, want) in [
            ("", "t", "MERIDIAN_SIDECAR_URL"),
            ("http://127.0.0.1:1", "", "MERIDIAN_SIDECAR_TOKEN"),
            ("not a url", "t", "not a URL"),
            ("https://127.0.0.1:1", "t", "http://host:port"),
            ("mailto:x@y", "t", "http://host:port"),
        ] {
            let e = Sidecar::new(url, token).unwrap_err();
            assert_eq!(e.code(), "invalid_config");
            assert!(e.to_string().contains(want), "{url:?}: {e}");
        }
        let ok = Sidecar::new("http://127.0.0.1:40117", "secret-token").unwrap();
        assert!(!format!("{ok:?}").contains("secret-token"));
    }

    #[test]
    fn path_segments_are_percent_encoded_under_the_base() {
        let s = Sidecar::new("http://127.0.0.1:1/", "t").unwrap();
        assert_eq!(
            s.url_of(&["v1", "state", "a/b c?"]).as_str(),
            "http://127.0.0.1:1/v1/state/a%2Fb%20c%3F"
        );
        let s = Sidecar::new("http://127.0.0.1:1/prefix", "t").unwrap();
        assert_eq!(
            s.url_of(&["v1", "config"]).as_str(),
            "http://127.0.0.1:1/prefix/v1/config"
        );
    }

    #[test]
    fn problem_answers_carry_their_code_and_detail() {
        let body = br#"{"type":"urn:meridian:problem:acl_denied","title":"Forbidden","status":403,"detail":"publish to x is not allowed","code":"acl_denied"}"#;
        let e = Error::from_answer(StatusCode::FORBIDDEN, body);
        assert_eq!(e.code(), "acl_denied");
        assert_eq!(e.status(), Some(403));
        assert!(!e.is_fatal());
        let Error::Problem {
            detail, problem, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(detail, "publish to x is not allowed");
        assert_eq!(problem["title"], "Forbidden");

        // Not a problem document: the status names it.
        let e = Error::from_answer(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(e.code(), "http_502");
        assert_eq!(e.to_string(), "502 http_502: Bad Gateway");

        let e = Error::from_answer(StatusCode::UNAUTHORIZED, br#"{"code":"unauthorized"}"#);
        assert!(e.is_fatal());
    }

    #[test]
    fn deliveries_decode_from_the_poll_answer() {
        let body = br#"{"delivery_id": 7, "attempt": 2, "topic": "deployment.d.platform.oms.order.created",
            "event": {"specversion": "1.0", "id": "0193", "source": "/meridian/d/orders",
                      "type": "meridian.oms.order.created", "time": "2026-01-01T00:00:00Z",
                      "subject": "o-1", "tenant": "t-1", "datacontenttype": "application/json",
                      "schemaversion": "1", "data": {"id": "o-1"}}}"#;
        let d: Delivery = serde_json::from_slice(body).unwrap();
        assert_eq!((d.delivery_id, d.attempt), (7, 2));
        assert_eq!(d.event.tenant.as_deref(), Some("t-1"));
        assert_eq!(d.event.data["id"], "o-1");
        assert_eq!(d.event.extra["specversion"], "1.0");
        // Round trip keeps every attribute.
        let again: Delivery = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(again, d);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let s = Sidecar::new(&format!("http://{addr}"), "token")
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let e = s.heartbeat().await.unwrap_err();
        assert_eq!(e.code(), "unreachable", "{e}");
        assert_eq!(e.status(), None);
    }
}
