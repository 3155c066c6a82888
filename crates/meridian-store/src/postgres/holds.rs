//! Order holds on PostgreSQL: the hold columns of `orders` (migration 0008). A hold or
//! release locks the order's row `FOR UPDATE`; a label or shipped update reads it
//! `FOR SHARE`, so the two never interleave.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use meridian_core::{EventId, OrderId, TenantId, Timestamp};
use meridian_orders::OrderStatus;
use tokio_postgres::Row;

use super::writes::append_outbox_pooled;
use super::{PgStore, error, rows};
use crate::holds::{self, HoldOp};
use crate::{
    HoldChange, HoldStore, OrderHold, OrderHoldState, Result, Screening, ScreeningDecision,
    ScreeningOutcome, StoreError,
};

const COLUMNS: &str = "status, hold_reason, hold_source, held_at, screening_decision, \
                       screening_reason, screening_source, screened_at";

fn state_row(row: &Row) -> Result<(OrderStatus, OrderHoldState)> {
    let status: &str = rows::get(row, "status")?;
    let status = OrderStatus::parse(status)
        .ok_or_else(|| StoreError::Internal(format!("stored order status {status:?}")))?;
    let hold = match (
        rows::get::<Option<String>>(row, "hold_reason")?,
        rows::get::<Option<String>>(row, "hold_source")?,
        rows::get::<Option<Timestamp>>(row, "held_at")?,
    ) {
        (Some(reason), Some(source), Some(held_at)) => Some(OrderHold {
            reason,
            source,
            held_at,
        }),
        _ => None,
    };
    let screening = match (
        rows::get::<Option<String>>(row, "screening_decision")?,
        rows::get::<Option<String>>(row, "screening_reason")?,
        rows::get::<Option<String>>(row, "screening_source")?,
        rows::get::<Option<Timestamp>>(row, "screened_at")?,
    ) {
        (Some(d), Some(reason), Some(source), Some(screened_at)) => Some(Screening {
            decision: ScreeningDecision::parse(&d)
                .ok_or_else(|| StoreError::Internal(format!("stored screening decision {d:?}")))?,
            reason,
            source,
            screened_at,
        }),
        _ => None,
    };
    Ok((status, OrderHoldState { hold, screening }))
}

/// `OrderOnHold` if the order is held, reading its row `FOR SHARE` (a hold being placed,
/// which locks the row `FOR UPDATE`, is waited for, and waits for the caller's commit).
pub(super) async fn refuse_if_held(
    tx: &Transaction<'_>,
    tenant: TenantId,
    order: OrderId,
) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "SELECT held_at IS NOT NULL FROM orders WHERE tenant_id = $1 AND id = $2 FOR SHARE",
        )
        .await
        .map_err(error::db)?;
    let held = tx
        .query_opt(&stmt, &[tenant.as_uuid(), order.as_uuid()])
        .await
        .map_err(error::db)?
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if held {
        Err(StoreError::OrderOnHold(order))
    } else {
        Ok(())
    }
}

/// The order's status and hold state, its row locked `FOR UPDATE`.
async fn lock(
    tx: &Transaction<'_>,
    tenant: TenantId,
    order: OrderId,
) -> Result<(OrderStatus, OrderHoldState)> {
    let row = super::select_by_id(
        tx,
        "orders",
        COLUMNS,
        tenant,
        order.as_uuid(),
        "order",
        "FOR UPDATE",
    )
    .await?;
    state_row(&row)
}

impl PgStore {
    /// Applies `op` in `tx` (the order's status already checked) and writes its event.
    async fn apply_hold(
        &self,
        tx: &Transaction<'_>,
        tenant: TenantId,
        order: OrderId,
        current: OrderHoldState,
        op: HoldOp<'_>,
    ) -> Result<(HoldChange, OrderHoldState)> {
        let planned = holds::plan(
            &self.events,
            tenant,
            order,
            current,
            op,
            meridian_core::now(),
        );
        if planned.write {
            let (h, s) = (
                planned.state.hold.as_ref(),
                planned.state.screening.as_ref(),
            );
            let stmt = tx
                .prepare_cached(
                    "UPDATE orders SET hold_reason = $3, hold_source = $4, held_at = $5, \
                     screening_decision = $6, screening_reason = $7, screening_source = $8, \
                     screened_at = $9 WHERE tenant_id = $1 AND id = $2",
                )
                .await
                .map_err(error::db)?;
            tx.execute(
                &stmt,
                &[
                    tenant.as_uuid(),
                    order.as_uuid(),
                    &h.map(|h| h.reason.as_str()),
                    &h.map(|h| h.source.as_str()),
                    &h.map(|h| h.held_at),
                    &s.map(|s| s.decision.as_str()),
                    &s.map(|s| s.reason.as_str()),
                    &s.map(|s| s.source.as_str()),
                    &s.map(|s| s.screened_at),
                ],
            )
            .await
            .map_err(error::db)?;
        }
        if let Some(event) = planned.event {
            append_outbox_pooled(tx, &[event]).await?;
        }
        Ok((planned.change, planned.state))
    }

    async fn operator_hold(
        &self,
        tenant: TenantId,
        order: OrderId,
        op: HoldOp<'_>,
    ) -> Result<(HoldChange, OrderHoldState)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        let (status, current) = lock(&tx, tenant, order).await?;
        if !holds::holdable(status) {
            return Err(holds::not_holdable(order, status));
        }
        let out = self.apply_hold(&tx, tenant, order, current, op).await?;
        tx.commit().await.map_err(error::db)?;
        Ok(out)
    }
}

#[async_trait]
impl HoldStore for PgStore {
    async fn order_hold(&self, tenant: TenantId, order: OrderId) -> Result<OrderHoldState> {
        let row = self
            .row_by_id("orders", COLUMNS, tenant, order.as_uuid(), "order")
            .await?;
        Ok(state_row(&row)?.1)
    }

    async fn order_hold_states(
        &self,
        tenant: TenantId,
        orders: Vec<OrderId>,
    ) -> Result<HashMap<OrderId, OrderHoldState>> {
        let ids: Vec<uuid::Uuid> = orders.iter().map(|o| *o.as_uuid()).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT id, {COLUMNS} FROM orders WHERE tenant_id = $1 AND id = ANY($2) \
                 AND (held_at IS NOT NULL OR screened_at IS NOT NULL)"
            ))
            .await
            .map_err(error::db)?;
        let rows = client
            .query(&stmt, &[tenant.as_uuid(), &ids])
            .await
            .map_err(error::db)?;
        rows.iter()
            .map(|row| {
                let id: uuid::Uuid = rows::get(row, "id")?;
                Ok((OrderId::from_uuid(id), state_row(row)?.1))
            })
            .collect()
    }

    async fn hold_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        reason: &str,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)> {
        holds::check_reason(reason)?;
        self.operator_hold(tenant, order, HoldOp::Hold { reason, source })
            .await
    }

    async fn release_order(
        &self,
        tenant: TenantId,
        order: OrderId,
        source: &str,
    ) -> Result<(HoldChange, OrderHoldState)> {
        self.operator_hold(tenant, order, HoldOp::Release { source })
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        // Before the inbox row: an unknown order writes nothing, so a replay once the order
        // exists is not dropped as a duplicate.
        let (status, current) = lock(&tx, tenant, order).await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO inbox (consumer, event_id, received_at) VALUES ($1, $2, now()) \
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(error::db)?;
        let new = tx
            .execute(&stmt, &[&consumer, event_id.as_uuid()])
            .await
            .map_err(error::db)?
            == 1;
        if !new {
            return Ok(ScreeningOutcome::Duplicate);
        }
        let outcome = if holds::holdable(status) {
            let op = HoldOp::Screen {
                decision,
                reason,
                source,
            };
            ScreeningOutcome::Applied(self.apply_hold(&tx, tenant, order, current, op).await?.0)
        } else {
            ScreeningOutcome::Ignored(status)
        };
        tx.commit().await.map_err(error::db)?;
        Ok(outcome)
    }
}
