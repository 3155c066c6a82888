//! The plugin registry port: registered plugins, their requested grants with an admin's
//! decision on each, and the audit trail of every registration, decision and
//! deregistration.
//!
//! The store keeps what it is given: the manifest is validated by `meridian-plugin` before
//! it gets here, and kept as its TOML text so the sidecar reads exactly what was reviewed.
//! A backend MUST write a decision and its audit entry in one transaction, so that no
//! decision is ever in force without its trail.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use meridian_core::{TenantId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;

/// Which way a grant goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantDirection {
    Publish,
    Subscribe,
}

/// Where a requested grant stands. A grant starts `Pending`, which allows nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Pending,
    Approved,
    Denied,
}

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginAction {
    Registered,
    Approved,
    Denied,
    Deregistered,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($s => Ok($ty::$variant),)+
                    _ => Err(format!(concat!("{:?} is not a ", stringify!($ty)), s)),
                }
            }
        }
    };
}

text_enum!(GrantDirection { Publish => "publish", Subscribe => "subscribe" });
text_enum!(GrantState { Pending => "pending", Approved => "approved", Denied => "denied" });
text_enum!(PluginAction {
    Registered => "registered",
    Approved => "approved",
    Denied => "denied",
    Deregistered => "deregistered",
});

/// A plugin to register: the fields of a validated manifest, and who registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPlugin {
    pub name: String,
    pub version: String,
    pub pool: String,
    pub tenant_id: Option<TenantId>,
    /// The manifest's TOML text.
    pub manifest: String,
    /// The requested grants; each starts pending. Duplicates are kept once.
    pub grants: Vec<(GrantDirection, String)>,
    /// Who registers it (a user, an API key, `cli:<os user>`).
    pub actor: String,
}

/// One requested grant and the decision on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginGrant {
    pub id: Uuid,
    pub direction: GrantDirection,
    /// A topic pattern relative to the deployment.
    pub pattern: String,
    pub state: GrantState,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
}

/// A registered plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub pool: String,
    pub tenant_id: Option<TenantId>,
    pub manifest: String,
    pub registered_at: Timestamp,
    pub registered_by: String,
    /// In request order: publish grants, then subscribe grants, as the manifest lists them.
    pub grants: Vec<PluginGrant>,
}

/// One audited event: who did what to which plugin (and grant), and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginAuditEntry {
    /// A UUIDv7: entries sort by id in the order they were written.
    pub id: Uuid,
    pub plugin_id: Uuid,
    pub plugin_name: String,
    pub grant_id: Option<Uuid>,
    pub action: PluginAction,
    /// What the action was about: the version registered, or the grant's direction and
    /// pattern.
    pub detail: String,
    pub actor: String,
    pub at: Timestamp,
}

/// The plugin registry. Plugin names are unique within a deployment.
#[async_trait]
pub trait PluginStore: Send + Sync + fmt::Debug {
    /// Registers a plugin with its grants pending and audits it. A name already registered
    /// is `AlreadyExists`.
    async fn register_plugin(&self, plugin: &NewPlugin) -> Result<PluginRecord>;
    /// Every registered plugin, by name.
    async fn list_plugins(&self) -> Result<Vec<PluginRecord>>;
    /// `NotFound` if no such plugin is registered.
    async fn get_plugin(&self, id: Uuid) -> Result<PluginRecord>;
    /// `NotFound` if no plugin has that name.
    async fn find_plugin(&self, name: &str) -> Result<PluginRecord>;
    /// Deregisters a plugin (its grants go with it; its audit trail stays) and audits it.
    async fn deregister_plugin(&self, id: Uuid, actor: &str) -> Result<()>;
    /// Approves or denies one grant of a plugin and audits the decision. A decision may be
    /// changed later (a revocation is a denial); each change is audited. `Pending` is a
    /// validation error: a decision cannot be taken back to none.
    async fn decide_grant(
        &self,
        plugin: Uuid,
        grant: Uuid,
        decision: GrantState,
        actor: &str,
    ) -> Result<PluginGrant>;
    /// The audit trail, oldest first: of one plugin (even deregistered), or of all.
    async fn plugin_audit(&self, plugin: Option<Uuid>) -> Result<Vec<PluginAuditEntry>>;
}

/// The refusal of a `Pending` decision, shared by the backends.
pub(crate) fn check_decision(decision: GrantState) -> Result<()> {
    if decision == GrantState::Pending {
        return Err(crate::StoreError::Validation(
            meridian_core::ValidationErrors::single(
                "decision",
                "a grant is approved or denied; it cannot be made pending again",
            ),
        ));
    }
    Ok(())
}

/// The audit action a decision is recorded as.
pub(crate) fn decision_action(decision: GrantState) -> PluginAction {
    match decision {
        GrantState::Denied => PluginAction::Denied,
        _ => PluginAction::Approved,
    }
}

/// The requested grants without duplicates, in order.
pub(crate) fn unique_grants(grants: &[(GrantDirection, String)]) -> Vec<(GrantDirection, &str)> {
    let mut out: Vec<(GrantDirection, &str)> = Vec::with_capacity(grants.len());
    for (d, p) in grants {
        if !out.iter().any(|(od, op)| od == d && op == p) {
            out.push((*d, p.as_str()));
        }
    }
    out
}
