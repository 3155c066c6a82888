//! The reverse proxy against small upstreams of its own, and the limiter against real Redis: the shared one at `MERIDIAN_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) with a unique key prefix per test, and a private
//! `redis-server` that a test stops and restarts.

mod proxy;
mod redis_limits;
mod support;
