//! Order holds on SQLite: the hold columns of `orders` (migration 0008). Writes run on the
//! writer thread in `BEGIN IMMEDIATE`, so a hold and a shipment's label or shipped update
//! never interleave.

use std::collections::HashMap;

use async_trait::async_trait;
use meridian_core::{EventId, EventSource, OrderId, TenantId};
use meridian_orders::OrderStatus;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use super::conn::WriteTx;
use super::rows::{insert_outbox, opt_time, ts};
use crate::holds::{self, HoldOp};
use crate::{
    HoldChange, HoldStore, OrderHold, OrderHoldState, Result, Screening, ScreeningDecision,
    ScreeningOutcome, StoreError,
};

const SELECT: &str = "SELECT status, hold_reason, hold_source, held_at, screening_decision, \
                      screening_reason, screening_source, screened_at \
                      FROM orders WHERE tenant_id = ?1 AND id = ?2";

fn bad(i: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unexpected value {what:?}").into(),
    )
}

fn state_row(row: &Row<'_>) -> rusqlite::Result<(OrderStatus, OrderHoldState)> {
    let status: String = row.get(0)?;
    let status = OrderStatus::parse(&status).ok_or_else(|| bad(0, &status))?;
    let hold = match (
        row.get::<_, Option<String>>(1)?,
        row.get::<_, Option<String>>(2)?,
        opt_time(row, 3)?,
    ) {
        (Some(reason), Some(source), Some(held_at)) => Some(OrderHold {
            reason,
            source,
            held_at,
        }),
        _ => None,
    };
    let screening = match (
        row.get::<_, Option<String>>(4)?,
        row.get::<_, Option<String>>(5)?,
        row.get::<_, Option<String>>(6)?,
        opt_time(row, 7)?,
    ) {
        (Some(d), Some(reason), Some(source), Some(screened_at)) => Some(Screening {
            decision: ScreeningDecision::parse(&d).ok_or_else(|| bad(4, &d))?,
            reason,
            source,
            screened_at,
        }),
        _ => None,
    };
    Ok((status, OrderHoldState { hold, screening }))
}

/// The order's status and hold state; `NotFound` for another tenant's order.
pub(super) fn load(
    conn: &Connection,
    tenant: TenantId,
    order: OrderId,
) -> Result<(OrderStatus, OrderHoldState)> {
    conn.prepare_cached(SELECT)?
        .query_row(params![tenant.to_string(), order.to_string()], state_row)
        .optional()?
        .ok_or_else(|| StoreError::not_found("order", order))
}

/// `OrderOnHold` if the order is held: what a label, a shipped update and a fulfilment
/// check inside their transaction.
pub(super) fn refuse_if_held(conn: &Connection, tenant: TenantId, order: OrderId) -> Result<()> {
    let held: Option<Option<String>> = conn
        .prepare_cached("SELECT held_at FROM orders WHERE tenant_id = ?1 AND id = ?2")?
        .query_row(params![tenant.to_string(), order.to_string()], |r| r.get(0))
        .optional()?;
    match held {
        Some(Some(_)) => Err(StoreError::OrderOnHold(order)),
        _ => Ok(()),
    }
}

fn store(
    conn: &Connection,
    tenant: TenantId,
    order: OrderId,
    state: &OrderHoldState,
) -> Result<()> {
    let (h, s) = (state.hold.as_ref(), state.screening.as_ref());
    conn.prepare_cached(
        "UPDATE orders SET hold_reason = ?3, hold_source = ?4, held_at = ?5, \
         screening_decision = ?6, screening_reason = ?7, screening_source = ?8, \
         screened_at = ?9 WHERE tenant_id = ?1 AND id = ?2",
    )?
    .execute(params![
        tenant.to_string(),
        order.to_string(),
        h.map(|h| h.reason.as_str()),
        h.map(|h| h.source.as_str()),
        h.map(|h| ts(&h.held_at)),
        s.map(|s| s.decision.as_str()),
        s.map(|s| s.reason.as_str()),
        s.map(|s| s.source.as_str()),
        s.map(|s| ts(&s.screened_at)),
    ])?;
    Ok(())
}

/// Applies `op` in the caller's transaction; the order's status is checked by the caller.
fn apply(
    tx: &Connection,
    events: &EventSource,
    tenant: TenantId,
    order: OrderId,
    current: OrderHoldState,
    op: HoldOp<'_>,
) -> Result<(HoldChange, OrderHoldState)> {
    let planned = holds::plan(events, tenant, order, current, op, meridian_core::now());
    if planned.write {
        store(tx, tenant, order, &planned.state)?;
    }
    if let Some(event) = &planned.event {
        insert_outbox(tx, event)?;
    }
    Ok((planned.change, planned.state))
}

fn operator(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    order: OrderId,
    op: HoldOp<'_>,
) -> Result<(HoldChange, OrderHoldState)> {
    let tx = WriteTx::begin(conn)?;
    let (status, current) = load(&tx, tenant, order)?;
    if !holds::holdable(status) {
        return Err(holds::not_holdable(order, status));
    }
    let out = apply(&tx, events, tenant, order, current, op)?;
    tx.commit()?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn screen(
    conn: &mut Connection,
    events: &EventSource,
    consumer: &str,
    event_id: EventId,
    tenant: TenantId,
    order: OrderId,
    op: HoldOp<'_>,
) -> Result<ScreeningOutcome> {
    let tx = WriteTx::begin(conn)?;
    // Before the inbox row: an unknown order writes nothing, so a replay after the order
    // exists (or with a corrected tenant) is not dropped as a duplicate.
    let (status, current) = load(&tx, tenant, order)?;
    let new =
        tx.prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            consumer,
            event_id.to_string(),
            ts(&meridian_core::now())
        ])? == 1;
    if !new {
        return Ok(ScreeningOutcome::Duplicate);
    }
    let outcome = if holds::holdable(status) {
        ScreeningOutcome::Applied(apply(&tx, events, tenant, order, current, op)?.0)
    } else {
        ScreeningOutcome::Ignored(status)
    };
    tx.commit()?;
    Ok(outcome)
}

#[async_trait]
impl HoldStore for SqliteStore {
    async fn order_hold(&self, tenant: TenantId, order: OrderId) -> Result<OrderHoldState> {
        self.read(move |c| Ok(load(c, tenant, order)?.1)).await
    }

    async fn order_hold_states(
        &self,
        tenant: TenantId,
        orders: Vec<OrderId>,
    ) -> Result<HashMap<OrderId, OrderHoldState>> {
        // One primary-key lookup per order, on one connection: in process, as cheap as one
        // query with a list.
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT)?;
            let mut states = HashMap::new();
            for order in orders {
                let row = stmt
                    .query_row(params![tenant.to_string(), order.to_string()], state_row)
                    .optional()?;
                if let Some((_, state)) = row.filter(|(_, s)| !s.is_empty()) {
                    states.insert(order, state);
                }
            }
            Ok(states)
        })
        .await
    }

    async fn hold_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        reason: &str,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)> {
        holds::check_reason(reason)?;
        let (events, reason, source) = (self.events.clone(), reason.to_owned(), source.to_owned());
        self.writer
            .write(move |c| {
                let op = HoldOp::Hold {
                    reason: &reason,
                    source: &source,
                };
                operator(c, &events, tenant, order, op)
            })
            .await
    }

    async fn release_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)> {
        let (events, source) = (self.events.clone(), source.to_owned());
        self.writer
            .write(move |c| {
                let op = HoldOp::Release { source: &source };
                operator(c, &events, tenant, order, op)
            })
            .await
    }

    async fn apply_screening(
        &self,
        consumer: &str,
        event_id: EventId,
        tenant: TenantId,
        order: OrderId,
        decision: ScreeningDecision,
        reason: &str,
        source: &str,
    ) -> Result<ScreeningOutcome> {
        let events = self.events.clone();
        let (consumer, reason, source) =
            (consumer.to_owned(), reason.to_owned(), source.to_owned());
        self.writer
            .write(move |c| {
                let op = HoldOp::Screen {
                    decision,
                    reason: &reason,
                    source: &source,
                };
                screen(c, &events, &consumer, event_id, tenant, order, op)
            })
            .await
    }
}
