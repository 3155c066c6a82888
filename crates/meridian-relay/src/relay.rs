//! The outbox relay loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, BusError, Message, RetryPolicy};
use meridian_store::{OutboxRecord, Store, StoreError};
use tokio::sync::watch;

/// How the relay paces itself.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows read and published per round.
    pub batch: u32,
    /// How often an idle relay looks for new rows: the longest an event waits for the
    /// relay after its commit when nothing else is happening.
    pub poll_interval: Duration,
    /// Backoff while the bus (or the store) is unavailable.
    pub backoff: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            poll_interval: Duration::from_millis(50),
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
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

        let mut sent: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    sent.push(row.seq);
                    record_published(row, published_at);
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

    /// Runs rounds until `shutdown` turns `true`. A full batch is followed at once by the
    /// next round; an empty or short one by a pause of `poll_interval`; a failure by a
    /// backoff that grows while failures continue. Never gives up on its own.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            bus = self.bus.name(),
            batch = self.config.batch,
            "outbox relay started"
        );
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let pause = match self.step().await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(failures, "outbox relay recovered");
                    }
                    failures = 0;
                    if n >= self.config.batch as usize {
                        continue;
                    }
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
            };
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }
}

fn record_published(row: &OutboxRecord, at: meridian_core::Timestamp) {
    let topic = row.topic.as_str().to_owned();
    let lag = (at - row.envelope.time)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    metrics::histogram!("meridian_relay_lag_seconds", "topic" => topic).record(lag);
}
