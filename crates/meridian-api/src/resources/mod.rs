//! One module per resource: its DTOs, their conversions to and from domain types, and its
//! handlers. Handlers take [`TenantContext`](crate::auth::TenantContext) first and return
//! [`Problem`](crate::problem::Problem) on every error.

pub mod api_keys;
pub mod auth;
pub mod dead_letters;
pub mod inventory;
pub mod notifications;
pub mod ops;
pub mod orders;
pub mod plugins;
pub mod products;
pub mod shipments;
pub mod templates;
pub mod users;
pub mod warehouses;
pub mod webhooks;

use meridian_core::{Currency, Money, ValidationErrors};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// An amount of money in integer minor units (cents for USD).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct MoneyDto {
    #[schema(example = 1999)]
    pub amount: i64,
    /// ISO 4217 code in capitals.
    #[schema(example = "USD")]
    pub currency: String,
}

impl From<Money> for MoneyDto {
    fn from(m: Money) -> Self {
        Self {
            amount: m.amount,
            currency: m.currency.to_string(),
        }
    }
}

/// A unit price as sent by a client.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyInput {
    /// Integer minor units, 0 to 10^12.
    #[schema(example = 1999)]
    pub amount: i64,
    /// ISO 4217 code in capitals, such as `USD`.
    #[schema(example = "USD")]
    pub currency: String,
}

impl MoneyInput {
    /// A unit price, or errors under `{field}.amount` and `{field}.currency`.
    pub fn to_unit_price(&self, field: &str, errors: &mut ValidationErrors) -> Option<Money> {
        let currency = errors.check(
            &format!("{field}.currency"),
            self.currency.parse::<Currency>(),
        );
        // Check the amount even when the currency is bad, so both are reported at once;
        // `XXX` is ISO 4217's "no currency".
        let probe = currency.or_else(|| "XXX".parse().ok())?;
        let money = errors.check(
            &format!("{field}.amount"),
            Money::unit_price(self.amount, probe),
        );
        currency.and(money)
    }
}

/// Deserializes a field that may be absent (outer `None`), `null` (`Some(None)`) or a value,
/// for PATCH bodies where `null` means "clear".
pub fn nullable<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Checks a string that is not blank and at most `max` characters.
pub fn check_label(field: &str, s: &str, max: usize, errors: &mut ValidationErrors) {
    if s.trim().is_empty() {
        errors.push(field, "must not be blank");
    } else {
        let n = s.chars().count();
        if n > max {
            errors.push(field, format!("must be at most {max} characters, got {n}"));
        }
    }
}

/// The paging of a listing that takes nothing but `limit` and `cursor`; 422 for any other
/// parameter or a bad value.
pub fn paging_only(
    query: &crate::extract::QueryParams,
) -> Result<meridian_store::PageRequest, crate::problem::Problem> {
    let mut errors = ValidationErrors::new();
    query.check_names(&["limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    errors.into_result()?;
    Ok(page)
}
