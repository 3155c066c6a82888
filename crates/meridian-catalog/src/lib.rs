//! Catalog model: products by SKU per tenant, and the rules a product must satisfy.
//!
//! Plain types and validation only: this crate does no IO and knows nothing of HTTP or SQL.

use std::collections::BTreeMap;

use meridian_core::{Money, ProductId, Sku, TenantId, Timestamp, ValidationErrors};
use serde::{Deserialize, Serialize};

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 4_000;
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 500;

/// Free-form product attributes used for search facets: string keys, scalar values.
pub type Attributes = BTreeMap<String, serde_json::Value>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub tenant_id: TenantId,
    pub sku: Sku,
    pub name: String,
    pub description: Option<String>,
    pub price: Money,
    pub attributes: Attributes,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A validated product to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: String,
    pub description: Option<String>,
    pub price: Money,
    pub attributes: Attributes,
}

/// A validated partial update; `None` leaves a field as it is. `description: Some(None)`
/// clears the description.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub price: Option<Money>,
    pub attributes: Option<Attributes>,
}

impl ProductPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.price.is_none()
            && self.attributes.is_none()
    }

    /// Applies the patch to `product`, returning whether anything changed.
    pub fn apply(&self, product: &mut Product) -> bool {
        let before = product.clone();
        if let Some(name) = &self.name {
            product.name.clone_from(name);
        }
        if let Some(description) = &self.description {
            product.description.clone_from(description);
        }
        if let Some(price) = self.price {
            product.price = price;
        }
        if let Some(attributes) = &self.attributes {
            product.attributes.clone_from(attributes);
        }
        *product != before
    }
}

/// Checks a product name: 1 to [`MAX_NAME_LEN`] characters, not blank.
pub fn check_name(name: &str) -> Result<String, String> {
    let n = name.chars().count();
    if name.trim().is_empty() {
        return Err("must not be blank".into());
    }
    if n > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {n}"
        ));
    }
    Ok(name.to_owned())
}

/// Checks a description: at most [`MAX_DESCRIPTION_LEN`] characters.
pub fn check_description(d: &str) -> Result<String, String> {
    let n = d.chars().count();
    if n > MAX_DESCRIPTION_LEN {
        return Err(format!(
            "must be at most {MAX_DESCRIPTION_LEN} characters, got {n}"
        ));
    }
    Ok(d.to_owned())
}

/// Checks attributes: at most [`MAX_ATTRIBUTES`] keys of bounded length with scalar values.
pub fn check_attributes(field: &str, attrs: &Attributes, errors: &mut ValidationErrors) {
    if attrs.len() > MAX_ATTRIBUTES {
        errors.push(
            field,
            format!(
                "must have at most {MAX_ATTRIBUTES} keys, got {}",
                attrs.len()
            ),
        );
    }
    for (k, v) in attrs {
        if k.is_empty() || k.chars().count() > MAX_ATTRIBUTE_KEY_LEN {
            errors.push(
                format!("{field}.{k}"),
                format!("keys must be 1 to {MAX_ATTRIBUTE_KEY_LEN} characters"),
            );
        }
        match v {
            serde_json::Value::String(s) if s.chars().count() > MAX_ATTRIBUTE_VALUE_LEN => {
                errors.push(
                    format!("{field}.{k}"),
                    format!("string values must be at most {MAX_ATTRIBUTE_VALUE_LEN} characters"),
                );
            }
            serde_json::Value::String(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Bool(_) => {}
            _ => errors.push(
                format!("{field}.{k}"),
                "values must be strings, numbers or booleans",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_not_blank() {
        assert!(check_name("Widget").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn attributes_must_be_scalar_and_bounded() {
        let mut errors = ValidationErrors::new();
        let mut attrs = Attributes::new();
        attrs.insert("color".into(), "red".into());
        attrs.insert("size".into(), 42.into());
        check_attributes("attributes", &attrs, &mut errors);
        assert!(errors.is_empty());

        attrs.insert("nested".into(), serde_json::json!({"a": 1}));
        attrs.insert(
            "long".into(),
            "y".repeat(MAX_ATTRIBUTE_VALUE_LEN + 1).into(),
        );
        check_attributes("attributes", &attrs, &mut errors);
        assert_eq!(errors.0.len(), 2);
    }
}
