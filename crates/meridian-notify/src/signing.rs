//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the
//! bytes of a `whsec_`-prefixed base64 secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of every webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How many random bytes a new secret holds (192 bits).
const SECRET_BYTES: usize = 24;

/// How far a receiver should let a delivery's timestamp stray from its clock (the value
/// the Standard Webhooks libraries use).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// A new secret: `whsec_` followed by the base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the secret is not `whsec_` followed by base64")]
    BadSecret,
    #[error("no signature matches")]
    NoMatch,
    #[error("the timestamp is missing, malformed or outside the tolerance")]
    BadTimestamp,
}

fn key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(b64)
        .map_err(|_| SignatureError::BadSecret)?;
    if key.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    Ok(key)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// One `v1,<base64>` signature of `body` under `secret`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
    let tag = mac(&key(secret)?, id, timestamp, body)
        .finalize()
        .into_bytes();
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

/// The `webhook-signature` header value: one signature per secret, space-separated, so a
/// receiver that knows either secret of a rotation accepts the delivery.
pub fn signature_header(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let sigs = secrets
        .iter()
        .map(|s| sign(s, id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sigs.join(" "))
}

/// What a receiver does: accepts if any `v1` signature in `header` is `body`'s under
/// `secret` (compared in constant time) and the timestamp is within the tolerance of `now`.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - ts).abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::BadTimestamp);
    }
    let key = key(secret)?;
    for sig in header.split_ascii_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            continue;
        };
        if mac(&key, id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn matches_the_reference_signature() {
        assert_eq!(
            sign(SECRET, ID, TS, BODY).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_refuses_tampering() {
        let other = new_secret();
        let header = signature_header(&[&other, SECRET], ID, TS, BODY).unwrap();
        assert_eq!(
            verify(SECRET, ID, &TS.to_string(), &header, BODY, TS),
            Ok(())
        );
        assert_eq!(
            verify(&other, ID, &TS.to_string(), &header, BODY, TS),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, ID, &TS.to_string(), &header, b"{}", TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, "msg_other", &TS.to_string(), &header, BODY, TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, ID, &TS.to_string(), &header, BODY, TS + 301),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn new_secrets_are_prefixed_random_and_usable() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with(SECRET_PREFIX));
        assert_ne!(a, b);
        assert_eq!(key(&a).unwrap().len(), SECRET_BYTES);
        assert_eq!(
            sign("whsec_%%%", ID, TS, BODY),
            Err(SignatureError::BadSecret)
        );
    }
}
