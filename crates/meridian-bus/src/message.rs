//! [`Message`]: what the bus moves. One immutable, reference-counted buffer holding the
//! envelope's encoded CloudEvents JSON, so that moving a message between tasks, cloning it
//! (for fan-out or redelivery) and freeing it on the consumer's core cost a reference count,
//! not one allocation per envelope field.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use meridian_core::{Envelope, EventId, TenantId, Timestamp, Topic};

use crate::BusError;

/// A message on the bus: where it goes and the CloudEvents envelope it carries, as its
/// encoded JSON. The envelope's `subject` (the aggregate id) is the ordering key.
///
/// The bus reads only what it needs without decoding: the topic, the event id, the tenant,
/// the event time and the key. [`Message::envelope`] decodes the envelope on first use and keeps it, so a
/// consumer that needs the data pays for decoding and a bus that only moves the message
/// does not. Cloning is two reference-count increments (the buffer and the topic), plus a
/// third once the envelope is decoded.
#[derive(Clone)]
pub struct Message {
    pub topic: Topic,
    /// The encoded envelope (valid JSON, so valid UTF-8), followed by the key.
    buf: Arc<str>,
    /// Where the encoded envelope ends and the key starts.
    json_len: usize,
    id: EventId,
    tenant: TenantId,
    time: Timestamp,
    /// The decoded envelope, once someone asked for it (or the bytes were decoded to
    /// validate them).
    decoded: OnceLock<Arc<Envelope>>,
}

impl Message {
    /// Encodes `envelope`. Its fields are freed here, on the producer's side; the message
    /// keeps only the encoded form.
    pub fn new(topic: Topic, envelope: Envelope) -> Self {
        Self::from_parts(topic, encode(&envelope), &envelope, None)
    }

    /// [`Message::new`], keeping the envelope decoded as well: for a caller that has the
    /// envelope and will read it again (a test, a dead letter), at the cost of carrying both.
    pub fn with_envelope(topic: Topic, envelope: Envelope) -> Self {
        let json = encode(&envelope);
        let envelope = Arc::new(envelope);
        Self::from_parts(topic, json, &envelope.clone(), Some(envelope))
    }

    /// A message received from a broker: `topic` and the encoded envelope. Both are
    /// validated now, so an undecodable message is an error at receive time; the decoded
    /// envelope is kept for [`Message::envelope`].
    pub fn decode(topic: &str, bytes: &[u8]) -> Result<Message, BusError> {
        let topic = Topic::parse(topic).map_err(BusError::InvalidTopic)?;
        let undecodable = |e: &dyn std::fmt::Display| {
            BusError::Internal(format!("undecodable message on {topic}: {e}"))
        };
        let json = std::str::from_utf8(bytes).map_err(|e| undecodable(&e))?;
        let envelope: Envelope = serde_json::from_str(json).map_err(|e| undecodable(&e))?;
        let envelope = Arc::new(envelope);
        let mut buf = String::with_capacity(json.len() + envelope.subject.len());
        buf.push_str(json);
        Ok(Self::from_parts(
            topic,
            buf,
            &envelope.clone(),
            Some(envelope),
        ))
    }

    fn from_parts(
        topic: Topic,
        mut buf: String,
        envelope: &Envelope,
        decoded: Option<Arc<Envelope>>,
    ) -> Self {
        let json_len = buf.len();
        buf.push_str(&envelope.subject);
        Self {
            topic,
            buf: buf.into(),
            json_len,
            id: envelope.id,
            tenant: envelope.tenant,
            time: envelope.time,
            decoded: decoded.map(OnceLock::from).unwrap_or_default(),
        }
    }

    /// The ordering key, the envelope's `subject`: messages with the same key on the same
    /// topic are delivered to a consumer in publish order (where
    /// [`Capabilities::ordered_per_key`](crate::Capabilities::ordered_per_key) holds).
    pub fn key(&self) -> &str {
        &self.buf[self.json_len..]
    }

    /// The envelope's event id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The envelope's tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The envelope's event time (end-to-end latency is measured from it).
    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// The encoded envelope: the CloudEvents JSON every backend stores and sends.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf.as_bytes()[..self.json_len]
    }

    /// The wire form as a shared buffer (no copy), refused above `limit`.
    pub fn encode(&self, limit: usize) -> Result<Bytes, BusError> {
        if self.json_len > limit {
            return Err(BusError::PayloadTooLarge {
                size: self.json_len,
                limit,
            });
        }
        Ok(Bytes::from_owner(Encoded(self.buf.clone(), self.json_len)))
    }

    /// The decoded envelope, decoded on first use and kept.
    pub fn envelope(&self) -> &Envelope {
        self.decoded.get_or_init(|| {
            // The bytes are either this crate's own encoding of an envelope or were decoded
            // once already (`Message::decode`), so decoding them cannot fail.
            Arc::new(
                serde_json::from_slice(self.as_bytes())
                    .unwrap_or_else(|e| unreachable!("a message's own JSON decodes: {e}")),
            )
        })
    }

    /// The decoded envelope, owned (cloned only if another copy of the message shares it).
    pub fn into_envelope(self) -> Envelope {
        self.envelope();
        match self.decoded.into_inner() {
            Some(envelope) => Arc::unwrap_or_clone(envelope),
            None => unreachable!("decoded just above"),
        }
    }
}

/// Equal topics and equal envelopes (compared as bytes first, decoded when the bytes
/// differ).
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && (self.as_bytes() == other.as_bytes() || self.envelope() == other.envelope())
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("key", &self.key())
            .field("json", &&self.buf[..self.json_len])
            .finish()
    }
}

fn encode(envelope: &Envelope) -> String {
    // Serializing an envelope cannot fail: every field is a string, an id, a time or a JSON
    // value (whose map keys are strings), written into memory.
    serde_json::to_string(envelope)
        .unwrap_or_else(|e| unreachable!("an envelope serializes to JSON: {e}"))
}

/// The encoded part of a message's buffer, as the owner of a [`Bytes`].
struct Encoded(Arc<str>, usize);

impl AsRef<[u8]> for Encoded {
    fn as_ref(&self) -> &[u8] {
        &self.0.as_bytes()[..self.1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> Envelope {
        Envelope::new(
            "/meridian/d/oms",
            "meridian.oms.order.created",
            TenantId::new(),
            "order-\"1\"\n",
            meridian_core::now(),
            json!({"a": [1, 2.5, "x"]}),
        )
    }

    #[test]
    fn a_message_carries_the_envelope_as_json() {
        let topic = Topic::platform("d", "oms", "order.created");
        let e = envelope();
        let m = Message::new(topic.clone(), e.clone());
        assert_eq!(m.key(), "order-\"1\"\n");
        assert_eq!(m.id(), e.id);
        assert_eq!(m.tenant(), e.tenant);
        assert_eq!(m.as_bytes(), serde_json::to_vec(&e).unwrap());
        assert_eq!(m.envelope(), &e);
        let bytes = m.encode(usize::MAX).unwrap();
        assert_eq!(&bytes[..], m.as_bytes());
        let back = Message::decode(topic.as_str(), &bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.key(), m.key());
        assert_eq!(back.clone().into_envelope(), e);
        assert_eq!(Message::with_envelope(topic, e.clone()), m);
    }

    #[test]
    fn encode_refuses_a_message_over_the_limit() {
        let m = Message::new(Topic::platform("d", "oms", "x"), envelope());
        let size = m.as_bytes().len();
        assert!(m.encode(size).is_ok());
        match m.encode(size - 1) {
            Err(BusError::PayloadTooLarge { size: s, limit }) => {
                assert_eq!((s, limit), (size, size - 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn undecodable_bytes_and_bad_topics_are_refused() {
        let topic = "deployment.d.platform.oms.x";
        assert!(matches!(
            Message::decode(topic, b"{\"not\": \"an envelope\"}"),
            Err(BusError::Internal(_))
        ));
        assert!(matches!(
            Message::decode(topic, &[0xff, 0xfe]),
            Err(BusError::Internal(_))
        ));
        let bytes = serde_json::to_vec(&envelope()).unwrap();
        assert!(matches!(
            Message::decode("nope", &bytes),
            Err(BusError::InvalidTopic(_))
        ));
    }
}
