//! The plugin registry on PostgreSQL: low-volume statements on the pool, each write in one
//! transaction with its audit entry.

use meridian_core::{TenantId, Timestamp};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{PgStore, error, rows};
use crate::plugins::{check_decision, decision_action, unique_grants};
use crate::{
    GrantState, NewPlugin, PluginAction, PluginAuditEntry, PluginGrant, PluginRecord, Result,
    StoreError,
};

const PLUGIN_COLUMNS: &str =
    "id, name, version, pool, tenant_id, manifest, registered_at, registered_by";
const GRANT_COLUMNS: &str = "id, direction, pattern, state, decided_at, decided_by";
const AUDIT_COLUMNS: &str = "id, plugin_id, plugin_name, grant_id, action, detail, actor, at";

fn plugin(row: &Row) -> Result<PluginRecord> {
    let tenant: Option<Uuid> = rows::get(row, "tenant_id")?;
    Ok(PluginRecord {
        id: rows::get(row, "id")?,
        name: rows::get(row, "name")?,
        version: rows::get(row, "version")?,
        pool: rows::get(row, "pool")?,
        tenant_id: tenant.map(TenantId::from_uuid),
        manifest: rows::get(row, "manifest")?,
        registered_at: rows::get(row, "registered_at")?,
        registered_by: rows::get(row, "registered_by")?,
        grants: Vec::new(),
    })
}

fn grant(row: &Row) -> Result<PluginGrant> {
    Ok(PluginGrant {
        id: rows::get(row, "id")?,
        direction: rows::parse(row, "direction")?,
        pattern: rows::get(row, "pattern")?,
        state: rows::parse(row, "state")?,
        decided_at: rows::get(row, "decided_at")?,
        decided_by: rows::get(row, "decided_by")?,
    })
}

fn audit(row: &Row) -> Result<PluginAuditEntry> {
    Ok(PluginAuditEntry {
        id: rows::get(row, "id")?,
        plugin_id: rows::get(row, "plugin_id")?,
        plugin_name: rows::get(row, "plugin_name")?,
        grant_id: rows::get(row, "grant_id")?,
        action: rows::parse(row, "action")?,
        detail: rows::get(row, "detail")?,
        actor: rows::get(row, "actor")?,
        at: rows::get(row, "at")?,
    })
}

#[allow(clippy::too_many_arguments)]
async fn write_audit(
    c: &impl GenericClient,
    plugin_id: Uuid,
    plugin_name: &str,
    grant_id: Option<Uuid>,
    action: PluginAction,
    detail: &str,
    actor: &str,
    at: &Timestamp,
) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO plugin_audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &Uuid::now_v7(),
            &plugin_id,
            &plugin_name,
            &grant_id,
            &action.as_str(),
            &detail,
            &actor,
            at,
        ],
    )
    .await
    .map_err(error::db)?;
    Ok(())
}

async fn with_grants(c: &impl GenericClient, mut p: PluginRecord) -> Result<PluginRecord> {
    p.grants = c
        .query(
            &format!("SELECT {GRANT_COLUMNS} FROM plugin_grants WHERE plugin_id = $1 ORDER BY id"),
            &[&p.id],
        )
        .await
        .map_err(error::db)?
        .iter()
        .map(grant)
        .collect::<Result<_>>()?;
    Ok(p)
}

async fn get_with(c: &impl GenericClient, id: Uuid, lock: bool) -> Result<PluginRecord> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {PLUGIN_COLUMNS} FROM plugins WHERE id = $1{}",
                if lock { " FOR UPDATE" } else { "" }
            ),
            &[&id],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("plugin", id))?;
    with_grants(c, plugin(&row)?).await
}

pub(super) async fn register(store: &PgStore, new: &NewPlugin) -> Result<PluginRecord> {
    let id = Uuid::now_v7();
    let at = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO plugins ({PLUGIN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &id,
                &new.name,
                &new.version,
                &new.pool,
                &new.tenant_id.map(|t| *t.as_uuid()),
                &new.manifest,
                &at,
                &new.actor,
            ],
        )
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if error::is_unique_violation(&e) => {
            return Err(StoreError::already_exists("plugin", &new.name));
        }
        Err(e) => return Err(error::db(e)),
    }
    for (direction, pattern) in unique_grants(&new.grants) {
        tx.execute(
            "INSERT INTO plugin_grants (id, plugin_id, direction, pattern, state) \
             VALUES ($1, $2, $3, $4, 'pending')",
            &[&Uuid::now_v7(), &id, &direction.as_str(), &pattern],
        )
        .await
        .map_err(error::db)?;
    }
    write_audit(
        &*tx,
        id,
        &new.name,
        None,
        PluginAction::Registered,
        &format!("version {}", new.version),
        &new.actor,
        &at,
    )
    .await?;
    let p = get_with(&*tx, id, false).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(p)
}

pub(super) async fn list(store: &PgStore) -> Result<Vec<PluginRecord>> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!("SELECT {PLUGIN_COLUMNS} FROM plugins ORDER BY name"),
            &[],
        )
        .await
        .map_err(error::db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(with_grants(&**client, plugin(row)?).await?);
    }
    Ok(out)
}

pub(super) async fn get(store: &PgStore, id: Uuid) -> Result<PluginRecord> {
    let client = store.client().await?;
    get_with(&**client, id, false).await
}

pub(super) async fn find(store: &PgStore, name: &str) -> Result<PluginRecord> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE name = $1"),
            &[&name],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("plugin", name))?;
    with_grants(&**client, plugin(&row)?).await
}

pub(super) async fn deregister(store: &PgStore, id: Uuid, actor: &str) -> Result<()> {
    let at = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let p = get_with(&*tx, id, true).await?;
    tx.execute("DELETE FROM plugins WHERE id = $1", &[&id])
        .await
        .map_err(error::db)?;
    write_audit(
        &*tx,
        id,
        &p.name,
        None,
        PluginAction::Deregistered,
        &format!("version {}", p.version),
        actor,
        &at,
    )
    .await?;
    tx.commit().await.map_err(error::db)
}

pub(super) async fn decide(
    store: &PgStore,
    plugin_id: Uuid,
    grant_id: Uuid,
    decision: GrantState,
    actor: &str,
) -> Result<PluginGrant> {
    check_decision(decision)?;
    let at = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let p = get_with(&*tx, plugin_id, true).await?;
    let g = p
        .grants
        .iter()
        .find(|g| g.id == grant_id)
        .ok_or_else(|| StoreError::not_found("grant", grant_id))?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE plugin_grants SET state = $1, decided_at = $2, decided_by = $3 \
                 WHERE id = $4 RETURNING {GRANT_COLUMNS}"
            ),
            &[&decision.as_str(), &at, &actor, &grant_id],
        )
        .await
        .map_err(error::db)?;
    write_audit(
        &*tx,
        plugin_id,
        &p.name,
        Some(grant_id),
        decision_action(decision),
        &format!("{} {}", g.direction, g.pattern),
        actor,
        &at,
    )
    .await?;
    let decided = grant(&row)?;
    tx.commit().await.map_err(error::db)?;
    Ok(decided)
}

pub(super) async fn audit_trail(
    store: &PgStore,
    plugin: Option<Uuid>,
) -> Result<Vec<PluginAuditEntry>> {
    let client = store.client().await?;
    client
        .query(
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM plugin_audit \
                 WHERE ($1::uuid IS NULL OR plugin_id = $1) ORDER BY id"
            ),
            &[&plugin],
        )
        .await
        .map_err(error::db)?
        .iter()
        .map(audit)
        .collect()
}

#[async_trait::async_trait]
impl crate::PluginStore for PgStore {
    async fn register_plugin(&self, plugin: &NewPlugin) -> Result<PluginRecord> {
        register(self, plugin).await
    }

    async fn list_plugins(&self) -> Result<Vec<PluginRecord>> {
        list(self).await
    }

    async fn get_plugin(&self, id: Uuid) -> Result<PluginRecord> {
        get(self, id).await
    }

    async fn find_plugin(&self, name: &str) -> Result<PluginRecord> {
        find(self, name).await
    }

    async fn deregister_plugin(&self, id: Uuid, actor: &str) -> Result<()> {
        deregister(self, id, actor).await
    }

    async fn decide_grant(
        &self,
        plugin: Uuid,
        grant: Uuid,
        decision: GrantState,
        actor: &str,
    ) -> Result<PluginGrant> {
        decide(self, plugin, grant, decision, actor).await
    }

    async fn plugin_audit(&self, plugin: Option<Uuid>) -> Result<Vec<PluginAuditEntry>> {
        audit_trail(self, plugin).await
    }
}
