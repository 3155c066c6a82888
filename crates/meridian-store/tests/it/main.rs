//! Integration tests of `meridian-store`: the backend-neutral conformance suite
//! ([`conformance`], and [`plugins`] for the plugin registry) run against every backend, plus each backend's own tests.

mod conformance;
mod fulfillment;
mod holds;
mod notify;
mod plugins;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
