//! Names and declarations of the broker objects one deployment uses.
//!
//! Per deployment `{d}`:
//! - `meridian.{d}`: a durable topic exchange; every topic is published with the topic name
//!   as its routing key.
//! - `meridian.{d}.dlx`: a durable fanout exchange, the dead-letter exchange of every queue
//!   below, and `meridian.{d}.dlx.parked`, a durable quorum queue bound to it. Only what the
//!   broker itself dead-letters lands there (see the crate docs): nothing is dropped
//!   silently.
//!
//! Per consumer: `meridian.{d}.{consumer}.{hash}`, where `{hash}` identifies the pattern, so
//! that one consumer name subscribed with two patterns gets two queues rather than one queue
//! whose messages each subscription would half skip.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use meridian_bus::{BusError, TopicPattern};

use crate::error;
use crate::link::Link;

/// The topic exchange of a deployment.
pub(crate) fn exchange(deployment: &str) -> String {
    format!("meridian.{deployment}")
}

/// The dead-letter exchange of a deployment.
pub(crate) fn dead_letter_exchange(deployment: &str) -> String {
    format!("meridian.{deployment}.dlx")
}

/// The queue holding what the broker dead-lettered for a deployment.
pub(crate) fn parked_queue(deployment: &str) -> String {
    format!("meridian.{deployment}.dlx.parked")
}

/// The queue of a consumer on a pattern.
pub(crate) fn consumer_queue(pattern: &TopicPattern, consumer: &str, durable: bool) -> String {
    let kind = if durable { "" } else { ".transient" };
    format!(
        "meridian.{}.{consumer}.{:08x}{kind}",
        pattern.deployment(),
        fnv1a32(pattern.as_str())
    )
}

/// FNV-1a: a hash that stays the same across Rust releases (unlike `DefaultHasher`), since
/// it names durable queues that must be found again after an upgrade.
fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Unused transient queues are deleted after this long (`x-expires`).
const TRANSIENT_EXPIRES_MS: i64 = 60_000;

/// How a consumer queue is declared.
#[derive(Clone, Debug)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) deployment: String,
    pub(crate) binding: String,
    pub(crate) durable: bool,
    /// `x-delivery-limit` (quorum queues): the broker's own poison-message guard.
    pub(crate) delivery_limit: u32,
    /// `x-single-active-consumer`.
    pub(crate) single_active_consumer: bool,
}

impl QueueSpec {
    /// The queue arguments. They must not change for an existing queue: the broker refuses
    /// a re-declaration with different arguments (PRECONDITION_FAILED).
    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&dead_letter_exchange(&self.deployment)),
        );
        if self.durable {
            args.insert("x-queue-type".into(), long_string("quorum"));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        } else {
            args.insert("x-queue-type".into(), long_string("classic"));
            // Auto-delete only fires once a consumer has come and gone; a queue whose
            // subscription failed before consuming would otherwise linger.
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(TRANSIENT_EXPIRES_MS),
            );
        }
        if self.single_active_consumer {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        args
    }

    /// Declares the deployment's exchanges, the dead-letter parking queue, this queue and
    /// its binding. Idempotent.
    pub(crate) async fn declare(&self, link: &Link, ch: &Channel) -> Result<(), BusError> {
        let exchange = exchange(&self.deployment);
        let dlx = dead_letter_exchange(&self.deployment);
        link.ensure_exchange(ch, &exchange, ExchangeKind::Topic)
            .await?;
        link.ensure_exchange(ch, &dlx, ExchangeKind::Fanout).await?;
        let parked = parked_queue(&self.deployment);
        if !link.is_declared(&parked) {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), long_string("quorum"));
            declare_queue(ch, &parked, true, args).await?;
            bind(ch, &parked, &dlx, "#").await?;
            link.mark_declared(&parked);
        }
        declare_queue(ch, &self.name, self.durable, self.arguments()).await?;
        bind(ch, &self.name, &exchange, &self.binding).await
    }
}

async fn declare_queue(
    ch: &Channel,
    name: &str,
    durable: bool,
    args: FieldTable,
) -> Result<(), BusError> {
    // A transient queue is a classic, non-durable queue deleted when its last consumer
    // leaves. It is not `exclusive`, so that subscriptions on different connections with
    // the same consumer name can still compete on it (a group).
    let options = QueueDeclareOptions {
        durable,
        auto_delete: !durable,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), options, args)
        .await
        .map(|_| ())
        .map_err(|e| error::map(&format!("declare queue {name}"), &e))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BusError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| error::map(&format!("bind {queue} to {exchange} with {key}"), &e))
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Reads an integer header (brokers pick the integer width).
pub(crate) fn int_header(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_stable_and_pattern_specific() {
        let p = TopicPattern::parse("deployment.d1.platform.oms.**").unwrap();
        let q = TopicPattern::parse("deployment.d1.platform.oms.order.*").unwrap();
        assert_eq!(
            consumer_queue(&p, "proj", true),
            consumer_queue(&p, "proj", true)
        );
        assert_ne!(
            consumer_queue(&p, "proj", true),
            consumer_queue(&q, "proj", true)
        );
        assert!(consumer_queue(&p, "proj", true).starts_with("meridian.d1.proj."));
        assert!(consumer_queue(&p, "proj", false).ends_with(".transient"));
        // The documented FNV-1a test vector: the hash must never change.
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
    }

    #[test]
    fn reads_integer_headers_of_any_width() {
        let mut t = FieldTable::default();
        t.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        t.insert("small".into(), AMQPValue::ShortShortUInt(7));
        assert_eq!(int_header(Some(&t), "x-delivery-count"), Some(2));
        assert_eq!(int_header(Some(&t), "small"), Some(7));
        assert_eq!(int_header(Some(&t), "absent"), None);
        assert_eq!(int_header(None, "x-delivery-count"), None);
    }
}
