//! Integration tests of `meridian-notify`: the whole pipeline (order → outbox → relay →
//! bus → notification consumer → delivery worker → a real HTTP receiver that checks the
//! signature), run on SQLite with the embedded bus and on PostgreSQL with NATS; https under a
//! private CA, sealed secrets and the address guard.

mod outbound;
mod pipeline;
mod postgres_nats;
mod sqlite_embedded;
mod support;
