//! What has been published: the last count sent per warehouse and SKU, kept in the
//! sidecar's durable state so that a restarted plugin publishes only what changed.
//!
//! State layout: `warehouses` holds the list of warehouse codes seen; `published/{code}`
//! holds `{sku: on_hand}` for that warehouse (one key per warehouse keeps each value well
//! under the sidecar's 1 MiB limit).

use std::collections::{BTreeMap, BTreeSet};

use meridian_plugin_sdk::Sidecar;
use serde_json::json;

use crate::feed::Row;

/// The topic snapshots go to (relative to the deployment).
pub const TOPIC: &str = "platform.data.stock.snapshot";

const WAREHOUSES_KEY: &str = "warehouses";

fn warehouse_key(code: &str) -> String {
    format!("published/{code}")
}

/// Last published count per warehouse code, then SKU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published(pub BTreeMap<String, BTreeMap<String, i64>>);

impl Published {
    /// The rows whose count differs from the last one published (or was never published).
    pub fn changed<'a>(&self, rows: &'a [Row]) -> Vec<&'a Row> {
        rows.iter()
            .filter(|r| {
                self.0
                    .get(r.warehouse.as_str())
                    .and_then(|skus| skus.get(r.sku.as_str()))
                    != Some(&r.on_hand)
            })
            .collect()
    }

    /// Reads what was published from the sidecar's state.
    pub async fn load(sidecar: &Sidecar) -> meridian_plugin_sdk::Result<Published> {
        let codes: Vec<String> = sidecar.state_get(WAREHOUSES_KEY).await?.unwrap_or_default();
        let mut out = BTreeMap::new();
        for code in codes {
            let skus: BTreeMap<String, i64> = sidecar
                .state_get(&warehouse_key(&code))
                .await?
                .unwrap_or_default();
            out.insert(code, skus);
        }
        Ok(Published(out))
    }

    /// Stores one warehouse's counts (and the warehouse list, if it is new there).
    async fn save(
        &self,
        sidecar: &Sidecar,
        code: &str,
        new: bool,
    ) -> meridian_plugin_sdk::Result<()> {
        if let Some(skus) = self.0.get(code) {
            sidecar.state_put(&warehouse_key(code), skus).await?;
        }
        if new {
            let codes: Vec<&String> = self.0.keys().collect();
            sidecar.state_put(WAREHOUSES_KEY, &codes).await?;
        }
        Ok(())
    }
}

/// What one publish round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub published: usize,
    pub unchanged: usize,
}

/// Publishes one snapshot per changed row for `tenant`, warehouse by warehouse, saving
/// each warehouse's counts once its rows are out. On an error the counts of the rows
/// already published are saved (best effort) before it is returned, so the next round
/// resumes with the rest.
pub async fn publish_changes(
    sidecar: &Sidecar,
    tenant: &str,
    published: &mut Published,
    rows: &[Row],
) -> Result<Round, meridian_plugin_sdk::Error> {
    let changed = published.changed(rows);
    let mut by_warehouse: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &changed {
        by_warehouse
            .entry(r.warehouse.as_str())
            .or_default()
            .push(r);
    }
    let before: BTreeSet<String> = published.0.keys().cloned().collect();
    let mut round = Round {
        published: 0,
        unchanged: rows.len() - changed.len(),
    };
    for (code, rows) in by_warehouse {
        let new = !before.contains(code);
        for r in rows {
            let data = json!({
                "warehouse": r.warehouse,
                "sku": r.sku,
                "on_hand": r.on_hand,
                "counted_at": r.counted_at,
            });
            let sent = sidecar
                .publish(TOPIC)
                .tenant(tenant)
                .subject(r.sku.as_str())
                .send(&data)
                .await;
            if let Err(e) = sent {
                if let Err(save) = published.save(sidecar, code, new).await {
                    tracing::warn!(error = %save, warehouse = code, "cannot save what was published");
                }
                return Err(e);
            }
            published
                .0
                .entry(code.to_owned())
                .or_default()
                .insert(r.sku.to_string(), r.on_hand);
            round.published += 1;
        }
        published.save(sidecar, code, new).await?;
    }
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse;

    #[test]
    fn only_new_and_changed_counts_are_published() {
        let rows = parse(
            "warehouse,sku,on_hand\nWH1,A,1\nWH1,B,2\nWH2,A,3\n",
            chrono::Utc::now(),
        )
        .unwrap()
        .rows;
        let mut p = Published::default();
        assert_eq!(p.changed(&rows).len(), 3);
        p.0.entry("WH1".into()).or_default().insert("A".into(), 1);
        p.0.entry("WH1".into()).or_default().insert("B".into(), 5);
        let changed: Vec<(&str, &str)> = p
            .changed(&rows)
            .iter()
            .map(|r| (r.warehouse.as_str(), r.sku.as_str()))
            .collect();
        assert_eq!(changed, vec![("WH1", "B"), ("WH2", "A")]);
    }
}
