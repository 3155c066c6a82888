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

pub use crate::layers::GatewayConfig;
pub use crate::metrics::install_metrics;
pub use crate::openapi::ApiDoc;
pub use crate::resources::plugins::{PluginStatusSource, new_plugin, parse_manifest};
pub use crate::resources::shipments::CarrierWebhook;
pub use meridian_fulfillment_service::LabelUrlSigner;

/// Limits applied to every request.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest accepted request body; larger bodies get `413 payload_too_large`.
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered with `503 unavailable`.
    pub request_timeout: Duration,
    /// Rate limits, CORS and the services this process runs or forwards.
    pub gateway: GatewayConfig,
    /// Whether webhook URLs may name loopback, private or link-local addresses
    /// (`MERIDIAN_WEBHOOK_ALLOW_PRIVATE`); refused with a 422 by default.
    pub webhook_address_guard: meridian_http::AddressGuard,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            gateway: GatewayConfig::default(),
            webhook_address_guard: meridian_http::AddressGuard::STRICT,
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
    /// Token verification and issuing, signing keys, revocations.
    pub auth: Arc<auth::AuthService>,
    /// The plugin registry (usually the same backend as `store`).
    pub plugins: Arc<dyn meridian_store::PluginStore>,
    /// The instance manager's view of each plugin, when one runs in this process.
    pub plugin_status: Option<Arc<dyn PluginStatusSource>>,
}

/// The router `meridian bench gateway` measures: one trivial handler served twice, at
/// `/v1/products/{sku}` behind the gateway's layers exactly as the real route is
/// (authentication with its permission check, the rate limit, the dispatch), and at
/// `/bench/baseline` without them. Both sit inside the same outer layers as [`router`], so
/// the difference between the two is the gateway's cost.
pub fn gateway_bench_router(state: AppState) -> Router {
    async fn trivial() -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({"ok": true}))
    }
    let gated = behind_authentication(
        Router::new().route("/v1/products/{sku}", get(trivial)),
        &state,
    );
    let routes = Router::new()
        .route("/bench/baseline", get(trivial))
        // Where the benchmark gets its access token.
        .route("/v1/auth/token", post(resources::auth::token))
        .merge(gated);
    with_outer_layers(routes, state)
}

/// The gateway's layers, which run inside authentication and so see the principal:
/// `rate_limit` counts the request against its tenant's plan (or its client address), then
/// `dispatch` forwards it when this process does not run the route's service (split mode).
fn gateway_layers(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::dispatch,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::rate_limit,
        ))
}

/// Every route of `routes` needs a credential and the permission listed for it in
/// `auth::required_permission`; the gateway's layers run inside the authentication and
/// find the `Principal` in the request extensions.
fn behind_authentication(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    gateway_layers(routes, state).route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ))
}

/// The layers every route shares. `Router::layer` wraps each route (and the fallbacks)
/// after routing, so the layers see the `MatchedPath`. Later layers are outer: `observe`
/// sees the responses of a caught panic and of a timeout, so both are counted, logged with
/// the request id, and answered as problem+json. CORS, when configured, answers preflights
/// before authentication.
fn with_outer_layers(routes: Router<AppState>, state: AppState) -> Router {
    let routes = routes
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(CatchPanicLayer::custom(layers::PanicToProblem))
        .layer(axum::middleware::from_fn_with_state(
            state.config.request_timeout,
            layers::timeout,
        ));
    let routes = match layers::cors(&state.config.gateway.cors_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn(layers::observe))
        .with_state(state)
}

/// The whole HTTP surface, with its layers, ready to serve.
pub fn router(state: AppState) -> Router {
    use resources::{
        api_keys, auth as auth_routes, dead_letters, inventory, notifications, ops, orders,
        plugins, products, shipments, templates, users, warehouses, webhooks,
    };

    // Every route here needs a credential and its permission (see `behind_authentication`).
    let authenticated = Router::new()
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
        .route("/v1/orders/{id}/hold", post(orders::hold))
        .route("/v1/orders/{id}/release", post(orders::release))
        // Shipments (the fulfillment service).
        .route("/v1/shipments", get(shipments::list))
        .route("/v1/shipments/{id}", get(shipments::get))
        .route("/v1/shipments/{id}/label", get(shipments::label))
        .route("/v1/shipments/{id}/label-url", get(shipments::label_url))
        .route("/v1/shipments/{id}/tracking", post(shipments::tracking))
        // Dead letters of the caller's tenant.
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/{id}", get(dead_letters::get))
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        // API keys of the caller's tenant.
        .route("/v1/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/v1/api-keys/{id}", axum::routing::delete(api_keys::revoke))
        .route("/v1/api-keys/{id}/rotate", post(api_keys::rotate))
        // Users of the caller's tenant.
        .route("/v1/users", post(users::create).get(users::list))
        .route(
            "/v1/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route(
            "/v1/auth/signing-keys/rotate",
            post(auth_routes::rotate_signing_keys),
        )
        // Webhook endpoints of the caller's tenant and their delivery log.
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/v1/notifications", get(notifications::list))
        // Notification templates.
        .route(
            "/v1/templates",
            post(templates::create).get(templates::list),
        )
        .route("/v1/templates/preview", post(templates::preview))
        .route(
            "/v1/templates/{id}",
            get(templates::get)
                .patch(templates::update)
                .delete(templates::delete),
        )
        // The deployment's plugin registry (platform admins).
        .route("/v1/plugins", post(plugins::register).get(plugins::list))
        .route(
            "/v1/plugins/{plugin}",
            get(plugins::get).delete(plugins::deregister),
        )
        .route(
            "/v1/plugins/{plugin}/grants/{grant}/approve",
            post(plugins::approve),
        )
        .route(
            "/v1/plugins/{plugin}/grants/{grant}/deny",
            post(plugins::deny),
        )
        .route("/v1/plugins/{plugin}/audit", get(plugins::audit))
        .route("/v1/plugin-audit", get(plugins::audit_all));
    let authenticated = behind_authentication(authenticated, &state);

    let routes = Router::new()
        // Operational endpoints: no authentication.
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        // The token endpoints authenticate their clients themselves (RFC 6749, RFC 7009).
        .route("/v1/auth/token", post(auth_routes::token))
        .route("/v1/auth/revoke", post(auth_routes::revoke))
        // A pre-signed label link is its own authorization.
        .route("/v1/labels/{id}", get(shipments::presigned_label))
        // Carriers authenticate their webhooks by signature.
        .route(
            "/v1/carrier-webhooks/tracking",
            post(shipments::carrier_webhook),
        )
        .route("/.well-known/jwks.json", get(auth_routes::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(auth_routes::openid_configuration),
        );
    // The token endpoint is limited per client IP; the auth service's public routes are
    // forwarded like the others in split mode.
    let routes = gateway_layers(routes, &state)
        .merge(authenticated)
        .fallback(layers::not_found)
        // Must come after every route: it is installed on the routes that exist when called.
        .method_not_allowed_fallback(layers::method_not_allowed);

    with_outer_layers(routes, state)
}
