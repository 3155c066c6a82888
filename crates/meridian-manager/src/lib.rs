//! The plugin instance manager.
//!
//! It owns the lifecycle of every plugin pair (the plugin and its `meridian sidecar`):
//! - **which run**: every registered plugin whose manifest starts a local command and whose
//!   requested grants are all decided (approved or denied; a pending grant holds the plugin
//!   back until an admin has looked at it). The registry is polled, so a registration or a
//!   decision made through the CLI on another process is picked up too;
//! - **start**: through a [`Runtime`] ([`LocalRuntime`], local processes, by default; container
//!   runtimes come later behind the same trait), with a fresh per-instance token passed to
//!   both processes through the environment;
//! - **supervise**: a pair is restarted when either process exits or the sidecar's `/healthz`
//!   fails [`ManagerConfig::liveness_failures`] checks in a row, after an exponential backoff
//!   that resets once a pair has stayed up for [`ManagerConfig::stable_after`];
//! - **restart on a decision**: a running pair whose grant decisions or manifest changed
//!   (an approved grant denied, say) is stopped and started again at once, since the sidecar
//!   reads them when it starts: a revocation takes effect within one poll;
//! - **stop**: on deregistration;
//! - **report**: [`Status`] per plugin, read by the API (`GET /v1/plugins/{id}`).
//!
//! It does not know HTTP beyond a liveness probe, and it never writes to the registry.

mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_plugin::{Manifest, Run};
use meridian_store::{GrantState, PluginRecord, PluginStore};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use local::LocalRuntime;

/// How a plugin pair is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Being started, or waiting to be restarted after a failure.
    Starting,
    /// Both processes up and the sidecar's liveness check passing.
    Running,
    /// Up, but the sidecar's liveness check fails; restarted if it keeps failing.
    Unhealthy,
    /// Failed [`ManagerConfig::crashloop_after`] times in a row without staying up: restarts
    /// are backing off.
    Crashlooping,
    /// Stopped: deregistered, or the manager is shutting down.
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Unhealthy => "unhealthy",
            Status::Crashlooping => "crashlooping",
            Status::Stopped => "stopped",
        }
    }
}

/// What a runtime needs to start one pair.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub plugin_id: Uuid,
    /// The registered plugin's name: the sidecar reads its manifest and grant decisions
    /// from the registry under it.
    pub name: String,
    /// The plugin's program and arguments.
    pub argv: Vec<String>,
    /// The manifest's extra environment for the plugin.
    pub env: Vec<(String, String)>,
    /// The per-instance token both processes get (`MERIDIAN_SIDECAR_TOKEN`).
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the sidecar of {plugin}: {reason}")]
    Sidecar { plugin: String, reason: String },
    #[error("cannot start plugin {plugin}: {reason}")]
    Plugin { plugin: String, reason: String },
}

/// Starts plugin pairs. A runtime MUST start the sidecar first and the plugin only once the
/// sidecar listens, and MUST stop both when the instance is stopped or dropped.
#[async_trait]
pub trait Runtime: Send + Sync {
    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, RuntimeError>;
}

/// One running pair.
#[async_trait]
pub trait Instance: Send {
    /// The sidecar's base URL (`http://127.0.0.1:PORT`).
    fn sidecar_addr(&self) -> std::net::SocketAddr;
    /// Resolves when either process has exited, saying which and how.
    async fn exited(&mut self) -> String;
    /// Stops both processes.
    async fn stop(&mut self);
}

/// Timings of supervision.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// How often the registry is read for plugins to start or stop.
    pub poll: Duration,
    /// The first restart delay; each consecutive failure doubles it.
    pub backoff_base: Duration,
    /// The longest restart delay.
    pub backoff_max: Duration,
    /// A pair that stayed up this long has recovered: its failure count resets.
    pub stable_after: Duration,
    /// Consecutive failures after which the status is `crashlooping`.
    pub crashloop_after: u32,
    /// How often the sidecar's `/healthz` is checked, and how long a check may take.
    pub liveness_interval: Duration,
    /// Consecutive failed liveness checks after which the pair is restarted.
    pub liveness_failures: u32,
    /// How long after start the first liveness check runs: a plugin that exits at once is
    /// never reported running.
    pub startup_grace: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
            crashloop_after: 3,
            liveness_interval: Duration::from_secs(5),
            liveness_failures: 3,
            startup_grace: Duration::from_secs(1),
        }
    }
}

impl ManagerConfig {
    /// The delay before restart number `failures` (1-based): base × 2^(failures-1), capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

type Statuses = Arc<RwLock<HashMap<Uuid, Status>>>;

struct Supervised {
    /// What the pair was started with ([`revision`]).
    revision: Revision,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What a running sidecar read at its start and would read differently now: the manifest
/// and each grant's decision.
type Revision = (String, Vec<(Uuid, GrantState)>);

/// The [`Revision`] of a registered plugin.
fn revision(p: &PluginRecord) -> Revision {
    (
        p.manifest.clone(),
        p.grants.iter().map(|g| (g.id, g.state)).collect(),
    )
}

/// The running manager. Dropping it does not stop the pairs; call [`Manager::shutdown`].
pub struct Manager {
    statuses: Statuses,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Manager {
    pub fn start(
        store: Arc<dyn PluginStore>,
        runtime: Arc<dyn Runtime>,
        config: ManagerConfig,
    ) -> Manager {
        let statuses: Statuses = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(reconcile_loop(
            store,
            runtime,
            config,
            Arc::clone(&statuses),
            stopped,
        ));
        Manager {
            statuses,
            stop,
            task,
        }
    }

    /// The status of a plugin's pair; `None` if the manager has never started it.
    pub fn status(&self, plugin: Uuid) -> Option<Status> {
        self.statuses.read().get(&plugin).copied()
    }

    /// A handle that reads statuses, for the API.
    pub fn statuses(&self) -> StatusHandle {
        StatusHandle(Arc::clone(&self.statuses))
    }

    /// Stops every pair and the manager.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Reads the manager's statuses.
#[derive(Clone)]
pub struct StatusHandle(Statuses);

impl StatusHandle {
    pub fn get(&self, plugin: Uuid) -> Option<Status> {
        self.0.read().get(&plugin).copied()
    }
}

/// The spec of a plugin the manager should run here, or `None`: not a local command, or a
/// grant still pending.
pub fn runnable(p: &PluginRecord) -> Option<InstanceSpec> {
    if p.grants.iter().any(|g| g.state == GrantState::Pending) {
        return None;
    }
    let manifest = Manifest::from_toml(&p.manifest).ok()?;
    let Run::Command { argv, env } = manifest.run else {
        return None;
    };
    Some(InstanceSpec {
        plugin_id: p.id,
        name: p.name.clone(),
        argv,
        env: env.into_iter().collect(),
        token: new_token(),
    })
}

fn new_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn reconcile_loop(
    store: Arc<dyn PluginStore>,
    runtime: Arc<dyn Runtime>,
    config: ManagerConfig,
    statuses: Statuses,
    mut stopped: watch::Receiver<bool>,
) {
    let mut running: HashMap<Uuid, Supervised> = HashMap::new();
    loop {
        match store.list_plugins().await {
            Ok(plugins) => {
                let wanted: HashMap<Uuid, (InstanceSpec, Revision)> = plugins
                    .iter()
                    .filter_map(|p| runnable(p).map(|s| (p.id, (s, revision(p)))))
                    .collect();
                // Deregistered (or no longer runnable): stop. Changed decisions: stop, and
                // start again below.
                let stale: Vec<(Uuid, bool)> = running
                    .iter()
                    .filter_map(|(id, s)| match wanted.get(id) {
                        None => Some((*id, false)),
                        Some((_, r)) if *r != s.revision => Some((*id, true)),
                        Some(_) => None,
                    })
                    .collect();
                for (id, restart) in stale {
                    if let Some(s) = running.remove(&id) {
                        let _ = s.stop.send(true);
                        let _ = s.task.await;
                        if restart {
                            tracing::info!(plugin.id = %id, "grant decisions changed; restarting the plugin pair");
                        } else {
                            tracing::info!(plugin.id = %id, "plugin pair stopped");
                        }
                    }
                }
                for (id, (spec, revision)) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    let (stop, stop_rx) = watch::channel(false);
                    statuses.write().insert(id, Status::Starting);
                    let task = tokio::spawn(supervise(
                        spec,
                        Arc::clone(&runtime),
                        config.clone(),
                        Arc::clone(&statuses),
                        stop_rx,
                    ));
                    running.insert(
                        id,
                        Supervised {
                            revision,
                            stop,
                            task,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the plugin registry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll) => {}
            _ = stopped.changed() => break,
        }
    }
    for (_, s) in running.drain() {
        let _ = s.stop.send(true);
        let _ = s.task.await;
    }
}

/// Runs one pair until told to stop: start, watch, restart with backoff.
async fn supervise(
    spec: InstanceSpec,
    runtime: Arc<dyn Runtime>,
    config: ManagerConfig,
    statuses: Statuses,
    mut stop: watch::Receiver<bool>,
) {
    let set = |s: Status| {
        statuses.write().insert(spec.plugin_id, s);
    };
    let mut failures: u32 = 0;
    loop {
        if failures < config.crashloop_after {
            set(Status::Starting);
        }
        let why = match runtime.start(&spec).await {
            Err(e) => e.to_string(),
            Ok(mut instance) => {
                let up_since = tokio::time::Instant::now();
                let (why, stopping) =
                    watch_instance(instance.as_mut(), &config, &set, &mut stop).await;
                instance.stop().await;
                if stopping {
                    set(Status::Stopped);
                    return;
                }
                if up_since.elapsed() >= config.stable_after {
                    failures = 0;
                }
                why
            }
        };
        failures += 1;
        let delay = config.backoff(failures);
        tracing::warn!(
            plugin = %spec.name, failures, delay_ms = delay.as_millis() as u64, reason = %why,
            "plugin pair failed; restarting after a backoff"
        );
        if failures >= config.crashloop_after {
            set(Status::Crashlooping);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                set(Status::Stopped);
                return;
            }
        }
    }
}

/// Watches a started pair. Returns why it ended, and whether it ended because the manager
/// stopped it.
async fn watch_instance(
    instance: &mut dyn Instance,
    config: &ManagerConfig,
    set: &impl Fn(Status),
    stop: &mut watch::Receiver<bool>,
) -> (String, bool) {
    let addr = instance.sidecar_addr();
    let mut misses = 0;
    let mut next_check = tokio::time::Instant::now() + config.startup_grace;
    loop {
        tokio::select! {
            why = instance.exited() => return (why, false),
            _ = stop.changed() => return ("stopped".into(), true),
            _ = tokio::time::sleep_until(next_check) => {
                next_check += config.liveness_interval;
                if local::healthz(addr, config.liveness_interval).await {
                    misses = 0;
                    set(Status::Running);
                } else {
                    misses += 1;
                    set(Status::Unhealthy);
                    if misses >= config.liveness_failures {
                        return (format!("{misses} liveness checks of the sidecar failed"), false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let c = ManagerConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            ..ManagerConfig::default()
        };
        for (failures, ms) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (40, 1_000),
        ] {
            assert_eq!(c.backoff(failures), Duration::from_millis(ms), "{failures}");
        }
    }

    fn record(manifest: &str, states: &[GrantState]) -> PluginRecord {
        PluginRecord {
            id: Uuid::now_v7(),
            name: "p".into(),
            version: "1.0.0".into(),
            pool: "dgm".into(),
            tenant_id: None,
            manifest: manifest.into(),
            registered_at: meridian_core::now(),
            registered_by: "test".into(),
            grants: states
                .iter()
                .map(|s| meridian_store::PluginGrant {
                    id: Uuid::now_v7(),
                    direction: meridian_store::GrantDirection::Publish,
                    pattern: "platform.data.x".into(),
                    state: *s,
                    decided_at: None,
                    decided_by: None,
                })
                .collect(),
        }
    }

    #[test]
    fn only_local_commands_with_every_grant_decided_are_run() {
        let command = "name = \"p\"\nversion = \"1.0.0\"\npool = \"dgm\"\n[run]\ncommand = [\"x\"]\nenv = { A = \"1\" }\n";
        let image =
            "name = \"p\"\nversion = \"1.0.0\"\npool = \"dgm\"\n[run]\nimage = \"acme/p:1.0.0\"\n";
        let spec = runnable(&record(command, &[])).expect("no grants: runnable");
        assert_eq!(spec.argv, ["x"]);
        assert_eq!(spec.env, [("A".to_owned(), "1".to_owned())]);
        assert!(spec.token.len() >= 16);
        assert!(
            runnable(&record(
                command,
                &[GrantState::Approved, GrantState::Denied]
            ))
            .is_some()
        );
        assert!(
            runnable(&record(
                command,
                &[GrantState::Approved, GrantState::Pending]
            ))
            .is_none()
        );
        assert!(runnable(&record(image, &[])).is_none());
        // Two specs never share a token.
        assert_ne!(
            runnable(&record(command, &[])).unwrap().token,
            runnable(&record(command, &[])).unwrap().token
        );
    }
}
