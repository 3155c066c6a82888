//! The seam between rdkafka errors and [`BusError`]. Client error text goes to the log
//! only; callers see what happened in Meridian's terms.

use std::fmt::Display;

use meridian_bus::BusError;

/// The broker could not be reached or did not answer in time; the caller may retry.
pub(crate) fn unavailable(what: &str, err: impl Display) -> BusError {
    tracing::warn!(error = %err, "kafka: {what}");
    BusError::Unavailable(what.to_owned())
}

/// The broker answered with something Meridian did not expect (a refused request, a
/// configuration conflict): a bug or an operator's problem, not something a retry fixes.
pub(crate) fn internal(what: &str, err: impl Display) -> BusError {
    tracing::error!(error = %err, "kafka: {what}");
    BusError::Internal(what.to_owned())
}
