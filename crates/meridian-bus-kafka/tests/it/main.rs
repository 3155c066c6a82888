//! Integration tests of the Kafka backend against a real Kafka-protocol broker (`tansu`).
//!
//! - `shared`: the whole conformance suite against the broker at `MERIDIAN_TEST_KAFKA_URL`
//!   (default `127.0.0.1:19092`). Each case uses its own deployment id, hence its own
//!   topics and groups, and deletes its topics afterwards. An unreachable broker fails the
//!   tests; nothing is skipped.
//! - `restart`: the cases that restart the broker, each against a private `tansu` child
//!   process keeping its data in a fresh PostgreSQL database of its own (at
//!   `MERIDIAN_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//!   which the case crashes (SIGKILL) and starts again.
//! - `kafka`: properties specific to this backend (topic layout, record key and header,
//!   patterns across domains, `Unavailable` without a broker, a durable consumer resuming
//!   from its committed offsets after a broker crash).

mod fixture;
mod kafka;

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
