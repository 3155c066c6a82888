//! The log on SQLite, in the store's database file.
//!
//! - **Connections of its own.** The store's writer thread and the bus's writer thread are
//!   two writers of one file; SQLite serializes them with its write lock. Each waits for
//!   the other under a busy handler that retries every few hundred microseconds for up to
//!   5 s (SQLite's built-in busy timeout sleeps up to 100 ms between tries, which would put
//!   those sleeps into publish latency whenever the store commits at the same time).
//! - **Group commit.** One `std::thread` owns the write connection. Appends, settles and
//!   consumer opens are queued to it; it drains everything queued into one
//!   `BEGIN IMMEDIATE` transaction with `synchronous = FULL`, so a batch costs one fsync,
//!   and answers every caller after the commit. Batches grow with load by themselves.
//! - **Reads** (fetches, head, time lookups) run on a few `query_only` connections from
//!   `spawn_blocking`; WAL lets them read while the writer writes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_bus::{BusError, TopicPattern};
use meridian_core::Timestamp;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::log::{
    ConsumerRecord, Fetched, Log, NewEntry, PendingRow, Settle, decode_rows, literal_prefix, micros,
};

/// Embedded migrations, applied in order and recorded in `bus_schema_migrations`. A
/// released migration is never edited; add the next one.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];

/// How long a statement waits for another writer of the file (the store's writer thread, or
/// another process) before failing with `Unavailable`.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The most log rows and settles written in one transaction: enough to amortize the fsync,
/// small enough to keep one commit to a few milliseconds.
const MAX_BATCH_ITEMS: usize = 8192;

/// Jobs queued for the writer before `send` makes publishers wait.
const QUEUE_CAPACITY: usize = 4096;

/// Read connections: at most this many reads run at once (each on its own connection, kept
/// open between reads), however many consumers fetch.
const READERS: usize = 4;

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
    OpenConsumer {
        name: String,
        pattern: String,
        initial: u64,
        reply: Reply<ConsumerRecord>,
    },
}

impl Job {
    /// How much of a batch this job uses.
    fn weight(&self) -> usize {
        match self {
            Job::Append { entries, .. } => entries.len().max(1),
            Job::Settle { settle, .. } => settle.acks.len() + settle.nacks.len() + 1,
            Job::OpenConsumer { .. } => 1,
        }
    }
}

/// The SQLite [`Log`].
pub(crate) struct SqliteLog {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
}

impl SqliteLog {
    /// Opens (creating if needed) the database at `path`, migrates the bus tables and starts
    /// the writer. Every commit that appends publishes the new head on `head`.
    pub(crate) async fn open(path: PathBuf, head: watch::Sender<u64>) -> Result<Self, BusError> {
        let opened = path.clone();
        let (write, initial_head) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = opened.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    BusError::Unavailable(format!(
                        "cannot create the database directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let mut conn = open_connection(&opened, false)?;
            migrate(&mut conn)?;
            let head = read_head(&conn).map_err(db)?;
            Ok::<_, BusError>((conn, head))
        })
        .await
        .map_err(|_| BusError::Internal("the sqlite opener panicked".into()))??;
        head.send_replace(initial_head);

        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("meridian-bus-writer".into())
            .spawn(move || run_writer(write, rx, &head))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the bus writer thread");
                BusError::Unavailable("cannot start the bus writer thread".into())
            })?;
        tracing::info!(path = %path.display(), "embedded bus open on sqlite");
        Ok(Self {
            path,
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_permits: Arc::new(Semaphore::new(READERS)),
        })
    }

    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, BusError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| BusError::Unavailable("the bus writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| BusError::Internal("the bus writer dropped a job".into()))?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BusError> + Send + 'static,
    {
        let permit = Arc::clone(&self.read_permits)
            .acquire_owned()
            .await
            .map_err(|_| BusError::Closed)?;
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = readers.lock().ok().and_then(|mut idle| idle.pop());
            let mut conn = match idle {
                Some(conn) => conn,
                None => open_connection(&path, true)?,
            };
            let result = f(&mut conn);
            if let Ok(mut idle) = readers.lock()
                && idle.len() < READERS
            {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| BusError::Internal("a bus read panicked".into()))?
    }
}

#[async_trait]
impl Log for SqliteLog {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<(), BusError> {
        self.write(|reply| Job::Append { entries, reply }).await
    }

    async fn settle(&self, settle: Settle) -> Result<(), BusError> {
        self.write(|reply| Job::Settle { settle, reply }).await
    }

    async fn head(&self) -> Result<u64, BusError> {
        self.read(|c| read_head(c).map_err(db)).await
    }

    async fn first_at(&self, time: Timestamp) -> Result<Option<u64>, BusError> {
        let at = micros(time);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT seq FROM bus_log WHERE published_at >= ?1 \
                 ORDER BY published_at, seq LIMIT 1",
            )
            .and_then(|mut s| s.query_row([at], |r| r.get::<_, i64>(0)).optional())
            .map(|seq| seq.map(|s| s as u64))
            .map_err(db)
        })
        .await
    }

    async fn fetch(
        &self,
        after: u64,
        pattern: TopicPattern,
        limit: usize,
    ) -> Result<Fetched, BusError> {
        self.read(move |c| {
            let prefix = literal_prefix(&pattern);
            // One read transaction is one WAL snapshot: the head and the rows agree.
            let tx = c.transaction().map_err(db)?;
            let head = read_head(&tx).map_err(db)?;
            let rows = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, topic, payload FROM bus_log \
                         WHERE seq > ?1 AND seq <= ?2 AND substr(topic, 1, ?3) = ?4 \
                         ORDER BY seq LIMIT ?5",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(
                        params![
                            after as i64,
                            head as i64,
                            prefix.len() as i64,
                            prefix,
                            limit as i64
                        ],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)? as u64,
                                r.get::<_, String>(1)?,
                                r.get::<_, Vec<u8>>(2)?,
                            ))
                        },
                    )
                    .map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)?
            };
            tx.finish().map_err(db)?;
            // A full page may have stopped short of the head; otherwise every row up to the
            // head was looked at.
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
        })
        .await
    }

    async fn open_consumer(
        &self,
        name: &str,
        pattern: &str,
        initial: u64,
    ) -> Result<ConsumerRecord, BusError> {
        let (name, pattern) = (name.to_owned(), pattern.to_owned());
        self.write(|reply| Job::OpenConsumer {
            name,
            pattern,
            initial,
            reply,
        })
        .await
    }

    async fn ping(&self) -> Result<(), BusError> {
        if self.jobs.is_closed() {
            return Err(BusError::Unavailable("the bus writer has stopped".into()));
        }
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db))
            .await
    }
}

/// Opens a connection with the same durability PRAGMAs as the store's.
fn open_connection(path: &Path, read_only: bool) -> Result<Connection, BusError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "cannot open the bus database");
        BusError::Unavailable(format!("cannot open sqlite database {}", path.display()))
    })?;
    configure(&mut conn, read_only)?;
    Ok(conn)
}

fn configure(conn: &mut Connection, read_only: bool) -> Result<(), BusError> {
    // Retry quickly rather than with SQLite's coarse default back-off (see the module doc).
    let mut waiting_since: Option<Instant> = None;
    conn.busy_handler(Some(move |tries: i32| {
        let since = match (tries, waiting_since) {
            (0, _) | (_, None) => *waiting_since.insert(Instant::now()),
            (_, Some(since)) => since,
        };
        if since.elapsed() >= BUSY_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_micros(if tries < 20 { 100 } else { 1000 }));
        true
    }))
    .map_err(db)?;
    // WAL: readers and the writer do not block each other. Stored in the file, shared with
    // the store.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BusError::Unavailable(format!(
            "sqlite refused WAL journal mode (got {mode})"
        )));
    }
    let setup = || -> rusqlite::Result<()> {
        // FULL: a commit is on disk before publish or ack returns; group commit pays for it
        // once per batch.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", if read_only { -8192 } else { -32768 })?;
        conn.set_prepared_statement_cache_capacity(32);
        // Plans that do not depend on bound values: otherwise rebinding a cached statement
        // can force a re-plan on every step (see meridian-store's sqlite/conn.rs).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        if read_only {
            conn.pragma_update(None, "query_only", "ON")?;
        }
        Ok(())
    };
    setup().map_err(db)
}

/// Brings the bus tables up to date inside one `BEGIN IMMEDIATE`, so several processes
/// opening the same file at once apply each migration exactly once.
fn migrate(conn: &mut Connection) -> Result<(), BusError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS bus_schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         ) STRICT",
    )
    .map_err(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM bus_schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(BusError::Unavailable(format!(
            "the bus tables are at schema version {current}, newer than this build's {known}; \
             upgrade meridian"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql).map_err(|e| {
            tracing::error!(error = %e, version, "bus sqlite migration failed");
            BusError::Internal(format!("bus sqlite migration {version} failed"))
        })?;
        tx.execute(
            "INSERT INTO bus_schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, micros(meridian_core::now())],
        )
        .map_err(db)?;
        tracing::info!(version, "applied bus sqlite migration");
    }
    tx.commit().map_err(db)
}

fn read_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM bus_log")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|h| h as u64)
}

/// The writer thread: drains queued jobs into one transaction per batch.
fn run_writer(mut conn: Connection, mut jobs: mpsc::Receiver<Job>, head: &watch::Sender<u64>) {
    tracing::debug!("bus writer started");
    while let Some(first) = jobs.blocking_recv() {
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
        write_batch(&mut conn, batch, head);
    }
    tracing::debug!("bus writer stopped");
}

/// What a job answers once its batch has committed. A settle or consumer open that fails
/// is rolled back to its savepoint and answered with its error, without failing the
/// appends that share its transaction.
enum Outcome {
    Done,
    Consumer(ConsumerRecord),
    Failed(BusError),
}

fn write_batch(conn: &mut Connection, batch: Vec<Job>, head: &watch::Sender<u64>) {
    let size = batch.len();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_in_one_transaction(conn, &batch)
    }));
    let result = match result {
        Ok(r) => r,
        Err(_) => {
            // A panic (a bug) must not take the only writer down; the transaction rolled back.
            tracing::error!(size, "a bus write batch panicked and was rolled back");
            Err(BusError::Internal("bus write failed; see the log".into()))
        }
    };
    match result {
        Ok((outcomes, new_head)) => {
            if let Some(h) = new_head {
                head.send_if_modified(|current| {
                    let advanced = h > *current;
                    *current = (*current).max(h);
                    advanced
                });
            }
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                match (job, outcome) {
                    (Job::OpenConsumer { reply, .. }, Outcome::Consumer(record)) => {
                        let _ = reply.send(Ok(record));
                    }
                    (Job::OpenConsumer { reply, .. }, Outcome::Failed(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Job::Append { reply, .. } | Job::Settle { reply, .. }, Outcome::Failed(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Job::Append { reply, .. } | Job::Settle { reply, .. }, _) => {
                        let _ = reply.send(Ok(()));
                    }
                    (Job::OpenConsumer { reply, .. }, Outcome::Done) => {
                        let _ = reply.send(Err(BusError::Internal("consumer not loaded".into())));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(size, error = %e, "bus write batch rolled back");
            for job in batch {
                let err = same_error(&e);
                match job {
                    Job::Append { reply, .. } | Job::Settle { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    Job::OpenConsumer { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
        }
    }
}

fn same_error(e: &BusError) -> BusError {
    match e {
        BusError::Unavailable(m) => BusError::Unavailable(m.clone()),
        other => BusError::Internal(other.to_string()),
    }
}

fn write_in_one_transaction(
    conn: &mut Connection,
    batch: &[Job],
) -> Result<(Vec<Outcome>, Option<u64>), BusError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let now = micros(meridian_core::now());
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut new_head = None;
    // Read under the write lock, so `published_at` never decreases along `seq`, even when
    // another process appended last with a clock slightly ahead.
    let mut published_at: Option<i64> = None;
    for job in batch {
        match job {
            Job::Append { entries, .. } => {
                let at = match published_at {
                    Some(at) => at,
                    None => {
                        let last: Option<i64> = tx
                            .prepare_cached(
                                "SELECT published_at FROM bus_log ORDER BY seq DESC LIMIT 1",
                            )
                            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                            .map_err(db)?;
                        *published_at.insert(last.map_or(now, |l| l.max(now)))
                    }
                };
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO bus_log (topic, published_at, payload) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(db)?;
                for e in entries {
                    insert
                        .execute(params![e.topic, at, &e.payload[..]])
                        .map_err(db)?;
                }
                if !entries.is_empty() {
                    new_head = Some(tx.last_insert_rowid() as u64);
                }
                outcomes.push(Outcome::Done);
            }
            Job::Settle { settle, .. } => {
                let sp = tx.savepoint().map_err(db)?;
                outcomes.push(match write_settle(&sp, settle, now) {
                    Ok(()) => {
                        sp.commit().map_err(db)?;
                        Outcome::Done
                    }
                    Err(e) => Outcome::Failed(db(e)),
                });
            }
            Job::OpenConsumer {
                name,
                pattern,
                initial,
                ..
            } => {
                let sp = tx.savepoint().map_err(db)?;
                outcomes.push(match open_consumer(&sp, name, pattern, *initial, now) {
                    Ok(record) => {
                        sp.commit().map_err(db)?;
                        Outcome::Consumer(record)
                    }
                    Err(e) => Outcome::Failed(db(e)),
                });
            }
        }
    }
    tx.commit().map_err(db)?;
    Ok((outcomes, new_head))
}

fn write_settle(tx: &Connection, s: &Settle, now: i64) -> rusqlite::Result<()> {
    if !s.acks.is_empty() {
        let mut stmt =
            tx.prepare_cached("INSERT OR IGNORE INTO bus_acks (consumer, seq) VALUES (?1, ?2)")?;
        for seq in &s.acks {
            stmt.execute(params![s.consumer, *seq as i64])?;
        }
    }
    if !s.unpend.is_empty() {
        let mut stmt =
            tx.prepare_cached("DELETE FROM bus_pending WHERE consumer = ?1 AND seq = ?2")?;
        for seq in &s.unpend {
            stmt.execute(params![s.consumer, *seq as i64])?;
        }
    }
    if !s.nacks.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO bus_pending (consumer, seq, attempts, not_before) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (consumer, seq) DO UPDATE \
             SET attempts = excluded.attempts, not_before = excluded.not_before",
        )?;
        for n in &s.nacks {
            stmt.execute(params![
                s.consumer,
                n.seq as i64,
                n.attempts,
                n.not_before_micros
            ])?;
        }
    }
    if let Some(w) = s.watermark {
        let w = w as i64;
        tx.prepare_cached(
            "UPDATE bus_consumers SET acked_through = MAX(acked_through, ?2), updated_at = ?3 \
             WHERE name = ?1",
        )?
        .execute(params![s.consumer, w, now])?;
        tx.prepare_cached("DELETE FROM bus_acks WHERE consumer = ?1 AND seq <= ?2")?
            .execute(params![s.consumer, w])?;
        tx.prepare_cached("DELETE FROM bus_pending WHERE consumer = ?1 AND seq <= ?2")?
            .execute(params![s.consumer, w])?;
    }
    Ok(())
}

fn open_consumer(
    tx: &Connection,
    name: &str,
    pattern: &str,
    initial: u64,
    now: i64,
) -> rusqlite::Result<ConsumerRecord> {
    let acked_through: i64 = tx
        .prepare_cached(
            "INSERT INTO bus_consumers (name, pattern, acked_through, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (name) DO UPDATE \
             SET pattern = excluded.pattern, updated_at = excluded.updated_at \
             RETURNING acked_through",
        )?
        .query_row(params![name, pattern, initial as i64, now], |r| r.get(0))?;
    let acked = tx
        .prepare_cached("SELECT seq FROM bus_acks WHERE consumer = ?1 ORDER BY seq")?
        .query_map([name], |r| r.get::<_, i64>(0).map(|s| s as u64))?
        .collect::<Result<Vec<_>, _>>()?;
    let pending = tx
        .prepare_cached(
            "SELECT seq, attempts, not_before FROM bus_pending WHERE consumer = ?1 ORDER BY seq",
        )?
        .query_map([name], |r| {
            Ok(PendingRow {
                seq: r.get::<_, i64>(0)? as u64,
                attempts: r.get(1)?,
                not_before_micros: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConsumerRecord {
        acked_through: acked_through as u64,
        acked,
        pending,
    })
}

/// Translates a driver error at the seam: lock waits that ran out and IO failures may pass
/// with a retry (`Unavailable`); anything else is a bug or corruption (`Internal`). The
/// driver's text goes to the log.
fn db(e: rusqlite::Error) -> BusError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::DiskFull) => {
            tracing::warn!(error = %e, "sqlite bus write could not proceed");
            BusError::Unavailable("the bus database is busy or failing; retry".into())
        }
        _ => {
            tracing::error!(error = %e, "sqlite bus error");
            BusError::Internal(format!("bus database error: {e}"))
        }
    }
}
