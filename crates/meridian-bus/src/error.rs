/// Backend-neutral bus errors. Backends translate their client's errors at the seam.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A topic or pattern outside the grammar or outside `deployment.{id}.`.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// The serialized envelope is larger than the backend accepts.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    PayloadTooLarge { size: usize, limit: usize },
    /// The backend does not offer this (see [`crate::Capabilities`]).
    #[error("not supported by the {backend} bus: {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    /// The broker cannot be reached right now; the operation did not happen and may be
    /// retried.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The subscription or bus was closed.
    #[error("closed")]
    Closed,
    /// A bug or broken invariant; the message is for the log.
    #[error("internal bus error: {0}")]
    Internal(String),
}
