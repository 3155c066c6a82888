//! The events tenants can be notified of, the filters that pick them, and the body every
//! channel is given.
//!
//! A bus event of type `meridian.{domain}.{resource}.{action}` is the tenant-facing event
//! type `{resource}.{action}` (`meridian.oms.order.created` is `order.created`).

use meridian_core::Envelope;
use serde::Serialize;

/// Every event type a tenant can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.confirmed",
    "order.fulfilled",
    "order.canceled",
    "shipment.created",
    "shipment.label_created",
    "shipment.shipped",
    "shipment.delivered",
    "shipment.exception",
    "shipment.canceled",
    "webhook.disabled",
];

/// The tenant-facing type of a bus event, if tenants can be notified of it.
pub fn event_type(envelope: &Envelope) -> Option<&str> {
    let rest = envelope.ty.strip_prefix("meridian.")?;
    let (_domain, ty) = rest.split_once('.')?;
    EVENT_TYPES.contains(&ty).then_some(ty)
}

/// Checks one filter: `*`, `{resource}.*` for a known resource, or a known event type.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let known = filter == "*"
        || EVENT_TYPES.contains(&filter)
        || filter.strip_suffix(".*").is_some_and(|resource| {
            EVENT_TYPES
                .iter()
                .any(|t| t.split_once('.').is_some_and(|(r, _)| r == resource))
        });
    if known {
        Ok(())
    } else {
        Err(format!(
            "unknown event type {filter:?}; expected \"*\", \"order.*\", \"shipment.*\", \"webhook.*\" or one of {}",
            EVENT_TYPES.join(", ")
        ))
    }
}

/// Whether `event_type` passes any of `filters`.
pub fn matches(filters: &[String], event_type: &str) -> bool {
    filters.iter().any(|f| {
        f == "*"
            || f == event_type
            || f.strip_suffix(".*").is_some_and(|resource| {
                event_type
                    .split_once('.')
                    .is_some_and(|(r, _)| r == resource)
            })
    })
}

/// The JSON body of a notification (the Standard Webhooks payload shape).
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    #[serde(rename = "type")]
    pub ty: &'a str,
    /// When the event happened (RFC 3339).
    pub timestamp: String,
    /// The id of the event: the same for every endpoint and channel it reaches.
    pub event_id: String,
    /// The event's data: the order or shipment as it was then.
    pub data: &'a serde_json::Value,
}

/// The body sent for `envelope`, whose tenant-facing type is `ty`.
pub fn payload(envelope: &Envelope, ty: &str) -> String {
    let p = Payload {
        ty,
        timestamp: envelope
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event_id: envelope.id.to_string(),
        data: &envelope.data,
    };
    serde_json::to_string(&p).expect("a payload serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::TenantId;

    fn envelope(ty: &str) -> Envelope {
        Envelope::new(
            "/meridian/test/oms",
            ty,
            TenantId::new(),
            "x",
            meridian_core::now(),
            serde_json::json!({"id": "x"}),
        )
    }

    #[test]
    fn event_types_come_from_the_envelope_type() {
        assert_eq!(
            event_type(&envelope("meridian.oms.order.created")),
            Some("order.created")
        );
        assert_eq!(
            event_type(&envelope("meridian.fulfillment.shipment.label_created")),
            Some("shipment.label_created")
        );
        assert_eq!(event_type(&envelope("meridian.data.stock.changed")), None);
        assert_eq!(event_type(&envelope("other.oms.order.created")), None);
    }

    #[test]
    fn filters() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (filters, ty, expected) in [
            (f(&["*"]), "order.created", true),
            (f(&["order.*"]), "order.canceled", true),
            (f(&["order.*"]), "shipment.shipped", false),
            (
                f(&["shipment.shipped", "order.created"]),
                "order.created",
                true,
            ),
            (f(&["order.created"]), "order.confirmed", false),
            (f(&[]), "order.created", false),
        ] {
            assert_eq!(matches(&filters, ty), expected, "{filters:?} {ty}");
        }
        assert!(check_filter("*").is_ok());
        assert!(check_filter("order.*").is_ok());
        assert!(check_filter("shipment.delivered").is_ok());
        assert!(check_filter("stock.*").is_err());
        assert!(check_filter("order.shipped").is_err());
        assert!(check_filter("").is_err());
    }

    #[test]
    fn the_payload_carries_type_time_event_and_data() {
        let e = envelope("meridian.oms.order.created");
        let v: serde_json::Value = serde_json::from_str(&payload(&e, "order.created")).unwrap();
        assert_eq!(v["type"], "order.created");
        assert_eq!(v["event_id"], e.id.to_string());
        assert_eq!(v["data"]["id"], "x");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
