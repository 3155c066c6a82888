//! Dead letters in the store: the sink the consumer loop records them in, and replay.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::{Bus, BusError, DeadLetter, DeadLetterSink, Message};
use meridian_core::{EventId, TenantId};
use meridian_store::{DeadLetterRecord, Store, StoreError};

/// Records each dead letter in the store, where `GET /v1/dead-letters` and
/// `meridian dead-letters` find it. Idempotent by the dead letter's id, so the consumer
/// loop may retry the step.
pub struct StoreDeadLetterSink {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for StoreDeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDeadLetterSink")
            .field("store", &self.store.backend())
            .finish()
    }
}

impl StoreDeadLetterSink {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// The store's record of a dead letter.
pub fn to_record(dead_letter: &DeadLetter) -> DeadLetterRecord {
    DeadLetterRecord {
        id: dead_letter.id,
        tenant_id: dead_letter.original.tenant(),
        original_topic: dead_letter.original.topic.clone(),
        envelope: dead_letter.original.envelope().clone(),
        reason: dead_letter.reason.clone(),
        attempts: dead_letter.attempts,
        consumer: dead_letter.consumer.clone(),
        failed_at: dead_letter.failed_at,
        replayed_at: None,
    }
}

#[async_trait]
impl DeadLetterSink for StoreDeadLetterSink {
    async fn record(&self, dead_letter: &DeadLetter) -> Result<(), BusError> {
        self.store
            .record_dead_letter(&to_record(dead_letter))
            .await
            .map(|_| ())
            .map_err(|e| match e {
                StoreError::Unavailable(m) => {
                    BusError::Unavailable(format!("dead-letter store: {m}"))
                }
                other => BusError::Internal(format!("cannot record the dead letter: {other}")),
            })
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Not found (or another tenant's), or the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus refused the message; nothing was marked.
    #[error("cannot republish the dead letter: {0}")]
    Bus(#[from] BusError),
}

/// Publishes a dead letter's original message to its original topic again and marks it
/// replayed.
///
/// The message keeps its event id, so every consumer's inbox still recognises it: the
/// consumers that handled it before drop it, the one that gave up handles it now. On NATS,
/// whose stream drops a message whose id (`Nats-Msg-Id`) it saw within its duplicate
/// window (30 s by default), a replay within that window of the original publish is
/// dropped; replay after it.
pub async fn replay_dead_letter(
    store: &dyn Store,
    bus: &dyn Bus,
    tenant: Option<TenantId>,
    id: EventId,
) -> Result<DeadLetterRecord, ReplayError> {
    let dead_letter = store.get_dead_letter(tenant, id).await?;
    bus.publish(Message::new(
        dead_letter.original_topic.clone(),
        dead_letter.envelope.clone(),
    ))
    .await?;
    tracing::info!(
        dead_letter.id = %id,
        topic = %dead_letter.original_topic,
        event.id = %dead_letter.envelope.id,
        "dead letter replayed"
    );
    Ok(store.mark_dead_letter_replayed(tenant, id).await?)
}
