//! Plugins as the platform sees them, without IO: the [`Manifest`] a plugin author writes
//! (TOML), the grant decisions an admin makes on its requested grants, and the [`Acl`]
//! that a plugin's sidecar enforces on every publish and subscription.
//!
//! The ACL keeps DESIGN.md promise 5 (default-deny ACLs):
//! - nothing is allowed unless a rule allows it; every topic lies inside the sidecar's
//!   deployment (`deployment.{id}.`);
//! - the allow rules are the pool type's template ([`PoolType::template`]) plus the grants
//!   an admin approved; deny rules (grants an admin denied, and the reserved topics) win
//!   over any allow;
//! - a plugin bound to a tenant receives only that tenant's events and publishes only for
//!   that tenant.
//!
//! Subscriptions are checked once, when they are set up ([`Acl::subscription`]); the
//! [`SubscriptionFilter`] that comes back decides each delivered message with a tenant
//! comparison and, only where a deny rule cuts into the subscribed pattern, one lookup in a
//! per-topic cache.
//!
//! The plugin author's guide, with the manifest format and the templates, is
//! `docs/plugins.md`.

mod acl;
mod manifest;
mod schema;

pub use acl::{
    Acl, AclDenied, AclError, DenyReason, Direction, GrantDecision, GrantDecisions, GrantStatus,
    SubscriptionFilter,
};
pub use manifest::{Manifest, ManifestError, PluginName, PoolType, Requested, Run};
pub use schema::{ConfigSchema, SchemaError};
