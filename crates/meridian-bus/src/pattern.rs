use std::fmt;

use meridian_core::{Topic, valid_segment};

use crate::BusError;

/// A subscription pattern over topics: segments as in topics, `*` for exactly one segment,
/// and `**` as the last segment for one or more remaining segments. A pattern must name its
/// deployment (`deployment.{id}.`), so no subscription reaches across deployments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    raw: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl TopicPattern {
    pub fn parse(s: &str) -> Result<TopicPattern, BusError> {
        let bad = |why: String| BusError::InvalidTopic(format!("pattern {s:?}: {why}"));
        if s.len() > Topic::MAX_LEN {
            return Err(bad(format!("longer than {} bytes", Topic::MAX_LEN)));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() < 3 || parts[0] != "deployment" || !valid_segment(parts[1]) {
            return Err(bad("must start with deployment.{id}.".into()));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segments.push(match *p {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(bad("`**` may only be the last segment".into())),
                "*" if i > 1 => Segment::One,
                seg if valid_segment(seg) => Segment::Literal(seg.to_owned()),
                seg => return Err(bad(format!("invalid segment {seg:?}"))),
            });
        }
        Ok(TopicPattern {
            raw: s.to_owned(),
            segments,
        })
    }

    /// A pattern that matches exactly one topic.
    pub fn exact(topic: &Topic) -> TopicPattern {
        TopicPattern::parse(topic.as_str()).expect("a valid topic is a valid pattern")
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The deployment the pattern is confined to.
    pub fn deployment(&self) -> &str {
        match &self.segments[1] {
            Segment::Literal(s) => s,
            _ => "",
        }
    }

    pub fn matches(&self, topic: &Topic) -> bool {
        let mut parts = topic.as_str().split('.');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The pattern in NATS subject syntax (`*` and `>`).
    pub fn to_nats(&self) -> String {
        self.translate("*", ">")
    }

    /// The pattern in AMQP topic-exchange syntax (`*` and `#`). AMQP's `#` also matches
    /// zero words; Meridian's `**` needs one, which the consumer checks with
    /// [`TopicPattern::matches`].
    pub fn to_amqp(&self) -> String {
        self.translate("*", "#")
    }

    fn translate(&self, one: &str, rest: &str) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::One => one,
                Segment::Rest => rest,
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Which domains of its deployment a subscription pattern can reach. Backends that keep
/// one stream or topic per domain (NATS JetStream, Kafka) bind a subscription to these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainReach {
    /// The pattern names its domain: one stream or topic.
    Domain(String),
    /// The domain is a wildcard: every domain of the deployment, present and future.
    AllDomains,
    /// The pattern can match no topic (its third segment is a literal other than
    /// `platform`).
    Nothing,
}

/// Works out the [`DomainReach`] of a pattern in Meridian syntax that already passed
/// [`TopicPattern::parse`] (so every segment is a valid literal, `*`, or a final `**`).
/// `deployment.d.platform.oms` alone matches no topic (an event segment is required), but
/// it is harmless to bind it to the domain.
pub fn domain_reach(pattern: &str) -> DomainReach {
    let segs: Vec<&str> = pattern.split('.').collect();
    // segs[0] == "deployment", segs[1] == the deployment id (TopicPattern guarantees both).
    match segs.get(2).copied() {
        Some("**") => return DomainReach::AllDomains,
        Some("platform") | Some("*") => {}
        _ => return DomainReach::Nothing,
    }
    match segs.get(3).copied() {
        Some("*") | Some("**") => DomainReach::AllDomains,
        Some(domain) if valid_segment(domain) => DomainReach::Domain(domain.to_owned()),
        _ => DomainReach::Nothing,
    }
}

/// The deployment and domain of a topic (or a pattern with literal segments there) that
/// already passed parsing: `deployment.{d}.platform.{domain}.{event...}`.
pub fn deployment_and_domain(topic: &str) -> Option<(&str, &str)> {
    let mut parts = topic.split('.');
    let (Some("deployment"), Some(dep), Some("platform"), Some(domain)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((dep, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn matching_table() {
        let cases = [
            (
                "deployment.d.platform.oms.order.created",
                "deployment.d.platform.oms.order.created",
                true,
            ),
            (
                "deployment.d.platform.oms.order.*",
                "deployment.d.platform.oms.order.created",
                true,
            ),
            (
                "deployment.d.platform.oms.order.*",
                "deployment.d.platform.oms.order.created.dlq",
                false,
            ),
            (
                "deployment.d.platform.oms.**",
                "deployment.d.platform.oms.order.created",
                true,
            ),
            (
                "deployment.d.platform.oms.**",
                "deployment.d.platform.oms.order",
                true,
            ),
            (
                "deployment.d.platform.**",
                "deployment.d.platform.data.stock.changed",
                true,
            ),
            (
                "deployment.d.platform.oms.**",
                "deployment.d.platform.data.stock.changed",
                false,
            ),
            (
                "deployment.d.**",
                "deployment.e.platform.oms.order.created",
                false,
            ),
            (
                "deployment.d.platform.*.order.created",
                "deployment.d.platform.oms.order.created",
                true,
            ),
        ];
        for (p, topic, want) in cases {
            assert_eq!(
                TopicPattern::parse(p).unwrap().matches(&t(topic)),
                want,
                "{p} ~ {topic}"
            );
        }
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "platform.oms.**",
            "deployment.*.platform.**",
            "deployment.**",
            "deployment.d.**.order",
            "deployment.d.platform.OMS.*",
            "deployment.d.platform.oms.>",
            "deployment.d.platform..x",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_syntax() {
        let p = TopicPattern::parse("deployment.d.platform.*.order.**").unwrap();
        assert_eq!(p.to_nats(), "deployment.d.platform.*.order.>");
        assert_eq!(p.to_amqp(), "deployment.d.platform.*.order.#");
        assert_eq!(p.deployment(), "d");
    }

    #[test]
    fn domain_reach_and_parts() {
        assert_eq!(
            deployment_and_domain("deployment.d.platform.oms.order.created"),
            Some(("d", "oms"))
        );
        assert_eq!(deployment_and_domain("deployment.d"), None);
        let reach = domain_reach;
        assert_eq!(
            reach("deployment.d.platform.oms.order.*"),
            DomainReach::Domain("oms".into())
        );
        assert_eq!(
            reach("deployment.d.platform.*.order.created"),
            DomainReach::AllDomains
        );
        assert_eq!(reach("deployment.d.platform.**"), DomainReach::AllDomains);
        assert_eq!(reach("deployment.d.**"), DomainReach::AllDomains);
        assert_eq!(
            reach("deployment.d.*.oms.x"),
            DomainReach::Domain("oms".into())
        );
        assert_eq!(reach("deployment.d.other.oms.x"), DomainReach::Nothing);
    }
}
