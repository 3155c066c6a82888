//! Embedded migrations. Each runs once, in its own transaction, recorded in
//! `schema_migrations`; all of them run under a session advisory lock so that several
//! processes starting at once do not race (the second waits, then finds nothing to do).

use std::collections::BTreeSet;

use tokio_postgres::NoTls;

use super::error;
use super::sql::advisory_key;
use crate::{Result, StoreError};

/// `(version, SQL)`, in order. Never edit a released migration; add the next one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_relay_inbox_projection_dead_letters.sql"),
    ),
    (4, include_str!("../../migrations/postgres/0004_auth.sql")),
    (
        5,
        include_str!("../../migrations/postgres/0005_fulfillment.sql"),
    ),
    (6, include_str!("../../migrations/postgres/0006_notify.sql")),
    (
        7,
        include_str!("../../migrations/postgres/0007_plugins.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_order_holds.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_stock_snapshots.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_outbox_notify.sql"),
    ),
];

/// Creates `schema` if given and applies every pending migration to it.
pub(super) async fn run(pg: &tokio_postgres::Config, schema: Option<&str>) -> Result<()> {
    let (mut client, connection) = pg.connect(NoTls).await.map_err(error::connect)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres migration connection ended with an error");
        }
    });

    // One lock per schema: tests that each use their own schema do not wait on each other.
    let key = advisory_key(&[b"meridian:migrations", schema.unwrap_or("").as_bytes()]);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(error::db)?;
    let result = apply(&mut client, schema).await;
    // Closing the session releases the lock too; unlocking is just quicker for the next
    // process in line.
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
    {
        tracing::warn!(error = %e, "could not release the migration lock");
    }
    drop(client);
    let _ = driver.await;
    result
}

async fn apply(client: &mut tokio_postgres::Client, schema: Option<&str>) -> Result<()> {
    if let Some(schema) = schema {
        // The name was checked to be a plain identifier (`check_schema_name`). The
        // connection's search_path already names it, and PostgreSQL re-resolves the path
        // once the schema exists.
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(error::db)?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version bigint PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(error::db)?;
    let applied: BTreeSet<i64> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(error::db)?
        .iter()
        .map(|r| r.try_get::<_, i64>(0))
        .collect::<Result<_, _>>()
        .map_err(error::db)?;

    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        // A newer Meridian migrated this database. Its migrations are meant to be
        // backwards compatible during a rolling upgrade, so keep going, but say so.
        tracing::warn!(
            database = newest,
            binary = known,
            "the database schema is newer than this binary"
        );
    }

    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await.map_err(error::db)?;
        tx.batch_execute(sql).await.map_err(|e| {
            tracing::error!(version, error = %e, "postgres migration failed");
            StoreError::Internal(format!("postgres migration {version} failed"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(error::db)?;
        tx.commit().await.map_err(error::db)?;
        tracing::info!(version, "applied postgres migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_order_and_keys_are_stable() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        // Changing the derivation would let old and new processes take different locks.
        assert_eq!(advisory_key(&[b"a", b"b"]), advisory_key(&[b"a", b"b"]));
        assert_ne!(advisory_key(&[b"ab", b""]), advisory_key(&[b"a", b"b"]));
    }
}
