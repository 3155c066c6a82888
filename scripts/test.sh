#!/usr/bin/env bash
# Runs Meridian's whole test suite: unit, router, store conformance (SQLite and PostgreSQL)
# and black-box tests of the real binary. Starts the services the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh tests

# Backend tests fail (never skip) when they cannot reach these servers.
export MERIDIAN_TEST_DATABASE_URL="${MERIDIAN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export MERIDIAN_TEST_NATS_URL="${MERIDIAN_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export MERIDIAN_TEST_AMQP_URL="${MERIDIAN_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export MERIDIAN_TEST_KAFKA_URL="${MERIDIAN_TEST_KAFKA_URL:-127.0.0.1:19092}"

# The plugin end-to-end tests run the `warehouse-sync` plugin's own binary. Built alone it
# has its own feature set (a first build compiles some dependencies again), so build it
# before the tests rather than inside one of them, against its time limit.
cargo build -p warehouse-sync

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running with cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --all-features --no-fail-fast "$@"
fi
