//! How Meridian topics and consumers map onto Kafka topics, keys and groups.
//!
//! One Kafka topic per domain per deployment, `meridian.{deployment}.{domain}`. Deployment
//! and domain are topic segments (`[a-z0-9_-]+`, never a dot), so the name is unambiguous
//! and always a legal Kafka topic name. The full Meridian topic travels in the
//! [`TOPIC_HEADER`] header; the record key is the envelope's subject (the aggregate id), so
//! the messages of one key land in one partition, in publish order. Dead letters
//! (`<topic>.dlq`) sit under the same domain and so in the same Kafka topic.

pub(crate) use meridian_bus::{
    DomainReach as Reach, deployment_and_domain as topic_parts, domain_reach as reach,
};

/// The record header that carries the Meridian topic.
pub(crate) const TOPIC_HEADER: &str = "meridian-topic";

/// The Kafka topic holding every Meridian topic of `domain` in `deployment`.
pub(crate) fn kafka_topic(deployment: &str, domain: &str) -> String {
    format!("meridian.{deployment}.{domain}")
}

/// The prefix of every Kafka topic of `deployment`.
pub(crate) fn topic_prefix(deployment: &str) -> String {
    format!("meridian.{deployment}.")
}

/// A librdkafka regex subscription matching every domain topic of `deployment` (present
/// and future). Deployment ids are `[a-z0-9_-]+`: nothing in them needs escaping.
pub(crate) fn deployment_regex(deployment: &str) -> String {
    format!("^meridian\\.{deployment}\\.[a-z0-9_-]+$")
}

/// The consumer group of a consumer name in a deployment.
pub(crate) fn group_id(deployment: &str, consumer: &str) -> String {
    format!("meridian.{deployment}.{consumer}")
}

/// Bits of a [`Delivery::position`](meridian_bus::Delivery) that hold the offset; the
/// partition sits above them.
const OFFSET_BITS: u32 = 48;

/// A delivery's position: the partition in the top 16 bits, the offset in the low 48. It
/// rises with the offset within a partition (so within one key).
pub(crate) fn position(partition: i32, offset: i64) -> Option<u64> {
    let partition = u64::try_from(partition).ok()?;
    let offset = u64::try_from(offset).ok()?;
    if partition >= 1 << 16 || offset >= 1 << OFFSET_BITS {
        return None;
    }
    Some((partition << OFFSET_BITS) | offset)
}

/// The inverse of [`position`].
pub(crate) fn split_position(position: u64) -> (i32, i64) {
    let partition = i32::try_from(position >> OFFSET_BITS).unwrap_or(i32::MAX);
    let offset = i64::try_from(position & ((1 << OFFSET_BITS) - 1)).unwrap_or(i64::MAX);
    (partition, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(kafka_topic("prod", "oms"), "meridian.prod.oms");
        assert!(kafka_topic("prod", "oms").starts_with(&topic_prefix("prod")));
        assert_eq!(group_id("prod", "projector"), "meridian.prod.projector");
        assert_eq!(deployment_regex("p-1"), "^meridian\\.p-1\\.[a-z0-9_-]+$");
    }

    #[test]
    fn positions_round_trip_and_rise() {
        for (p, o) in [(0, 0), (3, 17), (65_535, (1 << 48) - 1)] {
            let pos = position(p, o).expect("in range");
            assert_eq!(split_position(pos), (p, o));
        }
        assert!(position(2, 5) < position(2, 6));
        assert_eq!(position(-1, 0), None);
        assert_eq!(position(0, -1), None);
        assert_eq!(position(1 << 16, 0), None);
    }
}
