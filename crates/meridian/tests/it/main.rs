//! Black-box tests: the real `meridian` binary as a child process, over real HTTP, on SQLite
//! and on PostgreSQL.

mod auth;
mod cli;
mod crash;
mod events;
mod fulfillment;
mod gateway;
mod labels_s3;
mod manager;
mod plugin_sdk;
mod plugins;
mod python_plugin;
mod race;
mod sidecar;
mod support;
mod warehouse_sync;
mod webhooks_tls;
