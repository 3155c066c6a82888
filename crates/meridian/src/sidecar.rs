//! `meridian sidecar`: reads a plugin's manifest and grant decisions, opens the configured
//! bus (`BUS_BACKEND` / `BUS_URL`, as the server does) and serves the sidecar API on a
//! loopback address until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_plugin::{Acl, GrantDecisions, Manifest};
use meridian_sidecar::{Sidecar, SidecarConfig};
use tokio::net::TcpListener;

use crate::config::Config;

#[derive(clap::Args)]
pub struct SidecarArgs {
    /// The plugin's manifest (TOML).
    #[arg(
        long,
        env = "MERIDIAN_SIDECAR_MANIFEST",
        required_unless_present = "plugin"
    )]
    manifest: Option<PathBuf>,
    /// A registered plugin's name: its manifest and grant decisions are read from the
    /// plugin registry in the configured store, instead of `--manifest` and `--grants`.
    #[arg(long, env = "MERIDIAN_SIDECAR_PLUGIN", conflicts_with_all = ["manifest", "grants"])]
    plugin: Option<String>,
    /// The admin's decisions on the plugin's grants (TOML, `[[grant]]` tables); without
    /// it only the pool template applies.
    #[arg(long, env = "MERIDIAN_SIDECAR_GRANTS")]
    grants: Option<PathBuf>,
    /// The token the plugin must present (at least 16 characters). Prefer the environment
    /// variable: a flag shows in the process list.
    #[arg(long, env = "MERIDIAN_SIDECAR_TOKEN", hide_env_values = true)]
    token: String,
    /// The loopback address to listen on; port 0 picks a free one. The bound address is
    /// printed on stdout as `{"listening":"127.0.0.1:PORT"}`.
    #[arg(long, env = "MERIDIAN_SIDECAR_BIND", default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Where the instance's state file lives; defaults to `{MERIDIAN_DATA_DIR}/plugins`.
    #[arg(long, env = "MERIDIAN_SIDECAR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The plugin's config (JSON), checked against the manifest's config schema.
    #[arg(long, env = "MERIDIAN_SIDECAR_PLUGIN_CONFIG")]
    plugin_config: Option<PathBuf>,
    /// Seconds a delivery may stay unacknowledged before the bus redelivers it.
    #[arg(long, env = "MERIDIAN_SIDECAR_ACK_WAIT_SECS", default_value_t = 30)]
    ack_wait_secs: u64,
    /// Stop when the process that started the sidecar exits (the plugin manager passes
    /// it): a server killed without a chance to stop its pairs leaves no sidecar consuming
    /// beside the ones its next start brings up. A sidecar that leads its process group
    /// (the manager starts the plugin in it) then kills the group, plugin included.
    #[arg(long, env = "MERIDIAN_SIDECAR_EXIT_WITH_PARENT")]
    exit_with_parent: bool,
}

/// Resolves once the process that started this one has exited (this process was handed
/// to another parent), checked twice a second; never on other systems.
async fn parent_exited() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!(
                    parent,
                    "the process that started the sidecar exited; stopping"
                );
                return;
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

pub async fn run(config: &Config, args: SidecarArgs) -> Result<()> {
    if !args.bind.ip().is_loopback() {
        bail!(
            "MERIDIAN_SIDECAR_BIND={} is not a loopback address: the sidecar serves only its \
             plugin, on the same host",
            args.bind
        );
    }
    if !(1..=3600).contains(&args.ack_wait_secs) {
        bail!("MERIDIAN_SIDECAR_ACK_WAIT_SECS must be between 1 and 3600");
    }
    let (manifest, decisions) = match (&args.plugin, &args.manifest) {
        (Some(name), _) => {
            let (_, plugins) = crate::server::open_stores(config).await?;
            let record = plugins
                .find_plugin(name)
                .await
                .with_context(|| format!("plugin {name} is not in the registry"))?;
            let manifest = Manifest::from_toml(&record.manifest)
                .with_context(|| format!("the registered manifest of {name}"))?;
            (manifest, crate::plugins_cli::decisions(&record))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the manifest {}", path.display()))?;
            let manifest = Manifest::from_toml(&text)
                .with_context(|| format!("manifest {}", path.display()))?;
            let decisions = match &args.grants {
                None => GrantDecisions::default(),
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the grants {}", path.display()))?;
                    GrantDecisions::from_toml(&text)
                        .with_context(|| format!("grants {}", path.display()))?
                }
            };
            (manifest, decisions)
        }
        (None, None) => bail!("give --manifest (with --grants) or --plugin"),
    };
    let acl = Acl::new(&config.deployment_id, &manifest, &decisions)?;
    let plugin_config = match &args.plugin_config {
        None => serde_json::json!({}),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the plugin config {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("plugin config {} is not JSON", path.display()))?
        }
    };
    let bus = crate::server::open_bus(config).await?;
    let sidecar = Sidecar::start(
        SidecarConfig {
            state_dir: args
                .state_dir
                .unwrap_or_else(|| config.data_dir.join("plugins")),
            manifest,
            acl,
            token: args.token,
            plugin_config,
            ack_wait: Duration::from_secs(args.ack_wait_secs),
        },
        bus,
    )
    .await?;
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on MERIDIAN_SIDECAR_BIND={}", args.bind))?;
    let addr = listener.local_addr()?;
    println!("{}", serde_json::json!({ "listening": addr.to_string() }));
    tracing::info!(%addr, "sidecar is serving");
    let exit_with_parent = args.exit_with_parent;
    let orphaned = Arc::new(AtomicBool::new(false));
    let stop = {
        let orphaned = orphaned.clone();
        async move {
            if exit_with_parent {
                tokio::select! {
                    () = crate::server::shutdown_signal() => {}
                    () = parent_exited() => orphaned.store(true, Ordering::SeqCst),
                }
            } else {
                crate::server::shutdown_signal().await;
            }
        }
    };
    axum::serve(listener, meridian_sidecar::router(sidecar.clone()))
        .with_graceful_shutdown(stop)
        .await
        .context("the sidecar's HTTP server failed")?;
    sidecar.shutdown();
    if orphaned.load(Ordering::SeqCst) {
        kill_own_group();
    }
    Ok(())
}

/// Kills this process's group (this process last) if it leads it: the plugin the manager
/// started in it goes down with its orphaned sidecar.
fn kill_own_group() {
    let pid = std::process::id();
    // /proc/self/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so read
    // after its closing parenthesis.
    let pgrp = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(2)?.parse::<u32>().ok()
        });
    if pgrp != Some(pid) {
        return;
    }
    tracing::warn!(
        pgrp = pid,
        "stopping the plugin started beside this sidecar"
    );
    let _ = std::process::Command::new("sh")
        .args(["-c", &format!("kill -KILL -{pid}")])
        .status();
}
