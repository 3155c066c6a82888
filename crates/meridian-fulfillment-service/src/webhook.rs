//! Signed tracking webhooks from carriers, per the Standard Webhooks scheme: the carrier
//! sends `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (one or
//! more space-separated `v1,<base64 HMAC-SHA256>`), where the MAC is over
//! `{id}.{timestamp}.{body}` keyed with the shared secret (`whsec_<base64>`, or the raw
//! string of any other form). A timestamp more than five minutes from now is refused, so a
//! captured request cannot be replayed later.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// How far a webhook's timestamp may be from the receiver's clock.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Why a webhook was refused. Deliberately coarse: a sender learns nothing about which part
/// of a forged signature was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook-id, webhook-timestamp or webhook-signature header is missing")]
    MissingHeaders,
    #[error("the webhook timestamp is not within five minutes of now")]
    Stale,
    #[error("no signature matches")]
    BadSignature,
}

/// The shared secret of carrier webhooks.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// `whsec_<base64>` is decoded; any other string is used as it is.
    pub fn new(secret: &str) -> Self {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| STANDARD.decode(b).ok())
            .unwrap_or_else(|| secret.as_bytes().to_vec());
        Self(key)
    }

    /// The `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut content = format!("{id}.{timestamp}.").into_bytes();
        content.extend_from_slice(body);
        hmac_sha256(&self.0, &content)
    }

    /// Checks a webhook's headers against its body at `now` (Unix seconds).
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        let (Some(id), Some(timestamp), Some(signatures)) = (id, timestamp, signatures) else {
            return Err(WebhookError::MissingHeaders);
        };
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| WebhookError::MissingHeaders)?;
        if (now - ts).abs() > TOLERANCE_SECONDS {
            return Err(WebhookError::Stale);
        }
        let want = self.mac(id, ts, body);
        let matches = signatures
            .split_ascii_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b| STANDARD.decode(b).ok())
            .any(|got| constant_time_eq(&got, &want));
        if matches {
            Ok(())
        } else {
            Err(WebhookError::BadSignature)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| -> [u8; BLOCK] { std::array::from_fn(|i| block[i] ^ byte) };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1, 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn standard_webhooks_example_verifies() {
        // The Standard Webhooks specification's example.
        let secret = WebhookSecret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            sig
        );
        secret
            .verify(
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(&format!("v1,bm9uc2Vuc2U= {sig}")),
                body,
                1614265330 + 10,
            )
            .unwrap();
    }

    #[test]
    fn forged_stale_and_incomplete_webhooks_are_refused() {
        let secret = WebhookSecret::new("carrier-secret");
        let now = 1_700_000_000;
        let sig = secret.sign("m1", now, b"{}");
        let check = |id, ts: &str, sig: &str, body: &[u8]| {
            secret.verify(Some(id), Some(ts), Some(sig), body, now)
        };
        assert_eq!(check("m1", &now.to_string(), &sig, b"{}"), Ok(()));
        assert_eq!(
            check("m1", &now.to_string(), &sig, b"{ }"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check("m2", &now.to_string(), &sig, b"{}"),
            Err(WebhookError::BadSignature)
        );
        let other = WebhookSecret::new("another").sign("m1", now, b"{}");
        assert_eq!(
            check("m1", &now.to_string(), &other, b"{}"),
            Err(WebhookError::BadSignature)
        );
        let old = now - TOLERANCE_SECONDS - 1;
        let old_sig = secret.sign("m1", old, b"{}");
        assert_eq!(
            check("m1", &old.to_string(), &old_sig, b"{}"),
            Err(WebhookError::Stale)
        );
        assert_eq!(
            secret.verify(None, Some("1"), Some(&sig), b"{}", now),
            Err(WebhookError::MissingHeaders)
        );
    }
}
