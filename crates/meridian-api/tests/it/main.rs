//! Router tests: the real router on a real SQLite store per test, driven with `oneshot`.
//! Every error code the API can produce, each bad input of issue 2 (and that it changes
//! nothing), tenant isolation, the happy path of every route, and the OpenAPI document.

mod api_keys;
mod auth;
mod dead_letters;
mod errors;
mod inventory;
mod ops;
mod orders;
mod plugins;
mod products;
mod support;
mod templates;
mod tenancy;
mod warehouses;
mod webhooks;
