use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id_type!(
    /// The tenant every row and request is scoped by. Handlers receive it from the
    /// authentication extractor, never from the request body.
    TenantId
);
id_type!(ProductId);
id_type!(WarehouseId);
id_type!(OrderId);
id_type!(ApiKeyId);
id_type!(
    /// A person who logs in to a tenant (the auth service's users).
    UserId
);
id_type!(EventId);
id_type!(
    /// One parcel of an order: the units one warehouse ships (the fulfillment service).
    ShipmentId
);
id_type!(LedgerEntryId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_time_ordered() {
        let a = OrderId::new();
        let b = OrderId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn ids_round_trip_through_strings() {
        let a = TenantId::new();
        assert_eq!(a.to_string().parse::<TenantId>().unwrap(), a);
        assert!("not-a-uuid".parse::<TenantId>().is_err());
    }
}
