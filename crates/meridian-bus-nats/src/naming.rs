//! How Meridian topics map onto JetStream streams.
//!
//! One stream per domain per deployment, `MERIDIAN_{deployment}_DOMAIN_{domain}`, capturing
//! `deployment.{deployment}.platform.{domain}.>`. A dead-letter topic is `<topic>.dlq`, one
//! segment deeper under the same domain, so the domain's stream captures it too: dead letters
//! get the same durable profile as the messages they came from, with no second stream to
//! create, and a subscription on `deployment.d.platform.oms.**` sees them exactly as the
//! topic grammar says it should.

pub(crate) use meridian_bus::{
    DomainReach as Reach, deployment_and_domain as topic_parts, domain_reach as reach,
};

/// The stream that holds every topic of `domain` in `deployment`.
///
/// Both parts are topic segments (`[a-z0-9_-]+`, lowercase only), so the upper-case
/// `_DOMAIN_` marker cannot occur inside either: two different (deployment, domain) pairs
/// never share a name, which a plain `_` separator would not guarantee (`a_b`+`c` versus
/// `a`+`b_c`).
pub(crate) fn stream_name(deployment: &str, domain: &str) -> String {
    format!("MERIDIAN_{deployment}_DOMAIN_{domain}")
}

/// The prefix of every stream of `deployment`, for listing them.
pub(crate) fn stream_prefix(deployment: &str) -> String {
    format!("MERIDIAN_{deployment}_DOMAIN_")
}

/// The subjects a domain stream captures.
pub(crate) fn stream_subjects(deployment: &str, domain: &str) -> String {
    format!("deployment.{deployment}.platform.{domain}.>")
}

/// The consumer filter for `domain`'s stream, from a pattern in NATS syntax whose
/// [`reach`] includes that domain. The deployment/platform/domain prefix is spelt out so the
/// filter is a subset of the stream's subjects, which the server requires; the rest of the
/// pattern is kept as it is.
pub(crate) fn stream_filter(nats_pattern: &str, domain: &str) -> String {
    let segs: Vec<&str> = nats_pattern.split('.').collect();
    let deployment = segs.get(1).copied().unwrap_or_default();
    let head = format!("deployment.{deployment}.platform.{domain}");
    if segs.get(2) == Some(&">") || segs.get(3) == Some(&">") {
        return format!("{head}.>");
    }
    match segs.get(4..) {
        Some(rest) if !rest.is_empty() => format!("{head}.{}", rest.join(".")),
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unambiguous() {
        assert_ne!(stream_name("a_b", "c"), stream_name("a", "b_c"));
        assert_ne!(stream_name("a-1", "x"), stream_name("a", "1-x"));
        assert_eq!(stream_name("prod", "oms"), "MERIDIAN_prod_DOMAIN_oms");
        assert!(stream_name("prod", "oms").starts_with(&stream_prefix("prod")));
        assert_eq!(
            stream_subjects("prod", "oms"),
            "deployment.prod.platform.oms.>"
        );
    }

    #[test]
    fn filters_are_inside_the_stream() {
        assert_eq!(
            stream_filter("deployment.d.platform.oms.order.*", "oms"),
            "deployment.d.platform.oms.order.*"
        );
        assert_eq!(
            stream_filter("deployment.d.*.*.order.>", "data"),
            "deployment.d.platform.data.order.>"
        );
        assert_eq!(
            stream_filter("deployment.d.>", "data"),
            "deployment.d.platform.data.>"
        );
        assert_eq!(
            stream_filter("deployment.d.platform.>", "data"),
            "deployment.d.platform.data.>"
        );
    }
}
