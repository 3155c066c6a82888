//! The plugin sidecar: a plugin's only door to the platform (`meridian sidecar`).
//!
//! It serves local HTTP (bind it to 127.0.0.1) to one plugin instance, which authenticates
//! with the per-instance token the sidecar was started with. Through it the plugin
//! publishes (the sidecar builds the CloudEvents envelope with the plugin's source and
//! tenant), subscribes by long-poll with explicit ack and nack, keeps durable state (one
//! SQLite file per instance), sends heartbeats and reads its config. Every publish and
//! subscription passes the plugin's [`meridian_plugin::Acl`]: a refused publish is a 403
//! `acl_denied` that is counted and audited, and nothing reaches the bus.
//!
//! Subscriptions are durable bus consumers named `plugin-{plugin}-{subscription}`; the
//! sidecar records them in its state file and reopens them when it starts, so after a
//! restart they resume after the last acknowledged message.
//!
//! The HTTP API is described in `docs/plugins.md`.

mod api;
mod metrics;
mod state;
mod subs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use meridian_bus::Bus;
use meridian_plugin::{Acl, Manifest};

pub use api::router;
pub use state::{SavedSubscription, StateStore};

/// What a sidecar is started with.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub manifest: Manifest,
    pub acl: Acl,
    /// The token the plugin presents as `Authorization: Bearer {token}`.
    pub token: String,
    /// Where the instance's state file lives (`{state_dir}/{plugin}.sqlite`).
    pub state_dir: PathBuf,
    /// The plugin's config, already checked against the manifest's schema.
    pub plugin_config: serde_json::Value,
    /// How long a delivery may stay unacknowledged before the bus redelivers it.
    pub ack_wait: Duration,
}

impl SidecarConfig {
    /// The shortest token accepted.
    pub const MIN_TOKEN_LEN: usize = 16;
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar configuration: {0}")]
    Config(String),
    #[error("state store: {0}")]
    State(String),
}

/// The running sidecar: shared by every request.
pub struct Sidecar {
    config: SidecarConfig,
    bus: Arc<dyn Bus>,
    state: StateStore,
    subs: subs::Subscriptions,
    started: Instant,
    /// Milliseconds since `started` of the last heartbeat; -1 before the first.
    last_heartbeat_ms: AtomicI64,
    source: String,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl Sidecar {
    /// Opens the state file and reopens the saved subscriptions (each keeps trying the bus
    /// in the background until it can subscribe).
    pub async fn start(
        config: SidecarConfig,
        bus: Arc<dyn Bus>,
    ) -> Result<Arc<Sidecar>, SidecarError> {
        if config.token.len() < SidecarConfig::MIN_TOKEN_LEN {
            return Err(SidecarError::Config(format!(
                "the token must be at least {} characters long",
                SidecarConfig::MIN_TOKEN_LEN
            )));
        }
        if let Some(schema) = &config.manifest.config_schema {
            schema
                .validate(&config.plugin_config)
                .map_err(|e| SidecarError::Config(format!("plugin config: {e}")))?;
        }
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            SidecarError::State(format!("cannot create {}: {e}", config.state_dir.display()))
        })?;
        let path = config
            .state_dir
            .join(format!("{}.sqlite", config.manifest.name));
        let state = StateStore::open(&path)?;
        let source = format!(
            "/meridian/{}/plugins/{}",
            config.acl.deployment(),
            config.manifest.name
        );
        let sidecar = Arc::new(Sidecar {
            metrics: metrics::install(),
            subs: subs::Subscriptions::default(),
            config,
            bus,
            state,
            started: Instant::now(),
            last_heartbeat_ms: AtomicI64::new(-1),
            source,
        });
        for saved in sidecar.state.subscriptions().await? {
            if let Err(e) = sidecar.open_subscription(&saved) {
                tracing::error!(subscription = %saved.name, error = %e, "cannot reopen a saved subscription");
            }
        }
        Ok(sidecar)
    }

    /// The durable consumer name of one of the plugin's subscriptions.
    fn consumer_name(&self, subscription: &str) -> String {
        format!("plugin-{}-{subscription}", self.config.manifest.name)
    }

    fn open_subscription(
        &self,
        saved: &SavedSubscription,
    ) -> Result<(), meridian_plugin::AclDenied> {
        let pattern = meridian_bus::TopicPattern::parse(&saved.pattern).map_err(|e| {
            meridian_plugin::AclDenied {
                direction: meridian_plugin::Direction::Subscribe,
                target: saved.pattern.clone(),
                reason: meridian_plugin::DenyReason::Denied {
                    rule: e.to_string(),
                },
            }
        })?;
        let filter = self.config.acl.subscription(&pattern)?;
        let mut options = meridian_bus::SubscribeOptions::durable(&self.consumer_name(&saved.name));
        options.ack_wait = self.config.ack_wait;
        if saved.from_earliest {
            options.start = meridian_bus::StartAt::Earliest;
        }
        self.subs
            .open(&saved.name, self.bus.clone(), pattern, filter, options);
        Ok(())
    }

    /// Seconds since the last heartbeat, or since start when there was none yet.
    fn heartbeat_age(&self) -> f64 {
        let now = self.started.elapsed().as_millis() as i64;
        let last = self.last_heartbeat_ms.load(Ordering::Relaxed);
        let since = if last < 0 { 0 } else { last };
        (now - since).max(0) as f64 / 1000.0
    }

    fn heartbeat(&self) {
        self.last_heartbeat_ms
            .store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    /// Stops the subscriptions (their unacknowledged deliveries return to the bus).
    pub fn shutdown(&self) {
        self.subs.close_all();
    }
}
