//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and
//! the DTOs' schemas. Add every new handler to `paths(...)`; a router test checks that each
//! `/v1` route is listed.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::resources::{
    api_keys, auth, dead_letters, inventory, ops, orders, plugins, products, shipments, users,
    warehouses, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meridian API",
        description = "Inventory and orders for multi-tenant commerce. Every error is \
            `application/problem+json` (RFC 9457) with a stable `code`; list endpoints use \
            cursor pagination (`limit`, `cursor`, `next_cursor`).",
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        products::create,
        products::list,
        products::get,
        products::update,
        products::delete,
        warehouses::create,
        warehouses::list,
        inventory::set,
        inventory::adjust,
        inventory::get,
        inventory::ledger,
        orders::create,
        orders::list,
        orders::get,
        orders::events,
        orders::cancel,
        orders::fulfill,
        orders::hold,
        orders::release,
        shipments::list,
        shipments::get,
        shipments::label,
        shipments::tracking,
        shipments::carrier_webhook,
        shipments::label_url,
        shipments::presigned_label,
        dead_letters::list,
        dead_letters::get,
        dead_letters::replay,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        api_keys::rotate,
        users::create,
        users::list,
        users::get,
        users::update,
        users::delete,
        auth::token,
        auth::revoke,
        auth::jwks,
        auth::openid_configuration,
        auth::rotate_signing_keys,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate_secret,
        webhooks::deliveries,
        webhooks::redeliver,
        crate::resources::notifications::list,
        crate::resources::templates::create,
        crate::resources::templates::list,
        crate::resources::templates::get,
        crate::resources::templates::update,
        crate::resources::templates::delete,
        crate::resources::templates::preview,
        plugins::register,
        plugins::list,
        plugins::get,
        plugins::deregister,
        plugins::approve,
        plugins::deny,
        plugins::audit,
        plugins::audit_all,
    ),
    components(schemas(crate::problem::ProblemDetails)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "products", description = "The catalog"),
        (name = "warehouses", description = "Where stock is kept"),
        (name = "inventory", description = "Stock levels and the stock ledger"),
        (name = "orders", description = "Orders and their lifecycle"),
        (name = "shipments", description = "Parcels of confirmed orders, their labels and tracking"),
        (name = "dead-letters", description = "Messages a consumer gave up on; inspect and replay"),
        (name = "api-keys", description = "The tenant's API keys"),
        (name = "users", description = "The tenant's users and their roles"),
        (name = "webhooks", description = "Signed webhook endpoints, their delivery log and redelivery"),
        (name = "templates", description = "Notification templates per event type and channel"),
        (name = "plugins", description = "The plugin registry: manifests, grant approvals and their audit trail"),
        (name = "auth", description = "OAuth 2.0 token endpoint, revocation, JWKS and discovery"),
        (name = "operations", description = "Health, readiness, metrics; no authentication"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme that `security(("bearer" = []))` refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT access token from `/v1/auth/token`, or a Meridian API key: \
                         `Authorization: Bearer mk_...`",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        if std::env::var_os("MERIDIAN_PRINT_OPENAPI").is_some() {
            eprintln!("{}", serde_json::to_string_pretty(&doc).unwrap());
        }
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["type"],
            "http"
        );
    }
}
