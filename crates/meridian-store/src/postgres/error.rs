//! Translation of driver and pool errors into [`StoreError`], the one seam where PostgreSQL's
//! error codes meet the store's backend-neutral vocabulary. The driver's message is logged
//! here and never returned to a client.

use deadpool_postgres::PoolError;
use meridian_core::ValidationErrors;
use tokio_postgres::error::SqlState;

use crate::StoreError;

/// Translates an error that has no more specific meaning at its call site.
///
/// - check violation → `StockConflict` (the only CHECK guards stock bounds);
/// - a NUL character in text → `Validation`;
/// - lost connections, shutdowns, deadlocks and timeouts → `Unavailable`: nothing was
///   committed and a retry may succeed;
/// - anything else → `Internal`, with the driver's message in the log only.
pub(super) fn db(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No server error: the socket broke, the connection closed, or the client could
        // not encode/decode a value (a bug, hence Internal).
        if e.is_closed() || is_io(&e) {
            tracing::warn!(error = %e, "postgres connection lost");
            return StoreError::Unavailable("the database connection was lost".into());
        }
        tracing::error!(error = %e, "postgres client error");
        return StoreError::Internal("database client error".into());
    };
    let code = db.code();
    if *code == SqlState::CHECK_VIOLATION {
        return StoreError::StockConflict(
            "the change would take stock below zero or below what is reserved".into(),
        );
    }
    if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE || *code == SqlState::UNTRANSLATABLE_CHARACTER
    {
        // PostgreSQL text and jsonb cannot hold U+0000, which is valid in Rust strings and
        // JSON. That is bad input, not a server fault.
        tracing::info!(code = code.code(), error = %db, "postgres refused a text value");
        return StoreError::Validation(ValidationErrors::single(
            "text",
            "must not contain the NUL character (U+0000)",
        ));
    }
    if is_transient(code) {
        tracing::warn!(code = code.code(), error = %db, "postgres transient error");
        return StoreError::Unavailable("the database is busy or restarting; retry".into());
    }
    tracing::error!(
        code = code.code(),
        error = %db,
        detail = db.detail().unwrap_or(""),
        "postgres error"
    );
    StoreError::Internal(format!("database error {}", code.code()))
}

/// Translates a failure to get a pooled connection.
pub(super) fn pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            tracing::warn!(error = %e, "postgres pool unavailable");
            StoreError::Unavailable("no database connection available".into())
        }
        other => {
            tracing::error!(error = %other, "postgres pool error");
            StoreError::Internal("database pool error".into())
        }
    }
}

/// A failure to open a connection outside the pool (migrations, the order writer). The
/// reason (wrong password, unknown database, host down) is logged for the operator.
pub(super) fn connect(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_some() && !e.code().is_some_and(is_transient) {
        tracing::error!(error = %e, "cannot connect to postgres");
    } else {
        tracing::warn!(error = %e, "cannot connect to postgres");
    }
    StoreError::Unavailable("cannot connect to the database".into())
}

pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

pub(super) fn is_foreign_key_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

/// Whether the connection this error came from can no longer be used.
pub(super) fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || is_io(e)
        || e.code().is_some_and(|c| {
            c.code().starts_with("08") || c.code().starts_with("57P") // admin/crash shutdown
        })
}

/// Errors after which the same request may succeed: nothing was committed.
fn is_transient(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || c.starts_with("57P") // operator intervention: shutdown, cannot connect now
        || c.starts_with("53") // insufficient resources: too many connections, disk full
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}
