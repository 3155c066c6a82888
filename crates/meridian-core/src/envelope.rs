use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{EventId, TenantId, Timestamp};

/// A topic name: `deployment.{deployment}.platform.{domain}.{event...}` (DESIGN.md §5).
///
/// Shared, not copied: cloning a topic (once per message on the bus) is a reference-count
/// increment. Serialized as the plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic(Arc<str>);

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    /// As before the topic was shared: the string as it is, not validated (callers that
    /// take topics from outside use [`Topic::parse`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Topic(s.into()))
    }
}

impl Topic {
    /// Builds a platform topic. `domain` and each event segment must match `[a-z0-9_-]+`;
    /// they are compile-time constants in Meridian, so a bad one is a bug and panics in tests.
    pub fn platform(deployment: &str, domain: &str, event: &str) -> Topic {
        debug_assert!(
            [deployment, domain]
                .into_iter()
                .chain(event.split('.'))
                .all(valid_segment),
            "invalid topic segment in {deployment}/{domain}/{event}"
        );
        Topic(format!("deployment.{deployment}.platform.{domain}.{event}").into())
    }

    /// Parses a full topic name: `deployment.{deployment}.platform.{domain}.{event...}`,
    /// every segment `[a-z0-9_-]+`, at most [`Topic::MAX_LEN`] bytes.
    pub fn parse(s: &str) -> Result<Topic, String> {
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "topic is {} bytes long; the limit is {}",
                s.len(),
                Self::MAX_LEN
            ));
        }
        let segments: Vec<&str> = s.split('.').collect();
        let shape_ok =
            segments.len() >= 5 && segments[0] == "deployment" && segments[2] == "platform";
        if !shape_ok {
            return Err(format!(
                "topic {s:?} must look like deployment.{{id}}.platform.{{domain}}.{{event}}"
            ));
        }
        if let Some(bad) = segments.iter().find(|seg| !valid_segment(seg)) {
            return Err(format!(
                "topic {s:?} has an invalid segment {bad:?}: use a-z, 0-9, '_' and '-'"
            ));
        }
        Ok(Topic(s.into()))
    }

    /// The longest topic name accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The deployment id: the second segment.
    pub fn deployment(&self) -> &str {
        self.0.split('.').nth(1).unwrap_or_default()
    }

    /// The dead-letter topic of this topic: `<topic>.dlq`.
    pub fn dead_letter(&self) -> Topic {
        Topic(format!("{}.dlq", self.0).into())
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic segment: `[a-z0-9_-]+`.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A CloudEvents 1.0 envelope with Meridian's extensions (`tenant`, `traceparent`,
/// `schemaversion`) and JSON data. This exact JSON is what the outbox stores and the bus
/// carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub specversion: String,
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub time: Timestamp,
    pub subject: String,
    pub datacontenttype: String,
    pub tenant: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub schemaversion: String,
    pub data: serde_json::Value,
}

impl Envelope {
    /// A new event of `ty` (such as `meridian.oms.order.created`) about `subject`, the
    /// aggregate id that orders events per key.
    pub fn new(
        source: impl Into<String>,
        ty: impl Into<String>,
        tenant: TenantId,
        subject: impl Into<String>,
        time: Timestamp,
        data: serde_json::Value,
    ) -> Self {
        Self {
            specversion: "1.0".into(),
            id: EventId::new(),
            source: source.into(),
            ty: ty.into(),
            time,
            subject: subject.into(),
            datacontenttype: "application/json".into(),
            tenant,
            traceparent: None,
            schemaversion: "1".into(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_serializes_cloudevents_attributes() {
        let tenant = TenantId::new();
        let e = Envelope::new(
            "/meridian/local/orders",
            "meridian.oms.order.created",
            tenant,
            "order-1",
            crate::now(),
            serde_json::json!({"a": 1}),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "meridian.oms.order.created");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["tenant"], tenant.to_string());
        assert_eq!(v["schemaversion"], "1");
        assert!(v.get("traceparent").is_none());
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn platform_topics_follow_the_grammar() {
        let t = Topic::platform("local", "oms", "order.created");
        assert_eq!(t.as_str(), "deployment.local.platform.oms.order.created");
        assert!(valid_segment("a-b_1"));
        assert!(!valid_segment("A"));
        assert!(!valid_segment(""));
    }

    #[test]
    fn topics_parse_only_inside_a_deployment_namespace() {
        let t = Topic::parse("deployment.d1.platform.oms.order.created").unwrap();
        assert_eq!(t.deployment(), "d1");
        assert_eq!(
            t.dead_letter().as_str(),
            "deployment.d1.platform.oms.order.created.dlq"
        );
        for bad in [
            "",
            "platform.oms.order",
            "deployment.d1.platform.oms",
            "deployment.d1.other.oms.x",
            "deployment.D1.platform.oms.x",
            "deployment.d1.platform.oms..x",
            "deployment.d1.platform.oms.*",
            "deployment.d1.platform.oms.>",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
        assert!(Topic::parse(&format!("deployment.d.platform.x.{}", "a".repeat(300))).is_err());
    }
}

/// An event on its way out: the topic it goes to and its envelope. The outbox stores these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub topic: Topic,
    pub envelope: Envelope,
}

/// Makes events for one deployment: the topic namespace and the CloudEvents `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSource {
    deployment: String,
}

impl EventSource {
    /// `deployment` must be a valid topic segment (`[a-z0-9_-]+`).
    pub fn new(deployment: &str) -> Result<Self, String> {
        if valid_segment(deployment) {
            Ok(Self {
                deployment: deployment.to_owned(),
            })
        } else {
            Err(format!(
                "deployment id {deployment:?} must be 1 or more of a-z, 0-9, '_' and '-'"
            ))
        }
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// An event `{domain}.{event}` about `subject` (the aggregate id) for `tenant`, with
    /// type `meridian.{domain}.{event}` and topic
    /// `deployment.{deployment}.platform.{domain}.{event}`.
    pub fn event(
        &self,
        domain: &str,
        event: &str,
        tenant: TenantId,
        subject: impl Into<String>,
        data: serde_json::Value,
        time: Timestamp,
    ) -> OutboxEvent {
        OutboxEvent {
            topic: Topic::platform(&self.deployment, domain, event),
            envelope: Envelope::new(
                format!("/meridian/{}/{domain}", self.deployment),
                format!("meridian.{domain}.{event}"),
                tenant,
                subject,
                time,
                data,
            ),
        }
    }
}
