//! The storage seam: what the dispatcher and the publish path need from a database, and the
//! plain rows they exchange. [`crate::sqlite`] and [`crate::postgres`] implement it.

use async_trait::async_trait;
use meridian_bus::{BusError, Message, TopicPattern};
use meridian_core::Timestamp;

/// A message on its way into the log: its topic and the envelope's JSON.
#[derive(Debug)]
pub(crate) struct NewEntry {
    pub(crate) topic: String,
    pub(crate) payload: bytes::Bytes,
}

/// A message read back from the log, already decoded and matched against the pattern.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) message: Message,
}

/// One fetch: the matching entries in `(after, through]`, in seq order. Every seq up to
/// `through` was looked at, matching or not, so the next fetch starts after it.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) entries: Vec<Entry>,
    pub(crate) through: u64,
    /// The page was full: more rows may follow `through` right away.
    pub(crate) more: bool,
}

/// A negatively acknowledged message of a durable consumer: how often it was delivered and
/// when it is due again (Unix microseconds, so the row means the same after a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingRow {
    pub(crate) seq: u64,
    pub(crate) attempts: u32,
    pub(crate) not_before_micros: i64,
}

/// A durable consumer's stored position.
#[derive(Debug, Default)]
pub(crate) struct ConsumerRecord {
    /// Every matching message at or below this seq is done.
    pub(crate) acked_through: u64,
    /// Acknowledged messages above `acked_through`.
    pub(crate) acked: Vec<u64>,
    /// Nacked messages above `acked_through`.
    pub(crate) pending: Vec<PendingRow>,
}

/// One durable consumer's acknowledgements and nacks, written in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Settle {
    pub(crate) consumer: String,
    /// Acknowledged seqs above the new watermark, kept as rows until it passes them.
    pub(crate) acks: Vec<u64>,
    /// Seqs whose `bus_pending` row goes (acknowledged after a nack).
    pub(crate) unpend: Vec<u64>,
    /// Nacks to record (insert or replace).
    pub(crate) nacks: Vec<PendingRow>,
    /// Advance `acked_through` to this (never backwards) and forget rows at or below it.
    pub(crate) watermark: Option<u64>,
}

impl Settle {
    pub(crate) fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.unpend.is_empty()
            && self.nacks.is_empty()
            && self.watermark.is_none()
    }
}

/// The database under the bus. Every write is durable when its future resolves.
#[async_trait]
pub(crate) trait Log: Send + Sync + 'static {
    /// Appends `entries` in order, group-committed with concurrent appends and settles.
    async fn append(&self, entries: Vec<NewEntry>) -> Result<(), BusError>;

    /// Writes a durable consumer's acks and nacks.
    async fn settle(&self, settle: Settle) -> Result<(), BusError>;

    /// The highest seq committed so far (0 for an empty log).
    async fn head(&self) -> Result<u64, BusError>;

    /// The lowest seq published at or after `time`, if any.
    async fn first_at(&self, time: Timestamp) -> Result<Option<u64>, BusError>;

    /// Up to `limit` entries after `after` matching `pattern`, read in one snapshot.
    async fn fetch(
        &self,
        after: u64,
        pattern: TopicPattern,
        limit: usize,
    ) -> Result<Fetched, BusError>;

    /// Creates the durable consumer `name` at `acked_through = initial` if it does not exist
    /// (otherwise keeps its position), records `pattern`, and returns its position.
    async fn open_consumer(
        &self,
        name: &str,
        pattern: &str,
        initial: u64,
    ) -> Result<ConsumerRecord, BusError>;

    /// Succeeds while the database can be reached and written.
    async fn ping(&self) -> Result<(), BusError>;
}

/// The literal part of `pattern` before its first wildcard, for pre-filtering in SQL; the
/// dispatcher still matches every row exactly with [`TopicPattern::matches`].
pub(crate) fn literal_prefix(pattern: &TopicPattern) -> String {
    let mut prefix = String::new();
    for segment in pattern.as_str().split('.') {
        if segment == "*" || segment == "**" {
            return prefix;
        }
        prefix.push_str(segment);
        prefix.push('.');
    }
    // No wildcard: the whole topic. Drop the trailing dot so the prefix equals the topic
    // (it also selects `<topic>.dlq`, which `matches` then filters out).
    prefix.pop();
    prefix
}

/// Decodes and matches the rows of one fetch. A row that cannot be decoded (written by a
/// newer or broken build) cannot be delivered; it is logged and stepped over rather than
/// blocking the consumer forever.
pub(crate) fn decode_rows(
    rows: impl IntoIterator<Item = (u64, String, Vec<u8>)>,
    pattern: &TopicPattern,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (seq, topic, payload) in rows {
        match Message::decode(&topic, &payload) {
            Ok(message) if pattern.matches(&message.topic) => {
                entries.push(Entry { seq, message });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(seq, topic, error = %e, "skipping an undecodable bus log row");
            }
        }
    }
    entries
}

/// Unix microseconds, the time unit of the SQLite columns and of nack deadlines.
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        let cases = [
            (
                "deployment.d.platform.oms.order.*",
                "deployment.d.platform.oms.order.",
            ),
            ("deployment.d.platform.**", "deployment.d.platform."),
            (
                "deployment.d.platform.*.order.created",
                "deployment.d.platform.",
            ),
            (
                "deployment.d.platform.oms.order.created",
                "deployment.d.platform.oms.order.created",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(
                literal_prefix(&TopicPattern::parse(p).unwrap()),
                want,
                "{p}"
            );
        }
    }
}
