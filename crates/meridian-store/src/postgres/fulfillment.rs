//! Shipments on PostgreSQL: each write is one pooled transaction that locks the rows it
//! changes (`FOR UPDATE`) and appends its outbox rows last, under the outbox lock.

use async_trait::async_trait;
use meridian_core::{EventId, OrderId, OutboxEvent, ShipmentId, TenantId};
use meridian_fulfillment::{Shipment, ShipmentStatus, created_event, label_created, transition};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::writes::append_outbox_pooled;
use super::{PgStore, bad_cursor, error, into_page, page_limit, rows};
use crate::fulfillment::{one_order, ships_from_warehouse};
use crate::{FulfillmentStore, Page, PageRequest, Result, StoreError, decode_cursor};

const COLUMNS: &str = "id, tenant_id, order_id, warehouse_id, warehouse_code, status, carrier, \
                       tracking_number, label_key, items, ship_to, detail, created_at, updated_at";

fn shipment(row: &Row) -> Result<Shipment> {
    let status: &str = rows::get(row, "status")?;
    let Json(items) = rows::get(row, "items")?;
    let ship_to: Option<Json<meridian_orders::Address>> = rows::get(row, "ship_to")?;
    Ok(Shipment {
        id: ShipmentId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        order_id: OrderId::from_uuid(rows::get(row, "order_id")?),
        warehouse_id: meridian_core::WarehouseId::from_uuid(rows::get(row, "warehouse_id")?),
        warehouse_code: rows::parse(row, "warehouse_code")?,
        status: ShipmentStatus::parse(status)
            .ok_or_else(|| StoreError::Internal(format!("stored shipment status {status:?}")))?,
        carrier: rows::get(row, "carrier")?,
        tracking_number: rows::get(row, "tracking_number")?,
        label_key: rows::get(row, "label_key")?,
        items,
        ship_to: ship_to.map(|Json(a)| a),
        detail: rows::get(row, "detail")?,
        created_at: rows::get(row, "created_at")?,
        updated_at: rows::get(row, "updated_at")?,
    })
}

/// Inserts `(consumer, event)` into the inbox; `false` if it was there (a redelivery).
async fn first_delivery(
    tx: &deadpool_postgres::Transaction<'_>,
    consumer: &str,
    event: EventId,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES ($1, $2, now()) \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(error::db)?;
    let n = tx
        .execute(&stmt, &[&consumer, event.as_uuid()])
        .await
        .map_err(error::db)?;
    Ok(n == 1)
}

async fn update(tx: &deadpool_postgres::Transaction<'_>, s: &Shipment) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "UPDATE shipments SET status = $3, tracking_number = $4, label_key = $5, \
             detail = $6, updated_at = $7 WHERE tenant_id = $1 AND id = $2",
        )
        .await
        .map_err(error::db)?;
    tx.execute(
        &stmt,
        &[
            s.tenant_id.as_uuid(),
            s.id.as_uuid(),
            &s.status.as_str(),
            &s.tracking_number,
            &s.label_key,
            &s.detail,
            &s.updated_at,
        ],
    )
    .await
    .map_err(error::db)?;
    Ok(())
}

impl PgStore {
    /// Loads one shipment `FOR UPDATE`, lets `apply` change it, and writes it with its event
    /// in the same transaction. Nothing is written when `apply` returns no event.
    async fn change_shipment(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        apply: impl FnOnce(&mut Shipment) -> Result<Option<OutboxEvent>> + Send,
        blocked_by_hold: impl FnOnce(&Shipment) -> bool + Send,
    ) -> Result<Shipment> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        let row = super::select_by_id(
            &tx,
            "shipments",
            COLUMNS,
            tenant,
            id.as_uuid(),
            "shipment",
            "FOR UPDATE",
        )
        .await?;
        let mut s = shipment(&row)?;
        if blocked_by_hold(&s) {
            // FOR SHARE on the order: a hold being placed waits for this commit, and this
            // waits for a hold being placed.
            super::holds::refuse_if_held(&tx, tenant, s.order_id).await?;
        }
        if let Some(event) = apply(&mut s)? {
            update(&tx, &s).await?;
            append_outbox_pooled(&tx, &[event]).await?;
            tx.commit().await.map_err(error::db)?;
        }
        Ok(s)
    }
}

#[async_trait]
impl FulfillmentStore for PgStore {
    async fn create_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        shipments: &[Shipment],
    ) -> Result<Vec<Shipment>> {
        let order = one_order(shipments)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        if !first_delivery(&tx, consumer, event_id).await? {
            return Ok(Vec::new());
        }
        let mut created = Vec::new();
        if let Some((tenant, order)) = order {
            // FOR SHARE waits for a cancel in progress (which holds the row FOR UPDATE) and
            // keeps one from starting until this commits: a cancel either comes first and
            // is seen here, or comes after and finds these shipments.
            let status_stmt = tx
                .prepare_cached(
                    "SELECT status FROM orders WHERE tenant_id = $1 AND id = $2 FOR SHARE",
                )
                .await
                .map_err(error::db)?;
            let status: Option<String> = tx
                .query_opt(&status_stmt, &[tenant.as_uuid(), order.as_uuid()])
                .await
                .map_err(error::db)?
                .map(|r| rows::get(&r, "status"))
                .transpose()?;
            if status.as_deref() == Some("confirmed") {
                let insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO shipments ({COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                         ON CONFLICT (tenant_id, order_id, warehouse_id) DO NOTHING"
                    ))
                    .await
                    .map_err(error::db)?;
                for s in shipments {
                    let n = tx
                        .execute(
                            &insert,
                            &[
                                s.id.as_uuid(),
                                s.tenant_id.as_uuid(),
                                s.order_id.as_uuid(),
                                s.warehouse_id.as_uuid(),
                                &s.warehouse_code.as_str(),
                                &s.status.as_str(),
                                &s.carrier,
                                &s.tracking_number,
                                &s.label_key,
                                &Json(&s.items),
                                &s.ship_to.as_ref().map(Json),
                                &s.detail,
                                &s.created_at,
                                &s.updated_at,
                            ],
                        )
                        .await
                        .map_err(error::db)?;
                    if n == 1 {
                        created.push(s.clone());
                    }
                }
                let events: Vec<OutboxEvent> = created
                    .iter()
                    .map(|s| created_event(&self.events, s))
                    .collect();
                append_outbox_pooled(&tx, &events).await?;
            }
        }
        tx.commit().await.map_err(error::db)?;
        Ok(created)
    }

    async fn get_shipment(&self, tenant: TenantId, id: ShipmentId) -> Result<Shipment> {
        let row = self
            .row_by_id("shipments", COLUMNS, tenant, id.as_uuid(), "shipment")
            .await?;
        shipment(&row)
    }

    async fn shipment_by_tracking(&self, carrier: &str, tracking_number: &str) -> Result<Shipment> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM shipments WHERE carrier = $1 AND tracking_number = $2 \
                 ORDER BY id DESC LIMIT 1"
            ))
            .await
            .map_err(error::db)?;
        let row = client
            .query_opt(&stmt, &[&carrier, &tracking_number])
            .await
            .map_err(error::db)?
            .ok_or_else(|| {
                StoreError::not_found("shipment with tracking number", tracking_number)
            })?;
        shipment(&row)
    }

    async fn list_shipments(
        &self,
        tenant: TenantId,
        order: Option<OrderId>,
        page: PageRequest,
    ) -> Result<Page<Shipment>> {
        let limit = page_limit(&page);
        let before = match &page.cursor {
            Some(c) => Uuid::parse_str(&decode_cursor(c)?).map_err(|_| bad_cursor())?,
            None => Uuid::max(),
        };
        let order: Option<Uuid> = order.map(|o| *o.as_uuid());
        let fetch = limit as i64 + 1;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM shipments WHERE tenant_id = $1 \
                 AND ($2::uuid IS NULL OR order_id = $2) AND id < $3 ORDER BY id DESC LIMIT $4"
            ))
            .await
            .map_err(error::db)?;
        let items = client
            .query(&stmt, &[tenant.as_uuid(), &order, &before, &fetch])
            .await
            .map_err(error::db)?
            .iter()
            .map(shipment)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, limit, |s| s.id.to_string()))
    }

    async fn record_label(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        tracking_number: &str,
        label_key: &str,
    ) -> Result<Shipment> {
        let events = self.events.clone();
        self.change_shipment(
            tenant,
            id,
            |s| {
                let now = meridian_core::now();
                Ok(label_created(s, tracking_number, label_key, &events, now)?)
            },
            // A held order's shipments get no label (the release resumes them).
            |s| s.status == ShipmentStatus::Pending,
        )
        .await
    }

    async fn update_shipment_status(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        status: ShipmentStatus,
        detail: Option<String>,
    ) -> Result<Shipment> {
        let events = self.events.clone();
        self.change_shipment(
            tenant,
            id,
            |s| {
                let now = meridian_core::now();
                Ok(transition(s, status, detail, &events, now)?)
            },
            |s| ships_from_warehouse(s.status, status),
        )
        .await
    }

    async fn cancel_order_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        tenant: TenantId,
        order: OrderId,
    ) -> Result<Vec<Shipment>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        if !first_delivery(&tx, consumer, event_id).await? {
            return Ok(Vec::new());
        }
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM shipments WHERE tenant_id = $1 AND order_id = $2 \
                 ORDER BY id FOR UPDATE"
            ))
            .await
            .map_err(error::db)?;
        let rows = tx
            .query(&stmt, &[tenant.as_uuid(), order.as_uuid()])
            .await
            .map_err(error::db)?;
        let now = meridian_core::now();
        let mut canceled = Vec::new();
        let mut events = Vec::new();
        for row in &rows {
            let mut s = shipment(row)?;
            if !s.status.can_move_to(ShipmentStatus::Canceled) {
                continue;
            }
            let detail = Some("the order was canceled".to_owned());
            if let Some(event) =
                transition(&mut s, ShipmentStatus::Canceled, detail, &self.events, now)?
            {
                update(&tx, &s).await?;
                events.push(event);
                canceled.push(s);
            }
        }
        append_outbox_pooled(&tx, &events).await?;
        tx.commit().await.map_err(error::db)?;
        Ok(canceled)
    }
}
