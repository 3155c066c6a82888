//! Wiring of the plugin instance manager (`meridian-manager`) into `meridian serve`: its
//! settings and the bridge that lets the API report each plugin's status.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `MERIDIAN_PLUGIN_MANAGER` | `on` in the process that runs the orders service | `on` or `off` |
//! | `MERIDIAN_PLUGIN_POLL_MS` | 2000 | how often the registry is read |
//! | `MERIDIAN_PLUGIN_BACKOFF_MS` | 1000 | the first restart delay (doubled per failure) |
//! | `MERIDIAN_PLUGIN_BACKOFF_MAX_MS` | 60000 | the longest restart delay |
//! | `MERIDIAN_PLUGIN_LIVENESS_MS` | 5000 | the sidecar liveness check interval |

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use meridian_manager::{LocalRuntime, Manager, ManagerConfig, StatusHandle};
use meridian_store::PluginStore;
use uuid::Uuid;

struct ApiStatus(StatusHandle);

impl meridian_api::PluginStatusSource for ApiStatus {
    fn status(&self, plugin: Uuid) -> Option<&'static str> {
        self.0.get(plugin).map(|s| s.as_str())
    }
}

fn millis(var: &str, default: u64) -> Result<Duration> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_millis(default)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
            _ => bail!("invalid {var}={v:?}: expected a positive number of milliseconds"),
        },
    }
}

/// The manager's settings, or `None` when it is off in this process.
pub fn settings(runs_orders: bool) -> Result<Option<ManagerConfig>> {
    let on = match std::env::var("MERIDIAN_PLUGIN_MANAGER").ok().as_deref() {
        None => runs_orders,
        Some("on") => true,
        Some("off") => false,
        Some(other) => bail!("invalid MERIDIAN_PLUGIN_MANAGER={other:?}: expected on or off"),
    };
    if !on {
        return Ok(None);
    }
    let defaults = ManagerConfig::default();
    let config = ManagerConfig {
        poll: millis("MERIDIAN_PLUGIN_POLL_MS", 2_000)?,
        backoff_base: millis("MERIDIAN_PLUGIN_BACKOFF_MS", 1_000)?,
        backoff_max: millis("MERIDIAN_PLUGIN_BACKOFF_MAX_MS", 60_000)?,
        liveness_interval: millis("MERIDIAN_PLUGIN_LIVENESS_MS", 5_000)?,
        ..defaults
    };
    if config.backoff_max < config.backoff_base {
        bail!("MERIDIAN_PLUGIN_BACKOFF_MAX_MS must be at least MERIDIAN_PLUGIN_BACKOFF_MS");
    }
    Ok(Some(config))
}

/// Starts the manager; returns it and the API's view of its statuses.
pub fn start(
    plugins: Arc<dyn PluginStore>,
    config: ManagerConfig,
) -> Result<(Manager, Arc<dyn meridian_api::PluginStatusSource>)> {
    let runtime = Arc::new(LocalRuntime::current_exe()?);
    let manager = Manager::start(plugins, runtime, config);
    let status = Arc::new(ApiStatus(manager.statuses()));
    tracing::info!("plugin instance manager started (local processes)");
    Ok((manager, status))
}
