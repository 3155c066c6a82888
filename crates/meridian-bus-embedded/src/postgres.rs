//! The log on PostgreSQL, in the store's schema (feature `postgres`).
//!
//! - **Writer.** One task owns one connection. It drains every queued append, settle and
//!   consumer open into one transaction: the appends become a single `INSERT ... SELECT
//!   FROM unnest(...)`, so a batch costs a handful of round trips and one commit. A lost
//!   connection fails the batch with `Unavailable` and is reopened for the next one. If it
//!   breaks during `COMMIT` the outcome is unknown; the publisher hears `Unavailable` and
//!   may publish again, which consumers absorb (delivery is at least once).
//! - **Commit order.** Appends take a transaction-scoped advisory lock (per schema) before
//!   inserting and hold it to commit, so `seq` order is commit order across connections and
//!   processes, and a reader fetching up to the head it just read never skips a row that
//!   commits later.
//! - **Reads** use a small deadpool pool.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use meridian_bus::{BusError, TopicPattern};
use meridian_core::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, NoTls};

use crate::log::{
    ConsumerRecord, Fetched, Log, NewEntry, PendingRow, Settle, decode_rows, literal_prefix,
};

/// `(version, SQL)`, in order, recorded in `bus_schema_migrations`. Never edit a released
/// migration; add the next one.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_init.sql"))];

/// The most rows and settles in one transaction.
const MAX_BATCH_ITEMS: usize = 8192;

/// Jobs queued for the writer before publishers wait.
const QUEUE_CAPACITY: usize = 4096;

const HEAD: &str = "SELECT COALESCE(max(seq), 0) FROM bus_log";

const APPEND: &str = "\
    WITH ins AS ( \
        INSERT INTO bus_log (topic, published_at, payload) \
        SELECT u.topic, GREATEST(now(), (SELECT max(published_at) FROM bus_log)), u.payload \
        FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS u(topic, payload, ord) \
        ORDER BY u.ord \
        RETURNING seq) \
    SELECT max(seq) FROM ins";

const FETCH: &str = "\
    SELECT seq, topic, payload FROM bus_log \
    WHERE seq > $1 AND seq <= $2 AND starts_with(topic, $3) \
    ORDER BY seq LIMIT $4";

type Reply<T> = oneshot::Sender<Result<T, BusError>>;

enum Job {
    Append {
        entries: Vec<NewEntry>,
        reply: Reply<()>,
    },
    Settle {
        settle: Settle,
        reply: Reply<()>,
    },
}

impl Job {
    fn weight(&self) -> usize {
        match self {
            Job::Append { entries, .. } => entries.len().max(1),
            Job::Settle { settle, .. } => settle.acks.len() + settle.nacks.len() + 1,
        }
    }
}

/// The PostgreSQL [`Log`].
pub(crate) struct PgLog {
    pool: Pool,
    jobs: mpsc::Sender<Job>,
}

impl PgLog {
    pub(crate) async fn open(
        url: &str,
        schema: Option<&str>,
        pool_size: usize,
        head: watch::Sender<u64>,
    ) -> Result<Self, BusError> {
        let config = driver_config(url, schema, "meridian-bus")?;
        migrate(&config, schema).await?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| BusError::Internal(format!("cannot build the postgres pool: {e}")))?;

        let writer_config = driver_config(url, schema, "meridian-bus-writer")?;
        let (client, connection) = writer_config.connect(NoTls).await.map_err(connect)?;
        spawn_connection(connection);
        let initial: i64 = client.query_one(HEAD, &[]).await.map_err(db)?.get(0);
        head.send_replace(initial as u64);
        let lock_key = lock_key(schema.unwrap_or(""));
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_writer(writer_config, client, rx, head, lock_key));
        tracing::info!(
            schema = schema.unwrap_or("(default)"),
            "embedded bus open on postgres"
        );
        Ok(Self { pool, jobs })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, BusError> {
        self.pool.get().await.map_err(pool)
    }

    async fn write(&self, job: impl FnOnce(Reply<()>) -> Job) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| BusError::Unavailable("the bus writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| BusError::Internal("the bus writer dropped a job".into()))?
    }
}

#[async_trait]
impl Log for PgLog {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<(), BusError> {
        self.write(|reply| Job::Append { entries, reply }).await
    }

    async fn settle(&self, settle: Settle) -> Result<(), BusError> {
        self.write(|reply| Job::Settle { settle, reply }).await
    }

    async fn head(&self) -> Result<u64, BusError> {
        let client = self.client().await?;
        let head: i64 = client.query_one(HEAD, &[]).await.map_err(db)?.get(0);
        Ok(head as u64)
    }

    async fn first_at(&self, time: Timestamp) -> Result<Option<u64>, BusError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT seq FROM bus_log WHERE published_at >= $1 \
                 ORDER BY published_at, seq LIMIT 1",
                &[&time],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn fetch(
        &self,
        after: u64,
        pattern: TopicPattern,
        limit: usize,
    ) -> Result<Fetched, BusError> {
        let client = self.client().await?;
        // The head first: every row up to it has committed (appends commit in seq order),
        // so the second query sees all of them.
        let head = client
            .query_one(HEAD, &[])
            .await
            .map_err(db)?
            .get::<_, i64>(0) as u64;
        let prefix = literal_prefix(&pattern);
        let rows = client
            .query(
                FETCH,
                &[&(after as i64), &(head as i64), &prefix, &(limit as i64)],
            )
            .await
            .map_err(db)?;
        let rows: Vec<(u64, String, Vec<u8>)> = rows
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db)?;
        let more = rows.len() >= limit;
        let through = match rows.last() {
            Some((seq, _, _)) if more => *seq,
            _ => head.max(after),
        };
        Ok(Fetched {
            entries: decode_rows(rows, &pattern),
            through,
            more,
        })
    }

    async fn open_consumer(
        &self,
        name: &str,
        pattern: &str,
        initial: u64,
    ) -> Result<ConsumerRecord, BusError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let acked_through: i64 = tx
            .query_one(
                "INSERT INTO bus_consumers (name, pattern, acked_through) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE \
                 SET pattern = excluded.pattern, updated_at = now() \
                 RETURNING acked_through",
                &[&name, &pattern, &(initial as i64)],
            )
            .await
            .map_err(db)?
            .get(0);
        let acked = tx
            .query(
                "SELECT seq FROM bus_acks WHERE consumer = $1 ORDER BY seq",
                &[&name],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.try_get::<_, i64>(0).map(|s| s as u64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        let pending = tx
            .query(
                "SELECT seq, attempts, not_before FROM bus_pending \
                 WHERE consumer = $1 ORDER BY seq",
                &[&name],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(PendingRow {
                    seq: r.try_get::<_, i64>(0)? as u64,
                    attempts: r.try_get::<_, i32>(1)?.max(0) as u32,
                    not_before_micros: r.try_get::<_, DateTime<Utc>>(2)?.timestamp_micros(),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(ConsumerRecord {
            acked_through: acked_through as u64,
            acked,
            pending,
        })
    }

    async fn ping(&self) -> Result<(), BusError> {
        if self.jobs.is_closed() {
            return Err(BusError::Unavailable("the bus writer has stopped".into()));
        }
        let client = self.client().await?;
        client.query_one("SELECT 1", &[]).await.map_err(db)?;
        Ok(())
    }
}

async fn run_writer(
    config: tokio_postgres::Config,
    client: Client,
    mut jobs: mpsc::Receiver<Job>,
    head: watch::Sender<u64>,
    lock_key: i64,
) {
    let mut client = Some(client);
    while let Some(first) = jobs.recv().await {
        let mut weight = first.weight();
        let mut batch = vec![first];
        while weight < MAX_BATCH_ITEMS {
            match jobs.try_recv() {
                Ok(job) => {
                    weight += job.weight();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match config.connect(NoTls).await {
                Ok((c, connection)) => {
                    spawn_connection(connection);
                    Some(c)
                }
                Err(e) => {
                    let err = connect(e);
                    answer(batch, |_| Err(same_error(&err)));
                    continue;
                }
            };
        }
        let Some(c) = client.as_mut() else { continue };
        match write_batch(c, &batch, lock_key).await {
            Ok(new_head) => {
                if let Some(h) = new_head {
                    head.send_if_modified(|current| {
                        let advanced = h > *current;
                        *current = (*current).max(h);
                        advanced
                    });
                }
                answer(batch, |_| Ok(()));
            }
            Err(e) => {
                tracing::error!(size = batch.len(), error = %e, "bus write batch failed");
                answer(batch, |_| Err(same_error(&e)));
            }
        }
    }
    tracing::debug!("bus writer stopped");
}

fn answer(batch: Vec<Job>, result: impl Fn(()) -> Result<(), BusError>) {
    for job in batch {
        match job {
            Job::Append { reply, .. } | Job::Settle { reply, .. } => {
                let _ = reply.send(result(()));
            }
        }
    }
}

async fn write_batch(
    client: &mut Client,
    batch: &[Job],
    lock_key: i64,
) -> Result<Option<u64>, BusError> {
    let tx = client.transaction().await.map_err(db)?;
    let mut topics: Vec<&str> = Vec::new();
    let mut payloads: Vec<&[u8]> = Vec::new();
    for job in batch {
        if let Job::Append { entries, .. } = job {
            for e in entries {
                topics.push(&e.topic);
                payloads.push(&e.payload);
            }
        }
    }
    let mut new_head = None;
    if !topics.is_empty() {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
            .await
            .map_err(db)?;
        let last: Option<i64> = tx
            .query_one(APPEND, &[&topics, &payloads])
            .await
            .map_err(db)?
            .get(0);
        new_head = last.map(|s| s as u64);
    }
    for job in batch {
        if let Job::Settle { settle, .. } = job {
            write_settle(&tx, settle).await?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(new_head)
}

async fn write_settle(tx: &tokio_postgres::Transaction<'_>, s: &Settle) -> Result<(), BusError> {
    let to_i64 = |v: &[u64]| v.iter().map(|s| *s as i64).collect::<Vec<i64>>();
    if !s.acks.is_empty() {
        tx.execute(
            "INSERT INTO bus_acks (consumer, seq) SELECT $1, unnest($2::int8[]) \
             ON CONFLICT DO NOTHING",
            &[&s.consumer, &to_i64(&s.acks)],
        )
        .await
        .map_err(db)?;
    }
    if !s.unpend.is_empty() {
        tx.execute(
            "DELETE FROM bus_pending WHERE consumer = $1 AND seq = ANY($2::int8[])",
            &[&s.consumer, &to_i64(&s.unpend)],
        )
        .await
        .map_err(db)?;
    }
    if !s.nacks.is_empty() {
        let seqs: Vec<i64> = s.nacks.iter().map(|n| n.seq as i64).collect();
        let attempts: Vec<i32> = s
            .nacks
            .iter()
            .map(|n| i32::try_from(n.attempts).unwrap_or(i32::MAX))
            .collect();
        let due: Vec<DateTime<Utc>> = s
            .nacks
            .iter()
            .map(|n| DateTime::from_timestamp_micros(n.not_before_micros).unwrap_or_default())
            .collect();
        tx.execute(
            "INSERT INTO bus_pending (consumer, seq, attempts, not_before) \
             SELECT $1, u.seq, u.attempts, u.due \
             FROM unnest($2::int8[], $3::int4[], $4::timestamptz[]) AS u(seq, attempts, due) \
             ON CONFLICT (consumer, seq) DO UPDATE \
             SET attempts = excluded.attempts, not_before = excluded.not_before",
            &[&s.consumer, &seqs, &attempts, &due],
        )
        .await
        .map_err(db)?;
    }
    if let Some(w) = s.watermark {
        let w = w as i64;
        tx.execute(
            "UPDATE bus_consumers SET acked_through = GREATEST(acked_through, $2), \
             updated_at = now() WHERE name = $1",
            &[&s.consumer, &w],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "DELETE FROM bus_acks WHERE consumer = $1 AND seq <= $2",
            &[&s.consumer, &w],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "DELETE FROM bus_pending WHERE consumer = $1 AND seq <= $2",
            &[&s.consumer, &w],
        )
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// Applies pending migrations under a session advisory lock (one per schema), so several
/// processes opening the same schema at once apply each exactly once.
async fn migrate(config: &tokio_postgres::Config, schema: Option<&str>) -> Result<(), BusError> {
    let (mut client, connection) = config.connect(NoTls).await.map_err(connect)?;
    let driver = tokio::spawn(connection);
    let key = lock_key(&format!("migrations:{}", schema.unwrap_or("")));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(db)?;
    let result = apply_migrations(&mut client, schema).await;
    // Ending the session releases the lock as well; unlocking first is just quicker.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    drop(client);
    let _ = driver.await;
    result
}

async fn apply_migrations(client: &mut Client, schema: Option<&str>) -> Result<(), BusError> {
    if let Some(schema) = schema {
        // Checked to be a plain identifier by `driver_config`.
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(db)?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bus_schema_migrations (\
                 version bigint PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
    let current: i64 = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM bus_schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(BusError::Unavailable(format!(
            "the bus tables are at schema version {current}, newer than this build's {known}; \
             upgrade meridian"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(sql).await.map_err(|e| {
            tracing::error!(error = %e, version, "bus postgres migration failed");
            BusError::Internal(format!("bus postgres migration {version} failed"))
        })?;
        tx.execute(
            "INSERT INTO bus_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(version, "applied bus postgres migration");
    }
    Ok(())
}

/// The driver configuration: the URL plus the schema (as the store sets it) and timeouts.
fn driver_config(
    url: &str,
    schema: Option<&str>,
    application_name: &str,
) -> Result<tokio_postgres::Config, BusError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| BusError::Unavailable(format!("bus.postgres.url is not a URL: {e}")))?;
    if let Some(schema) = schema {
        check_schema_name(schema)?;
        // Every connection starts in the schema, so no query has to name it.
        let options = match pg.get_options() {
            Some(existing) if !existing.trim().is_empty() => {
                format!("{existing} -c search_path={schema}")
            }
            _ => format!("-c search_path={schema}"),
        };
        pg.options(options);
    }
    if pg.get_connect_timeout().is_none() {
        // Fail fast with `Unavailable` instead of waiting for the OS's connect timeout.
        pg.connect_timeout(Duration::from_secs(5));
    }
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        // Notice a vanished server within a minute rather than two hours.
        pg.keepalives_idle(Duration::from_secs(30));
    }
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    Ok(pg)
}

/// Schema names go into `CREATE SCHEMA` and the startup options unquoted, so they are held
/// to plain lower-case identifiers (the same rule as the store's).
fn check_schema_name(schema: &str) -> Result<(), BusError> {
    let mut bytes = schema.bytes();
    let ok = schema.len() <= 63
        && matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(BusError::Unavailable(format!(
            "bus.postgres.schema {schema:?} must be 1 to 63 of a-z, 0-9 and '_', \
             not starting with a digit"
        )))
    }
}

/// A stable advisory-lock key for `name` (FNV-1a), so every process and every version of
/// Meridian derives the same key for the same schema.
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"meridian:bus:".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "bus postgres connection ended with an error");
        }
    });
}

fn same_error(e: &BusError) -> BusError {
    match e {
        BusError::Unavailable(m) => BusError::Unavailable(m.clone()),
        other => BusError::Internal(other.to_string()),
    }
}

/// Translates a driver error at the seam: lost connections and transient server states are
/// `Unavailable` (nothing committed; retry), anything else `Internal`. Details go to the log.
fn db(e: tokio_postgres::Error) -> BusError {
    use tokio_postgres::error::SqlState;
    let transient = e.is_closed()
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::QUERY_CANCELED,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(c)
        });
    if transient {
        tracing::warn!(error = %e, "bus postgres unavailable");
        BusError::Unavailable("the bus database is unreachable or restarting; retry".into())
    } else {
        tracing::error!(error = %e, "bus postgres error");
        BusError::Internal(format!("bus database error: {e}"))
    }
}

fn connect(e: tokio_postgres::Error) -> BusError {
    tracing::warn!(error = %e, "cannot connect to postgres for the bus");
    BusError::Unavailable(format!("cannot connect to the bus database: {e}"))
}

fn pool(e: PoolError) -> BusError {
    match e {
        PoolError::Backend(e) => db(e),
        other => {
            tracing::warn!(error = %other, "bus postgres pool unavailable");
            BusError::Unavailable("no bus database connection available".into())
        }
    }
}
