//! Opening the store and the bus, and serving the API until a shutdown signal, with the
//! outbox relay, the order-events projection, the fraud-decisions consumer, the
//! fulfillment consumers and the stock snapshot consumer running beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::serve::ListenerExt;
use meridian_api::{ApiConfig, AppState};
use meridian_bus::Bus;
use meridian_fulfillment_service::{
    Fulfillment, HttpCarrier, HttpCarrierConfig, LabelStore, LocalLabelStore,
};
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
    fn start(
        config: &Config,
        store: &Arc<dyn Store>,
        bus: &Arc<dyn Bus>,
        labels: &Arc<dyn LabelStore>,
        secrets: meridian_notify::SecretSealer,
    ) -> Background {
        let (stop, shutdown) = watch::channel(false);
        let fulfillment = {
            let (bus, shutdown) = (bus.clone(), shutdown.clone());
            let deployment = config.deployment_id.clone();
            let service = fulfillment_service(config, store, labels.clone());
            let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
            tokio::spawn(async move {
                if let Err(e) = service.run(bus, &deployment, sink, shutdown).await {
                    tracing::error!(error = %e, "the fulfillment consumers stopped");
                }
            })
        };
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
        let fraud_decisions = {
            let (bus, store, shutdown) = (bus.clone(), store.clone(), shutdown.clone());
            let deployment = config.deployment_id.clone();
            tokio::spawn(async move {
                let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
                if let Err(e) =
                    meridian_relay::run_fraud_decisions(bus, store, &deployment, sink, shutdown)
                        .await
                {
                    tracing::error!(error = %e, "the fraud-decisions consumer stopped");
                }
            })
        };
        let stock_snapshots = {
            let (bus, store, shutdown) = (bus.clone(), store.clone(), shutdown.clone());
            let deployment = config.deployment_id.clone();
            tokio::spawn(async move {
                let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
                if let Err(e) =
                    meridian_inventory_service::run(bus, store, &deployment, sink, shutdown).await
                {
                    tracing::error!(error = %e, "the stock snapshot consumer stopped");
                }
            })
        };
        let (notify_consumer, notify_worker) =
            start_notifications(config, store, bus, secrets, &shutdown);
        let relay = Relay::new(store.clone(), bus.clone(), RelayConfig::default());
        let relay = tokio::spawn(relay.run(shutdown));
        Background {
            stop,
            tasks: vec![
                ("order-events consumer", projection),
                ("fulfillment consumers", fulfillment),
                ("fraud-decisions consumer", fraud_decisions),
                ("stock snapshot consumer", stock_snapshots),
                ("notification consumer", notify_consumer),
                ("webhook delivery worker", notify_worker),
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

/// The notification service: the consumers that turn order, shipment and webhook events
/// into notifications (webhooks, email, SMS), and the worker that sends them.
fn start_notifications(
    config: &Config,
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    secrets: meridian_notify::SecretSealer,
    shutdown: &watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let wake = meridian_notify::Wake::new();
    let consumer = {
        let (bus, store, shutdown) = (bus.clone(), store.clone(), shutdown.clone());
        let deployment = config.deployment_id.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let sink = Arc::new(StoreDeadLetterSink::new(store.clone()));
            let notify: Arc<dyn meridian_store::NotifyStore> = store;
            if let Err(e) =
                meridian_notify::run_consumers(bus, notify, &deployment, sink, wake, shutdown).await
            {
                tracing::error!(error = %e, "the notification consumer stopped");
            }
        })
    };
    let worker = tokio::spawn(meridian_notify::run_worker(
        store.clone(),
        meridian_notify::WorkerConfig {
            outbound: config.outbound.clone(),
            secrets: Some(secrets),
            ..config.notify.worker()
        },
        wake,
        shutdown.clone(),
    ));
    (consumer, worker)
}

/// The fulfillment consumers' parts: the label store, and the carriers (the HTTP carrier
/// first, so new shipments get it, when `MERIDIAN_CARRIER_URL` is set; the built-in
/// `manual` carrier always, for shipments that already name it).
fn fulfillment_service(
    config: &Config,
    store: &Arc<dyn Store>,
    labels: Arc<dyn LabelStore>,
) -> Fulfillment {
    let mut service = Fulfillment::new(store.clone(), labels);
    service.await_screening = config.fulfillment.await_screening;
    if let Some(url) = &config.fulfillment.carrier_url {
        let http = HttpCarrierConfig {
            timeout: config.fulfillment.carrier_timeout,
            outbound: config.outbound.clone(),
            ..HttpCarrierConfig::new(url.clone())
        };
        match HttpCarrier::new(http) {
            Ok(carrier) => service.carriers.insert(0, Arc::new(carrier)),
            Err(e) => tracing::error!(error = %e, "the HTTP carrier is not available"),
        }
    }
    service
}

/// How long start-up waits for the label store's check.
const LABEL_STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Where shipping labels are kept (`MERIDIAN_LABEL_STORE`): by default the directory
/// `{MERIDIAN_DATA_DIR}/objects`, or an S3 bucket. Checked now, so a missing bucket,
/// refused credentials or an endpoint that does not answer stop the start with the reason.
pub async fn open_label_store(config: &Config) -> Result<Arc<dyn LabelStore>> {
    use crate::fulfillment_config::LabelStoreSetting;
    let (labels, what): (Arc<dyn LabelStore>, String) = match &config.fulfillment.label_store {
        LabelStoreSetting::Local(dir) => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("objects"));
            let what = format!("the label directory {}", dir.display());
            (Arc::new(LocalLabelStore::new(dir)), what)
        }
        #[cfg(feature = "label-store-s3")]
        LabelStoreSetting::S3 {
            bucket,
            prefix,
            endpoint,
            allow_http,
            aws,
        } => {
            use meridian_fulfillment_service::{S3LabelStore, S3LabelStoreConfig};
            let mut s3 = S3LabelStoreConfig::from_url(&format!("s3://{bucket}/{prefix}"))
                .map_err(anyhow::Error::msg)?;
            s3.endpoint = endpoint.clone();
            s3.allow_http = *allow_http;
            s3.aws = aws.0.clone();
            s3.outbound = config.outbound.clone();
            let what = format!("the S3 label store s3://{bucket}/{prefix} (MERIDIAN_LABEL_STORE)");
            let store = S3LabelStore::new(s3).with_context(|| format!("cannot open {what}"))?;
            (Arc::new(store), what)
        }
        #[cfg(not(feature = "label-store-s3"))]
        LabelStoreSetting::S3 { .. } => bail!(
            "MERIDIAN_LABEL_STORE=s3://... needs the `label-store-s3` feature; rebuild with --features label-store-s3"
        ),
    };
    match tokio::time::timeout(LABEL_STORE_CHECK_TIMEOUT, labels.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e).with_context(|| format!("cannot use {what}")),
        Err(_) => bail!("cannot use {what}: no answer within {LABEL_STORE_CHECK_TIMEOUT:?}"),
    }
    tracing::info!(label_store = labels.name(), "label store ready");
    Ok(labels)
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
    let labels = open_label_store(&config).await?;
    // In split mode only the process that runs the orders service carries the bus, the
    // outbox relay and the order-events consumer; a gateway or a catalog process does not.
    if !config
        .gateway
        .services
        .contains(meridian_gateway::Service::Orders)
    {
        return serve_api(config, store, plugins, None, labels, ready).await;
    }
    let bus: Arc<dyn Bus> = Arc::new(meridian_bus::MeteredBus::new(open_bus(&config).await?));
    tracing::info!(bus = bus.name(), "bus open");
    // The consumer must exist before the relay publishes, or a broker that keeps messages
    // only for existing queues (RabbitMQ) drops the first events. A bus that is down now
    // is retried by the consumer loop; the relay's events wait in the outbox meanwhile.
    let deployment = config.deployment_id.as_str();
    declare(
        "order-events consumer",
        meridian_relay::declare_order_events(bus.as_ref(), deployment),
    )
    .await;
    declare(
        "fulfillment consumers",
        Fulfillment::declare(bus.as_ref(), deployment),
    )
    .await;
    declare(
        "fraud-decisions consumer",
        meridian_relay::declare_fraud_decisions(bus.as_ref(), deployment),
    )
    .await;
    declare(
        "notification consumers",
        meridian_notify::declare(bus.as_ref(), deployment),
    )
    .await;
    declare(
        "stock snapshot consumer",
        meridian_inventory_service::declare(bus.as_ref(), deployment),
    )
    .await;
    // Webhook secrets are sealed at rest under the auth master key.
    let secrets =
        meridian_notify::SecretSealer::new(crate::auth_config::auth_config(&config)?.master_key);
    let background = Background::start(&config, &store, &bus, &labels, secrets);
    let result = serve_api(config, store, plugins, Some(bus), labels, ready).await;
    background.stop().await;
    tracing::info!("meridian stopped");
    result
}

/// Declares a service's durable consumers, waiting at most [`DECLARE_TIMEOUT`]; a bus that
/// is down now is only logged (the consumer loop retries).
async fn declare<E: std::fmt::Display>(
    what: &str,
    declared: impl std::future::Future<Output = std::result::Result<(), E>>,
) {
    match tokio::time::timeout(DECLARE_TIMEOUT, declared).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot declare the {what} yet"),
        Err(_) => tracing::warn!("declaring the {what} timed out"),
    }
}

async fn serve_api(
    config: Config,
    store: Arc<dyn Store>,
    plugins: Arc<dyn meridian_store::PluginStore>,
    bus: Option<Arc<dyn Bus>>,
    labels: Arc<dyn LabelStore>,
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
    let auth_config = crate::auth_config::auth_config(&config)?;
    // Pre-signed label links are signed with a key derived from the master key, which every
    // instance of the deployment shares.
    let label_urls =
        meridian_api::LabelUrlSigner::derive(auth_config.master_key.to_base64().as_bytes());
    let auth = meridian_api::auth::AuthService::start(store.clone(), auth_config)
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
            webhook_address_guard: meridian_http::AddressGuard {
                allow_private: config.notify.webhook_allow_private,
            },
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
    // Shipping labels are served from the label store (GET /v1/shipments/{id}/label), and
    // carriers' webhooks are checked against their secret.
    let mut app = meridian_api::router(state)
        .layer(axum::Extension(labels))
        .layer(axum::Extension(label_urls));
    if let Some(secret) = &config.fulfillment.carrier_webhook_secret {
        app = app.layer(axum::Extension(meridian_api::CarrierWebhook {
            carrier: HttpCarrierConfig::DEFAULT_NAME.to_owned(),
            secret: meridian_fulfillment_service::WebhookSecret::new(secret),
        }));
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
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
