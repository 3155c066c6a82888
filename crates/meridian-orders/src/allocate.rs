use meridian_inventory::StockLevel;
use serde::{Deserialize, Serialize};

/// How an order line is spread over warehouses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStrategy {
    /// The whole line from the first warehouse, by ascending priority then code, that has
    /// enough available.
    #[default]
    Priority,
    /// The whole line from the warehouse with the most available.
    MostStock,
    /// As much as possible from each warehouse in priority order until the line is covered.
    Split,
}

impl AllocationStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocationStrategy::Priority => "priority",
            AllocationStrategy::MostStock => "most_stock",
            AllocationStrategy::Split => "split",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "priority" => AllocationStrategy::Priority,
            "most_stock" => AllocationStrategy::MostStock,
            "split" => AllocationStrategy::Split,
            _ => return None,
        })
    }
}

/// Allocates `qty` units over `candidates` (the stock levels of one SKU).
///
/// Returns `(index into candidates, units)` pairs, or, when the line cannot be covered, the
/// total available and the most available in any one warehouse.
pub fn allocate(
    strategy: AllocationStrategy,
    qty: i64,
    candidates: &[StockLevel],
) -> Result<Vec<(usize, i64)>, (i64, i64)> {
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].available() > 0)
        .collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        (a.priority, &a.warehouse_code).cmp(&(b.priority, &b.warehouse_code))
    });
    let total: i64 = order.iter().map(|&i| candidates[i].available()).sum();
    let max_single = order
        .iter()
        .map(|&i| candidates[i].available())
        .max()
        .unwrap_or(0);
    let short = Err((total, max_single));
    match strategy {
        AllocationStrategy::Priority => order
            .into_iter()
            .find(|&i| candidates[i].available() >= qty)
            .map(|i| vec![(i, qty)])
            .ok_or((total, max_single)),
        AllocationStrategy::MostStock => {
            // `max_by_key` returns the last maximum; iterate in reverse so that ties go to
            // the warehouse first in priority order.
            match order
                .into_iter()
                .rev()
                .max_by_key(|&i| candidates[i].available())
            {
                Some(i) if candidates[i].available() >= qty => Ok(vec![(i, qty)]),
                _ => short,
            }
        }
        AllocationStrategy::Split => {
            if total < qty {
                return short;
            }
            let mut left = qty;
            let mut out = Vec::new();
            for i in order {
                if left == 0 {
                    break;
                }
                let take = left.min(candidates[i].available());
                out.push((i, take));
                left -= take;
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_core::WarehouseId;

    use super::*;

    fn level(code: &str, priority: i32, on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel {
            warehouse_id: WarehouseId::new(),
            warehouse_code: code.parse().unwrap(),
            priority,
            sku: "SKU".parse().unwrap(),
            on_hand,
            reserved,
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases reads best inline
    fn strategies_table() {
        // Listed out of priority order on purpose.
        let stock = vec![
            level("C", 3, 50, 0),
            level("A", 1, 5, 0),
            level("B", 2, 12, 2),
        ];
        use AllocationStrategy::*;
        let cases: &[(
            AllocationStrategy,
            i64,
            Result<Vec<(usize, i64)>, (i64, i64)>,
        )] = &[
            (Priority, 5, Ok(vec![(1, 5)])),
            (Priority, 6, Ok(vec![(2, 6)])),
            (Priority, 11, Ok(vec![(0, 11)])),
            (Priority, 51, Err((65, 50))),
            (MostStock, 1, Ok(vec![(0, 1)])),
            (MostStock, 50, Ok(vec![(0, 50)])),
            (MostStock, 51, Err((65, 50))),
            (Split, 14, Ok(vec![(1, 5), (2, 9)])),
            (Split, 65, Ok(vec![(1, 5), (2, 10), (0, 50)])),
            (Split, 66, Err((65, 50))),
        ];
        for (strategy, qty, want) in cases {
            assert_eq!(
                &allocate(*strategy, *qty, &stock),
                want,
                "{strategy:?} {qty}"
            );
        }
    }

    #[test]
    fn most_stock_ties_go_to_priority_order() {
        let stock = vec![level("B", 2, 10, 0), level("A", 1, 10, 0)];
        assert_eq!(
            allocate(AllocationStrategy::MostStock, 3, &stock),
            Ok(vec![(1, 3)])
        );
    }

    #[test]
    fn empty_and_fully_reserved_warehouses_are_skipped() {
        let stock = vec![
            level("A", 1, 4, 4),
            level("B", 2, 0, 0),
            level("C", 3, 2, 0),
        ];
        assert_eq!(
            allocate(AllocationStrategy::Split, 2, &stock),
            Ok(vec![(2, 2)])
        );
        assert_eq!(
            allocate(AllocationStrategy::Priority, 3, &stock),
            Err((2, 2))
        );
        assert_eq!(allocate(AllocationStrategy::Split, 1, &[]), Err((0, 0)));
    }
}
