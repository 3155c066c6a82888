//! Which service owns a path, which services this process runs, and where the others are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::Uri;

/// A deployable part of the API. `meridian serve --services ...` picks some; all of them
/// together is the all-in-one mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Authentication, per-tenant rate limits and routing in front of the others.
    Gateway,
    Auth,
    Catalog,
    Inventory,
    Orders,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Gateway,
        Service::Auth,
        Service::Catalog,
        Service::Inventory,
        Service::Orders,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Auth => "auth",
            Service::Catalog => "catalog",
            Service::Inventory => "inventory",
            Service::Orders => "orders",
        }
    }

    pub fn parse(s: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The service that serves `path`; `None` for paths that belong to every process (the
    /// operational endpoints) or to none.
    pub fn of_path(path: &str) -> Option<Service> {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v1/products") {
            Some(Service::Catalog)
        } else if under("/v1/warehouses") || under("/v1/inventory") {
            Some(Service::Inventory)
        } else if under("/v1/orders")
            || under("/v1/dead-letters")
            || under("/v1/shipments")
            || under("/v1/carrier-webhooks")
            || under("/v1/labels")
        {
            Some(Service::Orders)
        } else if under("/v1/auth")
            || under("/v1/api-keys")
            || under("/v1/tenants")
            || under("/v1/users")
            || under("/.well-known")
            || under("/oauth")
        {
            Some(Service::Auth)
        } else {
            None
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "invalid MERIDIAN_SERVICES: unknown service {0:?}; expected all or a list of gateway, auth, catalog, inventory, orders"
    )]
    UnknownService(String),
    #[error("invalid MERIDIAN_SERVICES: the list is empty")]
    NoServices,
    #[error("invalid MERIDIAN_GATEWAY_UPSTREAMS entry {0:?}: expected service=http://host:port")]
    BadUpstream(String),
    #[error("invalid MERIDIAN_GATEWAY_UPSTREAMS: {0} is listed twice")]
    DuplicateUpstream(Service),
    #[error(
        "invalid MERIDIAN_GATEWAY_UPSTREAMS: {0} is served by this process and cannot also have an upstream"
    )]
    LocalAndUpstream(Service),
    #[error("invalid MERIDIAN_GATEWAY_UPSTREAMS: the gateway is not an upstream service")]
    GatewayUpstream,
    #[error(
        "MERIDIAN_GATEWAY_UPSTREAMS is missing {0}: a gateway must serve each service itself or know its upstream"
    )]
    MissingUpstream(Service),
    #[error("MERIDIAN_GATEWAY_UPSTREAMS is set but this process does not run the gateway service")]
    UpstreamsWithoutGateway,
}

/// The services this process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Services(BTreeSet<Service>);

impl Services {
    pub fn all() -> Services {
        Services(Service::ALL.into_iter().collect())
    }

    /// `all`, or a comma-separated list such as `gateway,catalog`.
    pub fn parse(s: &str) -> Result<Services, RoutingError> {
        let s = s.trim();
        if s == "all" {
            return Ok(Self::all());
        }
        let mut set = BTreeSet::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            set.insert(
                Service::parse(name).ok_or_else(|| RoutingError::UnknownService(name.into()))?,
            );
        }
        if set.is_empty() {
            return Err(RoutingError::NoServices);
        }
        Ok(Services(set))
    }

    pub fn contains(&self, s: Service) -> bool {
        self.0.contains(&s)
    }

    pub fn is_all(&self) -> bool {
        self.0.len() == Service::ALL.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Service> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

/// The upstream of each service a gateway forwards to.
pub type Upstreams = BTreeMap<Service, Uri>;

/// Parses `service=http://host:port,...` and checks it against the local services: a
/// gateway must know an upstream for every service it does not run itself.
pub fn parse_upstreams(s: &str, local: &Services) -> Result<Upstreams, RoutingError> {
    let mut map = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || RoutingError::BadUpstream(entry.to_owned());
        let (name, url) = entry.split_once('=').ok_or_else(bad)?;
        let service = Service::parse(name.trim()).ok_or_else(bad)?;
        let uri: Uri = url.trim().parse().map_err(|_| bad())?;
        let path_ok = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        if uri.scheme_str() != Some("http") || uri.authority().is_none() || !path_ok {
            return Err(bad());
        }
        if service == Service::Gateway {
            return Err(RoutingError::GatewayUpstream);
        }
        if local.contains(service) {
            return Err(RoutingError::LocalAndUpstream(service));
        }
        if map.insert(service, uri).is_some() {
            return Err(RoutingError::DuplicateUpstream(service));
        }
    }
    if local.contains(Service::Gateway) {
        for s in Service::ALL {
            if s != Service::Gateway && !local.contains(s) && !map.contains_key(&s) {
                return Err(RoutingError::MissingUpstream(s));
            }
        }
    } else if !map.is_empty() {
        return Err(RoutingError::UpstreamsWithoutGateway);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_services() {
        assert_eq!(Service::of_path("/v1/products/A-1"), Some(Service::Catalog));
        assert_eq!(Service::of_path("/v1/productsX"), None);
        assert_eq!(
            Service::of_path("/v1/inventory/W/S"),
            Some(Service::Inventory)
        );
        assert_eq!(Service::of_path("/v1/orders"), Some(Service::Orders));
        assert_eq!(Service::of_path("/v1/auth/token"), Some(Service::Auth));
        assert_eq!(Service::of_path("/readyz"), None);
    }

    #[test]
    fn services_and_upstreams_are_validated() {
        let gw = Services::parse("gateway, auth").unwrap();
        assert!(gw.contains(Service::Auth) && !gw.is_all());
        assert!(Services::parse("all").unwrap().is_all());
        assert!(Services::parse("gateway,billing").is_err());
        assert!(Services::parse(" , ").is_err());

        let ok = parse_upstreams(
            "catalog=http://127.0.0.1:9001,inventory=http://127.0.0.1:9001/,orders=http://h:2",
            &gw,
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        for (bad, why) in [
            ("catalog=http://a:1,inventory=http://a:1", "missing orders"),
            (
                "catalog=https://a:1,inventory=http://a:1,orders=http://a:1",
                "https",
            ),
            (
                "catalog=http://a:1/x,inventory=http://a:1,orders=http://a:1",
                "path",
            ),
            (
                "auth=http://a:1,catalog=http://a:1,inventory=http://a:1,orders=http://a:1",
                "local",
            ),
            (
                "catalog=http://a:1,catalog=http://b:1,inventory=http://a:1,orders=http://a:1",
                "twice",
            ),
            ("nope", "shape"),
        ] {
            assert!(parse_upstreams(bad, &gw).is_err(), "{why}");
        }
        let orders_only = Services::parse("orders").unwrap();
        assert!(parse_upstreams("", &orders_only).unwrap().is_empty());
        assert_eq!(
            parse_upstreams("catalog=http://a:1", &orders_only),
            Err(RoutingError::UpstreamsWithoutGateway)
        );
    }
}
