//! `warehouse-sync`: the reference Rust plugin (pool `dgm`). Every interval it reads a
//! warehouse stock feed (a CSV file, or an `http://` or `https://` URL answering with one) and publishes
//! `platform.data.stock.snapshot` for each row whose count changed since it was last
//! published; the inventory service applies each snapshot as a stock take. See README.md.

mod feed;
mod sync;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_core::TenantId;
use meridian_plugin_sdk::{PluginConfig, Sidecar};
use serde_json::Value;

use crate::feed::Source;
use crate::sync::Published;

/// How often a heartbeat is sent while waiting for the next read.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The plugin's settings: the sidecar's config first, then `WAREHOUSE_SYNC_*` variables
/// (which a manifest can set in `run.env`) for what the config leaves out.
#[derive(Debug, PartialEq)]
struct Settings {
    source: Source,
    /// Extra CA certificates (PEM) for an `https://` feed under a private CA.
    ca_file: Option<std::path::PathBuf>,
    tenant: TenantId,
    interval: Duration,
    http_timeout: Duration,
}

impl Settings {
    fn resolve(config: &PluginConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
        let c = &config.config;
        let text = |key: &str, var: &str| -> Option<String> {
            c.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| env(var))
        };
        let secs = |key: &str, var: &str, default: u64| -> Result<Duration> {
            let n = match c.get(key) {
                Some(v) => v
                    .as_u64()
                    .with_context(|| format!("config {key} must be a positive integer"))?,
                None => match env(var) {
                    Some(s) => s
                        .trim()
                        .parse()
                        .with_context(|| format!("{var}={s:?} must be a positive integer"))?,
                    None => default,
                },
            };
            if n == 0 {
                bail!("{key} must be at least 1 second");
            }
            Ok(Duration::from_secs(n))
        };
        let feed = text("feed", "WAREHOUSE_SYNC_FEED")
            .context("no feed: set `feed` in the plugin's config (or WAREHOUSE_SYNC_FEED)")?;
        let source = Source::parse(&feed)?;
        let bound = config.tenant.as_deref();
        let tenant = match (text("tenant", "WAREHOUSE_SYNC_TENANT"), bound) {
            (Some(t), Some(b)) if t != b => {
                bail!("tenant {t} is not the tenant {b} the plugin is bound to")
            }
            (Some(t), _) => t,
            (None, Some(b)) => b.to_owned(),
            (None, None) => bail!(
                "no tenant: set `tenant` in the plugin's config (or WAREHOUSE_SYNC_TENANT), or \
                 bind the plugin to one"
            ),
        };
        let tenant: TenantId = tenant
            .parse()
            .map_err(|e| anyhow::anyhow!("tenant {tenant:?} is not a tenant id: {e}"))?;
        Ok(Settings {
            source,
            ca_file: text("ca_file", "WAREHOUSE_SYNC_CA_FILE").map(Into::into),
            tenant,
            interval: secs("interval_secs", "WAREHOUSE_SYNC_INTERVAL_SECS", 60)?,
            http_timeout: secs("http_timeout_secs", "WAREHOUSE_SYNC_HTTP_TIMEOUT_SECS", 30)?,
        })
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// One read of the feed and its publish round.
async fn round(
    sidecar: &Sidecar,
    settings: &Settings,
    http: &reqwest::Client,
    published: &mut Published,
) -> Result<()> {
    let text = settings.source.read(http, settings.http_timeout).await?;
    let parsed = feed::parse(&text, chrono::Utc::now())?;
    for e in &parsed.errors {
        tracing::warn!(line = e.line, reason = %e.reason, "feed row skipped");
    }
    let tenant = settings.tenant.to_string();
    let done = sync::publish_changes(sidecar, &tenant, published, &parsed.rows)
        .await
        .context("cannot publish the snapshots")?;
    tracing::info!(
        rows = parsed.rows.len(),
        published = done.published,
        unchanged = done.unchanged,
        skipped = parsed.errors.len(),
        "feed read"
    );
    Ok(())
}

async fn run() -> Result<()> {
    let sidecar = Sidecar::from_env()?;
    let config = sidecar
        .config()
        .await
        .context("cannot read the plugin's config")?;
    let settings = Settings::resolve(&config, &|k| std::env::var(k).ok())?;
    tracing::info!(feed = ?settings.source, tenant = %settings.tenant, interval_secs = settings.interval.as_secs(), "warehouse-sync starting");
    let http = Source::http_client(settings.ca_file.as_deref())?;
    let mut published = Published::load(&sidecar)
        .await
        .context("cannot read what was published from the sidecar's state")?;
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        if let Err(e) = sidecar.heartbeat().await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        // A round is finished before a shutdown is honoured, so its counts are saved.
        if let Err(e) = round(&sidecar, &settings, &http, &mut published).await {
            tracing::error!(
                error = format!("{e:#}"),
                "feed round failed; trying again at the next interval"
            );
        }
        let next = tokio::time::Instant::now() + settings.interval;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next {
                break;
            }
            let nap = (next - now).min(HEARTBEAT);
            tokio::select! {
                () = &mut stop => {
                    tracing::info!("warehouse-sync stopping");
                    return Ok(());
                }
                () = tokio::time::sleep(nap) => {}
            }
            if let Err(e) = sidecar.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "warehouse-sync stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(tenant: Option<&str>, c: Value) -> PluginConfig {
        PluginConfig {
            plugin: "warehouse-sync".into(),
            version: "0.1.0".into(),
            pool: "dgm".into(),
            deployment: "d".into(),
            tenant: tenant.map(str::to_owned),
            config: c,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn settings_come_from_the_config_then_the_environment() {
        let t = TenantId::new().to_string();
        let s = Settings::resolve(
            &config(
                None,
                json!({"feed": "stock.csv", "tenant": t, "interval_secs": 5}),
            ),
            &no_env,
        )
        .unwrap();
        assert_eq!(s.source, Source::File("stock.csv".into()));
        assert_eq!(s.tenant.to_string(), t);
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.http_timeout, Duration::from_secs(30));

        let env = |k: &str| match k {
            "WAREHOUSE_SYNC_FEED" => Some("http://127.0.0.1:1/s.csv".to_owned()),
            "WAREHOUSE_SYNC_INTERVAL_SECS" => Some("7".to_owned()),
            _ => None,
        };
        let s = Settings::resolve(&config(Some(&t), json!({})), &env).unwrap();
        assert_eq!(s.source, Source::Http("http://127.0.0.1:1/s.csv".into()));
        assert_eq!(s.tenant.to_string(), t, "the bound tenant");
        assert_eq!(s.interval, Duration::from_secs(7));
    }

    #[test]
    fn missing_or_conflicting_settings_are_refused() {
        let t = TenantId::new().to_string();
        let other = TenantId::new().to_string();
        let err = |c: PluginConfig| format!("{:#}", Settings::resolve(&c, &no_env).unwrap_err());
        assert!(err(config(None, json!({"tenant": t}))).contains("no feed"));
        assert!(err(config(None, json!({"feed": "f"}))).contains("no tenant"));
        assert!(
            err(config(Some(&t), json!({"feed": "f", "tenant": other})))
                .contains("is not the tenant")
        );
        assert!(err(config(None, json!({"feed": "f", "tenant": "x"}))).contains("not a tenant id"));
        assert!(
            err(config(
                None,
                json!({"feed": "f", "tenant": t, "interval_secs": 0})
            ))
            .contains("at least 1 second")
        );
    }
}
