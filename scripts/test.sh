#!/usr/bin/env bash
# Runs Meridian's whole test suite: unit, router, store conformance (SQLite and PostgreSQL)
# and black-box tests of the real binary. Starts the services the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh postgres

# PostgreSQL tests fail (never skip) when they cannot reach this server.
export MERIDIAN_TEST_DATABASE_URL="${MERIDIAN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running with cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --all-features --no-fail-fast "$@"
fi
