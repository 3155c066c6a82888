use std::collections::{BTreeMap, HashMap};

use meridian_core::{
    EventSource, LedgerEntryId, Money, OrderId, OutboxEvent, ProductId, Sku, TenantId, Timestamp,
    WarehouseId,
};
use meridian_inventory::{LedgerEntry, Movement, StockLevel};
use serde::{Deserialize, Serialize};

use crate::{
    Allocation, Order, OrderAction, OrderLine, OrderRequest, OrderStatus, TransitionError, allocate,
};

/// What an order line needs to know about its product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductRef {
    pub id: ProductId,
    pub name: String,
    pub price: Money,
}

/// A stored `Idempotency-Key`: the hash of the request it was first used with and its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub order_id: OrderId,
}

/// The rows a batch of orders reads, loaded by the store inside its write transaction.
///
/// `stock` holds every level of every SKU the batch names (empty when there is none), with
/// the rows locked against other writers until the transaction ends.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub products: HashMap<(TenantId, Sku), ProductRef>,
    pub stock: HashMap<(TenantId, Sku), Vec<StockLevel>>,
    pub idempotency: HashMap<(TenantId, String), IdempotencyRecord>,
}

/// One order to place.
#[derive(Clone, Debug)]
pub struct PlaceOrder {
    pub tenant_id: TenantId,
    pub request: OrderRequest,
    pub idempotency_key: Option<String>,
    /// A digest of the canonical request body, to tell a retry from a reused key.
    pub request_hash: String,
}

/// A SKU that could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: i64,
    /// Available across all warehouses.
    pub available: i64,
    /// Available in the best single warehouse; below `requested` with strategies that do not
    /// split a line, a `split` allocation may still succeed.
    pub max_in_one_warehouse: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("unknown sku(s): {}", join(.0))]
    UnknownSkus(Vec<Sku>),
    #[error("insufficient stock for sku(s): {}", join(&.0.iter().map(|s| s.sku.clone()).collect::<Vec<_>>()))]
    InsufficientStock(Vec<Shortage>),
    #[error("idempotency key {0:?} was already used with a different request body")]
    IdempotencyKeyReused(String),
    #[error("the order's products are priced in different currencies: {}", .0.join(", "))]
    MixedCurrencies(Vec<String>),
}

fn join(skus: &[Sku]) -> String {
    skus.iter().map(Sku::as_str).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlaceOutcome {
    /// A new order, part of this batch's writes.
    Created(Box<Order>),
    /// A retry of an earlier request with the same key and body: answer with that order.
    Existing(OrderId),
    Rejected(PlaceError),
}

/// The net change to one stock level, applied with one `UPDATE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockChange {
    pub tenant_id: TenantId,
    pub warehouse_id: WarehouseId,
    pub sku: Sku,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
}

/// Everything a batch writes, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    pub orders: Vec<Order>,
    /// Sorted by `(tenant, warehouse, sku)`, the order in which rows are locked.
    pub stock: Vec<StockChange>,
    pub ledger: Vec<LedgerEntry>,
    pub events: Vec<OutboxEvent>,
    pub idempotency: Vec<(TenantId, String, IdempotencyRecord)>,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.stock.is_empty() && self.events.is_empty()
    }
}

type CellKey = (TenantId, WarehouseId, Sku);

/// Plans a batch of orders against `snapshot`, in order. Each accepted order's reservations
/// are applied to the snapshot before the next is planned, so a batch never allocates more
/// than the snapshot holds; a rejected order changes nothing.
pub fn plan_batch(
    snapshot: &mut Snapshot,
    cmds: &[PlaceOrder],
    events: &EventSource,
    now: Timestamp,
) -> (Vec<PlaceOutcome>, WriteSet) {
    let mut out = Vec::with_capacity(cmds.len());
    let mut writes = WriteSet::default();
    let mut deltas: BTreeMap<CellKey, (i64, i64)> = BTreeMap::new();
    for cmd in cmds {
        let outcome = match plan_one(snapshot, cmd, events, now, &mut writes, &mut deltas) {
            Ok(o) => o,
            Err(e) => PlaceOutcome::Rejected(e),
        };
        out.push(outcome);
    }
    writes.stock = deltas
        .into_iter()
        .map(
            |((tenant_id, warehouse_id, sku), (on_hand_delta, reserved_delta))| StockChange {
                tenant_id,
                warehouse_id,
                sku,
                on_hand_delta,
                reserved_delta,
            },
        )
        .collect();
    (out, writes)
}

fn plan_one(
    snapshot: &mut Snapshot,
    cmd: &PlaceOrder,
    events: &EventSource,
    now: Timestamp,
    writes: &mut WriteSet,
    deltas: &mut BTreeMap<CellKey, (i64, i64)>,
) -> Result<PlaceOutcome, PlaceError> {
    let tenant = cmd.tenant_id;
    if let Some(key) = &cmd.idempotency_key
        && let Some(rec) = snapshot.idempotency.get(&(tenant, key.clone()))
    {
        return if rec.request_hash == cmd.request_hash {
            Ok(PlaceOutcome::Existing(rec.order_id))
        } else {
            Err(PlaceError::IdempotencyKeyReused(key.clone()))
        };
    }

    let lines = cmd.request.lines();
    let unknown: Vec<Sku> = lines
        .iter()
        .filter(|l| !snapshot.products.contains_key(&(tenant, l.sku.clone())))
        .map(|l| l.sku.clone())
        .collect();
    if !unknown.is_empty() {
        return Err(PlaceError::UnknownSkus(unknown));
    }
    let products: Vec<&ProductRef> = lines
        .iter()
        .map(|l| &snapshot.products[&(tenant, l.sku.clone())])
        .collect();
    let currency = products[0].price.currency;
    if products.iter().any(|p| p.price.currency != currency) {
        let mut cs: Vec<String> = products
            .iter()
            .map(|p| p.price.currency.to_string())
            .collect();
        cs.sort();
        cs.dedup();
        return Err(PlaceError::MixedCurrencies(cs));
    }

    // Plan every line before touching the snapshot, so a short order changes nothing.
    let empty = Vec::new();
    let mut plans = Vec::with_capacity(lines.len());
    let mut shortages = Vec::new();
    for line in lines {
        let qty = line.quantity.get();
        let levels = snapshot
            .stock
            .get(&(tenant, line.sku.clone()))
            .unwrap_or(&empty);
        match allocate(cmd.request.allocation, qty, levels) {
            Ok(parts) => plans.push(parts),
            Err((available, max_in_one_warehouse)) => shortages.push(Shortage {
                sku: line.sku.clone(),
                requested: qty,
                available,
                max_in_one_warehouse,
            }),
        }
    }
    if !shortages.is_empty() {
        return Err(PlaceError::InsufficientStock(shortages));
    }

    let order_id = OrderId::new();
    let mut total = Money::new(0, currency);
    let mut order_lines = Vec::with_capacity(lines.len());
    for ((line, parts), product) in lines.iter().zip(plans).zip(&products) {
        let qty = line.quantity.get();
        // Prices are at most 10^12 and quantities 10^6 per line, 100 lines: no overflow.
        total.amount += product.price.amount * qty;
        let mut allocations = Vec::with_capacity(parts.len());
        let levels = snapshot
            .stock
            .get_mut(&(tenant, line.sku.clone()))
            .expect("allocation succeeded, so the SKU has levels");
        for (idx, units) in parts {
            let level = &mut levels[idx];
            let movement = Movement::reserve(units);
            let (on_hand, reserved) = movement
                .apply(level.on_hand, level.reserved)
                .expect("allocate only hands out available units");
            level.on_hand = on_hand;
            level.reserved = reserved;
            let d = deltas
                .entry((tenant, level.warehouse_id, level.sku.clone()))
                .or_default();
            d.1 += units;
            writes.ledger.push(ledger_entry(
                tenant,
                level,
                &movement,
                "order placed",
                Some(order_id),
                now,
            ));
            allocations.push(Allocation {
                warehouse_id: level.warehouse_id,
                warehouse_code: level.warehouse_code.clone(),
                quantity: units,
            });
        }
        order_lines.push(OrderLine {
            sku: line.sku.clone(),
            product_id: product.id,
            name: product.name.clone(),
            quantity: qty,
            unit_price: product.price,
            allocations,
        });
    }

    let order = Order {
        id: order_id,
        tenant_id: tenant,
        status: OrderStatus::Confirmed,
        allocation: cmd.request.allocation,
        lines: order_lines,
        customer: cmd.request.customer.clone(),
        shipping_address: cmd.request.shipping_address.clone(),
        total,
        idempotency_key: cmd.idempotency_key.clone(),
        created_at: now,
        updated_at: now,
    };
    writes
        .events
        .push(order_event(events, &order, "order.created", now));
    if let Some(key) = &cmd.idempotency_key {
        let rec = IdempotencyRecord {
            request_hash: cmd.request_hash.clone(),
            order_id,
        };
        snapshot
            .idempotency
            .insert((tenant, key.clone()), rec.clone());
        writes.idempotency.push((tenant, key.clone(), rec));
    }
    writes.orders.push(order.clone());
    Ok(PlaceOutcome::Created(Box::new(order)))
}

fn ledger_entry(
    tenant: TenantId,
    level: &StockLevel,
    m: &Movement,
    reason: &str,
    order_id: Option<OrderId>,
    now: Timestamp,
) -> LedgerEntry {
    LedgerEntry {
        id: LedgerEntryId::new(),
        tenant_id: tenant,
        warehouse_id: level.warehouse_id,
        sku: level.sku.clone(),
        kind: m.kind,
        on_hand_delta: m.on_hand_delta,
        reserved_delta: m.reserved_delta,
        on_hand_after: level.on_hand,
        reserved_after: level.reserved,
        reason: reason.to_owned(),
        order_id,
        created_at: now,
    }
}

fn order_event(events: &EventSource, order: &Order, event: &str, now: Timestamp) -> OutboxEvent {
    let data = serde_json::to_value(order).unwrap_or(serde_json::Value::Null);
    events.event(
        "oms",
        event,
        order.tenant_id,
        order.id.to_string(),
        data,
        now,
    )
}

/// The writes of one order transition.
#[derive(Clone, Debug)]
pub struct Transitioned {
    pub stock: Vec<StockChange>,
    pub ledger: Vec<LedgerEntry>,
    pub event: OutboxEvent,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionFailure {
    #[error(transparent)]
    Illegal(#[from] TransitionError),
    /// The stored levels do not hold the order's reservation: a broken invariant.
    #[error("stock for order {0} is inconsistent: {1}")]
    Inconsistent(OrderId, String),
}

/// Moves `order` through `action`. Cancel releases a confirmed order's reservations;
/// fulfil commits them (on-hand and reserved both drop). `levels` are the current levels of
/// the order's allocated cells, locked by the caller; they are updated in place.
pub fn transition(
    order: &mut Order,
    action: OrderAction,
    levels: &mut [StockLevel],
    events: &EventSource,
    now: Timestamp,
) -> Result<Transitioned, TransitionFailure> {
    let next = order.status.next(action)?;
    let mut stock = Vec::new();
    let mut ledger = Vec::new();
    let moves_stock = order.status == OrderStatus::Confirmed
        && matches!(action, OrderAction::Cancel | OrderAction::Fulfill);
    if moves_stock {
        let reason = if action == OrderAction::Cancel {
            "order canceled"
        } else {
            "order fulfilled"
        };
        for line in &order.lines {
            for a in &line.allocations {
                let level = levels
                    .iter_mut()
                    .find(|l| l.warehouse_id == a.warehouse_id && l.sku == line.sku)
                    .ok_or_else(|| {
                        TransitionFailure::Inconsistent(
                            order.id,
                            format!("no level for {} in {}", line.sku, a.warehouse_code),
                        )
                    })?;
                let m = if action == OrderAction::Cancel {
                    Movement::release(a.quantity)
                } else {
                    Movement::commit(a.quantity)
                };
                let (on_hand, reserved) = m
                    .apply(level.on_hand, level.reserved)
                    .map_err(|e| TransitionFailure::Inconsistent(order.id, e.to_string()))?;
                level.on_hand = on_hand;
                level.reserved = reserved;
                stock.push(StockChange {
                    tenant_id: order.tenant_id,
                    warehouse_id: level.warehouse_id,
                    sku: level.sku.clone(),
                    on_hand_delta: m.on_hand_delta,
                    reserved_delta: m.reserved_delta,
                });
                ledger.push(ledger_entry(
                    order.tenant_id,
                    level,
                    &m,
                    reason,
                    Some(order.id),
                    now,
                ));
            }
        }
    }
    order.status = next;
    order.updated_at = now;
    let event = order_event(events, order, action.event(), now);
    Ok(Transitioned {
        stock,
        ledger,
        event,
    })
}

#[cfg(test)]
mod tests {
    use meridian_core::{Quantity, WarehouseCode};

    use super::*;
    use crate::{AllocationStrategy, OrderLineRequest};

    struct Fixture {
        tenant: TenantId,
        snapshot: Snapshot,
        events: EventSource,
    }

    fn fixture(levels: &[(&str, i32, i64)]) -> Fixture {
        let tenant = TenantId::new();
        let sku: Sku = "SKU-1".parse().unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.products.insert(
            (tenant, sku.clone()),
            ProductRef {
                id: ProductId::new(),
                name: "Thing".into(),
                price: Money::new(250, "EUR".parse().unwrap()),
            },
        );
        let stock = levels
            .iter()
            .map(|(code, priority, on_hand)| StockLevel {
                warehouse_id: WarehouseId::new(),
                warehouse_code: code.parse::<WarehouseCode>().unwrap(),
                priority: *priority,
                sku: sku.clone(),
                on_hand: *on_hand,
                reserved: 0,
            })
            .collect();
        snapshot.stock.insert((tenant, sku), stock);
        Fixture {
            tenant,
            snapshot,
            events: EventSource::new("test").unwrap(),
        }
    }

    fn cmd(
        f: &Fixture,
        sku: &str,
        qty: i64,
        key: Option<&str>,
        strategy: AllocationStrategy,
    ) -> PlaceOrder {
        let line = OrderLineRequest {
            sku: sku.parse().unwrap(),
            quantity: Quantity::new(qty).unwrap(),
        };
        PlaceOrder {
            tenant_id: f.tenant,
            request: OrderRequest::new(vec![line], None, None, strategy).unwrap(),
            idempotency_key: key.map(str::to_owned),
            request_hash: format!("{sku}:{qty}"),
        }
    }

    #[test]
    fn a_batch_never_allocates_more_than_the_snapshot_holds() {
        let mut f = fixture(&[("A", 1, 3), ("B", 2, 2)]);
        let cmds: Vec<_> = (0..10)
            .map(|_| cmd(&f, "SKU-1", 1, None, AllocationStrategy::Priority))
            .collect();
        let (outcomes, writes) = plan_batch(
            &mut f.snapshot,
            &cmds,
            &f.events.clone(),
            meridian_core::now(),
        );
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, PlaceOutcome::Created(_)))
            .count();
        assert_eq!(created, 5);
        assert_eq!(writes.orders.len(), 5);
        assert_eq!(writes.events.len(), 5);
        assert_eq!(writes.ledger.len(), 5);
        let reserved: i64 = writes.stock.iter().map(|s| s.reserved_delta).sum();
        assert_eq!(reserved, 5);
        assert!(
            f.snapshot
                .stock
                .values()
                .flatten()
                .all(|l| l.reserved <= l.on_hand)
        );
        match &outcomes[9] {
            PlaceOutcome::Rejected(PlaceError::InsufficientStock(s)) => {
                assert_eq!((s[0].requested, s[0].available), (1, 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn idempotency_keys_within_and_across_batches() {
        let mut f = fixture(&[("A", 1, 10)]);
        let events = f.events.clone();
        let first = cmd(&f, "SKU-1", 2, Some("k1"), AllocationStrategy::Priority);
        let retry = first.clone();
        let reused = cmd(&f, "SKU-1", 3, Some("k1"), AllocationStrategy::Priority);
        let (out, writes) = plan_batch(
            &mut f.snapshot,
            &[first, retry, reused],
            &events,
            meridian_core::now(),
        );
        let PlaceOutcome::Created(order) = &out[0] else {
            panic!("{:?}", out[0])
        };
        assert_eq!(out[1], PlaceOutcome::Existing(order.id));
        assert_eq!(
            out[2],
            PlaceOutcome::Rejected(PlaceError::IdempotencyKeyReused("k1".into()))
        );
        assert_eq!(writes.idempotency.len(), 1);
        assert_eq!(writes.stock[0].reserved_delta, 2);
    }

    #[test]
    fn unknown_skus_and_split_shortages_are_reported() {
        let mut f = fixture(&[("A", 1, 3), ("B", 2, 2)]);
        let events = f.events.clone();
        let cmds = [
            cmd(&f, "NOPE", 1, None, AllocationStrategy::Priority),
            cmd(&f, "SKU-1", 4, None, AllocationStrategy::Priority),
            cmd(&f, "SKU-1", 4, None, AllocationStrategy::Split),
        ];
        let (out, writes) = plan_batch(&mut f.snapshot, &cmds, &events, meridian_core::now());
        assert_eq!(
            out[0],
            PlaceOutcome::Rejected(PlaceError::UnknownSkus(vec!["NOPE".parse().unwrap()]))
        );
        match &out[1] {
            PlaceOutcome::Rejected(PlaceError::InsufficientStock(s)) => {
                assert_eq!((s[0].available, s[0].max_in_one_warehouse), (5, 3));
            }
            other => panic!("{other:?}"),
        }
        let PlaceOutcome::Created(order) = &out[2] else {
            panic!("{:?}", out[2])
        };
        assert_eq!(order.lines[0].allocations.len(), 2);
        assert_eq!(order.total.amount, 1000);
        assert_eq!(writes.stock.len(), 2);
    }

    #[test]
    fn cancel_releases_and_fulfil_commits() {
        let mut f = fixture(&[("A", 1, 5)]);
        let events = f.events.clone();
        let c = cmd(&f, "SKU-1", 2, None, AllocationStrategy::Priority);
        let (out, _) = plan_batch(
            &mut f.snapshot,
            &[c.clone(), c],
            &events,
            meridian_core::now(),
        );
        let mut levels = f.snapshot.stock.values().next().unwrap().clone();
        assert_eq!((levels[0].on_hand, levels[0].reserved), (5, 4));

        let PlaceOutcome::Created(a) = &out[0] else {
            panic!()
        };
        let mut a = (**a).clone();
        let t = transition(
            &mut a,
            OrderAction::Cancel,
            &mut levels,
            &events,
            meridian_core::now(),
        )
        .unwrap();
        assert_eq!((levels[0].on_hand, levels[0].reserved), (5, 2));
        assert_eq!(t.stock[0].reserved_delta, -2);
        assert_eq!(
            t.event.topic.as_str(),
            "deployment.test.platform.oms.order.canceled"
        );
        assert_eq!(a.status, OrderStatus::Canceled);
        let again = transition(
            &mut a,
            OrderAction::Fulfill,
            &mut levels,
            &events,
            meridian_core::now(),
        );
        assert!(matches!(again, Err(TransitionFailure::Illegal(_))));

        let PlaceOutcome::Created(b) = &out[1] else {
            panic!()
        };
        let mut b = (**b).clone();
        transition(
            &mut b,
            OrderAction::Fulfill,
            &mut levels,
            &events,
            meridian_core::now(),
        )
        .unwrap();
        assert_eq!((levels[0].on_hand, levels[0].reserved), (3, 0));
        assert_eq!(b.status, OrderStatus::Fulfilled);
    }
}
