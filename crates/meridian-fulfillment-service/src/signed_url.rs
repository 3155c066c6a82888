//! Pre-signed label URLs: a link that downloads one shipment's label without a credential
//! until it expires, like an object store's pre-signed GET. The signature is HMAC-SHA256
//! over `label.{tenant}.{shipment}.{expires}` with a key every instance of the deployment
//! shares, so any instance can check a link another one made.

use meridian_core::{ShipmentId, TenantId};

use crate::webhook::hmac_sha256;

/// The longest a pre-signed label URL may live: one week.
pub const MAX_EXPIRY_SECONDS: i64 = 7 * 24 * 3600;

/// Signs and checks label links.
#[derive(Clone)]
pub struct LabelUrlSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for LabelUrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelUrlSigner(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LabelUrlSigner {
    /// A signer whose key is derived from `secret` (the deployment's master key, say), so
    /// that the key itself is used for nothing else.
    pub fn derive(secret: &[u8]) -> Self {
        Self {
            key: hmac_sha256(secret, b"meridian:label-urls:v1"),
        }
    }

    /// The signature of a link to `shipment`'s label, valid until `expires` (Unix seconds).
    pub fn sign(&self, tenant: TenantId, shipment: ShipmentId, expires: i64) -> String {
        hex(&hmac_sha256(
            &self.key,
            format!("label.{tenant}.{shipment}.{expires}").as_bytes(),
        ))
    }

    /// The path and query of a link valid until `expires`.
    pub fn url(&self, tenant: TenantId, shipment: ShipmentId, expires: i64) -> String {
        let signature = self.sign(tenant, shipment, expires);
        format!("/v1/labels/{shipment}?tenant={tenant}&expires={expires}&signature={signature}")
    }

    /// Whether a link is genuine and not expired at `now`.
    pub fn verify(
        &self,
        tenant: TenantId,
        shipment: ShipmentId,
        expires: i64,
        signature: &str,
        now: i64,
    ) -> bool {
        let want = self.sign(tenant, shipment, expires);
        let same = want.len() == signature.len()
            && want
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && now <= expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_expire_and_cannot_be_altered() {
        let signer = LabelUrlSigner::derive(b"master key");
        let (t, s) = (TenantId::new(), ShipmentId::new());
        let now = 1_700_000_000;
        let sig = signer.sign(t, s, now + 60);
        assert!(signer.verify(t, s, now + 60, &sig, now));
        assert!(signer.verify(t, s, now + 60, &sig, now + 60));
        assert!(!signer.verify(t, s, now + 60, &sig, now + 61), "expired");
        assert!(!signer.verify(t, s, now + 600, &sig, now), "expiry moved");
        assert!(!signer.verify(TenantId::new(), s, now + 60, &sig, now));
        assert!(!signer.verify(t, ShipmentId::new(), now + 60, &sig, now));
        let other = LabelUrlSigner::derive(b"another key");
        assert!(!other.verify(t, s, now + 60, &sig, now));
        let url = signer.url(t, s, now + 60);
        assert!(url.starts_with(&format!("/v1/labels/{s}?tenant={t}&expires={}", now + 60)));
        assert!(url.ends_with(&sig));
    }
}
