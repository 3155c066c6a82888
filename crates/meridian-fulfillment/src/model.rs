use meridian_core::{
    EventSource, OrderId, OutboxEvent, ShipmentId, Sku, TenantId, Timestamp, WarehouseCode,
    WarehouseId,
};
use meridian_orders::{Address, Order, OrderStatus};
use serde::{Deserialize, Serialize};

/// Where a shipment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Planned from a confirmed order; no label yet.
    Pending,
    /// The carrier has a label and a tracking number for it.
    LabelCreated,
    /// Handed to the carrier.
    Shipped,
    /// At the recipient. Final.
    Delivered,
    /// A problem in transit (damaged, address not found, held at customs); it may still
    /// move on to shipped again or delivered.
    Exception,
    /// Canceled before it shipped (its order was canceled). Final.
    Canceled,
}

impl ShipmentStatus {
    pub const ALL: [ShipmentStatus; 6] = [
        ShipmentStatus::Pending,
        ShipmentStatus::LabelCreated,
        ShipmentStatus::Shipped,
        ShipmentStatus::Delivered,
        ShipmentStatus::Exception,
        ShipmentStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Pending => "pending",
            ShipmentStatus::LabelCreated => "label_created",
            ShipmentStatus::Shipped => "shipped",
            ShipmentStatus::Delivered => "delivered",
            ShipmentStatus::Exception => "exception",
            ShipmentStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The state machine: pending → label_created → shipped → delivered; shipped →
    /// exception → shipped or delivered; pending or label_created → canceled. Delivered and
    /// canceled are final. Staying in the same status is not a transition (see
    /// [`transition`], which treats it as a repeat).
    pub fn can_move_to(self, to: ShipmentStatus) -> bool {
        use ShipmentStatus::*;
        matches!(
            (self, to),
            (Pending, LabelCreated)
                | (Pending | LabelCreated, Canceled)
                | (LabelCreated | Exception, Shipped)
                | (Shipped | Exception, Delivered)
                | (Shipped, Exception)
        )
    }

    /// Whether the parcel has left the warehouse (shipped, delivered, or in exception,
    /// which only follows shipped).
    pub fn has_shipped(self) -> bool {
        matches!(
            self,
            ShipmentStatus::Shipped | ShipmentStatus::Delivered | ShipmentStatus::Exception
        )
    }

    /// The event written when a shipment enters this status: `shipment.{status}`.
    pub fn event(self) -> &'static str {
        match self {
            ShipmentStatus::Pending => "shipment.created",
            ShipmentStatus::LabelCreated => "shipment.label_created",
            ShipmentStatus::Shipped => "shipment.shipped",
            ShipmentStatus::Delivered => "shipment.delivered",
            ShipmentStatus::Exception => "shipment.exception",
            ShipmentStatus::Canceled => "shipment.canceled",
        }
    }
}

impl std::fmt::Display for ShipmentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shipment {shipment} cannot go from {from} to {to}")]
pub struct IllegalShipmentTransition {
    pub shipment: ShipmentId,
    pub from: ShipmentStatus,
    pub to: ShipmentStatus,
}

/// Units of one SKU in a shipment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentItem {
    pub sku: Sku,
    /// The product's name when the order was placed.
    pub name: String,
    pub quantity: i64,
}

/// The units of one order that one warehouse ships. Its JSON is the data of every
/// `platform.fulfillment.shipment.*` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub id: ShipmentId,
    pub tenant_id: TenantId,
    pub order_id: OrderId,
    pub warehouse_id: WarehouseId,
    pub warehouse_code: WarehouseCode,
    pub status: ShipmentStatus,
    /// The carrier that carries it (`manual` unless configured otherwise).
    pub carrier: String,
    /// The carrier's tracking number, once the label is created.
    pub tracking_number: Option<String>,
    /// Where the label is kept in the object store, once created.
    pub label_key: Option<String>,
    pub items: Vec<ShipmentItem>,
    /// The order's shipping address.
    pub ship_to: Option<Address>,
    /// The carrier's last remark (an exception's reason, say).
    pub detail: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One pending shipment per warehouse the order's allocations name, in the order the
/// warehouses first appear in its lines; none unless the order is confirmed.
pub fn plan_shipments(order: &Order, carrier: &str, now: Timestamp) -> Vec<Shipment> {
    if order.status != OrderStatus::Confirmed {
        return Vec::new();
    }
    let mut shipments: Vec<Shipment> = Vec::new();
    for line in &order.lines {
        for a in &line.allocations {
            if a.quantity <= 0 {
                continue;
            }
            let item = ShipmentItem {
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: a.quantity,
            };
            match shipments
                .iter_mut()
                .find(|s| s.warehouse_id == a.warehouse_id)
            {
                Some(s) => s.items.push(item),
                None => shipments.push(Shipment {
                    id: ShipmentId::new(),
                    tenant_id: order.tenant_id,
                    order_id: order.id,
                    warehouse_id: a.warehouse_id,
                    warehouse_code: a.warehouse_code.clone(),
                    status: ShipmentStatus::Pending,
                    carrier: carrier.to_owned(),
                    tracking_number: None,
                    label_key: None,
                    items: vec![item],
                    ship_to: order.shipping_address.clone(),
                    detail: None,
                    created_at: now,
                    updated_at: now,
                }),
            }
        }
    }
    shipments
}

/// The `platform.fulfillment.shipment.{event}` event about `shipment`, whose data is the
/// shipment as it is now. The subject (ordering key) is the shipment id.
pub fn shipment_event(
    events: &EventSource,
    shipment: &Shipment,
    event: &str,
    now: Timestamp,
) -> OutboxEvent {
    let data = serde_json::to_value(shipment).unwrap_or(serde_json::Value::Null);
    events.event(
        "fulfillment",
        event,
        shipment.tenant_id,
        shipment.id.to_string(),
        data,
        now,
    )
}

/// `shipment.created` for a shipment just planned.
pub fn created_event(events: &EventSource, shipment: &Shipment) -> OutboxEvent {
    shipment_event(events, shipment, "shipment.created", shipment.created_at)
}

/// Moves `shipment` to `to`, recording `detail` (the carrier's remark), and returns the
/// event to write with it. `Ok(None)` when the shipment already is in `to` (a repeated
/// tracking update): nothing changes and nothing is written.
pub fn transition(
    shipment: &mut Shipment,
    to: ShipmentStatus,
    detail: Option<String>,
    events: &EventSource,
    now: Timestamp,
) -> Result<Option<OutboxEvent>, IllegalShipmentTransition> {
    if shipment.status == to {
        return Ok(None);
    }
    if !shipment.status.can_move_to(to) {
        return Err(IllegalShipmentTransition {
            shipment: shipment.id,
            from: shipment.status,
            to,
        });
    }
    shipment.status = to;
    if detail.is_some() {
        shipment.detail = detail;
    }
    shipment.updated_at = now;
    Ok(Some(shipment_event(events, shipment, to.event(), now)))
}

/// Records the carrier's label on a pending shipment: its tracking number and where the
/// label is stored, and moves it to `label_created`. A shipment that already has its label
/// is left as it is (`Ok(None)`), so a retried label step changes nothing.
pub fn label_created(
    shipment: &mut Shipment,
    tracking_number: &str,
    label_key: &str,
    events: &EventSource,
    now: Timestamp,
) -> Result<Option<OutboxEvent>, IllegalShipmentTransition> {
    if shipment.status != ShipmentStatus::Pending && shipment.label_key.is_some() {
        return Ok(None);
    }
    if !shipment.status.can_move_to(ShipmentStatus::LabelCreated) {
        return Err(IllegalShipmentTransition {
            shipment: shipment.id,
            from: shipment.status,
            to: ShipmentStatus::LabelCreated,
        });
    }
    shipment.tracking_number = Some(tracking_number.to_owned());
    shipment.label_key = Some(label_key.to_owned());
    transition(shipment, ShipmentStatus::LabelCreated, None, events, now)
}

/// Whether every shipment of an order has left its warehouse (and there is at least one):
/// the moment the order is fulfilled.
pub fn all_shipped(shipments: &[Shipment]) -> bool {
    !shipments.is_empty() && shipments.iter().all(|s| s.status.has_shipped())
}

/// The `manual` carrier's tracking number for a shipment: `MRD` and the last 16 hex digits
/// of its id, upper case. Derived from the id, so a retried label step gets the same one.
pub fn manual_tracking_number(id: ShipmentId) -> String {
    let hex = id.as_uuid().simple().to_string().to_uppercase();
    format!("MRD{}", &hex[hex.len() - 16..])
}

#[cfg(test)]
mod tests {
    use meridian_core::{Money, ProductId};
    use meridian_orders::{Allocation, AllocationStrategy, OrderLine};

    use super::*;

    fn events() -> EventSource {
        EventSource::new("test").unwrap()
    }

    /// `(warehouse, code, quantity)` of one line.
    type Allocations<'a> = &'a [(WarehouseId, &'a str, i64)];

    fn order(status: OrderStatus, allocations: &[(&str, Allocations<'_>)]) -> Order {
        let now = meridian_core::now();
        Order {
            id: OrderId::new(),
            tenant_id: TenantId::new(),
            status,
            allocation: AllocationStrategy::Split,
            lines: allocations
                .iter()
                .map(|(sku, allocs)| OrderLine {
                    sku: sku.parse().unwrap(),
                    product_id: ProductId::new(),
                    name: format!("Product {sku}"),
                    quantity: allocs.iter().map(|a| a.2).sum(),
                    unit_price: Money::new(100, "EUR".parse().unwrap()),
                    allocations: allocs
                        .iter()
                        .map(|(w, code, q)| Allocation {
                            warehouse_id: *w,
                            warehouse_code: code.parse().unwrap(),
                            quantity: *q,
                        })
                        .collect(),
                })
                .collect(),
            customer: None,
            shipping_address: None,
            total: Money::new(100, "EUR".parse().unwrap()),
            idempotency_key: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn state_machine_table() {
        use ShipmentStatus::*;
        let allowed = [
            (Pending, LabelCreated),
            (Pending, Canceled),
            (LabelCreated, Shipped),
            (LabelCreated, Canceled),
            (Shipped, Delivered),
            (Shipped, Exception),
            (Exception, Shipped),
            (Exception, Delivered),
        ];
        for from in ShipmentStatus::ALL {
            for to in ShipmentStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(ShipmentStatus::parse(from.as_str()), Some(from));
        }
        assert_eq!(ShipmentStatus::parse("lost"), None);
    }

    #[test]
    fn one_shipment_per_warehouse_allocation() {
        let (w1, w2) = (WarehouseId::new(), WarehouseId::new());
        let o = order(
            OrderStatus::Confirmed,
            &[
                ("A", &[(w1, "W1", 2), (w2, "W2", 1)]),
                ("B", &[(w2, "W2", 5)]),
            ],
        );
        let now = meridian_core::now();
        let planned = plan_shipments(&o, "manual", now);
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].warehouse_id, w1);
        assert_eq!(planned[0].items.len(), 1);
        assert_eq!(planned[1].warehouse_code.as_str(), "W2");
        let items: Vec<_> = planned[1]
            .items
            .iter()
            .map(|i| (i.sku.as_str(), i.quantity))
            .collect();
        assert_eq!(items, [("A", 1), ("B", 5)]);
        assert!(planned.iter().all(|s| s.status == ShipmentStatus::Pending
            && s.order_id == o.id
            && s.tenant_id == o.tenant_id));

        for status in [
            OrderStatus::Pending,
            OrderStatus::Canceled,
            OrderStatus::Fulfilled,
        ] {
            let o = order(status, &[("A", &[(w1, "W1", 1)])]);
            assert!(plan_shipments(&o, "manual", now).is_empty(), "{status}");
        }
    }

    #[test]
    fn transitions_emit_events_and_repeats_are_no_ops() {
        let w = WarehouseId::new();
        let o = order(OrderStatus::Confirmed, &[("A", &[(w, "W1", 1)])]);
        let now = meridian_core::now();
        let mut s = plan_shipments(&o, "manual", now).remove(0);
        let created = created_event(&events(), &s);
        assert_eq!(
            created.topic.as_str(),
            "deployment.test.platform.fulfillment.shipment.created"
        );
        assert_eq!(created.envelope.subject, s.id.to_string());
        assert_eq!(created.envelope.data["status"], "pending");
        assert_eq!(created.envelope.data["order_id"], o.id.to_string());

        let tracking = manual_tracking_number(s.id);
        let e = label_created(&mut s, &tracking, "labels/x.pdf", &events(), now)
            .unwrap()
            .unwrap();
        assert_eq!(e.envelope.ty, "meridian.fulfillment.shipment.label_created");
        assert_eq!(e.envelope.data["tracking_number"], tracking.as_str());
        // A retried label step changes nothing.
        assert_eq!(
            label_created(&mut s, &tracking, "labels/x.pdf", &events(), now),
            Ok(None)
        );

        let err = transition(&mut s, ShipmentStatus::Delivered, None, &events(), now);
        assert_eq!(
            err,
            Err(IllegalShipmentTransition {
                shipment: s.id,
                from: ShipmentStatus::LabelCreated,
                to: ShipmentStatus::Delivered
            })
        );
        let e = transition(&mut s, ShipmentStatus::Shipped, None, &events(), now)
            .unwrap()
            .unwrap();
        assert_eq!(
            e.topic.as_str(),
            "deployment.test.platform.fulfillment.shipment.shipped"
        );
        assert_eq!(
            transition(&mut s, ShipmentStatus::Shipped, None, &events(), now),
            Ok(None)
        );
        let detail = Some("address not found".to_owned());
        transition(&mut s, ShipmentStatus::Exception, detail, &events(), now).unwrap();
        assert_eq!(s.detail.as_deref(), Some("address not found"));
        assert!(transition(&mut s, ShipmentStatus::Canceled, None, &events(), now).is_err());
    }

    #[test]
    fn an_order_is_shipped_when_every_shipment_is() {
        let w = WarehouseId::new();
        let o = order(
            OrderStatus::Confirmed,
            &[("A", &[(w, "W1", 1), (WarehouseId::new(), "W2", 1)])],
        );
        let mut planned = plan_shipments(&o, "manual", meridian_core::now());
        assert!(!all_shipped(&planned));
        planned[0].status = ShipmentStatus::Shipped;
        assert!(!all_shipped(&planned));
        planned[1].status = ShipmentStatus::Delivered;
        assert!(all_shipped(&planned));
        assert!(!all_shipped(&[]));
    }

    #[test]
    fn manual_tracking_numbers_are_stable_and_printable() {
        let id = ShipmentId::new();
        let t = manual_tracking_number(id);
        assert_eq!(t, manual_tracking_number(id));
        assert_eq!(t.len(), 19);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }
}
