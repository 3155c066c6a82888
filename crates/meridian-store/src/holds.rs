//! Order holds: an order that a fraud screen or an operator holds keeps its status (a
//! confirmed order keeps its reserved stock) but is not fulfilled until the hold is released.
//!
//! [`HoldStore`] is a port of its own beside [`Store`](crate::Store); both backends implement
//! it and [`Store::holds`](crate::Store::holds) hands it out. The hold lives in columns of the
//! order's row (migration 0008), so placing or releasing one locks the same row that a
//! shipment's label or shipped update checks: a label is never recorded, and a shipment
//! never ships, for an order that is held at that moment. Its conformance cases are in
//! `tests/it/holds.rs`.

use std::collections::HashMap;

use async_trait::async_trait;
use meridian_core::{EventId, EventSource, OrderId, OutboxEvent, TenantId, Timestamp};
use meridian_orders::OrderStatus;
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// The source of a hold placed or released through the API by an operator.
pub const API_SOURCE: &str = "api";

/// Why an order is held, who held it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHold {
    pub reason: String,
    /// The screening plugin's name (such as `fraud-screen`), or [`API_SOURCE`].
    pub source: String,
    pub held_at: Timestamp,
}

/// A screening plugin's verdict on an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreeningDecision {
    Hold,
    Approve,
}

impl ScreeningDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ScreeningDecision::Hold => "hold",
            ScreeningDecision::Approve => "approve",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hold" => Some(ScreeningDecision::Hold),
            "approve" => Some(ScreeningDecision::Approve),
            _ => None,
        }
    }
}

/// The last screening result recorded for an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screening {
    pub decision: ScreeningDecision,
    pub reason: String,
    /// The screening plugin's name.
    pub source: String,
    pub screened_at: Timestamp,
}

/// An order's hold (if it is held) and its last screening result (if it was screened).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHoldState {
    pub hold: Option<OrderHold>,
    pub screening: Option<Screening>,
}

impl OrderHoldState {
    /// Neither held nor screened.
    pub fn is_empty(&self) -> bool {
        self.hold.is_none() && self.screening.is_none()
    }
}

/// What a hold, release or screening did to the order's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldChange {
    /// The order is now held (`order.held` was written).
    Held,
    /// The hold was released (`order.released` was written).
    Released,
    /// The hold is as it was: already held, not held, or held by someone else. A screening
    /// result recorded without changing the hold writes `order.screened`.
    Unchanged,
}

/// What [`HoldStore::apply_screening`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScreeningOutcome {
    /// The inbox already held the event: nothing was written.
    Duplicate,
    /// The result was recorded, with this change to the hold.
    Applied(HoldChange),
    /// The order is canceled or fulfilled: nothing but the inbox row was written.
    Ignored(OrderStatus),
}

/// The store contract for holds. Every method sees only the given tenant's orders: another
/// tenant's order is `NotFound`. A change writes its `platform.oms.order.held` or
/// `platform.oms.order.released` outbox event in the same transaction; a screening result
/// that leaves the hold as it is writes `platform.oms.order.screened`.
#[async_trait]
pub trait HoldStore: Send + Sync {
    /// The order's hold and screening result.
    async fn order_hold(&self, tenant: TenantId, order: OrderId) -> Result<OrderHoldState>;

    /// The hold and screening result of each of `orders` (a page of a list) that has one,
    /// read together; an order without either, another tenant's or an unknown one is left
    /// out.
    async fn order_hold_states(
        &self,
        tenant: TenantId,
        orders: Vec<OrderId>,
    ) -> Result<HashMap<OrderId, OrderHoldState>>;

    /// Holds a pending or confirmed order. An order already held keeps its hold (and
    /// [`HoldChange::Unchanged`] is returned). `IllegalTransition` for a canceled or
    /// fulfilled order.
    async fn hold_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        reason: &str,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)>;

    /// Releases the order's hold, whoever placed it; `source` is who releases it. An order
    /// that is not held is returned unchanged. `IllegalTransition` for a canceled or
    /// fulfilled order.
    async fn release_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)>;

    /// Applies a screening decision from `source`, effectively once: in one transaction,
    /// inserts `(consumer, event_id)` into the inbox and, if the event is new and the order
    /// pending or confirmed, records the result; `hold` holds the order (unless it is held
    /// already), `approve` releases a hold that `source` itself placed (an operator's hold
    /// stays). A canceled or fulfilled order changes nothing. `NotFound`, writing nothing,
    /// when the tenant has no such order.
    #[allow(clippy::too_many_arguments)]
    async fn apply_screening(
        &self,
        consumer: &str,
        event_id: EventId,
        tenant: TenantId,
        order: OrderId,
        decision: ScreeningDecision,
        reason: &str,
        source: &str,
    ) -> Result<ScreeningOutcome>;
}

/// One change to an order's hold, as both backends apply it to the row they locked.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HoldOp<'a> {
    Hold {
        reason: &'a str,
        source: &'a str,
    },
    Release {
        source: &'a str,
    },
    Screen {
        decision: ScreeningDecision,
        reason: &'a str,
        source: &'a str,
    },
}

impl HoldOp<'_> {
    /// Who asks for the change.
    fn source(&self) -> &str {
        match *self {
            HoldOp::Hold { source, .. }
            | HoldOp::Release { source }
            | HoldOp::Screen { source, .. } => source,
        }
    }
}

/// The result of [`plan`]: the new state, what changed, the outbox event to write, and
/// whether the row must be written at all.
#[derive(Debug)]
pub(crate) struct Planned {
    pub state: OrderHoldState,
    pub change: HoldChange,
    pub event: Option<OutboxEvent>,
    pub write: bool,
}

/// The longest hold or screening reason kept; longer ones are cut (on a character
/// boundary).
pub const MAX_REASON_CHARS: usize = 500;

pub(crate) fn clip(reason: &str) -> String {
    reason.trim().chars().take(MAX_REASON_CHARS).collect()
}

/// Whether an order in `status` can be held or released: a canceled or fulfilled order
/// has nothing left to hold back.
pub(crate) fn holdable(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Pending | OrderStatus::Confirmed)
}

/// The refusal for holding or releasing an order that is over.
pub(crate) fn not_holdable(order: OrderId, status: OrderStatus) -> StoreError {
    StoreError::IllegalTransition(format!(
        "order {order} is {status}: only a pending or confirmed order can be held or released"
    ))
}

/// Applies `op` to an order's current hold state (its status already checked): the pure
/// core both backends share.
pub(crate) fn plan(
    events: &EventSource,
    tenant: TenantId,
    order: OrderId,
    current: OrderHoldState,
    op: HoldOp<'_>,
    now: Timestamp,
) -> Planned {
    let mut state = current;
    let mut write = false;
    let change = match op {
        HoldOp::Hold { reason, source } => hold(&mut state, reason, source, now),
        HoldOp::Release { .. } => release(&mut state, |_| true),
        HoldOp::Screen {
            decision,
            reason,
            source,
        } => {
            state.screening = Some(Screening {
                decision,
                reason: clip(reason),
                source: source.to_owned(),
                screened_at: now,
            });
            write = true;
            match decision {
                ScreeningDecision::Hold => hold(&mut state, reason, source, now),
                // Only the screen that held the order lifts its own hold.
                ScreeningDecision::Approve => release(&mut state, |h| h.source == source),
            }
        }
    };
    let event = match change {
        HoldChange::Held => {
            let h = state.hold.as_ref().expect("a held order has its hold");
            Some(events.event(
                "oms",
                "order.held",
                tenant,
                order.to_string(),
                serde_json::json!({
                    "order_id": order,
                    "reason": h.reason,
                    "source": h.source,
                    "held_at": h.held_at,
                }),
                now,
            ))
        }
        HoldChange::Released => Some(events.event(
            "oms",
            "order.released",
            tenant,
            order.to_string(),
            serde_json::json!({
                "order_id": order,
                "source": op.source(),
                "released_at": now,
            }),
            now,
        )),
        // A screening result that leaves the hold as it is: still an event, so that a label
        // step waiting for the screening hears of it.
        HoldChange::Unchanged => match op {
            HoldOp::Screen {
                decision,
                reason,
                source,
            } => Some(events.event(
                "oms",
                "order.screened",
                tenant,
                order.to_string(),
                serde_json::json!({
                    "order_id": order,
                    "decision": decision.as_str(),
                    "reason": clip(reason),
                    "source": source,
                    "held": state.hold.is_some(),
                }),
                now,
            )),
            _ => None,
        },
    };
    Planned {
        state,
        write: write || event.is_some(),
        change,
        event,
    }
}

fn hold(state: &mut OrderHoldState, reason: &str, source: &str, now: Timestamp) -> HoldChange {
    if state.hold.is_some() {
        return HoldChange::Unchanged;
    }
    state.hold = Some(OrderHold {
        reason: clip(reason),
        source: source.to_owned(),
        held_at: now,
    });
    HoldChange::Held
}

fn release(state: &mut OrderHoldState, may: impl FnOnce(&OrderHold) -> bool) -> HoldChange {
    match &state.hold {
        Some(h) if may(h) => {
            state.hold = None;
            HoldChange::Released
        }
        _ => HoldChange::Unchanged,
    }
}

/// Checks a hold's or release's inputs: a reason of 1 to [`MAX_REASON_CHARS`] characters.
pub(crate) fn check_reason(reason: &str) -> Result<()> {
    let n = reason.trim().chars().count();
    if n == 0 || n > MAX_REASON_CHARS {
        return Err(StoreError::Validation(
            meridian_core::ValidationErrors::single(
                "reason",
                format!("must be 1 to {MAX_REASON_CHARS} characters"),
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> EventSource {
        EventSource::new("test").unwrap()
    }

    #[test]
    fn a_screen_releases_only_its_own_hold() {
        let (t, o, now) = (TenantId::new(), OrderId::new(), meridian_core::now());
        let held = plan(
            &events(),
            t,
            o,
            OrderHoldState::default(),
            HoldOp::Screen {
                decision: ScreeningDecision::Hold,
                reason: "too big",
                source: "fraud-screen",
            },
            now,
        );
        assert_eq!(held.change, HoldChange::Held);
        let event = held.event.as_ref().unwrap();
        assert_eq!(event.envelope.ty, "meridian.oms.order.held");
        assert_eq!(event.envelope.subject, o.to_string());
        assert_eq!(event.envelope.data["source"], "fraud-screen");

        // Another screen's approval leaves it held, but its result is recorded.
        let other = plan(
            &events(),
            t,
            o,
            held.state.clone(),
            HoldOp::Screen {
                decision: ScreeningDecision::Approve,
                reason: "fine",
                source: "other-screen",
            },
            now,
        );
        assert_eq!(other.change, HoldChange::Unchanged);
        assert!(other.write);
        assert_eq!(
            other.event.unwrap().envelope.ty,
            "meridian.oms.order.screened"
        );
        assert!(other.state.hold.is_some());

        let approved = plan(
            &events(),
            t,
            o,
            held.state,
            HoldOp::Screen {
                decision: ScreeningDecision::Approve,
                reason: "fine after all",
                source: "fraud-screen",
            },
            now,
        );
        assert_eq!(approved.change, HoldChange::Released);
        assert_eq!(approved.state.hold, None);
        assert_eq!(
            approved.event.unwrap().envelope.ty,
            "meridian.oms.order.released"
        );
    }

    #[test]
    fn an_operator_hold_survives_an_approval_and_a_second_hold() {
        let (t, o, now) = (TenantId::new(), OrderId::new(), meridian_core::now());
        let op = |state, op| plan(&events(), t, o, state, op, now);
        let held = op(
            OrderHoldState::default(),
            HoldOp::Hold {
                reason: "customer called",
                source: API_SOURCE,
            },
        );
        assert_eq!(held.change, HoldChange::Held);
        let again = op(
            held.state.clone(),
            HoldOp::Hold {
                reason: "again",
                source: API_SOURCE,
            },
        );
        assert_eq!(again.change, HoldChange::Unchanged);
        assert!(!again.write);
        assert_eq!(again.state.hold.as_ref().unwrap().reason, "customer called");
        let approved = op(
            held.state.clone(),
            HoldOp::Screen {
                decision: ScreeningDecision::Approve,
                reason: "ok",
                source: "fraud-screen",
            },
        );
        assert_eq!(approved.change, HoldChange::Unchanged);
        let released = op(held.state, HoldOp::Release { source: API_SOURCE });
        assert_eq!(released.change, HoldChange::Released);
        let twice = op(released.state, HoldOp::Release { source: API_SOURCE });
        assert_eq!((twice.change, twice.write), (HoldChange::Unchanged, false));
    }

    #[test]
    fn reasons_are_checked_and_clipped() {
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        assert!(check_reason("looks odd").is_ok());
        assert_eq!(
            clip(&"é".repeat(MAX_REASON_CHARS + 5)).chars().count(),
            MAX_REASON_CHARS
        );
    }
}
