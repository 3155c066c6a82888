//! Translation of `rusqlite` errors into backend-neutral [`StoreError`]s.
//!
//! This is the seam: the driver's message is logged here and never travels further. Call
//! sites that can give a constraint violation a meaning (a duplicate SKU is
//! `AlreadyExists`) check [`is_unique_violation`] before falling back to this conversion.

use rusqlite::ErrorCode;
use rusqlite::ffi;

use crate::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // Another writer held the lock past busy_timeout, or the disk is in trouble:
            // the operation did not happen and a retry may succeed.
            Some(
                code @ (ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly),
            ) => {
                tracing::error!(error = %e, ?code, "sqlite is unavailable");
                StoreError::Unavailable("the database is busy or cannot be written".into())
            }
            _ => {
                tracing::error!(error = %e, "sqlite query failed");
                StoreError::Internal("sqlite query failed; see the server log".into())
            }
        }
    }
}

/// A `UNIQUE` or `PRIMARY KEY` constraint failed.
pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_extended_error_code(),
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// A `FOREIGN KEY` constraint failed.
pub(super) fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_extended_error_code() == Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// A result from a blocking task or the writer thread that never came back.
pub(super) fn lost(what: &str) -> StoreError {
    tracing::error!("the sqlite {what} dropped a request; it panicked or is shutting down");
    StoreError::Internal(format!("the sqlite {what} did not answer"))
}
