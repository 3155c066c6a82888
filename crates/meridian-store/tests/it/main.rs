//! Integration tests of `meridian-store`: the backend-neutral conformance suite
//! ([`conformance`]) run against every backend, plus each backend's own tests.

mod conformance;
mod fulfillment;
mod notify;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
