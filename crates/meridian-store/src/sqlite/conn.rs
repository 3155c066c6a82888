//! Opening connections, their PRAGMAs, schema migrations and the write-transaction helper.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use crate::StoreError;

use super::rows::ts;

/// Embedded migrations, applied in order; a version is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_relay_inbox_projection_dead_letters.sql"),
    ),
    (4, include_str!("../../migrations/sqlite/0004_auth.sql")),
    (
        5,
        include_str!("../../migrations/sqlite/0005_fulfillment.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_notify.sql")),
    (7, include_str!("../../migrations/sqlite/0007_plugins.sql")),
    (
        8,
        include_str!("../../migrations/sqlite/0008_order_holds.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_stock_snapshots.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// How long a statement waits for another writer (possibly another process, such as
/// `meridian tenants create` next to a running server) before giving up with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Enough cached statements for every query the order writer and the read paths run.
const STATEMENT_CACHE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Write,
    Read,
    /// The checkpointer's connection (see `checkpoint`): it copies WAL frames to the
    /// database file without going through its page cache, so it keeps SQLite's default.
    Checkpoint,
}

/// Opens a connection to `path` with Meridian's PRAGMAs.
pub(super) fn open(path: &Path, access: Access) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "cannot open sqlite database");
        StoreError::Unavailable(format!("cannot open sqlite database {}", path.display()))
    })?;
    configure(&conn, access)?;
    Ok(conn)
}

fn configure(conn: &Connection, access: Access) -> Result<(), StoreError> {
    // Set first, so that the PRAGMAs below already wait for a concurrent writer.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer and the writer never blocks readers. The mode is
    // stored in the file; setting it on every connection is a no-op after the first.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::error!(mode, "sqlite refused WAL mode");
        return Err(StoreError::Unavailable(format!(
            "sqlite refused WAL journal mode (got {mode})"
        )));
    }
    // FULL: a commit is fsynced before it returns, so an acknowledged order survives a
    // crash or power loss (DESIGN.md §4.2). Group commit pays that fsync once per batch.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // SQLite's default page cache is 2 MiB; once the indexes outgrow it every insert re-reads
    // pages from the OS. The writer touches the most pages, so it gets the most room
    // (negative values are KiB).
    let cache_kib = match access {
        Access::Write => Some(64 * 1024),
        Access::Read => Some(16 * 1024),
        Access::Checkpoint => None,
    };
    if let Some(kib) = cache_kib {
        conn.pragma_update(None, "cache_size", -kib)?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: a statement's plan never depends on the values
    // bound to it. Without it, SQLite marks the parameter of a `col = ?` term that the
    // chosen index does not use (such as the `w.tenant_id = ?1` that the stock-level join
    // derives) as "re-plan if rebound", and `sqlite3_clear_bindings`, which rusqlite calls
    // whenever a cached statement goes back to its cache, then expires the statement: it
    // was parsed and planned again on every use, on the writer's hottest query. Meridian
    // never runs ANALYZE, so value-dependent plans would gain it nothing.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if access == Access::Read {
        // Read connections are opened read-write (so they can take part in WAL recovery
        // and share memory) but refuse to change anything.
        conn.pragma_update(None, "query_only", "ON")?;
    }
    Ok(())
}

/// Brings the schema up to date. Safe to run from several processes at once: the check and
/// the migrations happen inside one `BEGIN IMMEDIATE` transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TEXT NOT NULL
         ) STRICT",
    )?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database schema is version {current}, newer than this build's \
             {SCHEMA_VERSION}; upgrade meridian"
        )));
    }
    // Every migration not yet recorded, not only those above the highest: versions can
    // land out of order (a branch's 0004 before main's 0003).
    let applied: std::collections::HashSet<i64> = tx
        .prepare("SELECT version FROM schema_migrations")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !applied.contains(v)) {
        tx.execute_batch(sql).map_err(|e| {
            tracing::error!(error = %e, version, "sqlite migration failed");
            StoreError::Internal(format!("sqlite migration {version} failed"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, ts(&meridian_core::now())],
        )?;
        tracing::info!(version, "applied sqlite migration");
    }
    tx.commit()?;
    Ok(())
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it. Taking the write lock up
/// front means a transaction never has to upgrade from reader to writer, which in WAL mode
/// fails with `SQLITE_BUSY` without waiting; instead it waits in `BEGIN` under
/// busy_timeout. An error rolls everything back.
pub(super) fn immediate<R>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = WriteTx::begin(conn)?;
    let r = f(&tx)?;
    tx.commit()?;
    Ok(r)
}

/// A `BEGIN IMMEDIATE` transaction on the write connection. Unlike rusqlite's
/// `Transaction`, which runs `execute_batch("BEGIN ...")` and `execute_batch("COMMIT")` and
/// so parses both again every time, it begins and commits with cached statements: the
/// writer runs one per batch, hundreds a second. Dropped without [`WriteTx::commit`] (an
/// error, a panic unwinding, a failed `COMMIT`), it rolls back.
pub(super) struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn })
    }

    /// Commits; returns once the commit is durable (synchronous = FULL).
    pub(super) fn commit(self) -> Result<(), StoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Still in a transaction: it was not committed, or its COMMIT failed.
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// A cached statement must run as prepared, not be parsed and planned again on every
    /// use (see the QPSG setting in `configure`).
    #[test]
    fn cached_statements_are_not_reprepared() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db"), Access::Write).unwrap();
        migrate(&mut conn).unwrap();
        // Re-prepared on every run without the QPSG: the join derives `w.tenant_id = ?1`,
        // a term the warehouse lookup does not use, and SQLite marks such a parameter.
        for i in 0..3 {
            let mut stmt = conn
                .prepare_cached(super::super::queries::LEVELS_OF)
                .unwrap();
            let n = stmt
                .query_map(params!["t", format!("SKU-{i}")], |_| Ok(()))
                .unwrap()
                .count();
            assert_eq!(n, 0);
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "run {i}");
        }
    }
}
