//! Opening the store and the bus, and serving the API until a shutdown signal, with the
//! outbox relay and the order-events projection running beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::serve::ListenerExt;
use meridian_api::{ApiConfig, AppState};
use meridian_bus::Bus;
use meridian_relay::{Relay, RelayConfig, StoreDeadLetterSink};
use meridian_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BusBackend, Config, StorageBackend};

/// How long start-up waits to declare the order-events consumer on the bus.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the relay and the consumers to finish their current step.
const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the configured bus. The embedded bus lives in the store's database (the SQLite
/// file, or the PostgreSQL URL and schema); NATS, RabbitMQ and Kafka are reached at `BUS_URL` and
/// must be reachable now (once connected, their clients reconnect by themselves).
pub async fn open_bus(config: &Config) -> Result<Arc<dyn Bus>> {
    let backend = config.bus_backend;
    let url = config.bus_url.clone().unwrap_or_default();
    Ok(match backend {
        BusBackend::Memory => Arc::new(meridian_bus::MemoryBus::new()),
        BusBackend::Embedded => {
            use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
            let embedded = match config.storage_backend {
                StorageBackend::Sqlite => EmbeddedConfig::Sqlite {
                    path: config.sqlite_path(),
                },
                StorageBackend::Postgres => EmbeddedConfig::Postgres {
                    url: config.database_url.clone().unwrap_or_default(),
                    schema: config.database_schema.clone(),
                    pool_size: EmbeddedConfig::DEFAULT_POOL_SIZE,
                },
            };
            Arc::new(
                EmbeddedBus::open(embedded)
                    .await
                    .context("cannot open the embedded bus (BUS_BACKEND=embedded)")?,
            )
        }
        #[cfg(feature = "bus-nats")]
        BusBackend::Nats => Arc::new(
            meridian_bus_nats::NatsBus::connect(&url)
                .await
                .context("cannot connect to NATS at BUS_URL (BUS_BACKEND=nats)")?,
        ),
        #[cfg(feature = "bus-rabbitmq")]
        BusBackend::Rabbitmq => Arc::new(
            meridian_bus_rabbitmq::RabbitBus::connect(meridian_bus_rabbitmq::RabbitConfig::new(
                url,
            ))
            .await
            .context("cannot connect to RabbitMQ at BUS_URL (BUS_BACKEND=rabbitmq)")?,
        ),
        #[cfg(feature = "bus-kafka")]
        BusBackend::Kafka => Arc::new(
            meridian_bus_kafka::KafkaBus::connect(&url)
                .await
                .context("cannot connect to Kafka at BUS_URL (BUS_BACKEND=kafka)")?,
        ),
        #[allow(unreachable_patterns)]
        other => {
            let _ = url;
            bail!(
                "BUS_BACKEND={} needs the `bus-{}` feature; rebuild with --features bus-{}",
                other.as_str(),
                other.as_str(),
                other.as_str()
            )
        }
    })
}

/// The relay and the consumers that run beside the API.
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    /// Starts the order-events projection consumer, then the outbox relay. With several
    /// servers on one database, only the relay holding the database's relay lock publishes;
    /// the others stand by and take over within about a second if it goes away.
    fn start(config: &Config, store: &Arc<dyn Store>, bus: &Arc<dyn Bus>) -> Background {
        let (stop, shutdown) = watch::channel(false);
        let projection = {
            let (bus, store, shutdown) = (bus.clone(), store.clone(), shutdown.clone());
            let deployment = config.deployment_id.clone();
            tokio::spawn(async move {
                // Dead letters go to `<topic>.dlq` and into the store, for the API and CLI.
                let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
                match meridian_relay::run_order_events(bus, store, &deployment, sink, shutdown)
                    .await
                {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %e, "the order-events consumer stopped"),
                }
            })
        };
        let relay = Relay::new(store.clone(), bus.clone(), RelayConfig::default());
        let relay = tokio::spawn(relay.run(shutdown));
        Background {
            stop,
            tasks: vec![
                ("order-events consumer", projection),
                ("outbox relay", relay),
            ],
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            match tokio::time::timeout(BACKGROUND_STOP_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "background task failed"),
                Err(_) => tracing::warn!(task = name, "background task did not stop in time"),
            }
        }
    }
}

pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(open_stores(config).await?.0)
}

/// The store and its plugin registry (one backend, one set of connections).
pub async fn open_stores(
    config: &Config,
) -> Result<(Arc<dyn Store>, Arc<dyn meridian_store::PluginStore>)> {
    let store_config = config.store_config()?;
    let what = match config.storage_backend {
        crate::config::StorageBackend::Sqlite => {
            format!("SQLite store at {}", config.sqlite_path().display())
        }
        crate::config::StorageBackend::Postgres => "PostgreSQL store".to_string(),
    };
    meridian_store::open_with_plugins(store_config, config.events())
        .await
        .with_context(|| format!("cannot open the {what}"))
}

/// Serves until SIGINT or SIGTERM. `ready` is told the bound address once the listener is up.
pub async fn serve(
    config: Config,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    let (store, plugins) = open_stores(&config).await?;
    serve_with(config, store, plugins, ready).await
}

pub async fn serve_with(
    config: Config,
    store: Arc<dyn Store>,
    plugins: Arc<dyn meridian_store::PluginStore>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    // Before anything registers a metric: a handle taken before the recorder exists
    // records nothing.
    meridian_api::install_metrics();
    // In split mode only the process that runs the orders service carries the bus, the
    // outbox relay and the order-events consumer; a gateway or a catalog process does not.
    if !config
        .gateway
        .services
        .contains(meridian_gateway::Service::Orders)
    {
        return serve_api(config, store, plugins, None, ready).await;
    }
    let bus: Arc<dyn Bus> = Arc::new(meridian_bus::MeteredBus::new(open_bus(&config).await?));
    tracing::info!(bus = bus.name(), "bus open");
    // The consumer must exist before the relay publishes, or a broker that keeps messages
    // only for existing queues (RabbitMQ) drops the first events. A bus that is down now
    // is retried by the consumer loop; the relay's events wait in the outbox meanwhile.
    match tokio::time::timeout(
        DECLARE_TIMEOUT,
        meridian_relay::declare_order_events(bus.as_ref(), &config.deployment_id),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot declare the order-events consumer yet"),
        Err(_) => tracing::warn!("declaring the order-events consumer timed out"),
    }
    let background = Background::start(&config, &store, &bus);
    let result = serve_api(config, store, plugins, Some(bus), ready).await;
    background.stop().await;
    tracing::info!("meridian stopped");
    result
}

async fn serve_api(
    config: Config,
    store: Arc<dyn Store>,
    plugins: Arc<dyn meridian_store::PluginStore>,
    bus: Option<Arc<dyn Bus>>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    let settings = &config.gateway;
    // Only the gateway limits: split-mode services behind it would count requests twice.
    let rate_limiter = if settings
        .services
        .contains(meridian_gateway::Service::Gateway)
    {
        Some(
            meridian_gateway::RateLimiter::start(settings.rate_limit.clone())
                .context("cannot start the rate limiter")?,
        )
    } else {
        None
    };
    let proxy = (!settings.upstreams.is_empty()).then(|| {
        Arc::new(meridian_gateway::Proxy::new(
            settings.upstreams.clone(),
            settings.proxy,
        ))
    });
    let auth = meridian_api::auth::AuthService::start(
        store.clone(),
        crate::auth_config::auth_config(&config)?,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("cannot start the auth service")?;
    if let Some(bus) = &bus {
        auth.listen(Arc::clone(bus), &config.deployment_id);
    }
    let runs_orders = settings
        .services
        .contains(meridian_gateway::Service::Orders);
    let (manager, plugin_status) = match crate::plugin_manager::settings(runs_orders)? {
        Some(c) => {
            let (m, s) = crate::plugin_manager::start(Arc::clone(&plugins), c)?;
            (Some(m), Some(s))
        }
        None => (None, None),
    };
    let state = AppState {
        auth,
        store,
        plugins,
        plugin_status,
        bus,
        metrics: meridian_api::install_metrics(),
        config: ApiConfig {
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: settings.request_timeout,
            gateway: meridian_api::GatewayConfig {
                services: settings.services.clone(),
                rate_limiter,
                proxy,
                cors_origins: settings.cors_origins.clone(),
            },
        },
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on MERIDIAN_BIND={}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        backend = state.store.backend(),
        services = %state.config.gateway.services,
        rate_limits = state.config.gateway.rate_limiter.as_ref().map(|l| l.policy().as_str()),
        "meridian is serving"
    );
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add tens of milliseconds to a
    // response written in more than one segment.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // With the peer address, so the token endpoint can be rate limited per client IP.
    let app = meridian_api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("HTTP server stopped");
    if let Some(m) = manager {
        m.shutdown().await;
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
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
