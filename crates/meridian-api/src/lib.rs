//! Meridian's HTTP API: the axum router for every `/v1` resource, the operational endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) and the cross-cutting layers around
//! them.
//!
//! What this crate owns:
//! - **DTOs**: the wire shapes of requests and responses, kept apart from the domain types.
//!   Request DTOs hold raw JSON types (`String`, `i64`) and are converted explicitly into
//!   domain types (`Sku`, `Quantity`, `OrderRequest`, ...), collecting every problem into one
//!   `422 validation_failed`.
//! - **problem+json**: [`problem::Problem`] is the only error a handler returns, and
//!   [`problem::status_of`] is the one table from [`ErrorCode`](meridian_core::ErrorCode) to
//!   HTTP status.
//! - **Authentication**: the [`auth::TenantContext`] extractor. Every `/v1` handler takes it
//!   and passes its tenant to the store, so a handler cannot forget the tenant.
//! - **Telemetry**: a request span, `x-request-id`, Prometheus request metrics labelled by
//!   route template, and the OpenAPI 3.1 document generated from the handlers.
//!
//! What it does not own: business rules (the domain crates) and persistence (the store port).
//! It knows nothing about which store backend runs underneath.

pub mod auth;
mod extract;
mod layers;
mod metrics;
mod openapi;
pub mod problem;
mod resources;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;

pub use crate::metrics::install_metrics;
pub use crate::openapi::ApiDoc;

/// Limits applied to every request.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest accepted request body; larger bodies get `413 payload_too_large`.
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered with `503 unavailable`.
    pub request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn meridian_store::Store>,
    /// The message bus, when one is wired: `/readyz` reports whether it answers. Its
    /// outage does not make the API unready (orders still commit; the outbox waits).
    pub bus: Option<Arc<dyn meridian_bus::Bus>>,
    pub metrics: PrometheusHandle,
    pub config: ApiConfig,
}

/// The whole HTTP surface, with its layers, ready to serve.
pub fn router(state: AppState) -> Router {
    use resources::{api_keys, dead_letters, inventory, ops, orders, products, warehouses};

    let routes = Router::new()
        // Operational endpoints: no authentication.
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        // Catalog.
        .route("/v1/products", post(products::create).get(products::list))
        .route(
            "/v1/products/{sku}",
            get(products::get)
                .patch(products::update)
                .delete(products::delete),
        )
        // Warehouses and stock.
        .route(
            "/v1/warehouses",
            post(warehouses::create).get(warehouses::list),
        )
        .route("/v1/inventory/{warehouse_code}/{sku}", put(inventory::set))
        .route(
            "/v1/inventory/{warehouse_code}/{sku}/adjustments",
            post(inventory::adjust),
        )
        .route("/v1/inventory/{sku}", get(inventory::get))
        .route(
            "/v1/inventory/{sku}/ledger",
            get(inventory::ledger).put(inventory::set_sku_named_ledger),
        )
        // Orders.
        .route("/v1/orders", post(orders::create).get(orders::list))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/events", get(orders::events))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/fulfill", post(orders::fulfill))
        // Dead letters of the caller's tenant.
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/{id}", get(dead_letters::get))
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        // API keys of the caller's tenant.
        .route("/v1/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/v1/api-keys/{id}", axum::routing::delete(api_keys::revoke))
        .fallback(layers::not_found)
        // Must come after every route: it is installed on the routes that exist when called.
        .method_not_allowed_fallback(layers::method_not_allowed);

    // `Router::layer` wraps each route (and the fallbacks) after routing, so the layers see
    // the `MatchedPath`. Later layers are outer: `observe` sees the responses of a caught
    // panic and of a timeout, so both are counted, logged with the request id, and answered
    // as problem+json.
    routes
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(CatchPanicLayer::custom(layers::PanicToProblem))
        .layer(axum::middleware::from_fn_with_state(
            state.config.request_timeout,
            layers::timeout,
        ))
        .layer(axum::middleware::from_fn(layers::observe))
        .with_state(state)
}
