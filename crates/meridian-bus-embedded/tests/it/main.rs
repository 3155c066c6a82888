//! Integration tests of `meridian-bus-embedded`: the shared bus conformance suite on SQLite
//! (a fresh database file per test) and on PostgreSQL (a fresh schema per test), plus what
//! only the embedded backend promises: nacks, out-of-order acks and positions that survive
//! a reopen and a `kill -9`, ack-wait redelivery, and replay of the kept history.

mod crash;
mod embedded;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
