//! Inventory model: warehouses, stock levels (`on_hand`, `reserved`, derived `available`),
//! the append-only ledger of movements, and reconciliation of levels against the ledger.
//!
//! Invariant kept by every function here: `0 <= reserved <= on_hand`. This crate does no IO.

use std::collections::BTreeMap;

use meridian_core::{LedgerEntryId, OrderId, Sku, TenantId, Timestamp, WarehouseCode, WarehouseId};
use serde::{Deserialize, Serialize};

/// The most units one stock level may hold.
pub const MAX_ON_HAND: i64 = 1_000_000_000;
pub const MAX_REASON_LEN: usize = 500;
pub const MAX_WAREHOUSE_NAME_LEN: usize = 200;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warehouse {
    pub id: WarehouseId,
    pub tenant_id: TenantId,
    pub code: WarehouseCode,
    pub name: String,
    /// Lower numbers are allocated from first.
    pub priority: i32,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewWarehouse {
    pub code: WarehouseCode,
    pub name: String,
    pub priority: i32,
}

/// Stock of one SKU in one warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub warehouse_id: WarehouseId,
    pub warehouse_code: WarehouseCode,
    pub priority: i32,
    pub sku: Sku,
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockLevel {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// Why a stock movement happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    /// On-hand set to an absolute count (a stock take).
    Set,
    /// On-hand changed by a delta (receipt, damage, correction).
    Adjust,
    /// Units reserved for an order.
    Reserve,
    /// A reservation released by a cancellation.
    Release,
    /// Reserved units shipped: on-hand and reserved both drop.
    Commit,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Set => "set",
            MovementKind::Adjust => "adjust",
            MovementKind::Reserve => "reserve",
            MovementKind::Release => "release",
            MovementKind::Commit => "commit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "set" => MovementKind::Set,
            "adjust" => MovementKind::Adjust,
            "reserve" => MovementKind::Reserve,
            "release" => MovementKind::Release,
            "commit" => MovementKind::Commit,
            _ => return None,
        })
    }
}

/// One append-only ledger row: the deltas of a movement and the level after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: LedgerEntryId,
    pub tenant_id: TenantId,
    pub warehouse_id: WarehouseId,
    pub sku: Sku,
    pub kind: MovementKind,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub reason: String,
    pub order_id: Option<OrderId>,
    pub created_at: Timestamp,
}

/// A change to one stock level, checked against the rules; produces the level after it and
/// the ledger entry that records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    pub kind: MovementKind,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MovementError {
    #[error("on_hand would become {on_hand}, below the {reserved} units reserved")]
    BelowReserved { on_hand: i64, reserved: i64 },
    #[error("on_hand would become {0}, which is negative")]
    Negative(i64),
    #[error("on_hand would become {0}, above the limit of {MAX_ON_HAND}")]
    TooLarge(i64),
    #[error("reserving {wanted} units but only {available} are available")]
    NotAvailable { wanted: i64, available: i64 },
    #[error("releasing or committing {wanted} units but only {reserved} are reserved")]
    NotReserved { wanted: i64, reserved: i64 },
}

impl Movement {
    pub fn set(current_on_hand: i64, new_on_hand: i64) -> Self {
        Self {
            kind: MovementKind::Set,
            on_hand_delta: new_on_hand - current_on_hand,
            reserved_delta: 0,
        }
    }
    pub fn adjust(delta: i64) -> Self {
        Self {
            kind: MovementKind::Adjust,
            on_hand_delta: delta,
            reserved_delta: 0,
        }
    }
    pub fn reserve(qty: i64) -> Self {
        Self {
            kind: MovementKind::Reserve,
            on_hand_delta: 0,
            reserved_delta: qty,
        }
    }
    pub fn release(qty: i64) -> Self {
        Self {
            kind: MovementKind::Release,
            on_hand_delta: 0,
            reserved_delta: -qty,
        }
    }
    pub fn commit(qty: i64) -> Self {
        Self {
            kind: MovementKind::Commit,
            on_hand_delta: -qty,
            reserved_delta: -qty,
        }
    }

    /// The `(on_hand, reserved)` after this movement, or why it is not allowed.
    pub fn apply(&self, on_hand: i64, reserved: i64) -> Result<(i64, i64), MovementError> {
        let new_on_hand = on_hand.saturating_add(self.on_hand_delta);
        let new_reserved = reserved.saturating_add(self.reserved_delta);
        if self.reserved_delta > 0 && new_reserved > on_hand {
            return Err(MovementError::NotAvailable {
                wanted: self.reserved_delta,
                available: on_hand - reserved,
            });
        }
        if new_reserved < 0 {
            return Err(MovementError::NotReserved {
                wanted: -self.reserved_delta,
                reserved,
            });
        }
        if new_on_hand < 0 {
            return Err(MovementError::Negative(new_on_hand));
        }
        if new_on_hand > MAX_ON_HAND {
            return Err(MovementError::TooLarge(new_on_hand));
        }
        if new_on_hand < new_reserved {
            return Err(MovementError::BelowReserved {
                on_hand: new_on_hand,
                reserved: new_reserved,
            });
        }
        Ok((new_on_hand, new_reserved))
    }
}

/// Checks a reason: 1 to [`MAX_REASON_LEN`] characters, not blank.
pub fn check_reason(reason: &str) -> Result<String, String> {
    if reason.trim().is_empty() {
        return Err("must not be blank".into());
    }
    let n = reason.chars().count();
    if n > MAX_REASON_LEN {
        return Err(format!(
            "must be at most {MAX_REASON_LEN} characters, got {n}"
        ));
    }
    Ok(reason.to_owned())
}

/// Checks a warehouse name: 1 to [`MAX_WAREHOUSE_NAME_LEN`] characters, not blank.
pub fn check_warehouse_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("must not be blank".into());
    }
    let n = name.chars().count();
    if n > MAX_WAREHOUSE_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_WAREHOUSE_NAME_LEN} characters, got {n}"
        ));
    }
    Ok(name.to_owned())
}

/// A stock level that disagrees with the sum of its ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub tenant_id: TenantId,
    pub warehouse_id: WarehouseId,
    pub sku: Sku,
    pub level: (i64, i64),
    pub ledger: (i64, i64),
}

/// Compares levels `(on_hand, reserved)` with the sums of ledger deltas per
/// `(tenant, warehouse, sku)`. A level with no ledger rows must be `(0, 0)`, and ledger sums
/// with no level are mismatches too.
pub fn reconcile(
    levels: impl IntoIterator<Item = ((TenantId, WarehouseId, Sku), (i64, i64))>,
    ledger_sums: impl IntoIterator<Item = ((TenantId, WarehouseId, Sku), (i64, i64))>,
) -> Vec<Mismatch> {
    let mut sums: BTreeMap<_, _> = ledger_sums.into_iter().collect();
    let mut out = Vec::new();
    for (key, level) in levels {
        let ledger = sums.remove(&key).unwrap_or((0, 0));
        if ledger != level {
            out.push(Mismatch {
                tenant_id: key.0,
                warehouse_id: key.1,
                sku: key.2,
                level,
                ledger,
            });
        }
    }
    for (key, ledger) in sums {
        if ledger != (0, 0) {
            out.push(Mismatch {
                tenant_id: key.0,
                warehouse_id: key.1,
                sku: key.2,
                level: (0, 0),
                ledger,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases reads best inline
    fn movements_keep_reserved_within_on_hand() {
        let cases: &[(Movement, (i64, i64), Result<(i64, i64), ()>)] = &[
            (Movement::reserve(3), (10, 5), Ok((10, 8))),
            (Movement::reserve(6), (10, 5), Err(())),
            (Movement::release(5), (10, 5), Ok((10, 0))),
            (Movement::release(6), (10, 5), Err(())),
            (Movement::commit(5), (10, 5), Ok((5, 0))),
            (Movement::commit(6), (10, 5), Err(())),
            (Movement::adjust(-5), (10, 5), Ok((5, 5))),
            (Movement::adjust(-6), (10, 5), Err(())),
            (Movement::adjust(-11), (10, 0), Err(())),
            (Movement::set(10, 4), (10, 5), Err(())),
            (Movement::set(10, 7), (10, 5), Ok((7, 5))),
            (Movement::adjust(MAX_ON_HAND), (1, 0), Err(())),
        ];
        for (m, (on_hand, reserved), want) in cases {
            let got = m.apply(*on_hand, *reserved).map_err(|_| ());
            assert_eq!(&got, want, "{m:?} on ({on_hand}, {reserved})");
        }
    }

    #[test]
    fn reconcile_reports_each_disagreement() {
        let t = TenantId::new();
        let w = WarehouseId::new();
        let a: Sku = "A".parse().unwrap();
        let b: Sku = "B".parse().unwrap();
        let c: Sku = "C".parse().unwrap();
        let levels = vec![((t, w, a.clone()), (5, 1)), ((t, w, b.clone()), (3, 0))];
        let sums = vec![
            ((t, w, a), (5, 1)),
            ((t, w, b), (2, 0)),
            ((t, w, c), (1, 0)),
        ];
        let m = reconcile(levels, sums);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].level, (3, 0));
        assert_eq!(m[1].ledger, (1, 0));
    }
}
