use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = 64;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.is_empty() || s.len() > Self::MAX_LEN {
                    return Err(format!("{} must be 1 to {} characters", $what, Self::MAX_LEN));
                }
                if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                    return Err(format!(
                        "{} may contain only letters, digits, '-', '_' and '.'",
                        $what
                    ));
                }
                Ok(Self(s.to_owned()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

code_type!(
    /// A stock-keeping unit, unique per tenant: 1 to 64 of `[A-Za-z0-9._-]`.
    Sku,
    "sku"
);
code_type!(
    /// A warehouse's short code, unique per tenant: 1 to 64 of `[A-Za-z0-9._-]`.
    WarehouseCode,
    "warehouse code"
);

/// The most units one order line may ask for.
pub const MAX_ORDER_QUANTITY: i64 = 1_000_000;

/// A positive number of units on an order line: 1 to [`MAX_ORDER_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(i64);

impl Quantity {
    pub fn new(n: i64) -> Result<Self, String> {
        if (1..=MAX_ORDER_QUANTITY).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!(
                "quantity must be between 1 and {MAX_ORDER_QUANTITY}, got {n}"
            ))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Quantity::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_grammar() {
        for ok in ["A", "SKU-1", "sku_2.b", &"x".repeat(64)] {
            assert!(ok.parse::<Sku>().is_ok(), "{ok}");
        }
        for bad in ["", "has space", "ünï", "a/b", &"x".repeat(65)] {
            assert!(bad.parse::<Sku>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-3).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(MAX_ORDER_QUANTITY).is_ok());
        assert!(Quantity::new(MAX_ORDER_QUANTITY + 1).is_err());
    }
}
