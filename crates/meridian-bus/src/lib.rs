//! The Bus API: one contract for every message backend.
//!
//! - [`Bus`] publishes `(topic, envelope)` and opens [`Subscription`]s on a
//!   [`TopicPattern`].
//! - A subscription belongs to a named consumer. Subscriptions with the same consumer name
//!   compete (each message goes to one of them: a consumer group); different names each get
//!   every message (fan-out). A durable consumer resumes after a restart from its last
//!   acknowledged message.
//! - Each [`Delivery`] is acknowledged or negatively acknowledged; a nack redelivers it
//!   after a delay, with its attempt count raised.
//! - [`consumer::run`] is the backend-neutral consumer loop: handler, retries with
//!   exponential backoff and jitter ([`RetryPolicy`]), and after the last attempt a dead
//!   letter on `<topic>.dlq` with the reason and the attempt count;
//!   [`consumer::run_batched`] does the same for a [`BatchHandler`], with several
//!   deliveries in flight and one result per message.
//!
//! Telemetry: [`MeteredBus`] wraps any backend and counts publishes (and their latency)
//! per topic; [`consumer::run`] counts deliveries, acks, nacks, dead letters, messages in
//! flight, handler time and end-to-end latency per subscription pattern and consumer;
//! [`MeteredBus`] subscriptions sample the backend's [`Subscription::lag`] into a gauge.
//! Neither labels by tenant.
//!
//! Backends say what they guarantee through [`Capabilities`]; tests and callers branch on
//! those flags, never on a backend's name. Every backend passes the conformance suite in
//! `conformance`. The contract, with its MUSTs and SHOULDs, is written out in
//! `docs/specs/bus.md`.
//!
//! This crate also holds [`MemoryBus`], the in-process backend (not durable; the
//! lowest-latency path), and [`bench`], the benchmarks behind `meridian bench bus`
//! ([`bench::bench_memory`] for the memory bus, [`bench::bench_throughput`] for any backend).
//!
//! # The conformance suite
//!
//! The suite lives behind the cargo feature `conformance` (it adds no dependencies). A
//! backend crate enables it from its dev-dependencies and invokes [`bus_conformance!`] once,
//! with a factory returning a fresh `conformance::TestBus`:
//!
//! ```toml
//! [dev-dependencies]
//! meridian-bus = { workspace = true, features = ["conformance"] }
//! tokio.workspace = true
//! ```
//!
//! This crate's own integration tests (`tests/it`, the memory backend) declare
//! `required-features = ["conformance"]`, so they run with
//! `cargo test -p meridian-bus --features conformance` and with
//! `cargo nextest run --workspace --all-features`; without the feature cargo skips them.

pub mod bench;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod consumer;
mod error;
mod memory;
mod message;
mod metered;
mod pattern;
mod port;
mod retry;

pub use consumer::{BatchHandler, DeadLetter, DeadLetterSink, Handler, HandlerError, NoopSink};
pub use error::BusError;
pub use memory::{MemoryBus, MemoryBusConfig};
pub use message::Message;
pub use metered::MeteredBus;
pub use pattern::{DomainReach, TopicPattern, deployment_and_domain, domain_reach};
pub use port::{
    AckHandle, Bus, Capabilities, Delivery, MAX_PAYLOAD_BYTES, StartAt, SubscribeOptions,
    Subscription,
};
pub use retry::RetryPolicy;
