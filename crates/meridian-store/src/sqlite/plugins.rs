//! The plugin registry on SQLite: writes (each with its audit entry) through the writer
//! thread, reads from the read pool.

use meridian_core::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::conn::immediate;
use super::error::is_unique_violation;
use super::rows::{parsed, time, ts};
use crate::plugins::{check_decision, decision_action, unique_grants};
use crate::{
    GrantState, NewPlugin, PluginAction, PluginAuditEntry, PluginGrant, PluginRecord, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

const PLUGIN_COLUMNS: &str =
    "id, name, version, pool, tenant_id, manifest, registered_at, registered_by";
const GRANT_COLUMNS: &str = "id, direction, pattern, state, decided_at, decided_by";
const AUDIT_COLUMNS: &str = "id, plugin_id, plugin_name, grant_id, action, detail, actor, at";

fn plugin(r: &Row<'_>) -> rusqlite::Result<PluginRecord> {
    let tenant: Option<String> = r.get(4)?;
    Ok(PluginRecord {
        id: parsed(r, 0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        pool: r.get(3)?,
        tenant_id: match tenant {
            Some(_) => Some(parsed(r, 4)?),
            None => None,
        },
        manifest: r.get(5)?,
        registered_at: time(r, 6)?,
        registered_by: r.get(7)?,
        grants: Vec::new(),
    })
}

fn grant(r: &Row<'_>) -> rusqlite::Result<PluginGrant> {
    let decided_at: Option<String> = r.get(4)?;
    Ok(PluginGrant {
        id: parsed(r, 0)?,
        direction: parsed(r, 1)?,
        pattern: r.get(2)?,
        state: parsed(r, 3)?,
        decided_at: match decided_at {
            Some(_) => Some(time(r, 4)?),
            None => None,
        },
        decided_by: r.get(5)?,
    })
}

fn audit(r: &Row<'_>) -> rusqlite::Result<PluginAuditEntry> {
    let grant_id: Option<String> = r.get(3)?;
    Ok(PluginAuditEntry {
        id: parsed(r, 0)?,
        plugin_id: parsed(r, 1)?,
        plugin_name: r.get(2)?,
        grant_id: match grant_id {
            Some(_) => Some(parsed(r, 3)?),
            None => None,
        },
        action: parsed(r, 4)?,
        detail: r.get(5)?,
        actor: r.get(6)?,
        at: time(r, 7)?,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_audit(
    conn: &Connection,
    plugin_id: Uuid,
    plugin_name: &str,
    grant_id: Option<Uuid>,
    action: PluginAction,
    detail: &str,
    actor: &str,
    at: &Timestamp,
) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO plugin_audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        Uuid::now_v7().to_string(),
        plugin_id.to_string(),
        plugin_name,
        grant_id.map(|g| g.to_string()),
        action.as_str(),
        detail,
        actor,
        ts(at),
    ])?;
    Ok(())
}

fn with_grants(conn: &Connection, mut p: PluginRecord) -> Result<PluginRecord> {
    p.grants = conn
        .prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS} FROM plugin_grants WHERE plugin_id = ?1 ORDER BY id"
        ))?
        .query_map(params![p.id.to_string()], grant)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(p)
}

pub(super) fn register(conn: &mut Connection, new: &NewPlugin) -> Result<PluginRecord> {
    let id = Uuid::now_v7();
    let at = meridian_core::now();
    immediate(conn, |tx| {
        let inserted = tx
            .prepare_cached(&format!(
                "INSERT INTO plugins ({PLUGIN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                id.to_string(),
                new.name,
                new.version,
                new.pool,
                new.tenant_id.map(|t| t.to_string()),
                new.manifest,
                ts(&at),
                new.actor,
            ]);
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::already_exists("plugin", &new.name));
            }
            r => r?,
        };
        for (direction, pattern) in unique_grants(&new.grants) {
            tx.prepare_cached(
                "INSERT INTO plugin_grants (id, plugin_id, direction, pattern, state) \
                 VALUES (?1, ?2, ?3, ?4, 'pending')",
            )?
            .execute(params![
                Uuid::now_v7().to_string(),
                id.to_string(),
                direction.as_str(),
                pattern
            ])?;
        }
        write_audit(
            tx,
            id,
            &new.name,
            None,
            PluginAction::Registered,
            &format!("version {}", new.version),
            &new.actor,
            &at,
        )?;
        get(tx, id)
    })
}

pub(super) fn list(conn: &Connection) -> Result<Vec<PluginRecord>> {
    let plugins: Vec<PluginRecord> = conn
        .prepare_cached(&format!(
            "SELECT {PLUGIN_COLUMNS} FROM plugins ORDER BY name"
        ))?
        .query_map([], plugin)?
        .collect::<rusqlite::Result<_>>()?;
    plugins.into_iter().map(|p| with_grants(conn, p)).collect()
}

pub(super) fn get(conn: &Connection, id: Uuid) -> Result<PluginRecord> {
    let p = conn
        .prepare_cached(&format!(
            "SELECT {PLUGIN_COLUMNS} FROM plugins WHERE id = ?1"
        ))?
        .query_row(params![id.to_string()], plugin)
        .optional()?
        .ok_or_else(|| StoreError::not_found("plugin", id))?;
    with_grants(conn, p)
}

pub(super) fn find(conn: &Connection, name: &str) -> Result<PluginRecord> {
    let p = conn
        .prepare_cached(&format!(
            "SELECT {PLUGIN_COLUMNS} FROM plugins WHERE name = ?1"
        ))?
        .query_row(params![name], plugin)
        .optional()?
        .ok_or_else(|| StoreError::not_found("plugin", name))?;
    with_grants(conn, p)
}

pub(super) fn deregister(conn: &mut Connection, id: Uuid, actor: &str) -> Result<()> {
    let at = meridian_core::now();
    immediate(conn, |tx| {
        let p = get(tx, id)?;
        tx.prepare_cached("DELETE FROM plugins WHERE id = ?1")?
            .execute(params![id.to_string()])?;
        write_audit(
            tx,
            id,
            &p.name,
            None,
            PluginAction::Deregistered,
            &format!("version {}", p.version),
            actor,
            &at,
        )
    })
}

pub(super) fn decide(
    conn: &mut Connection,
    plugin_id: Uuid,
    grant_id: Uuid,
    decision: GrantState,
    actor: &str,
) -> Result<PluginGrant> {
    check_decision(decision)?;
    let at = meridian_core::now();
    immediate(conn, |tx| {
        let p = get(tx, plugin_id)?;
        let g = p
            .grants
            .iter()
            .find(|g| g.id == grant_id)
            .ok_or_else(|| StoreError::not_found("grant", grant_id))?;
        tx.prepare_cached(
            "UPDATE plugin_grants SET state = ?1, decided_at = ?2, decided_by = ?3 WHERE id = ?4",
        )?
        .execute(params![
            decision.as_str(),
            ts(&at),
            actor,
            grant_id.to_string()
        ])?;
        write_audit(
            tx,
            plugin_id,
            &p.name,
            Some(grant_id),
            decision_action(decision),
            &format!("{} {}", g.direction, g.pattern),
            actor,
            &at,
        )?;
        Ok(tx
            .prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM plugin_grants WHERE id = ?1"
            ))?
            .query_row(params![grant_id.to_string()], grant)?)
    })
}

pub(super) fn audit_trail(
    conn: &Connection,
    plugin: Option<Uuid>,
) -> Result<Vec<PluginAuditEntry>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM plugin_audit \
             WHERE (?1 IS NULL OR plugin_id = ?1) ORDER BY id"
        ))?
        .query_map(params![plugin.map(|p| p.to_string())], audit)?
        .collect::<rusqlite::Result<_>>()?)
}

#[async_trait::async_trait]
impl crate::PluginStore for super::SqliteStore {
    async fn register_plugin(&self, plugin: &NewPlugin) -> Result<PluginRecord> {
        let plugin = plugin.clone();
        self.writer.write(move |c| register(c, &plugin)).await
    }

    async fn list_plugins(&self) -> Result<Vec<PluginRecord>> {
        self.read_consistent(list).await
    }

    async fn get_plugin(&self, id: Uuid) -> Result<PluginRecord> {
        self.read_consistent(move |c| get(c, id)).await
    }

    async fn find_plugin(&self, name: &str) -> Result<PluginRecord> {
        let name = name.to_owned();
        self.read_consistent(move |c| find(c, &name)).await
    }

    async fn deregister_plugin(&self, id: Uuid, actor: &str) -> Result<()> {
        let actor = actor.to_owned();
        self.writer.write(move |c| deregister(c, id, &actor)).await
    }

    async fn decide_grant(
        &self,
        plugin: Uuid,
        grant: Uuid,
        decision: GrantState,
        actor: &str,
    ) -> Result<PluginGrant> {
        let actor = actor.to_owned();
        self.writer
            .write(move |c| decide(c, plugin, grant, decision, &actor))
            .await
    }

    async fn plugin_audit(&self, plugin: Option<Uuid>) -> Result<Vec<PluginAuditEntry>> {
        self.read(move |c| audit_trail(c, plugin)).await
    }
}
