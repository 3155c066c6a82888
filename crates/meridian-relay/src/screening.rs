//! The `orders-fraud-decisions` consumer: the orders service applying screening plugins'
//! decisions (`platform.oms.fraud.decision`, published by `fraud-screen` through its
//! sidecar) to orders.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetterSink};
use meridian_bus::{
    Bus, BusError, Handler, HandlerError, Message, RetryPolicy, StartAt, SubscribeOptions,
    TopicPattern,
};
use meridian_core::{Envelope, OrderId};
use meridian_store::{HoldChange, ScreeningDecision, ScreeningOutcome, Store, StoreError};
use serde::Deserialize;
use tokio::sync::watch;

/// The consumer name: its bus subscription and its inbox rows.
pub const FRAUD_DECISIONS_CONSUMER: &str = "orders-fraud-decisions";

/// Counter of decisions handled, by `decision` and `outcome` (`held`, `released`,
/// `recorded`, `duplicate`, `ignored`, `rejected`).
pub const FRAUD_DECISIONS: &str = "meridian_fraud_decisions_total";

/// `deployment.{deployment}.platform.oms.fraud.decision`.
pub fn fraud_decisions_pattern(deployment: &str) -> Result<TopicPattern, BusError> {
    TopicPattern::parse(&format!(
        "deployment.{deployment}.platform.oms.fraud.decision"
    ))
}

/// A decision's data: `{"order_id", "decision": "hold" | "approve", "reason"}`.
#[derive(Debug, Deserialize)]
struct DecisionData {
    order_id: String,
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

/// A decision, checked.
#[derive(Debug)]
struct Decision {
    order: OrderId,
    decision: ScreeningDecision,
    reason: String,
}

fn parse(e: &Envelope) -> Result<Decision, String> {
    let data: DecisionData = serde_json::from_value(e.data.clone())
        .map_err(|err| format!("event {} is not a fraud decision: {err}", e.id))?;
    let order = data.order_id.parse().map_err(|_| {
        format!(
            "event {}: order_id {:?} is not an order id",
            e.id, data.order_id
        )
    })?;
    let decision = ScreeningDecision::parse(&data.decision).ok_or_else(|| {
        format!(
            "event {}: decision {:?} must be \"hold\" or \"approve\"",
            e.id, data.decision
        )
    })?;
    let reason = match data.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => r.to_owned(),
        _ => "no reason given".to_owned(),
    };
    Ok(Decision {
        order,
        decision,
        reason,
    })
}

/// Who decided: the plugin's name when the sidecar published it
/// (`/meridian/{deployment}/plugins/{name}`), else the envelope's whole source.
pub fn screen_name(source: &str) -> &str {
    match source.rsplit_once("/plugins/") {
        Some((_, name)) if !name.is_empty() && !name.contains('/') => name,
        _ => source,
    }
}

/// Applies each decision through [`HoldStore::apply_screening`], which records it with the
/// inbox row in one transaction (a redelivery changes nothing). The envelope's tenant must
/// own the order: a decision naming an order the tenant does not have (another tenant's,
/// or none) is refused and, after the retries, dead-lettered with that reason, changing
/// nothing. So is a payload that is not a decision. A decision for a canceled or fulfilled
/// order changes nothing and is acknowledged.
///
/// [`HoldStore::apply_screening`]: meridian_store::HoldStore::apply_screening
pub struct FraudDecisions {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for FraudDecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FraudDecisions")
            .field("store", &self.store.backend())
            .finish()
    }
}

impl FraudDecisions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn count(decision: &str, outcome: &'static str) {
    let decision = match decision {
        "hold" | "approve" => decision.to_owned(),
        _ => "invalid".to_owned(),
    };
    metrics::counter!(FRAUD_DECISIONS, "decision" => decision, "outcome" => outcome).increment(1);
}

#[async_trait]
impl Handler for FraudDecisions {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let e = message.envelope();
        let d = parse(e).map_err(|reason| {
            count("invalid", "rejected");
            HandlerError::new(reason)
        })?;
        let source = screen_name(&e.source);
        let applied = self
            .store
            .holds()
            .apply_screening(
                FRAUD_DECISIONS_CONSUMER,
                e.id,
                e.tenant,
                d.order,
                d.decision,
                &d.reason,
                source,
            )
            .await;
        let decision = d.decision.as_str();
        match applied {
            Ok(outcome) => {
                let name = match outcome {
                    ScreeningOutcome::Duplicate => "duplicate",
                    ScreeningOutcome::Applied(HoldChange::Held) => "held",
                    ScreeningOutcome::Applied(HoldChange::Released) => "released",
                    ScreeningOutcome::Applied(HoldChange::Unchanged) => "recorded",
                    ScreeningOutcome::Ignored(status) => {
                        tracing::info!(order.id = %d.order, %status, decision, "a screening decision for an order that is over changes nothing");
                        "ignored"
                    }
                };
                tracing::debug!(order.id = %d.order, decision, outcome = name, screen = source, "screening decision applied");
                count(decision, name);
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => {
                count(decision, "rejected");
                Err(HandlerError::new(format!(
                    "event {}: tenant {} has no order {}; the decision changes nothing",
                    e.id, e.tenant, d.order
                )))
            }
            Err(err) => Err(HandlerError::new(format!(
                "cannot apply the screening decision for order {}: {err}",
                d.order
            ))),
        }
    }
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::durable(FRAUD_DECISIONS_CONSUMER)
    }
}

/// Declares the durable consumer ([`consumer::declare`]), so that every decision from now
/// on is kept for it.
pub async fn declare_fraud_decisions(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
    consumer::declare(bus, &fraud_decisions_pattern(deployment)?, options()).await
}

/// Runs the consumer until `shutdown` turns `true`: per-message retries with backoff, then
/// `<topic>.dlq` and `dead_letters`.
pub async fn run_fraud_decisions(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    deployment: &str,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    consumer::run(
        bus,
        fraud_decisions_pattern(deployment)?,
        options(),
        Arc::new(FraudDecisions::new(store)),
        RetryPolicy::default(),
        dead_letters,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_is_named_by_its_plugin() {
        assert_eq!(
            screen_name("/meridian/prod/plugins/fraud-screen"),
            "fraud-screen"
        );
        assert_eq!(screen_name("/meridian/prod/oms"), "/meridian/prod/oms");
        assert_eq!(screen_name("/x/plugins/a/b"), "/x/plugins/a/b");
    }
}
