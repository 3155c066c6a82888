//! Opening the store and serving the API until a shutdown signal.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use meridian_api::{ApiConfig, AppState};
use meridian_store::Store;
use tokio::net::TcpListener;

use crate::config::Config;

pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let store_config = config.store_config()?;
    let what = match config.storage_backend {
        crate::config::StorageBackend::Sqlite => {
            format!("SQLite store at {}", config.sqlite_path().display())
        }
        crate::config::StorageBackend::Postgres => "PostgreSQL store".to_string(),
    };
    meridian_store::open(store_config, config.events())
        .await
        .with_context(|| format!("cannot open the {what}"))
}

/// Serves until SIGINT or SIGTERM. `ready` is told the bound address once the listener is up.
pub async fn serve(
    config: Config,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    let store = open_store(&config).await?;
    serve_with(config, store, ready).await
}

pub async fn serve_with(
    config: Config,
    store: Arc<dyn Store>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    let state = AppState {
        store,
        metrics: meridian_api::install_metrics(),
        config: ApiConfig {
            body_limit_bytes: config.body_limit_bytes,
            ..ApiConfig::default()
        },
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on MERIDIAN_BIND={}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = state.store.backend(), "meridian is serving");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add tens of milliseconds to a
    // response written in more than one segment.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, meridian_api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("meridian stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
