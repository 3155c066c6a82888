//! The `embedded` bus, Meridian's default: a durable log kept in the store's own database.
//!
//! - **Where.** SQLite: the store's database file (WAL), through connections and a writer
//!   thread of its own. PostgreSQL: the store's URL and schema, through a pool and a writer
//!   connection of its own. The bus owns only tables named `bus_*` and records its schema
//!   in `bus_schema_migrations`, apart from the store's migrations.
//! - **Publish.** Topic and payload size are checked first; then the message is appended
//!   to `bus_log` and `publish` returns once that append is committed (SQLite:
//!   `synchronous = FULL`). Appends are group-committed: everything queued while a commit
//!   runs goes into the next transaction, so a batch costs one fsync.
//! - **Subscribe.** A consumer is a name; its dispatcher (one task per name in this
//!   process, in `dispatcher.rs`) reads the log after the consumer's position, matches the
//!   pattern (pre-filtered in SQL by its literal prefix) and feeds every subscription with
//!   that name. Same name: a consumer group; different names: fan-out. Durable consumers
//!   keep their position, stored acks and nacks in `bus_consumers`, `bus_acks` and
//!   `bus_pending`, so they resume after a restart with no acknowledged message redelivered
//!   and no unacknowledged one lost.
//! - **Single node.** One process dispatches a consumer. Other processes may publish to
//!   the same database; their appends are picked up by a slow poll (in-process publishes
//!   wake dispatchers at once). Two processes subscribing with the same durable consumer
//!   name would each deliver every message, so that is not supported.
//! - **History.** The log keeps every message ([`StartAt`](meridian_bus::StartAt) can go back
//!   to any position or time). There is no retention or compaction policy yet: the log
//!   grows until one is added (deleting rows below every durable consumer's watermark and
//!   older than a configured age; `seq` is never reused, so positions stay valid).
//!
//! Acks and nacks return once they are durable. A consumer that awaits each ack before
//! taking the next delivery is therefore bound by commit latency; keep several deliveries
//! in progress (up to `max_in_flight`) to get the group commit's throughput.

mod dispatcher;
mod log;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::{
    Bus, BusError, Capabilities, MAX_PAYLOAD_BYTES, Message, SubscribeOptions, Subscription,
    TopicPattern,
};
use meridian_core::Topic;
use tokio::sync::watch;

use crate::dispatcher::Registry;
use crate::log::{Log, NewEntry};

/// Where the embedded bus keeps its log: the same place as the store.
#[derive(Clone, PartialEq, Eq)]
pub enum EmbeddedConfig {
    /// The store's SQLite database file (created if missing).
    Sqlite { path: PathBuf },
    /// The store's PostgreSQL database (feature `postgres`).
    Postgres {
        /// A `postgres://` URL.
        url: String,
        /// The schema (created if missing); `None` uses the server's search path.
        schema: Option<String>,
        /// Pooled connections for reads and consumer opens; appends and settles use one
        /// writer connection of their own.
        pool_size: usize,
    },
}

impl EmbeddedConfig {
    /// The default PostgreSQL pool size: dispatchers' fetches are short and few.
    pub const DEFAULT_POOL_SIZE: usize = 4;
}

/// Configurations get logged; a password in the URL must not be.
impl std::fmt::Debug for EmbeddedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbeddedConfig::Sqlite { path } => {
                f.debug_struct("Sqlite").field("path", path).finish()
            }
            EmbeddedConfig::Postgres {
                url,
                schema,
                pool_size,
            } => f
                .debug_struct("Postgres")
                .field("url", &redact_password(url))
                .field("schema", schema)
                .field("pool_size", pool_size)
                .finish(),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// The embedded [`Bus`]. Dropping it stops its dispatchers (open subscriptions then end
/// with [`BusError::Closed`]); the writer finishes what is queued and closes the database.
pub struct EmbeddedBus {
    log: Arc<dyn Log>,
    consumers: Registry,
    backend: &'static str,
    // Dropped with the bus, which tells every dispatcher to stop.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("database", &self.backend)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBus {
    /// Opens the log (creating and migrating its tables) and starts its writer. Must be
    /// called inside a Tokio runtime.
    pub async fn open(config: EmbeddedConfig) -> Result<Self, BusError> {
        let (head_tx, head_rx) = watch::channel(0u64);
        let (log, backend): (Arc<dyn Log>, &'static str) = match config {
            EmbeddedConfig::Sqlite { path } => (
                Arc::new(sqlite::SqliteLog::open(path, head_tx).await?),
                "sqlite",
            ),
            #[cfg(feature = "postgres")]
            EmbeddedConfig::Postgres {
                url,
                schema,
                pool_size,
            } => (
                Arc::new(postgres::PgLog::open(&url, schema.as_deref(), pool_size, head_tx).await?),
                "postgres",
            ),
            #[cfg(not(feature = "postgres"))]
            EmbeddedConfig::Postgres { .. } => {
                return Err(BusError::Unsupported {
                    backend: "embedded",
                    what: "PostgreSQL (build meridian-bus-embedded with feature `postgres`)",
                });
            }
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        Ok(Self {
            consumers: Registry::new(Arc::clone(&log), head_rx, shutdown_rx),
            log,
            backend,
            _shutdown: shutdown_tx,
        })
    }

    /// Checks what the contract requires before anything is written: a topic inside the
    /// grammar (under `deployment.{id}.`) and an envelope within [`MAX_PAYLOAD_BYTES`].
    fn prepare(message: &Message) -> Result<NewEntry, BusError> {
        // `Topic` values are parsed at the edge, but `Topic::platform` only debug-asserts its
        // segments, so the log checks again rather than store a topic no pattern can name.
        let topic = Topic::parse(message.topic.as_str()).map_err(BusError::InvalidTopic)?;
        let payload = message.encode(MAX_PAYLOAD_BYTES)?;
        Ok(NewEntry {
            topic: topic.as_str().to_owned(),
            payload,
        })
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            replay: true,
            // Patterns are matched by the dispatcher (after a literal-prefix filter in SQL).
            native_wildcards: false,
            native_dlq: false,
            ordered_per_key: true,
        }
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        let entry = Self::prepare(&message)?;
        self.log.append(vec![entry]).await
    }

    /// Validates each message, then appends every valid one in a single job (one
    /// transaction); a message that fails validation is reported and the rest still go.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let mut results = Vec::with_capacity(messages.len());
        let mut entries = Vec::with_capacity(messages.len());
        for m in &messages {
            match Self::prepare(m) {
                Ok(entry) => {
                    entries.push(entry);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if entries.is_empty() {
            return results;
        }
        if let Err(e) = self.log.append(entries).await {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(match &e {
                    BusError::Unavailable(m) => BusError::Unavailable(m.clone()),
                    BusError::Closed => BusError::Closed,
                    other => BusError::Internal(other.to_string()),
                });
            }
        }
        results
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.consumers.subscribe(pattern, options).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.log.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let config = EmbeddedConfig::Postgres {
            url: "postgres://meridian:s3cret@db:5432/meridian".into(),
            schema: None,
            pool_size: 4,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://meridian:***@db:5432/meridian"),
            "{shown}"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }
}
