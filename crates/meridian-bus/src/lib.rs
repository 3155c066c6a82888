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
//!   letter on `<topic>.dlq` with the reason and the attempt count.
//!
//! Backends say what they guarantee through [`Capabilities`]; tests and callers branch on
//! those flags, never on a backend's name. Every backend passes the conformance suite in
//! `conformance`.

mod error;
mod pattern;
mod port;
mod retry;

pub use error::BusError;
pub use pattern::TopicPattern;
pub use port::{
    AckHandle, Bus, Capabilities, Delivery, MAX_PAYLOAD_BYTES, Message, StartAt, SubscribeOptions,
    Subscription,
};
pub use retry::RetryPolicy;
