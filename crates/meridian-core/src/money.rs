use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 4217 alphabetic code: three ASCII capital letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII capitals.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl FromStr for Currency {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err("must be a three-letter ISO 4217 code in capitals, such as USD")
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An amount of money in integer minor units (cents for USD). Never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

/// The largest price accepted for one unit: 10^12 minor units keeps every order total
/// (at most 10^6 units per line) far from `i64::MAX`.
pub const MAX_UNIT_AMOUNT: i64 = 1_000_000_000_000;

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// A unit price: zero or more, at most [`MAX_UNIT_AMOUNT`].
    pub fn unit_price(amount: i64, currency: Currency) -> Result<Self, &'static str> {
        if !(0..=MAX_UNIT_AMOUNT).contains(&amount) {
            return Err("must be between 0 and 1000000000000 minor units");
        }
        Ok(Self { amount, currency })
    }

    pub fn checked_mul(self, qty: i64) -> Option<Money> {
        self.amount
            .checked_mul(qty)
            .map(|amount| Money { amount, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_parsing() {
        assert_eq!("USD".parse::<Currency>().unwrap().as_str(), "USD");
        for bad in ["usd", "US", "USDD", "U$D", ""] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unit_price_bounds() {
        let usd: Currency = "USD".parse().unwrap();
        assert!(Money::unit_price(0, usd).is_ok());
        assert!(Money::unit_price(-1, usd).is_err());
        assert!(Money::unit_price(MAX_UNIT_AMOUNT + 1, usd).is_err());
    }
}
