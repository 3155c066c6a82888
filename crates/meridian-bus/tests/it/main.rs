//! Integration tests of meridian-bus: the conformance suite against the memory backend, and
//! memory-specific behaviour. Needs the `conformance` feature (see the crate docs).

mod consumer;
mod memory;
