//! The seam between lapin's errors and [`BusError`].

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use meridian_bus::BusError;

/// Translates a lapin error met while doing `what`.
///
/// Anything that says "the connection or channel is gone" is `Unavailable`: the operation
/// did not happen (or its outcome is unknown, and the contract is at-least-once), and the
/// caller may retry once the connection is back. A broker refusal that a retry cannot fix
/// (a topology conflict, a permission) is `Internal`, with the broker's text for the log.
pub(crate) fn map(what: &str, err: &lapin::Error) -> BusError {
    if is_connection_loss(err) {
        BusError::Unavailable(format!("rabbitmq {what}: {err}"))
    } else {
        BusError::Internal(format!("rabbitmq {what}: {err}"))
    }
}

/// Whether `err` means the connection (or the channel with it) was lost, so that a new
/// connection may succeed where this one failed.
pub(crate) fn is_connection_loss(err: &lapin::Error) -> bool {
    match err.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::ChannelsLimitReached => true,
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            // The broker is shutting down or an operator closed the connection.
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
                | AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR)
                // A quorum queue without a leader (for example while its node restarts).
                | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
        ),
        _ => false,
    }
}

/// Whether `err` is the broker's NOT_FOUND: a queue or exchange vanished under us (an
/// auto-delete queue deleted between declare and consume, or an operator deleted it).
pub(crate) fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
