use meridian_core::{
    Money, OrderId, ProductId, Quantity, Sku, TenantId, Timestamp, ValidationErrors, WarehouseCode,
    WarehouseId,
};
use serde::{Deserialize, Serialize};

use crate::AllocationStrategy;

/// The most lines one order may have.
pub const MAX_LINES: usize = 100;
const MAX_TEXT: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Fulfilled,
    Canceled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAction {
    Confirm,
    Fulfill,
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an order that is {from}")]
pub struct TransitionError {
    pub from: OrderStatus,
    pub action: OrderAction,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OrderStatus::Pending,
            "confirmed" => OrderStatus::Confirmed,
            "fulfilled" => OrderStatus::Fulfilled,
            "canceled" => OrderStatus::Canceled,
            _ => return None,
        })
    }

    /// The state machine: pending → confirmed → fulfilled; confirmed or pending → canceled.
    /// Fulfilled and canceled are final.
    pub fn next(self, action: OrderAction) -> Result<OrderStatus, TransitionError> {
        use OrderAction::*;
        use OrderStatus::*;
        match (self, action) {
            (Pending, Confirm) => Ok(Confirmed),
            (Confirmed, Fulfill) => Ok(Fulfilled),
            (Pending | Confirmed, Cancel) => Ok(Canceled),
            (from, action) => Err(TransitionError { from, action }),
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OrderAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderAction::Confirm => "confirm",
            OrderAction::Fulfill => "fulfill",
            OrderAction::Cancel => "cancel",
        }
    }

    /// The event published when this action succeeds.
    pub fn event(self) -> &'static str {
        match self {
            OrderAction::Confirm => "order.confirmed",
            OrderAction::Fulfill => "order.fulfilled",
            OrderAction::Cancel => "order.canceled",
        }
    }
}

impl std::fmt::Display for OrderAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub email: String,
    pub name: Option<String>,
    /// E.164 (`+` and 8 to 15 digits), for SMS notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub name: Option<String>,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, such as `DE`.
    pub country: String,
}

fn check_text(errors: &mut ValidationErrors, field: &str, s: &str, required: bool) {
    let n = s.chars().count();
    if required && s.trim().is_empty() {
        errors.push(field, "must not be blank");
    } else if n > MAX_TEXT {
        errors.push(
            field,
            format!("must be at most {MAX_TEXT} characters, got {n}"),
        );
    }
}

impl Customer {
    pub fn check(&self, errors: &mut ValidationErrors) {
        check_text(errors, "customer.email", &self.email, true);
        let at = self.email.find('@');
        if !matches!(at, Some(i) if i > 0 && i + 1 < self.email.len()) {
            errors.push(
                "customer.email",
                "must be an email address such as ana@example.com",
            );
        }
        if let Some(name) = &self.name {
            check_text(errors, "customer.name", name, false);
        }
        if let Some(phone) = &self.phone
            && !is_e164(phone)
        {
            errors.push(
                "customer.phone",
                "must be an E.164 phone number such as +493012345678",
            );
        }
    }
}

/// `+` then 8 to 15 digits, the first not 0.
fn is_e164(phone: &str) -> bool {
    phone.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

impl Address {
    pub fn check(&self, errors: &mut ValidationErrors) {
        let p = "shipping_address";
        for (f, v, req) in [
            ("line1", Some(&self.line1), true),
            ("city", Some(&self.city), true),
            ("postal_code", Some(&self.postal_code), true),
            ("name", self.name.as_ref(), false),
            ("line2", self.line2.as_ref(), false),
            ("region", self.region.as_ref(), false),
        ] {
            if let Some(v) = v {
                check_text(errors, &format!("{p}.{f}"), v, req);
            }
        }
        if !(self.country.len() == 2 && self.country.bytes().all(|b| b.is_ascii_uppercase())) {
            errors.push(
                format!("{p}.country"),
                "must be an ISO 3166-1 alpha-2 code such as DE",
            );
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineRequest {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// A validated order request: 1 to [`MAX_LINES`] lines, each SKU at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    lines: Vec<OrderLineRequest>,
    pub customer: Option<Customer>,
    pub shipping_address: Option<Address>,
    pub allocation: AllocationStrategy,
}

impl OrderRequest {
    pub fn new(
        lines: Vec<OrderLineRequest>,
        customer: Option<Customer>,
        shipping_address: Option<Address>,
        allocation: AllocationStrategy,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if lines.is_empty() {
            errors.push("lines", "must have at least one line");
        }
        if lines.len() > MAX_LINES {
            errors.push(
                "lines",
                format!("must have at most {MAX_LINES} lines, got {}", lines.len()),
            );
        }
        for (i, line) in lines.iter().enumerate() {
            if lines[..i].iter().any(|l| l.sku == line.sku) {
                errors.push(
                    format!("lines[{i}].sku"),
                    format!(
                        "sku {} appears more than once; put the whole quantity on one line",
                        line.sku
                    ),
                );
            }
        }
        if let Some(c) = &customer {
            c.check(&mut errors);
        }
        if let Some(a) = &shipping_address {
            a.check(&mut errors);
        }
        errors.into_result()?;
        Ok(Self {
            lines,
            customer,
            shipping_address,
            allocation,
        })
    }

    pub fn lines(&self) -> &[OrderLineRequest] {
        &self.lines
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse_id: WarehouseId,
    pub warehouse_code: WarehouseCode,
    pub quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub product_id: ProductId,
    pub name: String,
    pub quantity: i64,
    /// The product's price when the order was placed.
    pub unit_price: Money,
    pub allocations: Vec<Allocation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub tenant_id: TenantId,
    pub status: OrderStatus,
    pub allocation: AllocationStrategy,
    pub lines: Vec<OrderLine>,
    pub customer: Option<Customer>,
    pub shipping_address: Option<Address>,
    pub total: Money,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_table() {
        use OrderAction::*;
        use OrderStatus::*;
        let all_actions = [Confirm, Fulfill, Cancel];
        let allowed = [
            (Pending, Confirm, Confirmed),
            (Pending, Cancel, Canceled),
            (Confirmed, Fulfill, Fulfilled),
            (Confirmed, Cancel, Canceled),
        ];
        for from in [Pending, Confirmed, Fulfilled, Canceled] {
            for action in all_actions {
                let want = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|t| t.2);
                match (from.next(action), want) {
                    (Ok(got), Some(want)) => assert_eq!(got, want),
                    (Err(e), None) => assert_eq!(e, TransitionError { from, action }),
                    (got, want) => panic!("{from} {action}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    fn line(sku: &str, q: i64) -> OrderLineRequest {
        OrderLineRequest {
            sku: sku.parse().unwrap(),
            quantity: Quantity::new(q).unwrap(),
        }
    }

    #[test]
    fn requests_reject_empty_duplicate_and_too_many_lines() {
        let s = AllocationStrategy::Priority;
        assert!(OrderRequest::new(vec![], None, None, s).is_err());
        let dup = OrderRequest::new(vec![line("A", 1), line("A", 2)], None, None, s).unwrap_err();
        assert_eq!(dup.0[0].field, "lines[1].sku");
        let many = (0..=MAX_LINES).map(|i| line(&format!("S{i}"), 1)).collect();
        assert!(OrderRequest::new(many, None, None, s).is_err());
        assert!(OrderRequest::new(vec![line("A", 1), line("B", 2)], None, None, s).is_ok());
    }

    #[test]
    fn customer_and_address_are_checked() {
        let bad = Customer {
            email: "nope".into(),
            name: None,
            phone: None,
        };
        let addr = Address {
            name: None,
            line1: "".into(),
            line2: None,
            city: "Berlin".into(),
            region: None,
            postal_code: "10115".into(),
            country: "Germany".into(),
        };
        let e = OrderRequest::new(
            vec![line("A", 1)],
            Some(bad),
            Some(addr),
            AllocationStrategy::Split,
        )
        .unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customer.email",
                "shipping_address.line1",
                "shipping_address.country"
            ]
        );
    }

    #[test]
    fn a_customer_phone_must_be_e164() {
        let with = |phone: &str| {
            let c = Customer {
                email: "ana@example.com".into(),
                name: None,
                phone: Some(phone.into()),
            };
            let mut errors = ValidationErrors::default();
            c.check(&mut errors);
            errors.0.iter().map(|f| f.field.clone()).collect::<Vec<_>>()
        };
        assert!(with("+493012345678").is_empty());
        for bad in [
            "493012345678",
            "+49 30 1234",
            "+0123456789",
            "+1234567",
            "+1234567890123456",
            "+49x0123456",
        ] {
            assert_eq!(with(bad), ["customer.phone"], "{bad}");
        }
    }
}
