//! Integration tests of the fulfillment service: the real consumers on a real store (SQLite)
//! and bus (memory), with the outbox relay between them, against carriers the tests start.

mod http_carrier;
mod label_store;
