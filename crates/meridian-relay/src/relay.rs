//! The outbox relay loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, BusError, Message, RetryPolicy};
use meridian_store::{OutboxRecord, RelayLock, Store, StoreError};
use tokio::sync::watch;

/// How the relay paces itself.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows read and published per round. Each round costs a read, one bus publish (on
    /// the embedded bus, one append transaction) and one mark-sent write whatever its
    /// size, so under load a large batch is what keeps the relay ahead of the writers: on
    /// SQLite at ~3,000 orders/s 256 let the backlog grow, 1,024 keeps it near zero.
    pub batch: u32,
    /// How often an idle relay looks for new rows. A store whose relay lock signals
    /// committed outbox rows ([`RelayLock::outbox_signal`]: both built-in stores) wakes it
    /// at once, so this is only the fallback: the longest an event waits for the relay
    /// when a wake-up is missed (rows written by another process on SQLite, say).
    pub poll_interval: Duration,
    /// Backoff while the bus (or the store) is unavailable.
    pub backoff: RetryPolicy,
    /// How often a standing-by relay tries to take the relay lock: the longest the outbox
    /// waits for a new active relay after the old one's lock is released.
    pub standby_interval: Duration,
    /// How often the active relay checks that it still holds the lock (PostgreSQL: that
    /// its lock connection is alive).
    pub lock_check_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 1024,
            poll_interval: Duration::from_millis(50),
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            standby_interval: Duration::from_secs(1),
            lock_check_interval: Duration::from_secs(1),
        }
    }
}

/// Why one relay round stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading the outbox or marking rows sent failed.
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    /// The bus refused the row at `seq`; the rows before it were sent and marked.
    #[error("publishing outbox row {seq} failed: {error}")]
    Publish { seq: i64, error: BusError },
}

/// The outbox relay: store outbox → bus, in `seq` order.
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: RelayConfig,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store.backend())
            .field("bus", &self.bus.name())
            .field("config", &self.config)
            .finish()
    }
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: RelayConfig) -> Self {
        Self { store, bus, config }
    }

    /// One round: reads up to `batch` unsent rows, publishes them, and marks sent every row
    /// before the first one the bus refused. Returns how many rows were marked sent.
    ///
    /// Rows after a refused one may have reached the bus too (a backend may pipeline a
    /// batch); they stay unsent and are published again next round, after the refused row,
    /// so a consumer sees every event in order at least once (and drops the repeats by
    /// event id).
    ///
    /// `step` does not take the relay lock: [`Relay::run`] does, and calls it only while
    /// holding it.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let rows = self.store.outbox_unsent(self.config.batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<Message> = rows
            .iter()
            .map(|r| Message::new(r.topic.clone(), r.envelope.clone()))
            .collect();
        let started = Instant::now();
        let results = self.bus.publish_batch(messages).await;
        let published_at = meridian_core::now();
        metrics::histogram!("meridian_relay_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let outbox_lag = metrics::histogram!(OUTBOX_LAG);

        let mut sent: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    sent.push(row.seq);
                    outbox_lag.record(record_published(row, published_at));
                }
                Err(error) => {
                    metrics::counter!("meridian_relay_publish_failures_total", "topic" => row.topic.as_str().to_owned())
                        .increment(1);
                    failure = Some(RelayError::Publish {
                        seq: row.seq,
                        error,
                    });
                    break;
                }
            }
        }
        if sent.len() < rows.len() && failure.is_none() {
            // A backend that answered fewer results than messages: treat the rest as
            // unsent, to be published again.
            failure = Some(RelayError::Publish {
                seq: rows[sent.len()].seq,
                error: BusError::Internal("the bus reported fewer results than messages".into()),
            });
        }
        self.store.mark_outbox_sent(&sent).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(sent.len()),
        }
    }

    /// Runs until `shutdown` turns `true`, as the database's one active relay.
    ///
    /// First it takes the store's relay lock ([`Store::try_lock_relay`]); while another
    /// relay (in this process or another) holds it, this one stands by and tries again
    /// every `standby_interval`, so that when the active relay stops or dies another takes
    /// over within about that long. Holding the lock, it runs rounds: a full batch is
    /// followed at once by the next round; an empty or short one by a pause of
    /// `poll_interval`, cut short when the store signals committed outbox rows; a failure
    /// by a backoff that grows while failures continue. Every `lock_check_interval` it
    /// checks that it still holds the lock, and goes back to standing by if not. Never
    /// gives up on its own.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            bus = self.bus.name(),
            batch = self.config.batch,
            "outbox relay started"
        );
        let unsent = metrics::gauge!(OUTBOX_UNSENT);
        let active = metrics::gauge!(RELAY_ACTIVE);
        let mut failures = 0u32;
        let mut lock: Option<Box<dyn RelayLock>> = None;
        let mut lock_checked = Instant::now();
        let mut counted: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if lock.is_some() && lock_checked.elapsed() >= self.config.lock_check_interval {
                lock_checked = Instant::now();
                if let Some(held) = &lock
                    && !held.is_held().await
                {
                    tracing::warn!("outbox relay lost its lock; standing by");
                    lock = None;
                    active.set(0.0);
                }
            }
            // Whether the pause is the idle poll, which committed outbox rows cut short.
            let mut idle = false;
            let pause = if lock.is_none() {
                match self.store.try_lock_relay().await {
                    Ok(Some(taken)) => {
                        failures = 0;
                        tracing::info!("outbox relay is active (holds the relay lock)");
                        lock = Some(taken);
                        lock_checked = Instant::now();
                        active.set(1.0);
                        Duration::ZERO
                    }
                    Ok(None) => {
                        tracing::debug!("another outbox relay is active; standing by");
                        self.config.standby_interval
                    }
                    Err(e) => {
                        // Warn once per outage; the store being down is reported elsewhere too.
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            tracing::warn!(error = %e, "cannot take the relay lock; retrying");
                        }
                        self.config.standby_interval
                    }
                }
            } else {
                if counted.is_none_or(|at| at.elapsed() >= UNSENT_SAMPLE_INTERVAL) {
                    counted = Some(Instant::now());
                    if let Ok(n) = self.store.outbox_unsent_count().await {
                        #[allow(clippy::cast_precision_loss)]
                        unsent.set(n as f64);
                    }
                }
                match self.step().await {
                    Ok(n) => {
                        if failures > 0 {
                            tracing::info!(failures, "outbox relay recovered");
                        }
                        failures = 0;
                        if n >= self.config.batch as usize {
                            continue;
                        }
                        idle = true;
                        self.config.poll_interval
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        // The first failure of an outage is worth a warning; the rest repeat it.
                        if failures == 1 {
                            tracing::warn!(error = %e, "outbox relay cannot publish; backing off");
                        } else {
                            tracing::debug!(error = %e, failures, "outbox relay still failing");
                        }
                        self.config.backoff.backoff(failures)
                    }
                }
            };
            if pause.is_zero() {
                continue;
            }
            let signal = lock
                .as_ref()
                .filter(|_| idle)
                .and_then(|held| held.outbox_signal());
            let woken = async {
                match &signal {
                    Some(signal) => signal.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = woken => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        if lock.is_some() {
            active.set(0.0);
        }
        // Dropping the lock here lets a standing-by relay take over.
        drop(lock);
        tracing::info!("outbox relay stopped");
    }
}

/// `meridian_relay_outbox_lag_seconds`: from an outbox row's creation (its commit, as
/// near as the clock tells) to the bus accepting it; every topic in one histogram.
pub const OUTBOX_LAG: &str = "meridian_relay_outbox_lag_seconds";
/// `meridian_relay_outbox_unsent`: outbox rows not yet marked sent, sampled by the active
/// relay.
pub const OUTBOX_UNSENT: &str = "meridian_relay_outbox_unsent";
/// `meridian_relay_active`: 1 while this process's relay holds the relay lock.
pub const RELAY_ACTIVE: &str = "meridian_relay_active";

/// How often the active relay counts the unsent rows.
const UNSENT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Records the row's lag per topic and returns it, in seconds.
fn record_published(row: &OutboxRecord, at: meridian_core::Timestamp) -> f64 {
    let topic = row.topic.as_str().to_owned();
    // The envelope's time is the row's `created_at`: both are set when the row is written.
    let lag = (at - row.envelope.time)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    metrics::histogram!("meridian_relay_lag_seconds", "topic" => topic).record(lag);
    lag
}
