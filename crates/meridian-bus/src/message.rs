//! [`Message`]: what the bus moves. One immutable, reference-counted buffer holding the
//! envelope's encoded CloudEvents JSON, so that moving a message between tasks, cloning it
//! (for fan-out or redelivery) and freeing it on the consumer's core cost a reference count,
//! not one allocation per envelope field.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use meridian_core::{Envelope, EventId, TenantId, Timestamp, Topic};
use uuid::Uuid;

use crate::BusError;

/// A message on the bus: where it goes and the CloudEvents envelope it carries, as its
/// encoded JSON. The envelope's `subject` (the aggregate id) is the ordering key.
///
/// The bus reads only what it needs without decoding: the topic, the event id, the tenant,
/// the event time and the key. [`Message::envelope`] decodes the envelope on first use and
/// keeps it, so a consumer that needs the data pays for decoding and a bus that only moves
/// the message does not. Cloning is two reference-count increments (the buffer and the
/// topic), plus a third once the envelope is decoded.
///
/// The id, tenant and time sit in a small header at the front of the buffer, before the
/// encoded envelope and the key, so the message itself is three words and a lock (48
/// bytes): queues, batches and deliveries move that much per message.
#[derive(Clone)]
pub struct Message {
    pub topic: Topic,
    /// [`Header`], the encoded envelope (valid JSON), then the key.
    buf: Arc<[u8]>,
    /// The decoded envelope, once someone asked for it (or the bytes were decoded to
    /// validate them).
    decoded: OnceLock<Arc<Envelope>>,
}

/// The layout of the header at the front of a message's buffer.
struct Header;

impl Header {
    const ID: std::ops::Range<usize> = 0..16;
    const TENANT: std::ops::Range<usize> = 16..32;
    const SECS: std::ops::Range<usize> = 32..40;
    const NANOS: std::ops::Range<usize> = 40..44;
    const JSON_LEN: std::ops::Range<usize> = 44..48;
    const LEN: usize = 48;

    /// Assembles a message's buffer: the header, the JSON `body` writes, then the key. It is
    /// put together in a scratch buffer kept per thread and copied into a buffer of its
    /// exact size, one allocation per message.
    fn assemble(
        id: EventId,
        tenant: TenantId,
        time: Timestamp,
        key: &str,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Arc<[u8]> {
        /// Scratch buffers past this size are not kept for the next message.
        const KEEP: usize = 64 * 1024;
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            buf.extend_from_slice(id.as_uuid().as_bytes());
            buf.extend_from_slice(tenant.as_uuid().as_bytes());
            buf.extend_from_slice(&time.timestamp().to_le_bytes());
            buf.extend_from_slice(&time.timestamp_subsec_nanos().to_le_bytes());
            buf.extend_from_slice(&[0; 4]);
            body(buf);
            let json_len = u32::try_from(buf.len() - Self::LEN)
                .unwrap_or_else(|_| unreachable!("an envelope under 4 GiB"));
            buf[Self::JSON_LEN].copy_from_slice(&json_len.to_le_bytes());
            buf.extend_from_slice(key.as_bytes());
            let message = Arc::from(&buf[..]);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            message
        })
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes
        .try_into()
        .unwrap_or_else(|_| unreachable!("header fields have fixed sizes"))
}

impl Message {
    /// Encodes `envelope`. Its fields are freed here, on the producer's side; the message
    /// keeps only the encoded form.
    pub fn new(topic: Topic, envelope: Envelope) -> Self {
        Self {
            topic,
            buf: encode(&envelope),
            decoded: OnceLock::new(),
        }
    }

    /// [`Message::new`], keeping the envelope decoded as well: for a caller that has the
    /// envelope and will read it again (a test, a dead letter), at the cost of carrying both.
    pub fn with_envelope(topic: Topic, envelope: Envelope) -> Self {
        Self {
            topic,
            buf: encode(&envelope),
            decoded: OnceLock::from(Arc::new(envelope)),
        }
    }

    /// A message received from a broker: `topic` and the encoded envelope. Both are
    /// validated now, so an undecodable message is an error at receive time, but the
    /// envelope is not built: the bytes are checked in one pass that allocates nothing for
    /// the data ([`check::Head`]), and [`Message::envelope`] decodes them when a consumer
    /// asks.
    pub fn decode(topic: &str, bytes: &[u8]) -> Result<Message, BusError> {
        let topic = Topic::parse(topic).map_err(BusError::InvalidTopic)?;
        let undecodable = |e: &dyn std::fmt::Display| {
            BusError::Internal(format!("undecodable message on {topic}: {e}"))
        };
        let head: check::Head<'_> = serde_json::from_slice(bytes).map_err(|e| undecodable(&e))?;
        Ok(Self {
            topic,
            buf: Header::assemble(head.id, head.tenant, head.time, &head.subject, |buf| {
                buf.extend_from_slice(bytes);
            }),
            decoded: OnceLock::new(),
        })
    }

    fn json_end(&self) -> usize {
        Header::LEN + u32::from_le_bytes(array(&self.buf[Header::JSON_LEN])) as usize
    }

    /// The ordering key, the envelope's `subject`: messages with the same key on the same
    /// topic are delivered to a consumer in publish order (where
    /// [`Capabilities::ordered_per_key`](crate::Capabilities::ordered_per_key) holds).
    pub fn key(&self) -> &str {
        // Copied from a `String`, so valid UTF-8.
        std::str::from_utf8(&self.buf[self.json_end()..]).unwrap_or_default()
    }

    /// The envelope's event id.
    pub fn id(&self) -> EventId {
        EventId::from_uuid(Uuid::from_bytes(array(&self.buf[Header::ID])))
    }

    /// The envelope's tenant.
    pub fn tenant(&self) -> TenantId {
        TenantId::from_uuid(Uuid::from_bytes(array(&self.buf[Header::TENANT])))
    }

    /// The envelope's event time (end-to-end latency is measured from it).
    pub fn time(&self) -> Timestamp {
        let secs = i64::from_le_bytes(array(&self.buf[Header::SECS]));
        let nanos = u32::from_le_bytes(array(&self.buf[Header::NANOS]));
        Timestamp::from_timestamp(secs, nanos)
            .unwrap_or_else(|| unreachable!("taken from a valid timestamp"))
    }

    /// The encoded envelope: the CloudEvents JSON every backend stores and sends.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[Header::LEN..self.json_end()]
    }

    /// The wire form as a shared buffer (no copy), refused above `limit`.
    pub fn encode(&self, limit: usize) -> Result<Bytes, BusError> {
        let end = self.json_end();
        let size = end - Header::LEN;
        if size > limit {
            return Err(BusError::PayloadTooLarge { size, limit });
        }
        Ok(Bytes::from_owner(Encoded(self.buf.clone(), end)))
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
            .field("id", &self.id())
            .field("key", &self.key())
            .field("json", &String::from_utf8_lossy(self.as_bytes()))
            .finish()
    }
}

/// `envelope`'s header, encoded JSON and key, in one buffer.
fn encode(envelope: &Envelope) -> Arc<[u8]> {
    Header::assemble(
        envelope.id,
        envelope.tenant,
        envelope.time,
        &envelope.subject,
        |buf| {
            // Serializing an envelope cannot fail: every field is a string, an id, a time or
            // a JSON value (whose map keys are strings), written into memory.
            serde_json::to_writer(buf, envelope)
                .unwrap_or_else(|e| unreachable!("an envelope serializes to JSON: {e}"));
        },
    )
}

/// The encoded envelope of a message's buffer (up to the given end), as the owner of a
/// [`Bytes`].
struct Encoded(Arc<[u8]>, usize);

impl AsRef<[u8]> for Encoded {
    fn as_ref(&self) -> &[u8] {
        &self.0[Header::LEN..self.1]
    }
}

/// Checking received bytes without building the envelope.
mod check {
    use std::borrow::Cow;
    use std::fmt;

    use meridian_core::{EventId, TenantId, Timestamp};
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    /// What [`Envelope`](meridian_core::Envelope) requires of its JSON, field for field with
    /// the same types, except that strings are only checked and `data` is walked by
    /// [`AnyJson`] instead of built into a `Value`. Bytes this accepts, `Envelope` accepts
    /// (so [`Message::envelope`](super::Message::envelope) cannot fail on them); only the
    /// fields the message header needs are kept.
    #[derive(serde::Deserialize)]
    pub(super) struct Head<'a> {
        #[allow(dead_code)]
        specversion: Str,
        pub id: EventId,
        #[allow(dead_code)]
        source: Str,
        #[serde(rename = "type")]
        #[allow(dead_code)]
        ty: Str,
        pub time: Timestamp,
        #[serde(borrow)]
        pub subject: Cow<'a, str>,
        #[allow(dead_code)]
        datacontenttype: Str,
        pub tenant: TenantId,
        #[serde(default)]
        #[allow(dead_code)]
        traceparent: Option<Str>,
        #[allow(dead_code)]
        schemaversion: Str,
        #[allow(dead_code)]
        data: AnyJson,
    }

    /// A JSON string, checked and not kept.
    struct Str;

    impl<'de> Deserialize<'de> for Str {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Str;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Str, E> {
                    Ok(Str)
                }
            }
            d.deserialize_str(V)
        }
    }

    /// Any JSON value, walked as `serde_json::Value` would be read (the same number
    /// parsing and nesting limit) without keeping anything.
    struct AnyJson;

    impl<'de> Deserialize<'de> for AnyJson {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(AnyJsonVisitor)
        }
    }

    struct AnyJsonVisitor;

    impl<'de> Visitor<'de> for AnyJsonVisitor {
        type Value = AnyJson;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_unit<E: de::Error>(self) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_none<E: de::Error>(self) -> Result<AnyJson, E> {
            Ok(AnyJson)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<AnyJson, D::Error> {
            AnyJson::deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
            while seq.next_element::<AnyJson>()?.is_some() {}
            Ok(AnyJson)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
            while map.next_key::<Str>()?.is_some() {
                map.next_value::<AnyJson>()?;
            }
            Ok(AnyJson)
        }
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
        assert_eq!(m.time(), e.time);
        assert_eq!(std::mem::size_of::<Message>(), 48);
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

    /// What `Message::decode` accepts without building the envelope is exactly what
    /// `Envelope` accepts, so decoding it later cannot fail.
    #[test]
    fn decode_checks_what_the_envelope_requires() {
        let topic = "deployment.d.platform.oms.x";
        let good = serde_json::to_value(envelope()).unwrap();
        let variants = [
            (
                "data",
                json!({"big": 1e300, "deep": [[[{"k": null}]]], "s": "\\u00e9\\n é"}),
            ),
            ("data", json!(null)),
            ("traceparent", json!("00-abc-def-01")),
            ("extra", json!({"ignored": true})),
        ];
        for (field, value) in variants {
            let mut v = good.clone();
            v[field] = value;
            let bytes = serde_json::to_vec(&v).unwrap();
            let m = Message::decode(topic, &bytes).unwrap_or_else(|e| panic!("{field}: {e}"));
            let expected: Envelope = serde_json::from_value(v).unwrap();
            assert_eq!(m.envelope(), &expected);
            assert_eq!(
                (m.id(), m.tenant(), m.time()),
                (expected.id, expected.tenant, expected.time)
            );
            assert_eq!(m.key(), expected.subject);
        }
        let json = serde_json::to_string(&good).unwrap();
        let data = format!("\"data\":{}", good["data"]);
        let refused = [
            json.replace(&data, "\"data\":{\"n\":1e400}"),
            json.replace(
                &data,
                &format!("\"data\":{}1{}", "[".repeat(200), "]".repeat(200)),
            ),
            json.replace("\"specversion\":\"1.0\"", "\"specversion\":1"),
            json.replace(
                &format!("\"tenant\":\"{}\"", envelope_tenant(&good)),
                "\"tenant\":\"t\"",
            ),
            json.replace(",\"schemaversion\":\"1\"", ""),
        ];
        for bad in refused {
            assert_ne!(bad, json, "the test changed the JSON");
            assert!(serde_json::from_str::<Envelope>(&bad).is_err(), "{bad}");
            assert!(
                matches!(
                    Message::decode(topic, bad.as_bytes()),
                    Err(BusError::Internal(_))
                ),
                "{bad}"
            );
        }
    }

    fn envelope_tenant(v: &serde_json::Value) -> String {
        v["tenant"].as_str().unwrap().to_owned()
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
