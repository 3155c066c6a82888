//! Integration tests of the NATS backend against real `nats-server` processes.
//!
//! - `shared`: the whole conformance suite against the NATS at `MERIDIAN_TEST_NATS_URL`
//!   (default `nats://127.0.0.1:4222`). Each case uses its own deployment id, hence its own
//!   streams, and deletes them afterwards. An unreachable server fails the tests; nothing
//!   is skipped.
//! - `restart`: the cases that restart the broker, each against a private `nats-server`
//!   child process (the shared one serves other tests in parallel and is never touched).
//! - `nats`: properties specific to this backend (stream layout and profile, patterns
//!   across domains, `Unavailable` while the broker is down, ephemeral cleanup).

mod fixture;
mod nats;

mod shared {
    async fn factory() -> meridian_bus::conformance::TestBus {
        crate::fixture::shared_test_bus().await
    }
    meridian_bus::bus_conformance!(factory);
}

mod restart {
    async fn factory() -> meridian_bus::conformance::TestBus {
        crate::fixture::private_test_bus().await
    }
    meridian_bus::bus_conformance!(@cases factory; broker_restart, durable_resume);
}
