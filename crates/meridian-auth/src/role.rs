//! Roles, permissions and the matrix between them.
//!
//! Every route names the one [`Permission`] it needs; [`permits`] says whether a role has
//! it. API keys additionally carry [`Scopes`]: a key's effective rights are its role's
//! permissions intersected with its scopes, so a scope can narrow a key but never widen it.
//! docs/auth.md renders the same matrix as a table; a test keeps the two in step.

use serde::{Deserialize, Serialize};

/// What a credential is allowed to be. Ordered from least to most powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the tenant's catalog, stock and orders.
    Viewer,
    /// A viewer who can also change catalog, stock and orders.
    Member,
    /// A member who can also manage users and API keys and replay dead letters.
    Admin,
    /// An admin who can also grant the owner role.
    Owner,
    /// The operator of the platform: every permission, including platform-wide ones.
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Member,
        Role::Admin,
        Role::Owner,
        Role::PlatformAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::PlatformAdmin => "platform_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Every permission of the role, as a scope set.
    pub fn permissions(self) -> Scopes {
        Scopes(
            Permission::ALL
                .iter()
                .filter(|p| permits(self, **p))
                .fold(0, |acc, p| acc | p.bit()),
        )
    }

    /// Whether `self` may give `target` to a user or key, or change a user who has it: only
    /// roles at or below one's own, and `platform_admin` only by a platform admin.
    pub fn can_assign(self, target: Role) -> bool {
        target <= self && (target != Role::PlatformAdmin || self == Role::PlatformAdmin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| {
            format!(
                "unknown role {s:?}; expected one of owner, admin, member, viewer, platform_admin"
            )
        })
    }
}

/// One thing a route does. Each permission is also an API key scope, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    CatalogRead,
    CatalogWrite,
    InventoryRead,
    InventoryWrite,
    OrdersRead,
    OrdersWrite,
    /// Shipments and their labels (the fulfillment service).
    ShipmentsRead,
    /// Tracking updates of shipments.
    ShipmentsWrite,
    DeadLettersRead,
    DeadLettersReplay,
    ApiKeysRead,
    ApiKeysManage,
    UsersRead,
    UsersManage,
    /// See the tenant's webhook endpoints, templates and notification log.
    NotificationsRead,
    /// Manage webhook endpoints (secrets, redelivery) and templates.
    NotificationsManage,
    /// Platform-wide: create tenants, see every tenant.
    TenantsManage,
    /// Platform-wide: rotate the JWT signing keys.
    SigningKeysRotate,
    /// Platform-wide: list plugins, their grants and the audit trail.
    PluginsRead,
    /// Platform-wide: register and deregister plugins, approve and deny their grants.
    PluginsManage,
}

impl Permission {
    pub const ALL: [Permission; 20] = [
        Permission::CatalogRead,
        Permission::CatalogWrite,
        Permission::InventoryRead,
        Permission::InventoryWrite,
        Permission::OrdersRead,
        Permission::OrdersWrite,
        Permission::ShipmentsRead,
        Permission::ShipmentsWrite,
        Permission::DeadLettersRead,
        Permission::DeadLettersReplay,
        Permission::ApiKeysRead,
        Permission::ApiKeysManage,
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::NotificationsRead,
        Permission::NotificationsManage,
        Permission::TenantsManage,
        Permission::SigningKeysRotate,
        Permission::PluginsRead,
        Permission::PluginsManage,
    ];

    /// The permission's scope name, as API keys and the JWT `scope` claim carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CatalogRead => "catalog:read",
            Permission::CatalogWrite => "catalog:write",
            Permission::InventoryRead => "inventory:read",
            Permission::InventoryWrite => "inventory:write",
            Permission::OrdersRead => "orders:read",
            Permission::OrdersWrite => "orders:write",
            Permission::ShipmentsRead => "shipments:read",
            Permission::ShipmentsWrite => "shipments:write",
            Permission::DeadLettersRead => "dead_letters:read",
            Permission::DeadLettersReplay => "dead_letters:replay",
            Permission::ApiKeysRead => "api_keys:read",
            Permission::ApiKeysManage => "api_keys:manage",
            Permission::UsersRead => "users:read",
            Permission::UsersManage => "users:manage",
            Permission::NotificationsRead => "notifications:read",
            Permission::NotificationsManage => "notifications:manage",
            Permission::TenantsManage => "platform:tenants",
            Permission::SigningKeysRotate => "platform:signing_keys",
            Permission::PluginsRead => "platform:plugins:read",
            Permission::PluginsManage => "platform:plugins:manage",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The permission matrix. `Owner` has what `Admin` has; what sets it apart is
/// [`Role::can_assign`] (only an owner makes owners).
pub fn permits(role: Role, permission: Permission) -> bool {
    use Permission::*;
    let least = match permission {
        CatalogRead | InventoryRead | OrdersRead | ShipmentsRead => Role::Viewer,
        CatalogWrite | InventoryWrite | OrdersWrite | ShipmentsWrite | DeadLettersRead
        | NotificationsRead => Role::Member,
        DeadLettersReplay | ApiKeysRead | ApiKeysManage | UsersRead | UsersManage
        | NotificationsManage => Role::Admin,
        TenantsManage | SigningKeysRotate | PluginsRead | PluginsManage => Role::PlatformAdmin,
    };
    role >= least
}

/// A set of permissions: an API key's scopes, or a principal's effective rights.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u32);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);
    /// Every permission: a key whose rights are bounded by its role alone.
    pub const ALL: Scopes = Scopes((1 << Permission::ALL.len()) - 1);

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    pub fn intersect(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Space-separated scope names (RFC 6749 §3.3), `*` for every scope.
    pub fn parse(s: &str) -> Result<Scopes, String> {
        Scopes::from_names(s.split_ascii_whitespace())
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut scopes = Scopes::NONE;
        for name in names {
            if name == "*" {
                scopes = Scopes::ALL;
                continue;
            }
            let p = Permission::parse(name).ok_or_else(|| format!("unknown scope {name:?}"))?;
            scopes.insert(p);
        }
        Ok(scopes)
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::as_str).collect()
    }

    /// The space-separated form used by the `scope` claim and the store.
    pub fn to_claim(self) -> String {
        self.names().join(" ")
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        Scopes::from_names(names.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    /// The matrix, written out: (permission, viewer, member, admin, owner, platform_admin).
    const MATRIX: &[(Permission, [bool; 5])] = &[
        (CatalogRead, [true, true, true, true, true]),
        (CatalogWrite, [false, true, true, true, true]),
        (InventoryRead, [true, true, true, true, true]),
        (InventoryWrite, [false, true, true, true, true]),
        (OrdersRead, [true, true, true, true, true]),
        (OrdersWrite, [false, true, true, true, true]),
        (ShipmentsRead, [true, true, true, true, true]),
        (ShipmentsWrite, [false, true, true, true, true]),
        (DeadLettersRead, [false, true, true, true, true]),
        (DeadLettersReplay, [false, false, true, true, true]),
        (ApiKeysRead, [false, false, true, true, true]),
        (ApiKeysManage, [false, false, true, true, true]),
        (UsersRead, [false, false, true, true, true]),
        (UsersManage, [false, false, true, true, true]),
        (NotificationsRead, [false, true, true, true, true]),
        (NotificationsManage, [false, false, true, true, true]),
        (TenantsManage, [false, false, false, false, true]),
        (SigningKeysRotate, [false, false, false, false, true]),
        (PluginsRead, [false, false, false, false, true]),
        (PluginsManage, [false, false, false, false, true]),
    ];

    #[test]
    fn the_matrix_is_as_written() {
        assert_eq!(MATRIX.len(), Permission::ALL.len());
        for (p, row) in MATRIX {
            for (role, expected) in Role::ALL.iter().zip(row) {
                assert_eq!(permits(*role, *p), *expected, "{role} {}", p.as_str());
            }
        }
    }

    /// docs/auth.md holds the matrix as a Markdown table; it must say what the code does.
    #[test]
    fn the_documented_matrix_matches_the_code() {
        let doc = include_str!("../../../docs/auth.md");
        let mut seen = 0;
        for line in doc.lines() {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let Some(p) = cells
                .first()
                .and_then(|c| Permission::parse(c.trim_matches('`')))
            else {
                continue;
            };
            assert_eq!(cells.len(), 6, "row {line:?} must have a cell per role");
            for (role, cell) in Role::ALL.iter().zip(&cells[1..]) {
                let documented = match *cell {
                    "yes" => true,
                    "no" | "" | "-" => false,
                    other => panic!("cell {other:?} in row {line:?} must be yes or no"),
                };
                assert_eq!(
                    documented,
                    permits(*role, p),
                    "docs/auth.md: {role} {}",
                    p.as_str()
                );
            }
            seen += 1;
        }
        assert_eq!(
            seen,
            Permission::ALL.len(),
            "docs/auth.md must list every permission"
        );
    }

    #[test]
    fn roles_and_scopes_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        let s = Scopes::parse("orders:read catalog:write").unwrap();
        assert!(s.contains(OrdersRead) && s.contains(CatalogWrite) && !s.contains(OrdersWrite));
        assert_eq!(Scopes::parse(&s.to_claim()).unwrap(), s);
        assert_eq!(Scopes::parse("*").unwrap(), Scopes::ALL);
        assert!(Scopes::parse("orders:delete").is_err());
        assert_eq!(Scopes::ALL.iter().count(), Permission::ALL.len());
    }

    #[test]
    fn scopes_narrow_a_role_but_never_widen_it() {
        let viewer_with_writes = Role::Viewer
            .permissions()
            .intersect(Scopes::parse("orders:read orders:write").unwrap());
        assert!(viewer_with_writes.contains(OrdersRead));
        assert!(!viewer_with_writes.contains(OrdersWrite));
    }

    #[test]
    fn roles_are_assigned_only_downwards() {
        assert!(Role::Owner.can_assign(Role::Owner));
        assert!(Role::Owner.can_assign(Role::Viewer));
        assert!(!Role::Admin.can_assign(Role::Owner));
        assert!(Role::Admin.can_assign(Role::Admin));
        assert!(!Role::Member.can_assign(Role::Admin));
        assert!(!Role::Owner.can_assign(Role::PlatformAdmin));
        assert!(Role::PlatformAdmin.can_assign(Role::PlatformAdmin));
    }
}
