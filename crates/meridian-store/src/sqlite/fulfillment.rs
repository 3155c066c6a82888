//! Shipments on SQLite: writes on the writer thread, each in its own `BEGIN IMMEDIATE`
//! transaction with its outbox rows; reads on the read pool.

use async_trait::async_trait;
use meridian_core::{EventId, EventSource, OrderId, ShipmentId, TenantId};
use meridian_fulfillment::{Shipment, ShipmentStatus, created_event, label_created, transition};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use super::conn::WriteTx;
use super::rows::{insert_outbox, opt_json, parsed, time, to_json, ts};
use crate::fulfillment::{one_order, ships_from_warehouse};
use crate::{
    FulfillmentStore, Page, PageRequest, Result, StoreError, decode_cursor, encode_cursor,
};

macro_rules! shipment_columns {
    () => {
        "id, tenant_id, order_id, warehouse_id, warehouse_code, status, carrier, \
         tracking_number, label_key, items, ship_to, detail, created_at, updated_at"
    };
}

fn shipment(row: &Row<'_>) -> rusqlite::Result<Shipment> {
    let status: String = row.get(5)?;
    let items: String = row.get(9)?;
    Ok(Shipment {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        order_id: parsed(row, 2)?,
        warehouse_id: parsed(row, 3)?,
        warehouse_code: parsed(row, 4)?,
        status: ShipmentStatus::parse(&status).ok_or_else(|| bad(5, &status))?,
        carrier: row.get(6)?,
        tracking_number: row.get(7)?,
        label_key: row.get(8)?,
        items: serde_json::from_str(&items).map_err(|e| bad(9, &e.to_string()))?,
        ship_to: opt_json(row, 10)?,
        detail: row.get(11)?,
        created_at: time(row, 12)?,
        updated_at: time(row, 13)?,
    })
}

fn bad(i: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unexpected value {what:?}").into(),
    )
}

fn find(conn: &Connection, tenant: TenantId, id: ShipmentId) -> Result<Option<Shipment>> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT ",
            shipment_columns!(),
            " FROM shipments WHERE tenant_id = ?1 AND id = ?2"
        ))?
        .query_row(params![tenant.to_string(), id.to_string()], shipment)
        .optional()?)
}

fn get(conn: &Connection, tenant: TenantId, id: ShipmentId) -> Result<Shipment> {
    find(conn, tenant, id)?.ok_or_else(|| StoreError::not_found("shipment", id))
}

fn of_order(conn: &Connection, tenant: TenantId, order: OrderId) -> Result<Vec<Shipment>> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT ",
            shipment_columns!(),
            " FROM shipments WHERE tenant_id = ?1 AND order_id = ?2 ORDER BY id"
        ))?
        .query_map(params![tenant.to_string(), order.to_string()], shipment)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

fn insert(conn: &Connection, s: &Shipment) -> Result<bool> {
    let items = to_json("shipment items", &s.items)?;
    let ship_to = s
        .ship_to
        .as_ref()
        .map(|a| to_json("shipping address", a))
        .transpose()?;
    let n = conn
        .prepare_cached(concat!(
            "INSERT INTO shipments (",
            shipment_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (tenant_id, order_id, warehouse_id) DO NOTHING"
        ))?
        .execute(params![
            s.id.to_string(),
            s.tenant_id.to_string(),
            s.order_id.to_string(),
            s.warehouse_id.to_string(),
            s.warehouse_code.as_str(),
            s.status.as_str(),
            s.carrier,
            s.tracking_number,
            s.label_key,
            items,
            ship_to,
            s.detail,
            ts(&s.created_at),
            ts(&s.updated_at),
        ])?;
    Ok(n == 1)
}

/// Writes a shipment's changed columns.
fn update(conn: &Connection, s: &Shipment) -> Result<()> {
    conn.prepare_cached(
        "UPDATE shipments SET status = ?3, tracking_number = ?4, label_key = ?5, detail = ?6, \
         updated_at = ?7 WHERE tenant_id = ?1 AND id = ?2",
    )?
    .execute(params![
        s.tenant_id.to_string(),
        s.id.to_string(),
        s.status.as_str(),
        s.tracking_number,
        s.label_key,
        s.detail,
        ts(&s.updated_at),
    ])?;
    Ok(())
}

/// `true` if the inbox did not hold `(consumer, event)` and now does.
fn first_delivery(conn: &Connection, consumer: &str, event: EventId) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            consumer,
            event.to_string(),
            ts(&meridian_core::now())
        ])?;
    Ok(n == 1)
}

fn create_shipments(
    conn: &mut Connection,
    events: &EventSource,
    consumer: &str,
    batch: &[(EventId, Vec<Shipment>)],
) -> Result<Vec<Vec<Shipment>>> {
    // Everything that can refuse the batch is checked before the transaction starts.
    let orders = batch
        .iter()
        .map(|(_, planned)| one_order(planned))
        .collect::<Result<Vec<_>>>()?;
    let tx = WriteTx::begin(conn)?;
    let mut out = Vec::with_capacity(batch.len());
    for ((event_id, planned), order) in batch.iter().zip(orders) {
        out.push(create_in(&tx, events, consumer, *event_id, planned, order)?);
    }
    tx.commit()?;
    Ok(out)
}

/// One event's shipments, inside the caller's transaction.
fn create_in(
    tx: &Connection,
    events: &EventSource,
    consumer: &str,
    event_id: EventId,
    planned: &[Shipment],
    order: Option<(TenantId, OrderId)>,
) -> Result<Vec<Shipment>> {
    if !first_delivery(tx, consumer, event_id)? {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    if let Some((tenant, order)) = order {
        // The IMMEDIATE transaction holds the write lock: a cancel cannot slip in between
        // this check and the commit.
        let status: Option<String> = tx
            .prepare_cached("SELECT status FROM orders WHERE tenant_id = ?1 AND id = ?2")?
            .query_row(params![tenant.to_string(), order.to_string()], |r| r.get(0))
            .optional()?;
        if status.as_deref() == Some("confirmed") {
            for s in planned {
                if insert(tx, s)? {
                    insert_outbox(tx, &created_event(events, s))?;
                    created.push(s.clone());
                }
            }
        }
    }
    Ok(created)
}

fn change(
    conn: &mut Connection,
    tenant: TenantId,
    id: ShipmentId,
    apply: impl FnOnce(&Connection, &mut Shipment) -> Result<Option<meridian_core::OutboxEvent>>,
) -> Result<Shipment> {
    let tx = WriteTx::begin(conn)?;
    let mut s = get(&tx, tenant, id)?;
    if let Some(event) = apply(&tx, &mut s)? {
        update(&tx, &s)?;
        insert_outbox(&tx, &event)?;
        tx.commit()?;
    }
    Ok(s)
}

fn cancel_order_shipments(
    conn: &mut Connection,
    events: &EventSource,
    consumer: &str,
    event_id: EventId,
    tenant: TenantId,
    order: OrderId,
) -> Result<Vec<Shipment>> {
    let tx = WriteTx::begin(conn)?;
    if !first_delivery(&tx, consumer, event_id)? {
        return Ok(Vec::new());
    }
    let now = meridian_core::now();
    let mut canceled = Vec::new();
    for mut s in of_order(&tx, tenant, order)? {
        if !s.status.can_move_to(ShipmentStatus::Canceled) {
            continue;
        }
        let detail = Some("the order was canceled".to_owned());
        if let Some(event) = transition(&mut s, ShipmentStatus::Canceled, detail, events, now)? {
            update(&tx, &s)?;
            insert_outbox(&tx, &event)?;
            canceled.push(s);
        }
    }
    tx.commit()?;
    Ok(canceled)
}

fn list(
    conn: &Connection,
    tenant: TenantId,
    order: Option<OrderId>,
    page: &PageRequest,
) -> Result<Page<Shipment>> {
    let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    let before: Option<ShipmentId> = page
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c)?.parse().map_err(|_| {
                StoreError::Validation(meridian_core::ValidationErrors::single(
                    "cursor",
                    "is not a cursor this API returned",
                ))
            })
        })
        .transpose()?;
    let mut items = conn
        .prepare_cached(concat!(
            "SELECT ",
            shipment_columns!(),
            " FROM shipments WHERE tenant_id = ?1 AND (?2 IS NULL OR order_id = ?2) \
              AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
        ))?
        .query_map(
            params![
                tenant.to_string(),
                order.map(|o| o.to_string()),
                before.map(|b| b.to_string()),
                limit as i64 + 1
            ],
            shipment,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|s| encode_cursor(&s.id.to_string()))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

#[async_trait]
impl FulfillmentStore for SqliteStore {
    async fn create_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        shipments: &[Shipment],
    ) -> Result<Vec<Shipment>> {
        let batch = vec![(event_id, shipments.to_vec())];
        let (events, consumer) = (self.events.clone(), consumer.to_owned());
        let mut out = self
            .writer
            .write(move |c| create_shipments(c, &events, &consumer, &batch))
            .await?;
        Ok(out.pop().unwrap_or_default())
    }

    async fn create_shipments_batch(
        &self,
        consumer: &str,
        batch: &[(EventId, Vec<Shipment>)],
    ) -> Result<Vec<Vec<Shipment>>> {
        let (events, consumer, batch) = (self.events.clone(), consumer.to_owned(), batch.to_vec());
        self.writer
            .write(move |c| create_shipments(c, &events, &consumer, &batch))
            .await
    }

    async fn get_shipment(&self, tenant: TenantId, id: ShipmentId) -> Result<Shipment> {
        self.read(move |c| get(c, tenant, id)).await
    }

    async fn shipment_by_tracking(&self, carrier: &str, tracking_number: &str) -> Result<Shipment> {
        let (carrier, tracking) = (carrier.to_owned(), tracking_number.to_owned());
        self.read(move |c| {
            c.prepare_cached(concat!(
                "SELECT ",
                shipment_columns!(),
                " FROM shipments WHERE carrier = ?1 AND tracking_number = ?2 \
                  ORDER BY id DESC LIMIT 1"
            ))?
            .query_row(params![carrier, tracking], shipment)
            .optional()?
            .ok_or_else(|| StoreError::not_found("shipment with tracking number", &tracking))
        })
        .await
    }

    async fn list_shipments(
        &self,
        tenant: TenantId,
        order: Option<OrderId>,
        page: PageRequest,
    ) -> Result<Page<Shipment>> {
        self.read(move |c| list(c, tenant, order, &page)).await
    }

    async fn record_label(
        &self,
        tenant: TenantId,
        id: ShipmentId,
        tracking_number: &str,
        label_key: &str,
    ) -> Result<Shipment> {
        let events = self.events.clone();
        let (tracking, key) = (tracking_number.to_owned(), label_key.to_owned());
        self.writer
            .write(move |c| {
                change(c, tenant, id, |tx, s| {
                    // A held order's shipments get no label (the release resumes them).
                    if s.status == ShipmentStatus::Pending {
                        super::holds::refuse_if_held(tx, tenant, s.order_id)?;
                    }
                    let now = meridian_core::now();
                    Ok(label_created(s, &tracking, &key, &events, now)?)
                })
            })
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
        self.writer
            .write(move |c| {
                change(c, tenant, id, |tx, s| {
                    if ships_from_warehouse(s.status, status) {
                        super::holds::refuse_if_held(tx, tenant, s.order_id)?;
                    }
                    let now = meridian_core::now();
                    Ok(transition(s, status, detail, &events, now)?)
                })
            })
            .await
    }

    async fn cancel_order_shipments(
        &self,
        consumer: &str,
        event_id: EventId,
        tenant: TenantId,
        order: OrderId,
    ) -> Result<Vec<Shipment>> {
        let (events, consumer) = (self.events.clone(), consumer.to_owned());
        self.writer
            .write(move |c| cancel_order_shipments(c, &events, &consumer, event_id, tenant, order))
            .await
    }
}
